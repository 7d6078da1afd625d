"""A waiting run says what it waits for, wherever runs are shown: dashboard.waiting_words, with
approvals' lookup (approvals/waiting_words.py) saying who and by when."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from dashboard.waiting_words import waiting_summaries
from orchestration.models import Run
from tests.approvals.conftest import flow, item_for, start
from tests.support import load_workflow

pytestmark = pytest.mark.django_db


def words(run: Run) -> tuple[str, str]:
    summary = waiting_summaries(Run.objects.select_related("version").filter(pk=run.pk))[run.pk]
    return summary.text, summary.url


def test_an_approval_names_its_approvers_and_deadline_and_links_to_the_inbox_item(people: dict[str, Any]) -> None:
    flow("    - {key: ok, approval: {title: Ship it, approvers: {groups: [legal]}, deadline: 3h}}")
    run = start(by=people["ops"])
    with time_machine.travel(timezone.now() + timedelta(minutes=1)):
        text, url = words(run)
    assert text == "waiting: approval by legal, due in 2\xa0hours"
    assert url == reverse("approvals:item", args=[item_for(run, "ok").pk])


def test_a_manual_task_names_whom_it_is_for(people: dict[str, Any]) -> None:
    flow("    - {key: fix, manual: {title: Fix it, assignees: {groups: [support], users: [approver]}}}")
    run = start(by=people["ops"])
    assert words(run)[0] == "waiting: manual task for support or approver"


def test_an_overdue_item_says_so(people: dict[str, Any]) -> None:
    flow("    - {key: ok, approval: {title: Ship it, approvers: {users: [approver]}, deadline: 1h}}")
    run = start(by=people["ops"])
    with time_machine.travel(timezone.now() + timedelta(hours=2), tick=False):
        assert words(run)[0] == "waiting: approval by approver, overdue"


def test_an_event_names_the_event_and_its_timeout(people: dict[str, Any]) -> None:
    flow("    - {key: paid, wait: {event: payment.received, timeout: 1h}}")
    run = start(by=people["ops"])
    with time_machine.travel(timezone.now() + timedelta(minutes=1)):
        assert words(run) == ("waiting: event payment.received, times out in 58\xa0minutes", "")


def test_a_timer_says_when_it_wakes(people: dict[str, Any]) -> None:
    flow("    - {key: cool_off, wait: {for: 1w}}")
    run = start(by=people["ops"])
    assert words(run)[0].startswith("waiting: a timer, wakes in 6\xa0days")


def test_a_sub_workflow_step_links_to_the_child_run(people: dict[str, Any]) -> None:
    flow("    - {key: ok, approval: {title: Ship it, approvers: {users: [approver]}}}", key="child")
    flow("    - {key: kid, workflow: child}")
    run = start(by=people["ops"])
    child = Run.objects.get(parent_step__run=run)
    assert words(run) == (f"waiting: sub-workflow run #{child.pk}", reverse("dashboard:run", args=[child.pk]))
    assert words(child)[0] == "waiting: approval by approver"


def test_two_waiting_steps_say_the_first_and_how_many_more(people: dict[str, Any]) -> None:
    flow("    - {key: a, approval: {title: A, approvers: {users: [approver]}}}\n    - {key: b, wait: {event: go}}")
    assert words(start(by=people["ops"]))[0] == "waiting: approval by approver (and 1 more)"


def test_a_run_that_waits_for_nothing_has_no_words(people: dict[str, Any]) -> None:
    flow("    - {key: a, wait: {event: go}}")
    run = start(by=people["ops"])
    Run.objects.filter(pk=run.pk).update(status="cancelled")
    assert waiting_summaries(Run.objects.select_related("version").filter(pk=run.pk)) == {}


def test_many_runs_cost_one_query_per_source(people: dict[str, Any]) -> None:
    flow("    - {key: ok, approval: {title: Ship it, approvers: {groups: [legal, editors], users: [approver]}}}", key="people")
    flow("    - {key: paid, wait: {event: payment.received}}", key="events")
    flow("    - {key: kid, workflow: people}", key="parent")
    for _ in range(5):
        for key in ("people", "events", "parent"):
            start(key, by=people["ops"])
    runs = list(Run.objects.select_related("version").filter(parent_step__isnull=True))
    with CaptureQueriesContext(connection) as queries:
        summaries = waiting_summaries(runs)
    # the waiting steps, the inbox items with their assignees, the sub-workflow runs
    assert len(queries) == 3
    assert len(summaries) == 15
    assert sum(s.text == "waiting: approval by editors or legal or approver" for s in summaries.values()) == 5


def test_the_run_page_says_what_the_run_waits_for_with_a_link(client: Client, people: dict[str, Any]) -> None:
    flow("    - {key: ok, approval: {title: Ship it, approvers: {groups: [legal]}, deadline: 3h}}")
    run = start(by=people["ops"])
    client.force_login(people["ops"])
    page = client.get(reverse("dashboard:run", args=[run.pk])).content.decode()
    link = f'<a href="{reverse("approvals:item", args=[item_for(run, "ok").pk])}">waiting: approval by legal, due in '
    assert f'<p class="run-waiting" data-waiting>{link}' in page
    assert f'<div class="small step-waiting">{link}' in page


def test_a_group_name_is_shown_as_text(people: dict[str, Any]) -> None:
    from django.contrib.auth.models import Group

    Group.objects.create(name="<b>bold</b>")
    load_workflow(
        'agents: []\nworkflow: {key: odd, name: Odd, owner: ops, steps: [{key: ok, approval: {title: t, approvers: {groups: ["<b>bold</b>"]}}}]}'
    )
    run = start("odd", by=people["ops"])
    client = Client()
    client.force_login(people["ops"])
    page = client.get(reverse("dashboard:run", args=[run.pk])).content.decode()
    assert "approval by &lt;b&gt;bold&lt;/b&gt;" in page and "<b>bold</b>" not in page
