"""The run page's read model: the page, its htmx refresh and (next) the live push draw the same
context, built from (run, user) without a request, in a fixed number of queries; and a boosted
request gets the whole page."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from pytest_django import DjangoAssertNumQueries

from dashboard.read_models import agents_page, run_page
from orchestration import transitions
from orchestration.models import WorkflowVersion
from tests.support import drive

pytestmark = pytest.mark.django_db


def test_the_run_page_is_built_from_the_run_and_a_person_in_a_fixed_number_of_queries(
    ops: Any, digest: WorkflowVersion, django_assert_num_queries: DjangoAssertNumQueries
) -> None:
    run = drive(transitions.start_run(workflow="digest", input={"topic": "tides"}, started_by=ops))
    run.refresh_from_db()
    # With the Gantt timeline's one query (the steps' status events) and the shown rows' outputs.
    with django_assert_num_queries(15):
        context = run_page(run, ops)

    assert [row.step.step_key for row in context["steps"]] == ["research", "summarise", "publish"]
    assert all(row.latest for row in context["steps"])
    assert (context["steps_done"], context["steps_total"]) == (3, 3)
    assert context["can_operate"] is True


def test_a_viewer_gets_the_same_run_without_the_cancel_button(
    ops: Any, viewer: Any, digest: WorkflowVersion
) -> None:
    run = transitions.start_run(workflow="digest", input={"topic": "tides"}, started_by=ops)
    assert run_page(run, viewer)["can_operate"] is False
    assert run_page(run, ops)["can_operate"] is True


def test_the_agents_page_is_built_from_a_person_alone(ops: Any, digest: WorkflowVersion) -> None:
    names = {row.agent.name for row in agents_page(ops)["rows"]}
    assert {"echo", "upper"} <= names


@pytest.mark.parametrize("boosted", [False, True])
def test_htmx_gets_the_partial_and_a_boosted_link_the_whole_page(
    ops_client: Client, ops: Any, digest: WorkflowVersion, boosted: bool
) -> None:
    run = transitions.start_run(workflow="digest", input={"topic": "tides"}, started_by=ops)
    headers = {"HTTP_HX_REQUEST": "true", **({"HTTP_HX_BOOSTED": "true"} if boosted else {})}
    response = ops_client.get(reverse("dashboard:run", args=[run.pk]), **headers)

    page = response.content.decode()
    assert ("<html" in page) is boosted
    assert '<div id="run-live"' in page
    # Caches keep the partial, the boosted page and the plain page apart.
    assert {"HX-Request", "HX-Boosted"} <= {h.strip() for h in response["Vary"].split(",")}
