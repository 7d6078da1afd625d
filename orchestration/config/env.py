"""Small helpers that read configuration from the environment and fail loudly.

Every error names the variable, so a typo in a deployment shows up at start-up rather than
as a strange failure an hour later.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from django.core.exceptions import ImproperlyConfigured


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean (use 1/0, true/false, yes/no).")


def env_float(name: str, default: float, *, minimum: float = 0.0) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a number.") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name}={raw!r} must be at least {minimum}.")
    return value


def env_int(name: str, default: int, *, minimum: int = 0) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a whole number.") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name}={raw!r} must be at least {minimum}.")
    return value


def database_from_env(base_dir: Path) -> dict[str, Any]:
    """DATABASE_URL unset means the embedded SQLite file; otherwise a PostgreSQL URL."""
    raw = os.environ.get("DATABASE_URL", "").strip()
    if not raw:
        return sqlite_database(base_dir / "db.sqlite3")
    parsed = urlparse(raw)
    if parsed.scheme in {"sqlite", "sqlite3"}:
        path = parsed.path
        if not path or path == "/":
            raise ImproperlyConfigured(
                f"DATABASE_URL={raw!r} names no file; use sqlite:////absolute/path.sqlite3."
            )
        return sqlite_database(Path(path))
    if parsed.scheme not in {"postgres", "postgresql", "pgsql"}:
        raise ImproperlyConfigured(
            f"DATABASE_URL={raw!r} has scheme {parsed.scheme!r}; Baton supports "
            "postgres://… and sqlite:///…."
        )
    import dj_database_url

    try:
        config = dj_database_url.parse(raw, conn_max_age=60, conn_health_checks=True)
    except Exception as exc:  # dj_database_url raises several types for bad URLs
        raise ImproperlyConfigured(f"DATABASE_URL={raw!r} cannot be parsed: {exc}") from None
    if not config.get("NAME"):
        raise ImproperlyConfigured(f"DATABASE_URL={raw!r} names no database.")
    config["TEST"] = {"NAME": f"test_{config['NAME']}{_test_suffix()}"}
    return dict(config)


def _test_suffix() -> str:
    # Lets several test runs on one machine (or pytest-xdist workers) use their own database.
    suffix = os.environ.get("BATON_TEST_DB_SUFFIX", "")
    if suffix and not suffix.replace("_", "").isalnum():
        raise ImproperlyConfigured(f"BATON_TEST_DB_SUFFIX={suffix!r} may hold only letters, digits and _.")
    return suffix


def sqlite_database(path: Path) -> dict[str, Any]:
    # WAL lets the web server read while a worker writes; IMMEDIATE takes the write lock at
    # BEGIN so two writers queue on the busy timeout instead of failing with "database is
    # locked" when a read transaction tries to upgrade.
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(path),
        "OPTIONS": {
            "transaction_mode": "IMMEDIATE",
            "timeout": 30,
            "init_command": (
                "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=30000;"
            ),
        },
        "TEST": {"NAME": str(path.with_name(f"test_{path.stem}{_test_suffix()}{path.suffix}"))},
    }


def redis_url_from_env() -> str | None:
    raw = os.environ.get("REDIS_URL", "").strip()
    if not raw:
        return None
    parsed = urlparse(raw)
    if parsed.scheme not in {"redis", "rediss"}:
        raise ImproperlyConfigured(
            f"REDIS_URL={raw!r} has scheme {parsed.scheme!r}; use redis://host:port/db."
        )
    if not parsed.hostname:
        raise ImproperlyConfigured(f"REDIS_URL={raw!r} names no host.")
    try:
        _ = parsed.port  # urlparse checks the port only when it is read
    except ValueError:
        raise ImproperlyConfigured(f"REDIS_URL={raw!r} has a bad port.") from None
    db = parsed.path.lstrip("/")
    if db and not db.isdigit():
        raise ImproperlyConfigured(f"REDIS_URL={raw!r}: the database must be a number.")
    return raw
