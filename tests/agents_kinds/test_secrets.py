"""Secrets: agents read only allow-listed variables, and their values are never stored or logged.

A remote service may echo a token back in a successful answer, not only in an error; the step
output is shown to every viewer of the run. The echo servers here are real HTTP servers on
loopback; one test runs the agents on real worker processes and reads their log.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from orchestration import transitions
from orchestration.agents import secrets as agent_secrets
from orchestration.models import Agent, Attempt, Run, RunEvent, StepRun
from orchestration.spec import SpecError
from orchestration.status import ErrorClass, RunStatus
from tests.servers import FakeOpenAI, Reply, ScriptedServer
from tests.support import WorkerCluster, drive, load_workflow, wait_for

SECRET = "tok-5c9e1d7a-echoed"
OTHER = "other-8b2f44e1-secret"


class EchoServer(ScriptedServer):
    """Answers 200 with what it was sent, headers included: the careless service of the issue."""

    def respond(self, path: str, body: Any, reply: Reply) -> Reply:
        with self.lock:
            seen = self.requests[-1]
        token = seen.headers.get("authorization", "").removeprefix("Bearer ")
        return Reply(200, {"you_sent": {"headers": seen.headers, "body": body}, "echo": [token], token: len(token)})


@pytest.fixture
def echo(settings: Any) -> Iterator[EchoServer]:
    settings.BATON_HTTP_ALLOWED_HOSTS = "127.0.0.1"
    with EchoServer() as running:
        yield running


def document(agent: dict[str, Any], step_input: Any = None) -> str:
    return json.dumps(
        {
            "agents": [agent],
            "workflow": {
                "key": "wf",
                "name": "wf",
                "steps": [{"key": "call", "agent": agent["name"], "input": step_input or {"order": 42}}],
                "output": {"answer": "{{ steps.call.output }}"},
            },
        }
    )


def http_agent(url: str, header: str = "Bearer ${BATON_SECRET_TEST_TOKEN}") -> dict[str, Any]:
    return {"name": "hook", "kind": "http", "config": {"url": f"{url}/hook", "headers": {"Authorization": header}}, "retry": {"attempts": 1}}


def stored_text(run: Run) -> str:
    """Everything Baton recorded about the run, as one text to search."""
    run.refresh_from_db()
    parts = [json.dumps(run.output), run.error]
    for step in StepRun.objects.filter(run=run):
        parts += [json.dumps(step.output), json.dumps(step.input), step.error, json.dumps(step.usage)]
    for attempt in Attempt.objects.filter(step_run__run=run):
        parts += [attempt.error, attempt.traceback, json.dumps(attempt.usage)]
    for event in RunEvent.objects.filter(run=run):
        parts += [event.message, json.dumps(event.data)]
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# Which variables an agent may read


@pytest.mark.django_db
@pytest.mark.parametrize("variable", ["BATON_SECRET_KEY", "DATABASE_URL", "REDIS_URL", "HOME", "PATH"])
def test_importing_a_header_that_reads_a_variable_off_the_allow_list_is_refused(variable: str) -> None:
    with pytest.raises(SpecError) as caught:
        load_workflow(document(http_agent("https://echo.example.com", f"Bearer ${{{variable}}}")))
    assert caught.value.problems == [
        f"agent 'hook': field `config.headers.Authorization`: environment variable {variable} may not be "
        "read by agents (it is not on BATON_AGENT_SECRETS)"
    ]
    assert not Agent.objects.exists()


@pytest.mark.django_db
def test_importing_an_llm_agent_whose_key_variable_is_off_the_allow_list_is_refused() -> None:
    agent = {"name": "writer", "kind": "llm", "config": {"model": "m", "api_key_env": "BATON_SECRET_KEY"}}
    with pytest.raises(SpecError) as caught:
        load_workflow(document(agent))
    assert caught.value.problems == [
        "agent 'writer': field `config.api_key_env`: environment variable BATON_SECRET_KEY may not be read "
        "by agents (it is not on BATON_AGENT_SECRETS)"
    ]


@pytest.mark.django_db
def test_names_and_patterns_on_the_setting_are_allowed(settings: Any) -> None:
    settings.BATON_AGENT_SECRETS = ["BATON_SECRET_*", "CRM_TOKEN", "VENDOR_*_KEY"]
    header = "${BATON_SECRET_A} ${CRM_TOKEN} ${VENDOR_ACME_KEY}"
    load_workflow(document(http_agent("https://echo.example.com", header)))
    assert Agent.objects.get(name="hook").config["headers"]["Authorization"] == header
    assert not agent_secrets.allowed("CRM_TOKEN_2") and not agent_secrets.allowed("VENDOR_KEY")


def test_no_pattern_opens_baton_s_own_secrets(settings: Any) -> None:
    settings.BATON_AGENT_SECRETS = ["*"]
    assert agent_secrets.allowed("ANYTHING_ELSE")
    assert not [name for name in ("BATON_SECRET_KEY", "DATABASE_URL", "REDIS_URL") if agent_secrets.allowed(name)]


@pytest.mark.django_db
def test_a_stored_header_reading_a_variable_off_the_allow_list_fails_when_called_and_sends_nothing(
    echo: EchoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATON_SECRET_KEY", "django-key-that-must-stay-home")
    load_workflow(document(http_agent(echo.url)))
    # Changed behind the importer's and the admin's back (a shell, a data migration...).
    Agent.objects.filter(name="hook").update(
        config={"url": f"{echo.url}/hook", "headers": {"Authorization": "Bearer ${BATON_SECRET_KEY}"}}
    )
    run = drive(transitions.start_run(workflow="wf"))
    assert run.status == RunStatus.FAILED
    [attempt] = Attempt.objects.filter(step_run__run=run)
    assert attempt.error_class == ErrorClass.PERMANENT
    assert (
        "header 'Authorization': environment variable BATON_SECRET_KEY may not be read by agents "
        "(it is not on BATON_AGENT_SECRETS)"
    ) in attempt.error
    assert echo.requests == []
    assert "django-key-that-must-stay-home" not in stored_text(run)


@pytest.mark.django_db
def test_a_stored_llm_agent_reading_a_variable_off_the_allow_list_fails_when_called(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.BATON_HTTP_ALLOWED_HOSTS = "127.0.0.1"
    monkeypatch.setenv("HOME_TOKEN", "home-token-value")
    with FakeOpenAI() as model:
        agent = {"name": "writer", "kind": "llm", "config": {"model": "m", "base_url": model.base_url}}
        load_workflow(document(agent, "hello"))
        Agent.objects.filter(name="writer").update(config={**agent["config"], "api_key_env": "HOME_TOKEN"})
        run = drive(transitions.start_run(workflow="wf"))
        assert model.requests == []
    assert run.status == RunStatus.FAILED
    assert "the LLM agent is not configured: environment variable HOME_TOKEN may not be read by agents" in run.error


# ---------------------------------------------------------------------------------------------
# Values that come back are redacted before anything is stored


@pytest.mark.django_db
def test_a_secret_a_service_echoes_in_a_2xx_answer_is_redacted_from_the_output(
    echo: EchoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATON_SECRET_TEST_TOKEN", SECRET)
    load_workflow(document(http_agent(echo.url)))
    run = drive(transitions.start_run(workflow="wf"))
    assert run.status == RunStatus.SUCCEEDED
    [request] = echo.seen("/hook")
    assert request.headers["authorization"] == f"Bearer {SECRET}", "the service does get the token"
    output = StepRun.objects.get(run=run, step_key="call").output
    assert output["you_sent"]["headers"]["authorization"] == "Bearer [redacted]"
    assert output["echo"] == ["[redacted]"]
    assert output["[redacted]"] == len(SECRET), "a secret used as a key is redacted too"
    assert run.output == {"answer": output}
    assert SECRET not in stored_text(run)


@pytest.mark.django_db
def test_an_allowed_secret_an_agent_returns_raises_or_logs_is_redacted(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Any allow-listed value set on the worker, not only the ones the agent's config names.
    monkeypatch.setenv("BATON_SECRET_OTHER", OTHER)
    agent = {"name": "careless", "kind": "python", "config": {"callable": "tests.agents.basic:reveal"}}
    load_workflow(document(agent, {"variable": "BATON_SECRET_OTHER"}))
    run = drive(transitions.start_run(workflow="wf"))
    assert run.status == RunStatus.SUCCEEDED
    assert StepRun.objects.get(run=run, step_key="call").output == {
        "token": "[redacted]",
        "[redacted]": ["[redacted]", "Bearer [redacted]"],
    }
    assert OTHER not in stored_text(run)

    # The same agent, told to fail with the value in its error.
    load_workflow(document(agent, {"variable": "BATON_SECRET_OTHER", "fail": True}))
    failing = drive(transitions.start_run(workflow="wf"))
    assert failing.status == RunStatus.FAILED
    [attempt] = Attempt.objects.filter(step_run__run=failing)
    assert "PermanentError: the service refused token [redacted]" in attempt.error
    assert "the service refused token [redacted]" in attempt.traceback
    assert OTHER not in stored_text(failing)


def test_the_log_filter_redacts_messages_arguments_and_tracebacks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATON_SECRET_OTHER", OTHER)
    try:
        raise RuntimeError(f"refused {OTHER!r}")
    except RuntimeError:
        record = logging.LogRecord("baton.x", logging.ERROR, __file__, 1, "token %s in %r", (OTHER, {"t": OTHER}), sys.exc_info())
    assert agent_secrets.RedactSecrets().filter(record)
    text = logging.Formatter().format(record)
    assert OTHER not in text
    assert "token [redacted] in {'t': '[redacted]'}" in text and "RuntimeError: refused '[redacted]'" in text


@pytest.mark.cluster
@pytest.mark.django_db(transaction=True)
def test_on_real_workers_an_echoed_or_logged_secret_is_stored_nowhere_and_logged_nowhere(echo: EchoServer) -> None:
    agents = [
        http_agent(echo.url),
        {"name": "careless", "kind": "python", "config": {"callable": "tests.agents.basic:reveal"}},
    ]
    load_workflow(
        json.dumps(
            {
                "agents": agents,
                "workflow": {
                    "key": "wf",
                    "name": "wf",
                    "steps": [
                        {"key": "call", "agent": "hook", "input": {"order": 42}},
                        {"key": "tell", "agent": "careless", "input": {"variable": "BATON_SECRET_TEST_TOKEN"}},
                    ],
                },
            }
        )
    )
    # The secret exists only in the workers' environment, as in a deployment.
    env = {"BATON_SECRET_TEST_TOKEN": SECRET, "BATON_HTTP_ALLOWED_HOSTS": "127.0.0.1"}
    with WorkerCluster(workers=1, env=env) as cluster:
        run = transitions.start_run(workflow="wf")
        wait_for(lambda: Run.objects.get(pk=run.pk).is_final, timeout=60, message=f"the run to finish\n{cluster.log()}")
        log = cluster.log()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert echo.seen("/hook")[0].headers["authorization"] == f"Bearer {SECRET}"
    assert StepRun.objects.get(run=run, step_key="call").output["you_sent"]["headers"]["authorization"] == "Bearer [redacted]"
    assert "calling the service with token [redacted]" in log
    assert SECRET not in stored_text(run)
    assert SECRET not in log
