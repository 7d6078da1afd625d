"""Each kind of rule fires on real runs, fires once while its condition holds, and resolves by
itself when the condition clears; every change is an audit row. Time is frozen and moved."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import time_machine
from django.utils import timezone

from approvals import transitions as decisions
from approvals.models import Item
from orchestration import ticker
from orchestration.alerts import sweep
from orchestration.alerts.models import Alert, AlertStatus, RuleKind
from orchestration.models import Agent, AgentHealth, Workflow
from orchestration.rollouts import transitions as rollouts
from orchestration.status import RunStatus
from orchestration.triggers.models import Firing, FiringOutcome
from tests.alerts.conftest import AGENTS, evaluate, flow, history, open_alerts, rule, start
from tests.rollouts.plans import HOUR, RunPlan, generate
from tests.servers import Reply, ScriptedServer
from tests.support import drive, load_workflow

pytestmark = pytest.mark.django_db

PICKY = "    - {key: check, agent: picky, input: '{{ input }}'}"


def test_the_alerts_pass_runs_on_every_tick() -> None:
    assert sweep.sweep in ticker.SWEEPS


def test_a_failed_run_fires_once_and_resolves_when_a_later_run_succeeds(ops: Any, clock: Any) -> None:
    flow(PICKY)
    failed_rule = rule(RuleKind.RUN_FAILED, severity="critical")
    failed = start(input={"ok": False})
    assert failed.status == RunStatus.FAILED
    evaluate()
    [alert] = open_alerts(failed_rule)
    assert (alert.subject, alert.run_id, alert.severity, alert.title) == (
        f"run:{failed.pk}",
        failed.pk,
        "critical",
        f"Run {failed.pk} of Flow wf failed",
    )
    assert alert.link == f"/runs/{failed.pk}/"
    evaluate()
    ticker.tick()
    assert Alert.objects.count() == 1, "a rule that fired once does not fire again while it holds"
    clock.shift(60)
    assert start(input={"ok": True}).status == RunStatus.SUCCEEDED
    evaluate()
    alert.refresh_from_db()
    assert (alert.status, alert.resolved_at) == (AlertStatus.RESOLVED, timezone.now())
    assert history(alert) == ["fired", "resolved"]


def test_a_failed_run_older_than_the_window_does_not_fire(ops: Any, clock: Any) -> None:
    flow(PICKY)
    start(input={"ok": False})
    clock.shift(3 * 3600)
    rule(RuleKind.RUN_FAILED, window_seconds=3600)
    evaluate()
    assert open_alerts() == []


def test_a_run_longer_than_the_threshold_fires_and_resolves_when_it_ends(ops: Any, approver: Any, clock: Any) -> None:
    flow("    - {key: ok, approval: {title: 'Go?', approvers: {users: [approver]}}}\n    - {key: after, agent: echo, after: [ok], input: 1}")
    workflow = Workflow.objects.get(key="wf")
    slow = rule(RuleKind.RUN_DURATION, workflow=workflow, threshold_seconds=3600)
    run = start()
    clock.shift(59 * 60)
    evaluate()
    assert open_alerts() == [], "not yet: 59 minutes"
    clock.shift(2 * 60)
    evaluate()
    evaluate()
    [alert] = open_alerts(slow)
    assert alert.title == f"Run {run.pk} of Flow wf has run for more than 1 h"
    item = Item.objects.get(run=run)
    decisions.vote(item_id=item.pk, user=approver, decision="approve")
    run = drive(run)
    assert run.status == RunStatus.SUCCEEDED
    evaluate()
    alert.refresh_from_db()
    assert alert.status == AlertStatus.RESOLVED
    assert history(alert) == ["fired", "resolved"]


def test_a_workflow_failure_rate_over_the_threshold_fires_and_resolves_when_the_window_moves_on(ops: Any, clock: Any) -> None:
    flow(PICKY)
    rate = rule(RuleKind.FAILURE_RATE, failure_percent=50, window_seconds=3600, min_count=3)
    start(input={"ok": False})
    start(input={"ok": True})
    evaluate()
    assert open_alerts() == [], "two runs are fewer than min_count"
    start(input={"ok": False})
    evaluate()
    evaluate()
    [alert] = open_alerts(rate)
    assert alert.title == "Flow wf: 67 % of its runs failed"
    assert alert.detail == "runs: 2 of 3 failed (67 %) in the last 1 h; the rule fires above 50 %"
    clock.shift(3601)
    evaluate()
    alert.refresh_from_db()
    assert alert.status == AlertStatus.RESOLVED


def test_an_agent_failure_rate_counts_its_attempts_across_workflows(ops: Any, clock: Any) -> None:
    flow(PICKY, key="one")
    flow(PICKY, key="two")
    picky = Agent.objects.get(name="picky")
    rate = rule(RuleKind.FAILURE_RATE, agent=picky, failure_percent=40, min_count=3)
    start("one", input={"ok": False})
    start("two", input={"ok": True})
    start("two", input={"ok": False})
    evaluate()
    [alert] = open_alerts(rate)
    assert (alert.subject, alert.agent_id, alert.workflow_id) == (f"agent:{picky.pk}", picky.pk, None)
    assert alert.title == "Agent picky: 67 % of its attempts failed"
    for _ in range(3):
        start("one", input={"ok": True})
    evaluate()
    alert.refresh_from_db()
    assert alert.status == AlertStatus.RESOLVED, "2 of 6 failed: 33 %, under 40 %"


def test_an_overdue_approval_fires_when_escalated_and_resolves_when_decided(ops: Any, approver: Any, clock: Any) -> None:
    from django.contrib.auth import get_user_model

    dave = get_user_model().objects.create_user("dave", "dave@example.com", "dave-pass-1")
    flow(
        "    - key: ok\n"
        "      approval: {title: 'Go?', approvers: {users: [approver]}, deadline: 1h, on_timeout: escalate, escalate_to: {users: [dave]}}\n"
        "    - {key: after, agent: echo, after: [ok], input: 1}"
    )
    overdue = rule(RuleKind.APPROVAL_OVERDUE)
    run = start()
    item = Item.objects.get(run=run)
    clock.shift(59 * 60)
    ticker.tick()
    evaluate()
    assert open_alerts() == []
    clock.shift(2 * 60)
    ticker.tick()  # the deadline sweep escalates it to dave
    evaluate()
    [alert] = open_alerts(overdue)
    assert (alert.subject, alert.run_id, alert.link) == (f"item:{item.pk}", run.pk, f"/approvals/{item.pk}/")
    assert alert.detail == "escalated 1 time(s) for missing its deadline"
    evaluate()
    assert Alert.objects.count() == 1
    decisions.vote(item_id=item.pk, user=dave, decision="approve")
    evaluate()
    alert.refresh_from_db()
    assert alert.status == AlertStatus.RESOLVED


def test_an_approval_waiting_longer_than_the_threshold_is_overdue(ops: Any, approver: Any, clock: Any) -> None:
    flow("    - {key: ok, approval: {title: 'Go?', approvers: {users: [approver]}}}")
    rule(RuleKind.APPROVAL_OVERDUE, threshold_seconds=1800)
    start()
    clock.shift(29 * 60)
    evaluate()
    assert open_alerts() == []
    clock.shift(2 * 60)
    evaluate()
    [alert] = open_alerts()
    assert alert.detail == "waiting for 31 min"


def test_an_opened_circuit_fires_and_resolves_when_it_closes_again(ops: Any, clock: Any, settings: Any) -> None:
    with ScriptedServer() as server:
        server.script("/primary", Reply(503, {"error": "overloaded"}))
        agents = AGENTS + f"""  - name: primary
    kind: http
    config: {{url: "{server.url}/primary"}}
    retry: {{attempts: 1}}
    circuit: {{failures: 2, window: 1m, cooldown: 30s}}
    fallback: echo
"""
        flow("    - {key: call, agent: primary, input: {n: 1}}", agents=agents)
        circuit = rule(RuleKind.CIRCUIT_OPEN)
        start()
        evaluate()
        assert open_alerts() == [], "one failure of two"
        start()
        assert AgentHealth.objects.get(agent__name="primary").circuit_state == "open"
        evaluate()
        [alert] = open_alerts(circuit)
        assert alert.title == "The circuit of agent primary is open"
        clock.shift(31)
        evaluate()  # half-open: still not healthy
        assert open_alerts() == [alert]
        server.script("/primary", Reply(200, {"ok": True}))
        start()
        assert AgentHealth.objects.get(agent__name="primary").circuit_state == "closed"
        evaluate()
    alert.refresh_from_db()
    assert alert.status == AlertStatus.RESOLVED
    assert history(alert) == ["fired", "resolved"]


DIGEST = """
agents:
  - {name: echo, kind: python, config: {callable: "tests.agents.basic:echo"}}
workflow:
  key: digest
  name: Digest
  owner: ops
  inputs: {topic: {type: string, required: true}}
  triggers:
    - cron: "0 * * * *"
      input: INPUT
  steps:
    - {key: write, agent: echo, input: {topic: "{{ input.topic }}"}}
"""


def test_a_schedule_that_could_not_start_its_run_fires_and_resolves_when_a_later_slot_starts_one(ops: Any) -> None:
    with time_machine.travel(datetime(2026, 11, 30, 8, 59, tzinfo=UTC), tick=False) as clock:
        load_workflow(DIGEST.replace("INPUT", "{slot: '{{ slot }}'}"))  # no topic: cannot start
        missed = rule(RuleKind.SCHEDULE_MISSED)
        ticker.tick()
        evaluate()
        assert open_alerts() == []
        clock.move_to(datetime(2026, 11, 30, 9, 0, 1, tzinfo=UTC))
        ticker.tick()
        assert Firing.objects.get().outcome == FiringOutcome.FAILED
        evaluate()
        [alert] = open_alerts(missed)
        assert alert.title == "Schedule 0 * * * * of Digest did not start a run"
        assert alert.detail.startswith("its last slot did not start a run (could not start: ")
        load_workflow(DIGEST.replace("INPUT", "{topic: daily}"))  # fixed; the same schedule
        evaluate()
        assert open_alerts() == [alert], "not until a slot starts a run"
        clock.move_to(datetime(2026, 11, 30, 10, 0, 1, tzinfo=UTC))
        ticker.tick()
        evaluate()
    alert.refresh_from_db()
    assert alert.status == AlertStatus.RESOLVED


def test_a_schedule_whose_slot_nobody_fired_fires_after_the_grace(ops: Any) -> None:
    with time_machine.travel(datetime(2026, 11, 30, 8, 59, tzinfo=UTC), tick=False) as clock:
        load_workflow(DIGEST.replace("INPUT", "{topic: daily}"))
        rule(RuleKind.SCHEDULE_MISSED, threshold_seconds=600)
        # The ticker's trigger pass is not run (it is broken, say): only the alerts pass.
        clock.move_to(datetime(2026, 11, 30, 9, 9, tzinfo=UTC))
        evaluate()
        assert open_alerts() == []
        clock.move_to(datetime(2026, 11, 30, 9, 11, tzinfo=UTC))
        evaluate()
        [alert] = open_alerts()
        assert alert.detail == "its slot of 2026-11-30 09:00 UTC has not been fired"


def test_a_rollout_drift_fires_an_alert_and_its_clearing_resolves_it(ops: Any, approver: Any) -> None:
    from django.contrib.auth.models import Group

    from tests.rollouts.conftest import REVIEW

    Group.objects.create(name="reviewers")
    load_workflow(REVIEW)
    workflow = Workflow.objects.get(key="review")
    now = datetime(2026, 3, 31, 12, 0, tzinfo=UTC)
    rollout = rollouts.start_rollout(workflow=workflow, owner=ops, actor=ops, started_on=date(2026, 3, 2), now=now)
    previous = [RunPlan(start=HOUR * (i + 1), duration=100) for i in range(10)]
    recent = [RunPlan(start=HOUR * (i + 1), duration=100, status="failed" if i < 4 else "succeeded") for i in range(10)]
    generate(workflow, {date(2026, 3, 20): previous, date(2026, 3, 28): recent}, now=now)
    drift_rule = rule(RuleKind.ROLLOUT_DRIFT, workflow=workflow)
    with time_machine.travel(now, tick=False) as clock:
        rollouts.check_rollout(rollout=rollout, now=now)
        evaluate()
        [alert] = open_alerts(drift_rule)
        assert alert.title == "Review drifts: Success rate worse this week"
        assert alert.link == "/rollouts/review/"
        clock.move_to(now + timedelta(days=7))
        rollouts.check_rollout(rollout=rollout, now=now + timedelta(days=7))
        evaluate()
    alert.refresh_from_db()
    assert alert.status == AlertStatus.RESOLVED


def test_two_passes_at_once_fire_one_alert(ops: Any, clock: Any) -> None:
    from orchestration.alerts import conditions, transitions

    flow(PICKY)
    start(input={"ok": False})
    failed_rule = rule(RuleKind.RUN_FAILED)
    [finding] = conditions.findings(failed_rule, timezone.now()) or []
    first = transitions.fire(rule=failed_rule, finding=finding, now=timezone.now())
    second = transitions.fire(rule=failed_rule, finding=finding, now=timezone.now())
    assert first is not None and second is None
    assert Alert.objects.count() == 1


def test_a_disabled_rule_resolves_what_it_had_open(ops: Any, clock: Any) -> None:
    flow(PICKY)
    failed_rule = rule(RuleKind.RUN_FAILED)
    start(input={"ok": False})
    evaluate()
    [alert] = open_alerts()
    failed_rule.enabled = False
    failed_rule.save()
    evaluate()
    alert.refresh_from_db()
    assert alert.status == AlertStatus.RESOLVED
    assert alert.events.get(kind="resolved").note == "the rule was disabled"


@pytest.mark.django_db(transaction=True)
def test_two_tickers_evaluating_at_once_fire_one_alert(ops: Any) -> None:
    import threading

    from django.db import connection

    from orchestration.alerts import transitions

    if connection.vendor != "postgresql":
        pytest.skip("concurrent writers are a PostgreSQL matter: SQLite has one writer at a time")
    flow(PICKY)
    start(input={"ok": False})
    failed_rule = rule(RuleKind.RUN_FAILED)
    barrier = threading.Barrier(2)
    fired: list[int] = []

    def tick() -> None:
        try:
            barrier.wait()
            fired.append(transitions.evaluate_rule(rule=failed_rule, now=timezone.now()))
        finally:
            connection.close()

    threads = [threading.Thread(target=tick) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(fired) == [0, 1]
    assert Alert.objects.count() == 1
