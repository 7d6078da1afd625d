"""The `http` agent kind, against a real scripted HTTP server on loopback."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import time_machine
from django.utils import timezone

from orchestration import transitions
from orchestration.models import Agent, Attempt, Run, RunEvent, StepRun
from orchestration.outbound import MAX_RESPONSE_BYTES
from orchestration.status import ErrorClass, EventKind, RunStatus, StepStatus
from orchestration.tasks import execute_step
from tests.servers import Reply, ScriptedServer, refusing_port
from tests.support import drive, load_workflow

pytestmark = pytest.mark.django_db

NO_JITTER = {"attempts": 3, "backoff": "1s", "max_backoff": "1m", "jitter": False}
SECRET = "s3cr3t-token-7f2a9c"


@pytest.fixture
def server(settings: Any) -> Iterator[ScriptedServer]:
    settings.BATON_HTTP_ALLOWED_HOSTS = "127.0.0.1"
    with ScriptedServer() as running:
        yield running


def install(server: Any, *, config: dict[str, Any] | None = None, retry: dict[str, Any] | None = None, step: dict[str, Any] | None = None, inputs: dict[str, Any] | None = None) -> None:
    """One http agent posting to {server}/hook, and a workflow whose step `call` uses it."""
    agent = {"name": "hook", "kind": "http", "config": {"url": f"{server.url}/hook", **(config or {})}, "retry": retry or NO_JITTER}
    workflow: dict[str, Any] = {
        "key": "wf",
        "name": "wf",
        "steps": [{"key": "call", "agent": "hook", "input": {"order": 42}, **(step or {})}],
    }
    if inputs:
        workflow["inputs"] = inputs
    # JSON is YAML: the document is built as data rather than as indented text.
    load_workflow(json.dumps({"agents": [agent], "workflow": workflow}))


def call_step(run: Run) -> StepRun:
    return StepRun.objects.get(run=run, step_key="call", map_index__isnull=True)


def attempts_of(run: Run) -> list[Attempt]:
    return list(Attempt.objects.filter(step_run__run=run).order_by("step_run_id", "number"))


def retry_delays(run: Run) -> list[float]:
    events = RunEvent.objects.filter(run=run, kind=EventKind.STEP_RETRYING).order_by("id")
    return [e.data["delay"] for e in events]


def test_the_json_answer_is_the_step_output(server: ScriptedServer) -> None:
    # The server waits 150 ms before answering: the recorded latency must include that wait.
    server.script("/hook", Reply(200, {"status": "shipped", "tracking": "ZX81"}, delay=0.15))
    install(server)
    run = drive(transitions.start_run(workflow="wf"))
    assert run.status == RunStatus.SUCCEEDED
    assert call_step(run).output == {"status": "shipped", "tracking": "ZX81"}
    [request] = server.seen("/hook")
    assert request.method == "POST"
    assert request.body == {"order": 42}
    assert request.headers["content-type"] == "application/json"
    usage = call_step(run).usage
    assert usage["http_status"] == 200
    assert 150 <= usage["latency_ms"] < 150 + 3000, usage


def test_a_503_is_retried_with_growing_delays_until_the_service_answers(server: ScriptedServer) -> None:
    server.script("/hook", Reply(503, {"error": "overloaded"}), Reply(503, {"error": "overloaded"}), Reply(200, {"ok": True}))
    install(server)
    with time_machine.travel(timezone.now(), tick=False) as clock:
        run = drive(transitions.start_run(workflow="wf"), clock=clock)
    assert run.status == RunStatus.SUCCEEDED
    assert call_step(run).output == {"ok": True}
    assert retry_delays(run) == [1.0, 2.0]
    first, second, third = attempts_of(run)
    assert [first.error_class, second.error_class, third.status] == [ErrorClass.TRANSIENT, ErrorClass.TRANSIENT, "succeeded"]
    assert "HTTP 503" in first.error
    assert "overloaded" in first.traceback, "the response body is kept with the attempt"
    assert len(server.seen("/hook")) == 3


LINE = re.compile(r"^POST (?P<url>\S+) → (?P<result>.+?)(, (?P<bytes>[\d,]+) bytes)?, (?P<ms>\d+) ms$")


def summaries(attempt: Attempt) -> list[dict[str, str]]:
    found = []
    for line in attempt.log:
        assert (line["source"], line["level"]) in {("http", "INFO"), ("http", "WARNING")}, line
        match = LINE.match(line["text"])
        assert match, line["text"]
        found.append({"level": line["level"], **{k: v for k, v in match.groupdict().items() if v is not None}})
    return found


def test_each_attempt_logs_one_line_per_request_without_query_values_headers_or_bodies(
    server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATON_SECRET_TEST_TOKEN", SECRET)
    server.script("/hook", Reply(503, {"error": f"{SECRET} overloaded"}), Reply(200, {"status": "shipped"}, delay=0.05))
    install(
        server,
        config={"url": f"{server.url}/hook?api_key=q-{SECRET}&page=2", "headers": {"Authorization": "Bearer ${BATON_SECRET_TEST_TOKEN}"}},
    )
    with time_machine.travel(timezone.now(), tick=False) as clock:
        run = drive(transitions.start_run(workflow="wf"), clock=clock)
    assert run.status == RunStatus.SUCCEEDED
    first, second = attempts_of(run)
    url = f"{server.url}/hook?api_key=…&page=…"
    [failed] = summaries(first)
    assert {k: failed[k] for k in ("level", "url", "result", "bytes")} == {
        "level": "WARNING", "url": url, "result": "HTTP 503", "bytes": str(len(json.dumps({"error": f"{SECRET} overloaded"}))),
    }
    [answered] = summaries(second)
    assert {k: answered[k] for k in ("level", "url", "result")} == {"level": "INFO", "url": url, "result": "HTTP 200"}
    assert int(answered["ms"]) >= 50
    stored = json.dumps([first.log, second.log])
    assert SECRET not in stored and "Bearer" not in stored and "shipped" not in stored and "overloaded" not in stored


def test_an_unreachable_service_is_logged_as_such_on_the_attempt(settings: Any) -> None:
    settings.BATON_HTTP_ALLOWED_HOSTS = "127.0.0.1"
    with refusing_port() as url:
        install(SimpleNamespace(url=url), retry={"attempts": 1})
        run = drive(transitions.start_run(workflow="wf"))
    [attempt] = attempts_of(run)
    [line] = summaries(attempt)
    assert (line["level"], line["url"], line["result"]) == ("WARNING", f"{url}/hook", "unreachable")


@pytest.mark.parametrize("status", [400, 404])
def test_a_client_error_fails_at_once_with_the_response_body_in_the_error(server: ScriptedServer, status: int) -> None:
    server.script("/hook", Reply(status, {"error": "no such order 42"}))
    install(server)
    with time_machine.travel(timezone.now(), tick=False) as clock:
        run = drive(transitions.start_run(workflow="wf"), clock=clock)
    assert run.status == RunStatus.FAILED
    [attempt] = attempts_of(run)
    assert attempt.error_class == ErrorClass.PERMANENT
    assert f"HTTP {status}" in attempt.error and "no such order 42" in attempt.error
    assert "no such order 42" in run.error
    assert len(server.seen("/hook")) == 1


def test_a_slow_answer_past_the_timeout_counts_as_a_timeout_and_is_retried(server: ScriptedServer) -> None:
    server.script("/hook", Reply(200, {"late": True}, delay=1.0), Reply(200, {"ok": True}))
    install(server, config={"timeout": "300ms"})
    with time_machine.travel(timezone.now(), tick=False) as clock:
        run = drive(transitions.start_run(workflow="wf"), clock=clock)
    assert run.status == RunStatus.SUCCEEDED
    assert call_step(run).output == {"ok": True}
    first, second = attempts_of(run)
    assert first.error_class == ErrorClass.TIMEOUT
    assert "did not answer within 0.3s" in first.error
    assert second.status == "succeeded"


def test_a_429_retry_after_is_honoured_even_when_the_backoff_is_shorter(server: ScriptedServer) -> None:
    server.script("/hook", Reply(429, {"error": "slow down"}, headers={"Retry-After": "7"}), Reply(200, {"ok": True}))
    install(server, retry={**NO_JITTER, "backoff": "1s"})
    with time_machine.travel(timezone.now(), tick=False) as clock:
        run = transitions.start_run(workflow="wf")
        execute_step(call_step(run).pk)
        waiting = call_step(run)
        assert waiting.status == StepStatus.RETRYING
        assert (waiting.next_attempt_at - timezone.now()).total_seconds() >= 7
        run = drive(run, clock=clock)
    assert run.status == RunStatus.SUCCEEDED
    assert retry_delays(run) == [7.0]
    first, second = server.seen("/hook")
    assert second.at - first.at >= 7


def test_the_idempotency_key_is_the_same_across_retries_of_a_step(server: ScriptedServer) -> None:
    server.script("/hook", Reply(503, {}), Reply(200, {"ok": True}))
    install(server)
    with time_machine.travel(timezone.now(), tick=False) as clock:
        run = drive(transitions.start_run(workflow="wf"), clock=clock)
    keys = [r.headers["idempotency-key"] for r in server.seen("/hook")]
    assert keys == [f"baton-{run.pk}-call-1--"] * 2


def test_each_for_each_item_has_its_own_idempotency_key(server: ScriptedServer) -> None:
    server.script("/hook", Reply(200, {"ok": True}))
    install(server, step={"for_each": "input.orders", "input": {"order": "{{ item }}"}}, inputs={"orders": {"type": "list", "default": [7, 8, 9]}})
    run = drive(transitions.start_run(workflow="wf"))
    assert run.status == RunStatus.SUCCEEDED
    keys = {r.body["order"]: r.headers["idempotency-key"] for r in server.seen("/hook")}
    assert keys == {7: f"baton-{run.pk}-call-1-0", 8: f"baton-{run.pk}-call-1-1", 9: f"baton-{run.pk}-call-1-2"}


def test_a_secret_header_is_sent_but_never_stored_shown_or_logged(server: ScriptedServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("BATON_SECRET_TEST_TOKEN", SECRET)
    caplog.set_level(logging.DEBUG)
    # A careless service that echoes the rejected token back in its error bodies.
    server.script(
        "/hook",
        Reply(503, {"error": f"token Bearer {SECRET} is rate limited"}),
        Reply(401, {"error": f"token Bearer {SECRET} was revoked"}),
    )
    install(server, config={"headers": {"Authorization": "Bearer ${BATON_SECRET_TEST_TOKEN}"}})
    with time_machine.travel(timezone.now(), tick=False) as clock:
        run = drive(transitions.start_run(workflow="wf"), clock=clock)
    assert [r.headers["authorization"] for r in server.seen("/hook")] == [f"Bearer {SECRET}"] * 2
    assert run.status == RunStatus.FAILED
    assert "was revoked" in run.error and "[redacted]" in run.error
    assert Agent.objects.get(name="hook").config["headers"] == {"Authorization": "Bearer ${BATON_SECRET_TEST_TOKEN}"}
    stored = [
        json.dumps(Agent.objects.get(name="hook").config),
        run.error,
        *StepRun.objects.filter(run=run).values_list("error", flat=True),
        *[f"{a.error} {a.traceback} {json.dumps(a.usage)}" for a in attempts_of(run)],
        *[f"{e.message} {json.dumps(e.data)}" for e in RunEvent.objects.filter(run=run)],
        caplog.text,
    ]
    assert not [text for text in stored if SECRET in text]


def test_a_missing_secret_fails_permanently_naming_the_variable(server: ScriptedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BATON_SECRET_TEST_MISSING", raising=False)
    install(server, config={"headers": {"Authorization": "Bearer ${BATON_SECRET_TEST_MISSING}"}})
    run = drive(transitions.start_run(workflow="wf"))
    assert run.status == RunStatus.FAILED
    [attempt] = attempts_of(run)
    assert attempt.error_class == ErrorClass.PERMANENT
    assert "needs environment variable BATON_SECRET_TEST_MISSING, which is not set" in run.error
    assert server.requests == []


def test_an_unreachable_service_is_transient_and_retried(settings: Any) -> None:
    settings.BATON_HTTP_ALLOWED_HOSTS = "127.0.0.1"
    with refusing_port() as url:
        install(SimpleNamespace(url=url), retry={**NO_JITTER, "attempts": 2})
        with time_machine.travel(timezone.now(), tick=False) as clock:
            run = drive(transitions.start_run(workflow="wf"), clock=clock)
    assert run.status == RunStatus.FAILED
    first, second = attempts_of(run)
    assert first.error_class == second.error_class == ErrorClass.TRANSIENT
    assert "cannot reach 127.0.0.1: [Errno 111] Connection refused" in run.error and "after 2 attempts" in run.error


def test_a_redirect_is_refused_and_its_target_never_requested(server: ScriptedServer) -> None:
    server.script("/hook", Reply(302, {}, headers={"Location": f"{server.url}/internal"}))
    server.script("/internal", Reply(200, {"secret": "internal data"}))
    install(server)
    run = drive(transitions.start_run(workflow="wf"))
    assert run.status == RunStatus.FAILED
    [attempt] = attempts_of(run)
    assert attempt.error_class == ErrorClass.PERMANENT
    assert f"HTTP 302 redirect to {server.url}/internal refused: redirects are not followed" in run.error
    assert server.seen("/internal") == []


def test_an_answer_that_is_not_json_fails_permanently(server: ScriptedServer) -> None:
    server.script("/hook", Reply(200, raw=b"<html>maintenance</html>"))
    install(server)
    run = drive(transitions.start_run(workflow="wf"))
    assert run.status == RunStatus.FAILED
    assert "is not JSON: <html>maintenance</html>" in run.error


def test_an_answer_too_large_to_hold_fails_permanently(server: ScriptedServer) -> None:
    server.script("/hook", Reply(200, raw=b"x" * (MAX_RESPONSE_BYTES + 1)))
    install(server)
    run = drive(transitions.start_run(workflow="wf"))
    assert run.status == RunStatus.FAILED
    [attempt] = attempts_of(run)
    assert attempt.error_class == ErrorClass.PERMANENT and "larger than 10 MiB" in attempt.error


def test_a_host_off_the_allow_list_fails_permanently_without_a_request(server: ScriptedServer, settings: Any) -> None:
    settings.BATON_HTTP_ALLOWED_HOSTS = ""
    install(server)
    run = drive(transitions.start_run(workflow="wf"))
    assert run.status == RunStatus.FAILED
    assert "request refused: host '127.0.0.1' is not on BATON_HTTP_ALLOWED_HOSTS" in run.error
    assert server.requests == []


def test_an_agent_aimed_at_the_broker_port_of_a_listed_loopback_address_fails_and_sends_nothing(
    server: ScriptedServer, settings: Any
) -> None:
    # The attack: 127.0.0.1 is listed for a local service; the URL names Redis instead.
    port = int(server.httpd.server_address[1])
    settings.REDIS_URL = f"redis://127.0.0.1:{port}/0"
    install(server)
    run = drive(transitions.start_run(workflow="wf"))
    assert run.status == RunStatus.FAILED
    [attempt] = attempts_of(run)
    assert attempt.error_class == ErrorClass.PERMANENT
    assert (
        f"request refused: host '127.0.0.1' port {port} is refused: it is the port of Baton's broker (REDIS_URL)"
    ) in attempt.error
    assert server.requests == []
