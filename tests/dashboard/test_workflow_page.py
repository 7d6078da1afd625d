"""A workflow's page: its graph, versions, a diff of any two, roll back, its runs and figures."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from dashboard.workflow_page import side_by_side
from orchestration import definitions, transitions
from orchestration.models import Run, Workflow, WorkflowVersion
from tests.dashboard.conftest import DIGEST
from tests.support import drive, load_workflow

pytestmark = pytest.mark.django_db


def publish_v2() -> WorkflowVersion:
    version = load_workflow(DIGEST.replace("summarises each section", "summarises every section").replace(
        "{key: publish, agent: echo,", "{key: publish, agent: upper,"
    ))
    assert version is not None and version.number == 2
    return version


def page(client: Client, key: str = "digest", **query: Any) -> str:
    response = client.get(reverse("dashboard:workflow", args=[key]), query)
    assert response.status_code == 200
    return response.content.decode()


def test_it_shows_the_published_graph_the_versions_and_the_start_form(ops_client: Client, digest: WorkflowVersion) -> None:
    publish_v2()
    html = page(ops_client)
    assert 'data-step="research"' in html and 'data-step="publish"' in html
    assert 'data-version="2"' in html and 'data-version="1"' in html
    assert 'id="start-digest"' in html
    assert "Roll back to v1" in html


def test_the_workflows_cards_and_the_runs_list_link_to_it(ops_client: Client, ops: Any, digest: WorkflowVersion) -> None:
    transitions.start_run(workflow="digest", input={"topic": "x"}, started_by=ops)
    assert 'href="/workflows/digest/"' in ops_client.get(reverse("dashboard:workflows")).content.decode()
    assert 'href="/workflows/digest/"' in ops_client.get(reverse("dashboard:runs")).content.decode()


def test_a_viewer_sees_it_without_the_start_form_or_roll_back(client: Client, viewer: Any, digest: WorkflowVersion) -> None:
    publish_v2()
    client.force_login(viewer)
    html = page(client)
    assert 'data-version="1"' in html
    assert 'id="start-digest"' not in html and "Roll back" not in html


def test_an_operator_may_start_runs_but_not_roll_back(client: Client, operator: Any, digest: WorkflowVersion) -> None:
    publish_v2()
    client.force_login(operator)
    html = page(client)
    assert 'id="start-digest"' in html and "Roll back to" not in html
    response = client.post(reverse("dashboard:workflow_roll_back", args=["digest"]), {"number": 1})
    assert response.status_code == 403
    assert Workflow.objects.get(key="digest").versions.count() == 2


def test_an_outsider_gets_403_and_a_missing_workflow_404(client: Client, outsider: Any, digest: WorkflowVersion) -> None:
    client.force_login(outsider)
    assert client.get(reverse("dashboard:workflow", args=["digest"])).status_code == 403
    assert client.get(reverse("dashboard:workflow", args=["nope"])).status_code == 404
    assert client.post(reverse("dashboard:workflow_roll_back", args=["digest"]), {"number": 1}).status_code == 403


def test_the_diff_shows_two_versions_side_by_side_with_the_changed_lines_marked(
    ops_client: Client, digest: WorkflowVersion
) -> None:
    publish_v2()
    html = page(ops_client, v_a=1, v_b=2)
    changed = re.findall(r'<tr class="diff__row diff__row--changed".*?</tr>', html, re.DOTALL)
    assert len(changed) == 2
    assert "summarises each section" in changed[0] and "summarises every section" in changed[0]
    assert "agent: echo" in changed[1] and "agent: upper" in changed[1]
    assert "2 lines differ" in html
    same = page(ops_client, v_a=1, v_b=1)
    assert "v1 → v1: the same." in same


def test_a_diff_of_lines_added_and_removed_pairs_what_it_can() -> None:
    rows = side_by_side("a\nb\nc\n", "a\nB\nc\nd\n")
    assert [(r.kind, r.left, r.right) for r in rows] == [
        ("same", "a", "a"), ("changed", "b", "B"), ("same", "c", "c"), ("added", "", "d"),
    ]
    assert [r.mark for r in side_by_side("x\ny", "x")] == ["", "−"]


@pytest.mark.parametrize("query", [{"v_a": "9"}, {"v_b": "x"}, {"v_a": "1" * 30}])
def test_a_version_that_is_not_one_is_explained(ops_client: Client, digest: WorkflowVersion, query: dict[str, str]) -> None:
    publish_v2()
    assert "is not a version of this workflow" in page(ops_client, **query)


def test_an_htmx_diff_returns_only_the_diff(ops_client: Client, digest: WorkflowVersion) -> None:
    publish_v2()
    response = ops_client.get(reverse("dashboard:workflow", args=["digest"]), {"v_a": 2, "v_b": 1}, HTTP_HX_REQUEST="true")
    assert response.content.decode().strip().startswith('<section id="version-diff"')


def test_rolling_back_publishes_the_earlier_spec_as_a_new_version(ops_client: Client, ops: Any, digest: WorkflowVersion) -> None:
    v2 = publish_v2()
    response = ops_client.post(reverse("dashboard:workflow_roll_back", args=["digest"]), {"number": 1}, follow=True)
    v3 = Workflow.objects.get(key="digest").versions.order_by("-number").first()
    assert v3 is not None and v3.number == 3
    assert v3.spec == digest.spec != v2.spec
    assert v3.note == "rolled back to v1 by ops" and v3.published_by == ops
    assert "Published v3: rolled back to v1 by ops." in response.content.decode()
    run = transitions.start_run(workflow="digest", input={"topic": "x"})
    assert run.version == v3


def test_rolling_back_to_the_latest_or_to_its_twin_is_refused(ops: Any, digest: WorkflowVersion) -> None:
    workflow = Workflow.objects.get(key="digest")
    with pytest.raises(definitions.RollBackRefused, match="already the latest"):
        definitions.roll_back_to(workflow=workflow, number=1, actor=ops)
    publish_v2()
    definitions.roll_back_to(workflow=workflow, number=1, actor=ops)
    with pytest.raises(definitions.RollBackRefused, match="the same as the latest"):
        definitions.roll_back_to(workflow=workflow, number=1, actor=ops)
    with pytest.raises(definitions.RollBackRefused, match="no version 7"):
        definitions.roll_back_to(workflow=workflow, number=7, actor=ops)


@pytest.mark.parametrize("number", ["2", "abc", "", "9" * 20])
def test_a_refused_roll_back_says_why_on_the_page(ops_client: Client, digest: WorkflowVersion, number: str) -> None:
    publish_v2()
    response = ops_client.post(reverse("dashboard:workflow_roll_back", args=["digest"]), {"number": number}, follow=True)
    assert response.status_code == 200
    assert 'class="notice notice--warning"' in response.content.decode()
    assert Workflow.objects.get(key="digest").versions.count() == 2


def test_it_charts_success_rate_and_p95_duration_day_by_day_from_the_daily_figures(
    ops_client: Client, digest: WorkflowVersion
) -> None:
    from django.utils import timezone

    from orchestration.rollouts import metrics

    runs = [drive(transitions.start_run(workflow="digest", input={"topic": f"t{i}"})) for i in range(2)]
    Run.objects.filter(pk=runs[0].pk).update(status="failed")
    today = timezone.localdate()
    metrics.rollup(today, today)
    html = page(ops_client)
    trends = re.search(r"data-trends>(.*?)</div>\s*</section>", html, re.DOTALL)
    assert trends
    charts = trends.group(1)
    assert 'data-metric="success_rate"' in charts and 'data-metric="p95_duration"' in charts
    # A point for today, with its words: one of two runs succeeded.
    assert "50%" in charts
    assert charts.count("<circle") == 2


def test_roll_back_is_a_post_only(ops_client: Client, digest: WorkflowVersion) -> None:
    assert ops_client.get(reverse("dashboard:workflow_roll_back", args=["digest"])).status_code == 405


def test_it_shows_success_rate_and_median_duration_over_30_days(ops_client: Client, ops: Any, digest: WorkflowVersion) -> None:
    runs = [drive(transitions.start_run(workflow="digest", input={"topic": f"t{i}"})) for i in range(3)]
    cancelled = transitions.cancel_run(run_id=transitions.start_run(workflow="digest", input={"topic": "c"}).pk, actor=ops)
    old = drive(transitions.start_run(workflow="digest", input={"topic": "old"}))
    for seconds, run in zip((10, 20, 90), runs, strict=True):
        Run.objects.filter(pk=run.pk).update(finished_at=run.created_at + timedelta(seconds=seconds))
    Run.objects.filter(pk=cancelled.pk).update(finished_at=cancelled.created_at + timedelta(seconds=300))
    Run.objects.filter(pk=old.pk).update(created_at=old.created_at - timedelta(days=31))
    stats = re.search(r"<dl[^>]*data-stats>(.*?)</dl>", page(ops_client), re.DOTALL)
    assert stats
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", stats.group(1)))
    assert "Runs started 4" in text
    assert "75% (3 of 4 finished)" in text
    assert "Median duration 20" in text  # of 10, 20, 90, 300 seconds: the lower middle


def test_the_page_takes_as_many_queries_with_many_runs_and_versions_as_with_one(
    ops_client: Client, ops: Any, digest: WorkflowVersion, django_assert_num_queries: Any
) -> None:
    publish_v2()
    for index in range(15):
        drive(transitions.start_run(workflow="digest", input={"topic": f"t{index}"}))
    # session, user, the workflow, may see it, versions, recent runs, their progress and
    # for_each progress, two figures, may start, may change, its triggers, its daily figures:
    # none per run or per version.
    with django_assert_num_queries(14):
        html = page(ops_client)
    assert html.count("<tr data-run=") == 10
    assert "Every run of Daily digest" in html and 'href="/runs/?workflow=digest"' in html
