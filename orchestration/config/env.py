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


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value not in choices:
        raise ImproperlyConfigured(f"{name}={raw!r} is not one of {', '.join(choices)}.")
    return value


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


def allowed_hosts_from_env(*, production: bool) -> list[str]:
    """BATON_ALLOWED_HOSTS as a list; in production it must name hosts, and no `*`.

    Development accepts any Host header (`*`) so `make run HOST=0.0.0.0` works from another
    machine. Production may not: ALLOWED_HOSTS is also what the websocket origin check
    compares against (orchestration/config/asgi.py), so `*` would let any site's pages open a
    socket with a signed-in user's cookie.
    """
    raw = os.environ.get("BATON_ALLOWED_HOSTS")
    if raw is None:
        raw = "" if production else "*"
    hosts = [h.strip() for h in raw.split(",") if h.strip()]
    if not production:
        return hosts
    if not hosts:
        raise ImproperlyConfigured(
            "BATON_ALLOWED_HOSTS must be set when BATON_PRODUCTION is on: the host names people "
            "use to reach Baton, comma-separated (e.g. baton.example.com)."
        )
    if any("*" in h for h in hosts):
        raise ImproperlyConfigured(
            f"BATON_ALLOWED_HOSTS={raw!r} may not contain '*' when BATON_PRODUCTION is on: name "
            "each host (a leading dot, .example.com, matches a domain and its subdomains)."
        )
    return hosts


def proxy_ssl_header_from_env() -> tuple[str, str] | None:
    """BATON_PROXY_SSL_HEADER (`X-Forwarded-Proto`, or `Name: value`) as Django wants it.

    Opt-in only: trusting the header is safe only behind a proxy that always sets it (and strips
    it from what clients send); otherwise anyone could claim their plain-HTTP request was HTTPS.
    """
    raw = os.environ.get("BATON_PROXY_SSL_HEADER", "").strip()
    if not raw:
        return None
    name, _, value = raw.partition(":")
    name, value = name.strip(), value.strip() or "https"
    if not name or not all(c.isalnum() or c == "-" for c in name) or not value.isprintable():
        raise ImproperlyConfigured(
            f"BATON_PROXY_SSL_HEADER={raw!r} is not a header name (e.g. X-Forwarded-Proto, or "
            "X-Forwarded-Proto: https)."
        )
    return "HTTP_" + name.upper().replace("-", "_"), value
