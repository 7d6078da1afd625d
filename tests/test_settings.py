"""Configuration comes from the environment; a bad value stops start-up and names the variable."""

from __future__ import annotations

import json
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


# --- production (BATON_PRODUCTION) -------------------------------------------------------------

# Long and varied enough for Django's own secret-key check.
STRONG_KEY = "t3st-only-9f8e7d6c5b4a39281706f5e4d3c2b1a0-ZYXWVUTSRQPONMLKJIHG"


def production_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATON_") or k in {"BATON_QUEUE", "BATON_TEST_DB_SUFFIX"}}
    env.update(
        {
            "BATON_PRODUCTION": "1",
            "BATON_SECRET_KEY": STRONG_KEY,
            "BATON_ALLOWED_HOSTS": "baton.example.com",
            "DJANGO_SETTINGS_MODULE": "orchestration.config.settings",
        }
    )
    env.update(extra)
    return {k: v for k, v in env.items() if v != "<unset>"}


def python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT, timeout=60)


def production_settings(**extra: str) -> dict[str, object]:
    names = [
        "ALLOWED_HOSTS", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE", "SECURE_SSL_REDIRECT",
        "SECURE_PROXY_SSL_HEADER", "SECURE_HSTS_SECONDS", "SECURE_HSTS_INCLUDE_SUBDOMAINS",
        "SECURE_HSTS_PRELOAD", "BATON_CSP",
    ]
    result = python(
        "import json; from django.conf import settings; "
        f"print(json.dumps({{n: getattr(settings, n) for n in {names!r}}}))",
        production_env(**extra),
    )
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def test_check_deploy_is_clean_with_the_production_settings() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "check", "--deploy", "--fail-level", "WARNING"],
        env=production_env(),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout
    assert "WARNINGS" not in result.stdout + result.stderr


def test_production_turns_on_secure_cookies_hsts_and_the_https_redirect() -> None:
    seen = production_settings()
    assert seen["ALLOWED_HOSTS"] == ["baton.example.com"]
    assert seen["SESSION_COOKIE_SECURE"] is True and seen["CSRF_COOKIE_SECURE"] is True
    assert seen["SECURE_SSL_REDIRECT"] is True
    assert seen["SECURE_HSTS_SECONDS"] == 31_536_000
    assert seen["SECURE_HSTS_INCLUDE_SUBDOMAINS"] is True
    assert seen["SECURE_HSTS_PRELOAD"] is False
    assert seen["SECURE_PROXY_SSL_HEADER"] is None, "trusting a proxy header is opt-in"
    assert "script-src 'self'" in str(seen["BATON_CSP"])


def test_development_keeps_plain_cookies_and_no_hsts() -> None:
    seen = production_settings(BATON_PRODUCTION="0", BATON_ALLOWED_HOSTS="<unset>")
    assert seen["ALLOWED_HOSTS"] == ["*"]
    assert seen["SESSION_COOKIE_SECURE"] is False and seen["SECURE_SSL_REDIRECT"] is False
    assert seen["SECURE_HSTS_SECONDS"] == 0


def test_hsts_the_redirect_and_the_proxy_header_are_configurable() -> None:
    seen = production_settings(
        BATON_HSTS_SECONDS="3600",
        BATON_HSTS_INCLUDE_SUBDOMAINS="0",
        BATON_HSTS_PRELOAD="1",
        BATON_SSL_REDIRECT="0",
        BATON_PROXY_SSL_HEADER="X-Forwarded-Proto",
    )
    assert (seen["SECURE_HSTS_SECONDS"], seen["SECURE_HSTS_INCLUDE_SUBDOMAINS"], seen["SECURE_HSTS_PRELOAD"]) == (3600, False, True)
    assert seen["SECURE_SSL_REDIRECT"] is False
    assert seen["SECURE_PROXY_SSL_HEADER"] == ["HTTP_X_FORWARDED_PROTO", "https"]
    assert production_settings(BATON_PROXY_SSL_HEADER="X-Forwarded-Ssl: on")["SECURE_PROXY_SSL_HEADER"] == ["HTTP_X_FORWARDED_SSL", "on"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"BATON_ALLOWED_HOSTS": "<unset>"}, "BATON_ALLOWED_HOSTS must be set when BATON_PRODUCTION is on"),
        ({"BATON_ALLOWED_HOSTS": " , "}, "BATON_ALLOWED_HOSTS must be set when BATON_PRODUCTION is on"),
        ({"BATON_ALLOWED_HOSTS": "*"}, "BATON_ALLOWED_HOSTS='*' may not contain '*' when BATON_PRODUCTION is on"),
        ({"BATON_ALLOWED_HOSTS": "baton.example.com,*.example.com"}, "may not contain '*'"),
        ({"BATON_SECRET_KEY": "<unset>"}, "BATON_SECRET_KEY must be set when BATON_PRODUCTION is on"),
        ({"BATON_DEBUG": "1"}, "BATON_DEBUG must be off when BATON_PRODUCTION is on"),
        ({"BATON_PROXY_SSL_HEADER": "X Forwarded"}, "BATON_PROXY_SSL_HEADER='X Forwarded' is not a header name"),
        ({"BATON_HSTS_SECONDS": "a year"}, "BATON_HSTS_SECONDS='a year' is not a whole number"),
    ],
)
def test_production_refuses_to_start_with_a_missing_or_unsafe_value(extra: dict[str, str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "check"],
        env=production_env(**extra),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert message in result.stderr


def test_in_production_a_websocket_from_another_site_is_refused() -> None:
    # The origin check compares against ALLOWED_HOSTS, so it means something only without `*`.
    code = """
import asyncio, json
from channels.testing import WebsocketCommunicator
from orchestration.config.asgi import application

async def connect(origin):
    # A path no socket uses: a connection that passes the origin check then fails routing.
    headers = [(b"origin", origin.encode()), (b"host", b"baton.example.com")]
    communicator = WebsocketCommunicator(application, "/ws/no-such-socket/", headers=headers)
    try:
        connected, _ = await communicator.connect(timeout=5)
        return "connected" if connected else "refused"
    except ValueError as exc:
        return "routed" if "No route" in str(exc) else repr(exc)

async def main():
    return {o: await connect(o) for o in ("https://evil.example", "https://baton.example.com")}

print(json.dumps(asyncio.run(main())))
"""
    result = python(code, production_env())
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {
        "https://evil.example": "refused",
        "https://baton.example.com": "routed",
    }
