"""The `llm` agent kind through the official openai SDK, against FakeOpenAI on loopback."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import time_machine
from django.utils import timezone

from orchestration import transitions
from orchestration.models import Attempt, Run, RunEvent, StepRun
from orchestration.status import ErrorClass, EventKind, RunStatus
from orchestration.usage import run_usage
from tests.servers import FakeOpenAI, Reply, completion, refusing_port
from tests.support import drive, load_workflow

pytestmark = pytest.mark.django_db

KEY = "sk-test-91c0ffee"
NO_JITTER = {"attempts": 3, "backoff": "1s", "max_backoff": "1m", "jitter": False}


@pytest.fixture
def model(settings: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAI]:
    settings.BATON_HTTP_ALLOWED_HOSTS = "127.0.0.1"
    monkeypatch.setenv("BATON_SECRET_TEST_LLM_KEY", KEY)
    with FakeOpenAI() as running:
        yield running


def llm_agent(model: Any, name: str = "writer", **config: Any) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "llm",
        "config": {"base_url": model.base_url, "model": "fake-model", "api_key_env": "BATON_SECRET_TEST_LLM_KEY", **config},
        "retry": NO_JITTER,
    }


def install(model: Any, *, input: Any = "tides", **config: Any) -> None:
    """One llm agent and a workflow whose only step, `write`, calls it."""
    document = {
        "agents": [llm_agent(model, **config)],
        "workflow": {"key": "wf", "name": "wf", "steps": [{"key": "write", "agent": "writer", "input": input}]},
    }
    load_workflow(json.dumps(document))


def write_step(run: Run) -> StepRun:
    return StepRun.objects.get(run=run, step_key="write")


def attempts_of(run: Run) -> list[Attempt]:
    return list(Attempt.objects.filter(step_run__run=run).order_by("step_run_id", "number"))


def drive_with_clock(run: Run) -> Run:
    with time_machine.travel(timezone.now(), tick=False) as clock:
        return drive(run, clock=clock)


def test_the_answer_text_is_the_output_and_the_prompt_is_rendered_from_the_input(model: FakeOpenAI) -> None:
    install(model, input={"topic": "tides"}, system="Answer in one line.", prompt="Write about {{ input.topic }}", temperature=0.2, max_tokens=50)
    run = drive(transitions.start_run(workflow="wf"))
    assert run.status == RunStatus.SUCCEEDED
    assert write_step(run).output == "echo: Write about tides"
    [request] = model.seen(model.PATH)
    assert request.body["model"] == "fake-model"
    assert request.body["messages"] == [
        {"role": "system", "content": "Answer in one line."},
        {"role": "user", "content": "Write about tides"},
    ]
    assert request.body["temperature"] == 0.2 and request.body["max_tokens"] == 50
    assert request.headers["authorization"] == f"Bearer {KEY}"


@pytest.mark.parametrize(
    "answer",
    ['{"queue": "billing", "urgent": true}', '```json\n{"queue": "billing", "urgent": true}\n```', '```\n{"queue": "billing", "urgent": true}\n```'],
    ids=["plain", "json-fence", "bare-fence"],
)
def test_a_json_response_is_parsed_fenced_or_not(model: FakeOpenAI, answer: str) -> None:
    model.script(model.PATH, Reply(200, completion(answer)))
    install(model, response="json")
    run = drive(transitions.start_run(workflow="wf"))
    assert write_step(run).output == {"queue": "billing", "urgent": True}


def test_an_answer_that_is_not_valid_json_fails_permanently_saying_so(model: FakeOpenAI) -> None:
    model.script(model.PATH, Reply(200, completion("Sure! The queue is billing.")))
    install(model, response="json")
    run = drive_with_clock(transitions.start_run(workflow="wf"))
    assert run.status == RunStatus.FAILED
    [attempt] = attempts_of(run)
    assert attempt.error_class == ErrorClass.PERMANENT
    assert "the model's answer is not valid JSON" in run.error and "Sure! The queue is billing." in run.error


def test_usage_latency_and_cost_are_recorded_on_the_attempt_and_the_step(model: FakeOpenAI) -> None:
    model.script(model.PATH, Reply(200, completion("done", prompt_tokens=1000, completion_tokens=200)))
    install(model, prices={"prompt": 0.5, "completion": 1.5})
    run = drive(transitions.start_run(workflow="wf"))
    [attempt] = attempts_of(run)
    usage = attempt.usage
    assert usage["prompt_tokens"] == 1000 and usage["completion_tokens"] == 200 and usage["total_tokens"] == 1200
    assert usage["cost"] == pytest.approx(0.5 + 0.3)
    assert usage["model"] == "fake-model" and usage["latency_ms"] > 0
    assert write_step(run).usage == usage


def test_run_usage_sums_every_step_and_sub_workflow(model: FakeOpenAI, django_assert_num_queries: Any) -> None:
    model.script(model.PATH, Reply(200, completion("ok", prompt_tokens=100, completion_tokens=10)))
    agent = llm_agent(model, prices={"prompt": 1.0, "completion": 2.0})
    load_workflow(json.dumps({"agents": [agent], "workflow": {"key": "child", "name": "child", "steps": [{"key": "c", "agent": "writer"}]}}))
    steps = [{"key": "a", "agent": "writer", "input": "x"}, {"key": "b", "agent": "writer", "after": ["a"], "input": "y"}, {"key": "sub", "workflow": "child", "after": ["b"]}]
    load_workflow(json.dumps({"workflow": {"key": "parent", "name": "parent", "steps": steps}}))
    run = drive(transitions.start_run(workflow="parent"))
    assert run.status == RunStatus.SUCCEEDED
    assert len(model.seen(model.PATH)) == 3
    with django_assert_num_queries(3):  # the run tree, level by level, then one query for the attempts
        totals = run_usage(run)
    assert totals == {"prompt_tokens": 300, "completion_tokens": 30, "total_tokens": 330, "cost": pytest.approx(0.36)}


def test_run_usage_of_a_run_without_llm_calls_is_all_zero(model: FakeOpenAI) -> None:
    install(model)
    run = transitions.start_run(workflow="wf")
    assert run_usage(run) == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, "cost": 0.0}


def test_a_prompt_over_the_context_window_fails_before_any_request_saying_by_how_much(model: FakeOpenAI) -> None:
    install(model, input="x" * 400, context_window=50, max_tokens=20)
    run = drive(transitions.start_run(workflow="wf"))
    assert run.status == RunStatus.FAILED
    assert attempts_of(run)[0].error_class == ErrorClass.PERMANENT
    assert "about 100 tokens plus 20 reserved for the answer, 70 more than the context window of 50" in run.error
    assert model.requests == []


def test_a_500_is_transient_and_retried(model: FakeOpenAI) -> None:
    model.script(model.PATH, Reply(500, {"error": {"message": "upstream exploded"}}), Reply(200, completion("fine now")))
    install(model)
    run = drive_with_clock(transitions.start_run(workflow="wf"))
    assert run.status == RunStatus.SUCCEEDED and write_step(run).output == "fine now"
    first, second = attempts_of(run)
    assert first.error_class == ErrorClass.TRANSIENT and "HTTP 500" in first.error
    assert "upstream exploded" in first.traceback
    assert second.status == "succeeded"


def test_each_call_logs_the_model_its_status_tokens_and_time_but_never_the_prompt_or_the_key(model: FakeOpenAI) -> None:
    model.script(
        model.PATH,
        Reply(500, {"error": {"message": f"upstream exploded near {KEY}"}}),
        Reply(200, completion("the secret answer", prompt_tokens=1200, completion_tokens=34)),
    )
    install(model, prompt="a private prompt about {{ input }}")
    run = drive_with_clock(transitions.start_run(workflow="wf"))
    assert run.status == RunStatus.SUCCEEDED
    first, second = attempts_of(run)
    where = f"model fake-model at {model.base_url}"
    [failed] = first.log
    assert (failed["level"], failed["source"]) == ("WARNING", "llm")
    assert re.fullmatch(rf"{re.escape(where)} → HTTP 500, \d+ ms", failed["text"]), failed["text"]
    [answered] = second.log
    assert (answered["level"], answered["source"]) == ("INFO", "llm")
    assert re.fullmatch(
        rf"{re.escape(where)} → HTTP 200, 1,234 tokens \(1,200 prompt \+ 34 completion\), \d+ ms", answered["text"]
    ), answered["text"]
    stored = json.dumps([first.log, second.log])
    assert KEY not in stored and "private prompt" not in stored and "secret answer" not in stored


def test_an_unreachable_model_is_transient(settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    settings.BATON_HTTP_ALLOWED_HOSTS = "127.0.0.1"
    monkeypatch.setenv("BATON_SECRET_TEST_LLM_KEY", KEY)
    with refusing_port() as url:
        install(SimpleNamespace(base_url=f"{url}/v1"))
        run = drive_with_clock(transitions.start_run(workflow="wf"))
    assert run.status == RunStatus.FAILED
    assert [a.error_class for a in attempts_of(run)] == [ErrorClass.TRANSIENT] * 3
    assert "cannot reach 127.0.0.1" in run.error and "after 3 attempts" in run.error


def test_a_429_retry_after_is_honoured(model: FakeOpenAI) -> None:
    model.script(
        model.PATH,
        Reply(429, {"error": {"message": "rate limited"}}, headers={"Retry-After": "7"}),
        Reply(200, completion("after the pause")),
    )
    install(model)
    run = drive_with_clock(transitions.start_run(workflow="wf"))
    assert run.status == RunStatus.SUCCEEDED
    delays = [e.data["delay"] for e in RunEvent.objects.filter(run=run, kind=EventKind.STEP_RETRYING)]
    assert delays == [7.0]
    first, second = model.seen(model.PATH)
    assert second.at - first.at >= 7


def test_a_401_fails_permanently_without_showing_the_key(model: FakeOpenAI) -> None:
    model.script(model.PATH, Reply(401, {"error": {"message": f"Incorrect API key provided: {KEY}"}}))
    install(model)
    run = drive_with_clock(transitions.start_run(workflow="wf"))
    assert run.status == RunStatus.FAILED
    [attempt] = attempts_of(run)
    assert attempt.error_class == ErrorClass.PERMANENT and "HTTP 401" in attempt.error
    assert "Incorrect API key provided: [redacted]" in run.error
    assert KEY not in f"{run.error} {attempt.error} {attempt.traceback}"


def test_a_missing_api_key_fails_permanently_naming_the_variable(model: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BATON_SECRET_TEST_LLM_KEY")
    install(model)
    run = drive(transitions.start_run(workflow="wf"))
    assert run.status == RunStatus.FAILED
    assert "the LLM agent is not configured: environment variable BATON_SECRET_TEST_LLM_KEY is not set" in run.error
    assert model.requests == []


def test_the_idempotency_key_is_sent_and_kept_across_retries(model: FakeOpenAI) -> None:
    model.script(model.PATH, Reply(503, {"error": {"message": "busy"}}), Reply(200, completion("ok")))
    install(model)
    run = drive_with_clock(transitions.start_run(workflow="wf"))
    assert [r.headers["idempotency-key"] for r in model.seen(model.PATH)] == [f"baton-{run.pk}-write-1--"] * 2


def test_a_slow_reply_past_the_timeout_counts_as_a_timeout(model: FakeOpenAI) -> None:
    model.script(model.PATH, Reply(200, completion("too late"), delay=1.0), Reply(200, completion("in time")))
    install(model, timeout="300ms")
    run = drive_with_clock(transitions.start_run(workflow="wf"))
    assert run.status == RunStatus.SUCCEEDED and write_step(run).output == "in time"
    first, _ = attempts_of(run)
    assert first.error_class == ErrorClass.TIMEOUT and "did not answer in time" in first.error


def test_a_model_endpoint_off_the_allow_list_is_refused_without_a_request(model: FakeOpenAI, settings: Any) -> None:
    settings.BATON_HTTP_ALLOWED_HOSTS = ""
    install(model)
    run = drive(transitions.start_run(workflow="wf"))
    assert run.status == RunStatus.FAILED
    assert "request refused: host '127.0.0.1' is not on BATON_HTTP_ALLOWED_HOSTS" in run.error
    assert model.requests == []


def test_a_redirect_from_the_model_endpoint_is_refused_and_never_followed(model: FakeOpenAI) -> None:
    model.script(model.PATH, Reply(307, {}, headers={"Location": f"{model.url}/internal"}))
    model.script("/internal", Reply(200, completion("internal data")))
    install(model)
    run = drive(transitions.start_run(workflow="wf"))
    assert run.status == RunStatus.FAILED
    assert attempts_of(run)[0].error_class == ErrorClass.PERMANENT
    assert f"redirect from the model at {model.base_url} to {model.url}/internal refused" in run.error
    assert model.seen("/internal") == []
