"""/healthz: database, broker and the ticker's last pass; 200 when all answer, 503 naming what does not."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.db import connection
from django.test import Client
from django.utils import timezone

from orchestration import ticker
from orchestration.models import TickerPass
from tests.support import free_port

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_pass() -> Any:
    ticker.forget_recorded_pass()
    yield
    ticker.forget_recorded_pass()


def health(client: Client) -> tuple[int, dict[str, Any]]:
    response = client.get("/healthz")
    assert response["Content-Type"] == "application/json"
    return response.status_code, json.loads(response.content)


def test_it_is_healthy_when_the_database_and_broker_answer_and_the_ticker_just_passed(client: Client, settings: Any) -> None:
    ticker.tick()
    status, body = health(client)
    assert status == 200, body
    assert body["status"] == "ok" and body["failing"] == []
    assert body["checks"]["database"] == {"ok": True, "detail": "answers", "vendor": connection.vendor}
    # The broker of this set-up: Redis when REDIS_URL is set (the scale-out pass), else the ORM's table.
    assert body["checks"]["broker"]["kind"] == ("redis" if settings.REDIS_URL else "orm")
    assert body["checks"]["ticker"]["ok"] and body["checks"]["ticker"]["last_pass_age_seconds"] < 5


def test_it_needs_no_login_and_sends_no_cookie(client: Client) -> None:
    ticker.tick()
    response = client.get("/healthz")
    assert response.status_code == 200 and not response.cookies


def test_a_broker_that_does_not_answer_is_a_503_naming_the_broker_without_its_password(client: Client, settings: Any) -> None:
    ticker.tick()
    # A port nobody listens on, and a password that must not leak into the answer.
    settings.REDIS_URL = f"redis://:hunter2-secret@127.0.0.1:{free_port()}/0"
    response = client.get("/healthz")
    body = json.loads(response.content)
    assert response.status_code == 503
    assert body["status"] == "failing" and body["failing"] == ["broker"]
    assert body["checks"]["broker"]["ok"] is False and "unreachable" in body["checks"]["broker"]["detail"]
    assert "hunter2" not in response.content.decode() and str(settings.REDIS_URL) not in response.content.decode()


def test_a_ticker_that_never_passed_is_failing(client: Client) -> None:
    TickerPass.objects.all().delete()
    status, body = health(client)
    assert status == 503 and body["failing"] == ["ticker"]
    assert "no pass recorded" in body["checks"]["ticker"]["detail"]


def test_a_ticker_that_stopped_passing_is_failing_once_its_last_pass_is_too_old(client: Client, settings: Any) -> None:
    settings.BATON_HEALTH_TICKER_SECONDS = 30
    ticker.tick()
    with time_machine.travel(timezone.now() + timedelta(seconds=20), tick=False):
        assert health(client)[0] == 200
    with time_machine.travel(timezone.now() + timedelta(seconds=45), tick=False):
        status, body = health(client)
    assert status == 503 and body["failing"] == ["ticker"]
    assert body["checks"]["ticker"]["last_pass_age_seconds"] >= 45


def test_the_ticker_records_a_pass_at_most_every_few_seconds(django_assert_num_queries: Any) -> None:
    now = timezone.now()
    ticker.record_pass(now)
    first = TickerPass.objects.get().passed_at
    with django_assert_num_queries(0):
        ticker.record_pass(now + timedelta(seconds=1))
    ticker.record_pass(now + timedelta(seconds=ticker.PASS_RECORD_SECONDS + 1))
    assert TickerPass.objects.count() == 1
    assert TickerPass.objects.get().passed_at == first + timedelta(seconds=ticker.PASS_RECORD_SECONDS + 1)


def test_a_database_that_does_not_answer_is_a_503_naming_it(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    from django.db import OperationalError

    from orchestration.observability import health as checks

    class Gone:
        vendor = connection.vendor

        def cursor(self) -> Any:
            raise OperationalError("connection to server at 10.0.0.5, user baton, password s3cret failed")

    ticker.tick()
    monkeypatch.setattr(checks, "connection", Gone())
    response = client.get("/healthz")
    body = json.loads(response.content)
    assert response.status_code == 503 and body["failing"] == ["database", "ticker"]
    assert body["checks"]["database"]["detail"] == "unreachable (OperationalError)"
    assert "s3cret" not in response.content.decode() and "10.0.0.5" not in response.content.decode()
