"""The one rule for tests that need what a machine may lack: skip outside CI, fail in CI."""

from __future__ import annotations

import pytest

from support.ci import in_ci, unavailable


@pytest.mark.parametrize("value", ["1", "true", "TRUE", "True", "yes", "YES", " true\n"])
def test_the_values_ci_services_set_mean_ci(value: str) -> None:
    assert in_ci({"CI": value})


@pytest.mark.parametrize("value", ["", "0", "false", "no", "off", "truthy", "2"])
def test_other_values_do_not(value: str) -> None:
    assert not in_ci({"CI": value})


def test_without_the_variable_it_is_not_ci() -> None:
    assert not in_ci({"GITHUB_ACTIONS": "true"})


def test_a_missing_server_fails_the_test_in_ci() -> None:
    with pytest.raises(pytest.fail.Exception, match="no server here"):
        unavailable("no server here", ci=True)


def test_a_missing_server_skips_the_test_elsewhere() -> None:
    with pytest.raises(pytest.skip.Exception, match="no server here"):
        unavailable("no server here", ci=False)
