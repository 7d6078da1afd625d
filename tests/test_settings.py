"""Configuration comes from the environment; a bad value stops start-up and names the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from orchestration.config.env import database_from_env, env_bool, env_float, redis_url_from_env

ROOT = Path(__file__).resolve().parent.parent


def test_no_database_url_means_the_sqlite_file_in_wal_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    config = database_from_env(ROOT)
    assert config["ENGINE"] == "django.db.backends.sqlite3"
    assert config["NAME"] == str(ROOT / "db.sqlite3")
    assert config["OPTIONS"]["transaction_mode"] == "IMMEDIATE"
    assert "journal_mode=WAL" in config["OPTIONS"]["init_command"]
    assert config["OPTIONS"]["timeout"] >= 5


def test_a_postgres_url_selects_postgresql(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgres://baton@db.internal:5433/baton")
    config = database_from_env(ROOT)
    assert config["ENGINE"] == "django.db.backends.postgresql"
    assert (config["HOST"], config["PORT"], config["NAME"]) == ("db.internal", 5433, "baton")


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("mysql://localhost/baton", "has scheme 'mysql'"),
        ("postgres://localhost", "names no database"),
        ("sqlite://", "names no file"),
    ],
)
def test_a_bad_database_url_names_the_variable(monkeypatch: pytest.MonkeyPatch, value: str, problem: str) -> None:
    monkeypatch.setenv("DATABASE_URL", value)
    with pytest.raises(ImproperlyConfigured, match=f"DATABASE_URL=.*{problem}"):
        database_from_env(ROOT)


def test_redis_is_off_unless_redis_url_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    assert redis_url_from_env() is None
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/2")
    assert redis_url_from_env() == "redis://127.0.0.1:6379/2"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("http://127.0.0.1:6379", "has scheme 'http'"),
        ("redis://127.0.0.1:port", "has a bad port"),
        ("redis://127.0.0.1:6379/zero", "the database must be a number"),
    ],
)
def test_a_bad_redis_url_names_the_variable(monkeypatch: pytest.MonkeyPatch, value: str, problem: str) -> None:
    monkeypatch.setenv("REDIS_URL", value)
    with pytest.raises(ImproperlyConfigured, match=f"REDIS_URL=.*{problem}"):
        redis_url_from_env()


def test_numbers_and_switches_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATON_TICK_SECONDS", "soon")
    with pytest.raises(ImproperlyConfigured, match="BATON_TICK_SECONDS='soon' is not a number"):
        env_float("BATON_TICK_SECONDS", 0.5)
    monkeypatch.setenv("BATON_DEBUG", "maybe")
    with pytest.raises(ImproperlyConfigured, match="BATON_DEBUG='maybe' is not a boolean"):
        env_bool("BATON_DEBUG")


def test_the_server_refuses_to_start_with_a_bad_database_url() -> None:
    env = dict(os.environ, DATABASE_URL="mysql://localhost/baton")
    result = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "check"], env=env, capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode != 0
    assert "DATABASE_URL='mysql://localhost/baton' has scheme 'mysql'" in result.stderr
