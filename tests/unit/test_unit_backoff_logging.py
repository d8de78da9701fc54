"""``log_failure`` and ``Backoff.failed_after``: how a loop reports the failure it waits out."""

from __future__ import annotations

import structlog
from sqlalchemy.exc import IntegrityError, OperationalError
from structlog.testing import capture_logs

from bulletin.backoff import Backoff, log_failure

log = structlog.get_logger("test")
OUTAGE = OperationalError(
    "SELECT secret FROM t", {"p": "personal"}, ConnectionRefusedError(111, "Connection refused")
)
DEFECT = IntegrityError("INSERT INTO t", {}, ValueError("duplicate key"))


def test_an_outage_is_a_warning_with_the_drivers_message_and_no_statement() -> None:
    with capture_logs() as logs:
        log_failure(log, OUTAGE, outage="loop.failed", defect="loop.error", waiting=3)
    assert logs == [
        {
            "event": "loop.failed",
            "log_level": "warning",
            "error": "OperationalError: [Errno 111] Connection refused",
            "waiting": 3,
        }
    ]


def test_a_defect_is_an_error_with_its_traceback() -> None:
    try:
        raise DEFECT
    except IntegrityError as exc:
        with capture_logs() as logs:
            log_failure(log, exc, outage="loop.failed", defect="loop.error", waiting=3)
    assert logs == [{"event": "loop.error", "log_level": "error", "exc_info": True, "waiting": 3}]


def test_an_outage_reported_elsewhere_is_not_logged_but_a_defect_is() -> None:
    with capture_logs() as logs:
        log_failure(log, OUTAGE, outage=None, defect="loop.error")
    assert logs == []
    with capture_logs() as logs:
        log_failure(log, RuntimeError("bug"), outage=None, defect="loop.error")
    assert [e["event"] for e in logs] == ["loop.error"]


def test_more_errors_may_count_as_an_outage() -> None:
    with capture_logs() as logs:
        log_failure(
            log,
            LookupError("gone"),
            outage="loop.failed",
            defect="loop.error",
            outage_also=(LookupError,),
        )
    assert logs == [{"event": "loop.failed", "log_level": "warning", "error": "LookupError: gone"}]


def test_failed_after_counts_the_failure_and_logs_the_wait_it_returns() -> None:
    backoff = Backoff(first=1.0, cap=8.0)
    backoff.failed()
    with capture_logs() as logs:
        delay = backoff.failed_after(OUTAGE, log, outage="loop.failed", defect="loop.error")
    assert backoff.failures == 2
    assert 1.5 <= delay <= 2.0
    assert logs == [
        {
            "event": "loop.failed",
            "log_level": "warning",
            "error": "OperationalError: [Errno 111] Connection refused",
            "retry_in": round(delay, 2),
        }
    ]
