"""/metrics: Prometheus text from the database, behind a bearer token, checked by promtool."""

from __future__ import annotations

import os
import shutil
import subprocess
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from approvals.models import Item, ItemKind
from orchestration import transitions
from orchestration.models import Agent, AgentHealth, Attempt, CircuitState, Run, StepRun, WorkflowVersion
from orchestration.observability import metrics
from orchestration.status import AttemptStatus, RunStatus, StepStatus
from tests.support import WorkerCluster, load_workflow, wait_for

pytestmark = pytest.mark.django_db

TOKEN = "scrape-secret-1234"

CHATTY = """
agents:
  - {name: chatty, kind: python, config: {callable: "tests.agents.basic:chatty"}}
workflow:
  key: chatter
  name: Chatter
  inputs:
    items: {type: list, default: [1, 2, 3]}
  steps:
    - key: talk
      agent: chatty
      for_each: "{{ input.items }}"
      input: {topic: "item {{ item }}", tokens: 100, cost: 0.5}
"""


@pytest.fixture
def token(settings: Any) -> str:
    settings.BATON_METRICS_TOKEN = TOKEN
    return TOKEN


def scrape(client: Client) -> str:
    response = client.get(reverse("metrics"), HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    return response.content.decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_metrics_are_not_there_at_all_without_a_token_configured(client: Client, settings: Any) -> None:
    settings.BATON_METRICS_TOKEN = ""
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer anything").status_code == 404


def test_a_scrape_without_a_token_is_401_and_with_a_wrong_one_403(client: Client, token: str) -> None:
    missing = client.get("/metrics")
    assert missing.status_code == 401 and missing["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/metrics", HTTP_AUTHORIZATION="Basic " + TOKEN).status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong-token").status_code == 403
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer " + TOKEN[:-1]).status_code == 403
    assert TOKEN not in client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong-token").content.decode()


def test_every_family_is_named_baton_and_promtool_accepts_the_output(client: Client, token: str, digest: WorkflowVersion) -> None:
    run = transitions.start_run(workflow=digest.workflow, version=digest, input={"topic": "tides"})
    Item.objects.create(kind=ItemKind.APPROVAL, step_run=run.steps.first(), run=run, title="ok?", deadline=timezone.now() - timedelta(minutes=1))
    text = scrape(client)
    names = {family.name for family in text_string_to_metric_families(text)}
    assert names and all(name.startswith("baton_") for name in names), names
    assert {
        "baton_runs",
        "baton_steps",
        "baton_step_attempts",
        "baton_step_duration_seconds",
        "baton_queue_depth",
        "baton_queue_oldest_age_seconds",
        "baton_approvals_pending",
        "baton_approvals_overdue",
        "baton_circuits_open",
        "baton_tokens",
        "baton_cost",
        "baton_alerts_firing",
    } <= names
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool is missing under CI=true: `make promtool` installs Debian's prometheus package")
        pytest.skip("promtool is not installed (make promtool installs it: apt-get install prometheus)")
    checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_figures_are_the_databases(client: Client, token: str, digest: WorkflowVersion) -> None:
    now = timezone.now()
    for status in (RunStatus.SUCCEEDED, RunStatus.SUCCEEDED, RunStatus.FAILED):
        Run.objects.create(workflow=digest.workflow, version=digest, status=status, input={}, finished_at=now)
    running = Run.objects.create(workflow=digest.workflow, version=digest, input={})
    queued = StepRun.objects.create(run=running, step_key="research", status=StepStatus.QUEUED, queued_at=now - timedelta(seconds=90))
    StepRun.objects.create(run=running, step_key="publish", status=StepStatus.RUNNING)
    done = StepRun.objects.create(run=running, step_key="summarise", status=StepStatus.SUCCEEDED)
    for number, (seconds, status, tokens, cost) in enumerate(
        [(0.2, AttemptStatus.FAILED, 10, 0.001), (3.0, AttemptStatus.SUCCEEDED, 500, 0.25)], start=1
    ):
        Attempt.objects.create(
            step_run=done,
            number=number,
            agent_name="echo",
            status=status,
            total_tokens=tokens,
            cost=cost,
            started_at=now - timedelta(seconds=seconds),
            finished_at=now,
        )
    Item.objects.create(kind=ItemKind.GATE, step_run=queued, run=running, title="act?", deadline=now - timedelta(hours=1))
    Item.objects.create(kind=ItemKind.APPROVAL, step_run=done, run=running, title="ok?", deadline=now + timedelta(hours=1))
    AgentHealth.objects.create(agent=Agent.objects.get(name="echo"), circuit_state=CircuitState.OPEN)
    found = samples(scrape(client))
    assert found[("baton_runs", (("status", "succeeded"), ("workflow", "digest")))] == 2
    assert found[("baton_runs", (("status", "failed"), ("workflow", "digest")))] == 1
    assert found[("baton_runs", (("status", "running"), ("workflow", "digest")))] == 1
    assert found[("baton_steps", (("status", "queued"), ("workflow", "digest")))] == 1
    assert found[("baton_steps", (("status", "running"), ("workflow", "digest")))] == 1
    assert ("baton_steps", (("status", "succeeded"), ("workflow", "digest"))) not in found
    assert found[("baton_queue_depth", ())] == 1
    assert 89 <= found[("baton_queue_oldest_age_seconds", ())] <= 120
    assert found[("baton_step_attempts_total", (("agent", "echo"), ("status", "failed")))] == 1
    assert found[("baton_step_attempts_total", (("agent", "echo"), ("status", "succeeded")))] == 1
    assert found[("baton_step_duration_seconds_bucket", (("agent", "echo"), ("le", "0.25")))] == 1
    assert found[("baton_step_duration_seconds_bucket", (("agent", "echo"), ("le", "2.5")))] == 1
    assert found[("baton_step_duration_seconds_bucket", (("agent", "echo"), ("le", "5.0")))] == 2
    assert found[("baton_step_duration_seconds_bucket", (("agent", "echo"), ("le", "+Inf")))] == 2
    assert found[("baton_step_duration_seconds_sum", (("agent", "echo"),))] == pytest.approx(3.2)
    assert found[("baton_tokens_total", (("agent", "echo"),))] == 510
    assert found[("baton_cost_total", (("agent", "echo"),))] == pytest.approx(0.251)
    assert found[("baton_approvals_pending", (("kind", "gate"),))] == 1
    assert found[("baton_approvals_pending", (("kind", "approval"),))] == 1
    assert found[("baton_approvals_overdue", (("kind", "gate"),))] == 1
    assert found[("baton_approvals_overdue", (("kind", "approval"),))] == 0
    assert found[("baton_circuits_open", ())] == 1
    assert found[("baton_alerts_firing", ())] == 0


def test_label_values_are_bounded_and_the_rest_is_other(client: Client, token: str, monkeypatch: pytest.MonkeyPatch, digest: WorkflowVersion) -> None:
    monkeypatch.setattr(metrics, "MAX_LABEL_VALUES", 1)
    other = load_workflow(
        "workflow:\n  key: zz-other\n  name: Other\n  steps:\n    - {key: a, agent: echo}\n"
    )
    assert other is not None
    for version in (digest, other):
        Run.objects.create(workflow=version.workflow, version=version, status=RunStatus.SUCCEEDED, input={})
    found = samples(scrape(client))
    assert found[("baton_runs", (("status", "succeeded"), ("workflow", "digest")))] == 1
    assert found[("baton_runs", (("status", "succeeded"), ("workflow", "other")))] == 1
    assert not any(dict(labels).get("workflow") == "zz-other" for _, labels in found)


@pytest.mark.django_db(transaction=True)
def test_a_scrape_counts_what_every_worker_process_did(client: Client, token: str, ops: Any) -> None:
    """Two worker processes share a map's items; the web process answering the scrape ran
    none of them, and still counts every attempt, token and cost (read from the database)."""
    version = load_workflow(CHATTY)
    assert version is not None
    with WorkerCluster(workers=2):
        run = transitions.start_run(workflow=version.workflow, version=version, input={"items": list(range(12))})
        wait_for(lambda: Run.objects.get(pk=run.pk).status == RunStatus.SUCCEEDED, timeout=60, message="the map run")
    workers = set(Attempt.objects.filter(step_run__run=run).values_list("worker", flat=True))
    found = samples(scrape(client))
    assert found[("baton_step_attempts_total", (("agent", "chatty"), ("status", "succeeded")))] == 12
    assert found[("baton_tokens_total", (("agent", "chatty"),))] == 1200
    assert found[("baton_cost_total", (("agent", "chatty"),))] == pytest.approx(6.0)
    assert found[("baton_runs", (("status", "succeeded"), ("workflow", "chatter")))] == 1
    assert workers and all(str(os.getpid()) not in worker for worker in workers)
