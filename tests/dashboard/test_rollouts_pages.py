"""The rollout pages: who sees and does what, the gate and its promotion, the plan, notes,
versions, the history, and a fixed number of queries.

Personas (tests/dashboard/conftest.py): ops owns `digest` and its rollout; operator operates
it; viewer watches it; outsider sees nothing of it.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from orchestration import transitions
from orchestration.models import Agent, AgentVersion, Run, WorkflowVersion
from orchestration.rollouts import transitions as rollouts
from orchestration.rollouts.models import ChecklistItem, Note, Rollout, RolloutEventKind, Stage, Window
from tests.dashboard.conftest import AGENTS
from tests.dashboard.rollout_support import passing_history, start_rollout
from tests.support import load_workflow

pytestmark = pytest.mark.django_db

OTHER = (
    AGENTS
    + """
workflow:
  key: other
  name: Other flow
  owner: ops
  access: {viewers: [auditors]}
  steps:
    - {key: only, agent: echo}
"""
)

PAGE = reverse("dashboard:rollout", kwargs={"key": "digest"})


def url(name: str, *args: Any) -> str:
    return reverse(f"dashboard:rollout_{name}", args=["digest", *args])


def as_user(client: Client, user: Any) -> Client:
    client.force_login(user)
    return client


def htmx(client: Client, path: str, data: dict[str, Any] | None = None) -> Any:
    return client.post(path, data or {}, HTTP_HX_REQUEST="true")


@pytest.fixture
def rollout(digest: WorkflowVersion, ops: Any) -> Rollout:
    return start_rollout(ops)


# ---------------------------------------------------------------------------------------------
# The list


def test_the_list_shows_every_workflow_one_sees_with_its_rollouts_stage_owner_and_next_window(
    client: Client, ops: Any, rollout: Rollout
) -> None:
    load_workflow(OTHER)
    page = as_user(client, ops).get(reverse("dashboard:rollouts")).content.decode()
    row = re.search(r'<tr data-workflow="digest">(.*?)</tr>', page, re.DOTALL)
    assert row is not None
    assert "Pilot" in row.group(1) and "◔" in row.group(1)
    assert ">ops<" in row.group(1)
    assert "due in 2 days" in row.group(1) and "Automation Lead" in row.group(1)
    other = re.search(r'<tr data-workflow="other">(.*?)</tr>', page, re.DOTALL)
    assert other is not None and "Start a rollout" in other.group(1)
    assert 'aria-current="page">Rollouts<' in page


def test_the_list_shows_a_mark_per_criterion_from_the_latest_gate_check_in_words_too(
    client: Client, ops: Any, rollout: Rollout
) -> None:
    rollouts.check_rollout(rollout=rollout)
    page = as_user(client, ops).get(reverse("dashboard:rollouts")).content.decode()
    assert "Success rate fails" in page and "Number of runs fails" in page
    assert "✕" in page and "✓" not in page

    # The next check's marks replace them, even though the gate as a whole still fails.
    passing_history(rollout, ops)
    rollouts.change_criterion(criterion=rollout.criteria.get(metric="runs"), actor=ops, target=1000)
    rollouts.check_rollout(rollout=rollout)
    page = as_user(client, ops).get(reverse("dashboard:rollouts")).content.decode()
    assert "Success rate passes" in page and "Number of runs fails" in page


def test_only_the_workflows_owner_is_offered_to_start_a_rollout(client: Client, viewer: Any, digest: WorkflowVersion) -> None:
    page = as_user(client, viewer).get(reverse("dashboard:rollouts")).content.decode()
    assert "Daily digest" in page and "Start a rollout" not in page
    assert as_user(client, viewer).post(url("start")).status_code == 403
    assert not Rollout.objects.exists()


def test_the_owner_starts_a_rollout_in_pilot_with_the_playbooks_plan(client: Client, ops: Any, digest: WorkflowVersion) -> None:
    response = as_user(client, ops).post(url("start"))
    assert response.status_code == 302 and response["Location"] == PAGE
    rollout = Rollout.objects.get()
    assert rollout.stage == Stage.PILOT and rollout.windows.count() == 4 and rollout.checklist.count() == 5


def test_an_outsider_sees_no_trace_of_the_workflow_in_the_list(client: Client, outsider: Any, rollout: Rollout) -> None:
    page = as_user(client, outsider).get(reverse("dashboard:rollouts")).content.decode()
    assert "digest" not in page and "Daily digest" not in page


def test_the_list_takes_the_same_number_of_queries_however_many_rollouts(
    client: Client, ops: Any, rollout: Rollout
) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    as_user(client, ops)
    with CaptureQueriesContext(connection) as one:
        assert client.get(reverse("dashboard:rollouts")).status_code == 200
    for n in range(3):
        load_workflow(OTHER.replace("key: other", f"key: other-{n}"))
        start_rollout(ops, f"other-{n}")
    with CaptureQueriesContext(connection) as four:
        assert client.get(reverse("dashboard:rollouts")).status_code == 200
    assert len(four) == len(one)


# ---------------------------------------------------------------------------------------------
# One rollout: who sees it


def test_an_outsider_is_refused_the_page_and_every_action(client: Client, outsider: Any, rollout: Rollout) -> None:
    as_user(client, outsider)
    assert client.get(PAGE).status_code == 403
    assert client.get(url("review")).status_code == 403
    assert client.get(url("csv")).status_code == 403
    for name in ("promote", "pause", "resume", "roll_back", "restart", "note"):
        assert client.post(url(name), {"reason": "x"}).status_code == 403, name


def test_a_missing_workflow_or_one_without_a_rollout_is_404(client: Client, ops: Any, digest: WorkflowVersion) -> None:
    as_user(client, ops)
    assert client.get(reverse("dashboard:rollout", kwargs={"key": "nope"})).status_code == 404
    assert client.get(PAGE).status_code == 404


def test_a_viewer_reads_the_page_but_gets_no_forms_and_403_on_every_action(
    client: Client, viewer: Any, rollout: Rollout
) -> None:
    as_user(client, viewer)
    page = client.get(PAGE).content.decode()
    assert "Gate" in page and "Trends" in page and "Daily digest" in page
    assert "<form" not in page.split('id="rollout"')[1]
    window = rollout.windows.first()
    assert window is not None
    for path in (url("promote"), url("pause"), url("note"), url("window", window.pk)):
        assert client.post(path, {"reason": "x", "kind": "issue", "text": "x", "done": "1"}).status_code == 403, path
    assert Rollout.objects.get().stage == Stage.PILOT


def test_an_operator_contributes_notes_windows_and_checklist_but_does_not_decide(
    client: Client, operator: Any, rollout: Rollout
) -> None:
    as_user(client, operator)
    page = client.get(PAGE).content.decode()
    assert "Mark done" in page and "Promote to" not in page
    window = rollout.windows.order_by("position").first()
    item = rollout.checklist.order_by("position").first()
    assert window is not None and item is not None
    assert htmx(client, url("window", window.pk), {"done": "1"}).status_code == 200
    assert htmx(client, url("checklist", item.pk), {"done": "1"}).status_code == 200
    assert htmx(client, url("note"), {"kind": "issue", "text": "Publishing is slow"}).status_code == 200
    assert Window.objects.get(pk=window.pk).done and ChecklistItem.objects.get(pk=item.pk).done
    assert Note.objects.get().author == operator
    assert client.post(url("promote"), {"override": "1", "override_reason": "go"}).status_code == 403
    assert client.post(url("pause")).status_code == 403


# ---------------------------------------------------------------------------------------------
# The gate and the stage


def test_the_gate_table_gives_target_actual_verdict_in_words_and_the_runs_behind_each_figure(
    client: Client, ops: Any, rollout: Rollout
) -> None:
    passing_history(rollout, ops)
    page = as_user(client, ops).get(PAGE).content.decode()
    row = re.search(r'<tr data-metric="success_rate"[^>]*>(.*?)</tr>', page, re.DOTALL)
    assert row is not None
    assert "at least 95%" in row.group(1) and "100%" in row.group(1) and "✓ pass" in row.group(1)
    link = re.search(r'href="([^"]+)"', row.group(1))
    assert link is not None and "started_after=" in link.group(1) and "workflow=digest" in link.group(1)
    runs_page = client.get(link.group(1).replace("&amp;", "&"))
    assert runs_page.status_code == 200
    assert "Not counted (disabled): Median approval wait" in page


def test_a_promotion_is_refused_while_a_criterion_fails_and_the_page_says_which(
    client: Client, ops: Any, rollout: Rollout
) -> None:
    as_user(client, ops)
    page = client.get(PAGE).content.decode()
    assert re.search(r"<button[^>]*disabled[^>]*>Promote to Standardize", page)
    assert "Promotion to <strong>Standardize</strong> waits" in page and "no runs in window" in page
    response = htmx(client, url("promote"))
    assert response.status_code == 409
    assert "data-error" in response.content.decode()
    assert Rollout.objects.get().stage == Stage.PILOT
    assert rollout.events.filter(kind=RolloutEventKind.PROMOTION_REFUSED).exists()


def test_promote_anyway_needs_a_written_reason_and_records_it(client: Client, ops: Any, rollout: Rollout) -> None:
    as_user(client, ops)
    response = htmx(client, url("promote"), {"override": "1", "override_reason": "  "})
    assert response.status_code == 422 and "override_reason" in response.content.decode()
    assert Rollout.objects.get().stage == Stage.PILOT
    response = client.post(url("promote"), {"override": "1", "override_reason": "Leadership wants the pilot widened"})
    assert response.status_code == 302
    assert Rollout.objects.get().stage == Stage.STANDARDIZE
    page = client.get(PAGE).content.decode()
    assert "Promoted by override from Pilot to Standardize." in page
    assert "Leadership wants the pilot widened" in page.split('id="history-title"')[1]


def test_a_promotion_with_every_criterion_passing_moves_the_stage(client: Client, ops: Any, rollout: Rollout) -> None:
    passing_history(rollout, ops)
    as_user(client, ops)
    page = client.get(PAGE).content.decode()
    assert "Every criterion passes" in page
    assert not re.search(r"<button[^>]*disabled[^>]*>Promote to", page)
    response = htmx(client, url("promote"))
    assert response.status_code == 200
    assert Rollout.objects.get().stage == Stage.STANDARDIZE
    assert rollout.events.filter(kind=RolloutEventKind.PROMOTED).exists()


def test_pause_resume_roll_back_and_restart_each_record_a_reason(client: Client, ops: Any, rollout: Rollout) -> None:
    as_user(client, ops)
    assert htmx(client, url("pause"), {"reason": "Holiday week"}).status_code == 200
    assert Rollout.objects.get().stage == Stage.PAUSED
    assert htmx(client, url("resume")).status_code == 200
    assert Rollout.objects.get().stage == Stage.PILOT
    refused = htmx(client, url("roll_back"), {"reason": ""})
    assert refused.status_code == 422 and Rollout.objects.get().stage == Stage.PILOT
    assert htmx(client, url("roll_back"), {"reason": "Legal found a wrong claim"}).status_code == 200
    assert Rollout.objects.get().stage == Stage.ROLLED_BACK
    assert htmx(client, url("restart"), {"reason": "Fixed"}).status_code == 200
    assert Rollout.objects.get().stage == Stage.PILOT
    reasons = list(rollout.events.exclude(reason="").values_list("reason", flat=True))
    assert "Holiday week" in reasons and "Legal found a wrong claim" in reasons


def test_a_refusal_without_htmx_comes_back_as_a_message_after_the_redirect(client: Client, ops: Any, rollout: Rollout) -> None:
    as_user(client, ops)
    response = client.post(url("resume"), follow=True)
    assert response.redirect_chain[-1][0] == PAGE
    assert 'class="notice notice--error"' in response.content.decode()


def test_a_reason_longer_than_two_thousand_characters_is_refused_by_name(client: Client, ops: Any, rollout: Rollout) -> None:
    response = htmx(as_user(client, ops), url("pause"), {"reason": "x" * 2001})
    assert response.status_code == 422 and "reason: at most 2,000 characters" in response.content.decode()
    assert Rollout.objects.get().stage == Stage.PILOT


def test_writes_need_post_and_the_csrf_token(ops: Any, rollout: Rollout) -> None:
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(ops)
    assert browser.get(url("promote")).status_code == 405
    assert browser.post(url("pause")).status_code == 403
    assert Rollout.objects.get().stage == Stage.PILOT


# ---------------------------------------------------------------------------------------------
# Notes, versions


def test_a_note_links_only_runs_the_user_can_see(client: Client, ops: Any, operator: Any, rollout: Rollout) -> None:
    run = transitions.start_run(workflow="digest", input={"topic": "tides"}, started_by=ops)
    as_user(client, operator)
    bad = htmx(client, url("note"), {"kind": "issue", "text": "slow", "runs": f"{run.pk}, 999999"})
    assert bad.status_code == 422 and "#999999" in bad.content.decode()
    assert htmx(client, url("note"), {"kind": "issue", "text": "garbage", "runs": "1; DROP"}).status_code == 422
    assert htmx(client, url("note"), {"kind": "issue", "text": "slow", "runs": f"#{run.pk}"}).status_code == 200
    note = Note.objects.get()
    assert list(note.runs.all()) == [run]
    page = client.get(PAGE).content.decode()
    assert f'href="/runs/{run.pk}/"' in page
    assert htmx(client, url("resolve", note.pk)).status_code == 200
    assert Note.objects.get().resolved_at is not None


def test_the_owner_shifts_agent_version_weights_or_rolls_back_to_one_version(
    client: Client, ops: Any, operator: Any, rollout: Rollout
) -> None:
    agent = Agent.objects.get(name="echo")
    AgentVersion.objects.create(agent=agent, label="v1", weight=90)
    AgentVersion.objects.create(agent=agent, label="v2", weight=10)
    as_user(client, ops)
    page = client.get(PAGE).content.decode()
    assert 'data-agent="echo"' in page and "Roll back to v1" in page
    assert htmx(client, url("weights", "echo"), {"weight-v1": "50", "weight-v2": "50"}).status_code == 200
    assert dict(AgentVersion.objects.values_list("label", "weight")) == {"v1": 50, "v2": 50}
    assert htmx(client, url("weights", "echo"), {"weight-v1": "lots", "weight-v2": "1"}).status_code == 422
    assert htmx(client, url("weights", "echo"), {"only": "v1"}).status_code == 200
    assert dict(AgentVersion.objects.values_list("label", "weight")) == {"v1": 100, "v2": 0}
    assert rollout.events.filter(kind=RolloutEventKind.WEIGHTS_CHANGED).count() == 2
    assert as_user(client, operator).post(url("weights", "echo"), {"only": "v2"}).status_code == 403


def test_the_page_says_plainly_when_runs_are_demo_data(client: Client, ops: Any, rollout: Rollout) -> None:
    page = as_user(client, ops).get(PAGE).content.decode()
    assert "Demo data" not in page
    passing_history(rollout, ops, days=1, per_day=1)
    assert Run.objects.filter(trigger="history").exists()
    assert "Demo data" in client.get(PAGE).content.decode()


def test_the_page_draws_a_trend_chart_per_enabled_criterion_with_points_and_a_target_line(
    client: Client, ops: Any, rollout: Rollout
) -> None:
    passing_history(rollout, ops)
    page = as_user(client, ops).get(PAGE).content.decode()
    charts = re.findall(r'<figure class="trend" data-metric="([a-z_0-9]+)"', page)
    assert set(charts) == set(rollout.criteria.filter(enabled=True).values_list("metric", flat=True))
    assert page.count('class="trend__target"') == len(charts)
    assert page.count('<circle class="trend__point') >= 8 * len(charts)
    assert "<title>" in page.split('<figure class="trend" data-metric="success_rate"')[1]


def test_the_rollout_page_takes_the_same_number_of_queries_with_more_notes_events_and_runs(
    client: Client, ops: Any, rollout: Rollout
) -> None:
    """(The version comparison measures each agent version on its own, in gates.compare_versions:
    a version more is a few queries more; notes, events, runs and snapshots are not.)"""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    as_user(client, ops)
    passing_history(rollout, ops, days=1, per_day=1)
    htmx(client, url("note"), {"kind": "issue", "text": "first"})
    AgentVersion.objects.create(agent=Agent.objects.get(name="echo"), label="only", weight=1)
    with CaptureQueriesContext(connection) as before:
        assert client.get(PAGE).status_code == 200
    passing_history(rollout, ops)
    run_ids = list(Run.objects.values_list("pk", flat=True)[:3])
    for n in range(3):
        htmx(client, url("note"), {"kind": "review", "text": f"note {n}", "runs": ", ".join(map(str, run_ids))})
    with CaptureQueriesContext(connection) as after:
        assert client.get(PAGE).status_code == 200
    assert len(after) == len(before), "\n".join(q["sql"][:150] for q in after.captured_queries)


def test_a_second_promotion_from_a_page_showing_the_old_stage_changes_nothing(
    client: Client, ops: Any, rollout: Rollout
) -> None:
    as_user(client, ops)
    form = {"override": "1", "override_reason": "go on", "from_stage": "pilot"}
    assert htmx(client, url("promote"), form).status_code == 200
    again = htmx(client, url("promote"), form)
    assert again.status_code == 409 and "nothing was changed" in again.content.decode()
    assert Rollout.objects.get().stage == Stage.STANDARDIZE


def test_the_owner_edits_a_criterion_and_the_weekly_review_says_what_changed(
    client: Client, ops: Any, operator: Any, rollout: Rollout
) -> None:
    criterion = rollout.criteria.get(metric="success_rate")
    as_user(client, ops)
    assert "Edit the criteria" in client.get(PAGE).content.decode()
    response = htmx(client, url("criterion", criterion.pk), {"target": "0.9", "window_days": "14"})
    assert response.status_code == 200
    criterion.refresh_from_db()
    assert (criterion.target, criterion.window_days, criterion.enabled) == (0.9, 14, False)
    review = client.get(url("review")).content.decode()
    assert "Success rate: target 0.95 → 0.9, window days 7 → 14, on → off" in review
    assert htmx(client, url("criterion", criterion.pk), {"target": "lots", "window_days": "7"}).status_code == 422
    assert htmx(client, url("criterion", criterion.pk), {"target": "1", "window_days": "400", "enabled": "1"}).status_code == 422
    assert as_user(client, operator).post(url("criterion", criterion.pk), {"target": "0.5", "window_days": "7"}).status_code == 403


@pytest.mark.parametrize("value", ["²", "1" * 5000, "-1", "1e3", ""])
def test_no_typed_number_gives_a_500(client: Client, ops: Any, rollout: Rollout, value: str) -> None:
    agent = Agent.objects.get(name="echo")
    AgentVersion.objects.create(agent=agent, label="v1", weight=1)
    criterion = rollout.criteria.get(metric="runs")
    as_user(client, ops)
    assert htmx(client, url("weights", "echo"), {"weight-v1": value}).status_code == 422
    assert htmx(client, url("criterion", criterion.pk), {"target": value, "window_days": value}).status_code == 422
