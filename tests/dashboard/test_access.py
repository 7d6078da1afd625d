"""Every dashboard page asks who you are first; logging in and out work through the forms."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from orchestration import transitions
from orchestration.models import Run, WorkflowVersion
from orchestration.status import RunStatus

pytestmark = pytest.mark.django_db


@pytest.fixture
def run(digest: WorkflowVersion) -> Run:
    return transitions.start_run(workflow="digest", input={"topic": "tides"})


@pytest.mark.parametrize("page", ["runs", "workflows", "agents", "run"])
def test_every_page_sends_an_anonymous_visitor_to_the_login_page(client: Client, run: Run, page: str) -> None:
    url = reverse(f"dashboard:{page}", args=[run.pk] if page == "run" else [])
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"] == f"{reverse('login')}?next={url}"


def test_an_anonymous_visitor_cannot_start_a_run(client: Client, digest: WorkflowVersion) -> None:
    response = client.post(reverse("dashboard:start", args=["digest"]), {"topic": "tides"})
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))
    assert not Run.objects.exists()


def test_an_anonymous_visitor_cannot_cancel_a_run(client: Client, run: Run) -> None:
    response = client.post(reverse("dashboard:cancel", args=[run.pk]))
    assert response.status_code == 302
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING


def test_an_operations_lead_logs_in_through_the_form_and_lands_on_runs(client: Client, ops: Any) -> None:
    page = client.get(reverse("login"))
    assert b'name="username"' in page.content
    response = client.post(reverse("login"), {"username": "ops", "password": "ops-pass-1"}, follow=True)
    assert response.redirect_chain[-1][0] == reverse("dashboard:runs")
    assert b"Log out" in response.content


def test_a_wrong_password_is_refused_with_a_message(client: Client, ops: Any) -> None:
    response = client.post(reverse("login"), {"username": "ops", "password": "nope"})
    assert response.status_code == 200
    assert b"Please enter a correct username and password" in response.content


def test_logging_out_is_a_post_with_the_csrf_token(client: Client, ops: Any) -> None:
    client.force_login(ops)
    page = client.get(reverse("dashboard:runs")).content.decode()
    assert f'action="{reverse("logout")}"' in page
    assert "csrfmiddlewaretoken" in page
    response = client.post(reverse("logout"))
    assert response.status_code == 302
    assert client.get(reverse("dashboard:runs")).status_code == 302


def test_the_csrf_token_rides_on_the_body_for_htmx(ops_client: Client) -> None:
    page = ops_client.get(reverse("dashboard:runs")).content.decode()
    assert "<body hx-headers='{\"X-CSRFToken\": \"" in page


def test_only_staff_see_the_admin_link(client: Client, ops: Any, admin_user: Any) -> None:
    client.force_login(ops)
    assert b'href="/admin/"' not in client.get(reverse("dashboard:runs")).content
    client.force_login(admin_user)
    assert b'href="/admin/"' in client.get(reverse("dashboard:runs")).content
