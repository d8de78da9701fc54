"""Settings come from BULLETIN_* variables and a .env file, and refuse unsafe combinations."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from bulletin.config import DEFAULT_DATABASE_URL, Settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("BULLETIN_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_defaults_need_no_configuration() -> None:
    settings = Settings()
    assert settings.database_url == DEFAULT_DATABASE_URL
    assert settings.is_sqlite
    assert settings.sqlite_synchronous == "FULL"


def test_a_dot_env_file_is_read_and_the_environment_wins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("BULLETIN_PORT=9100\nBULLETIN_MAX_ATTEMPTS=7\n")
    assert Settings().port == 9100
    monkeypatch.setenv("BULLETIN_PORT", "9200")
    settings = Settings()
    assert settings.port == 9200
    assert settings.max_attempts == 7


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("postgresql://u:p@db:5432/b", "postgresql+asyncpg://u:p@db:5432/b"),
        ("postgres://u@db/b", "postgresql+asyncpg://u@db/b"),
        ("sqlite:///./x.db", "sqlite+aiosqlite:///./x.db"),
        ("postgresql+asyncpg://u@db/b", "postgresql+asyncpg://u@db/b"),
    ],
)
def test_plain_database_urls_get_the_async_driver(
    monkeypatch: pytest.MonkeyPatch, given: str, used: str
) -> None:
    monkeypatch.setenv("BULLETIN_DATABASE_URL", given)
    assert Settings().database_url == used


def test_a_lease_shorter_than_a_send_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BULLETIN_LEASE_SECONDS", "10")
    monkeypatch.setenv("BULLETIN_SEND_TIMEOUT_SECONDS", "8")
    with pytest.raises(ValidationError, match="lease_seconds"):
        Settings()
