"""Error pages through Django's real handlers with DEBUG off (issue 11): each says in the
product's layout what happened and where to go next, and shows no stack or secret; a 500 renders
even when the database answers nothing; paths under /api/ keep their JSON errors; refusals of an
htmx action carry their reason in the answer, for static/js/baton.js to show."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.db import OperationalError, connection
from django.template import loader
from django.test import Client

from orchestration import transitions
from orchestration.models import Run
from orchestration.status import RunStatus
from tests.support import drive, load_workflow

pytestmark = pytest.mark.django_db

# Waits for an approval, so the run stays open for a cancel.
ARTICLE = """
agents:
  - {name: writer, kind: python, config: {callable: "tests.agents.basic:echo"}}
workflow:
  key: article
  name: Article
  owner: ops
  access: {viewers: [auditors]}
  steps:
    - {key: draft, agent: writer, input: {headline: Tide pools}}
    - key: review
      after: [draft]
      approval: {title: 'Publish it?', approvers: {users: [approver]}, deadline: 2h}
"""
SECRET = "sk-live-0123456789abcdef"
NOT_YOURS = (
    "You may see this run but not change it: ask its workflow's owner to add you to an operator group."
)


@pytest.fixture(autouse=True)
def _production_like(settings: Any) -> None:
    # What a deployment runs: Django's own 404/500 handlers, never the technical pages.
    settings.DEBUG = False


@pytest.fixture
def client_of(client: Client) -> Callable[[Any], Client]:
    def sign_in(user: Any) -> Client:
        client.force_login(user)
        client.raise_request_exception = False
        return client

    return sign_in


@pytest.fixture
def open_run(ops: Any, approver: Any) -> Run:
    Group.objects.get_or_create(name="auditors")
    load_workflow(ARTICLE)
    return drive(transitions.start_run(workflow="article", started_by=ops))


@pytest.fixture
def auditor(django_user_model: Any) -> Any:
    user = django_user_model.objects.create_user("audrey", "audrey@example.com", "audrey-pass-1")
    user.groups.add(Group.objects.get_or_create(name="auditors")[0])
    return user


def reason_on(page: str) -> str:
    found = re.search(r"<p class=\"error-page__reason\" data-refusal-reason>(.*?)</p>", page, re.DOTALL)
    assert found, "the page has no marked reason"
    return found.group(1)


def assert_product_page(page: str, *, links: list[str]) -> None:
    assert '<header class="topbar">' in page and '<nav class="nav" aria-label="Main">' in page
    assert 'class="card error-page"' in page
    for href in links:
        assert f'href="{href}"' in page, f"no way on to {href}"
    assert "Traceback" not in page and "Exception" not in page


# --- 404 ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/no/such/page/", "/runs/999999/", "/workflows/no-such-workflow/"])
def test_an_unknown_address_is_the_products_404_naming_it(
    client_of: Callable[[Any], Client], ops: Any, path: str
) -> None:
    response = client_of(ops).get(path)

    assert response.status_code == 404
    page = response.content.decode()
    assert '<h1 id="error-title">Nothing here</h1>' in page
    assert f"<code>{path}</code>" in reason_on(page)
    assert_product_page(page, links=["/", "/approvals/"])


def test_the_404_names_the_address_percent_encoded_never_as_markup(
    client_of: Callable[[Any], Client], ops: Any
) -> None:
    page = client_of(ops).get("/<script>alert(1)</script>/").content.decode()
    assert "<script>alert(1)</script>" not in page
    assert "<code>/%3Cscript%3Ealert%281%29%3C/script%3E/</code>" in reason_on(page)


def test_a_missing_run_is_named_without_the_models_words(
    client_of: Callable[[Any], Client], ops: Any
) -> None:
    # get_object_or_404's message names the model and the query: not for the page.
    page = client_of(ops).get("/runs/999999/").content.decode()
    assert "No Run matches" not in page and "query" not in page


@pytest.mark.parametrize(
    ("path", "detail"),
    [
        ("/api/no-such-endpoint", "No API endpoint at /api/no-such-endpoint."),
        ("/api/approvals/999999", "No such item."),
    ],
)
def test_an_unknown_api_path_stays_json(
    client_of: Callable[[Any], Client], ops: Any, path: str, detail: str
) -> None:
    response = client_of(ops).get(path)
    assert response.status_code == 404
    assert response["Content-Type"].startswith("application/json")
    assert json.loads(response.content)["detail"] == detail


# --- 405 ----------------------------------------------------------------------------------


def test_an_action_opened_as_a_page_says_it_is_one_and_changes_nothing(
    client_of: Callable[[Any], Client], open_run: Run, ops: Any
) -> None:
    response = client_of(ops).get(f"/runs/{open_run.pk}/cancel/")

    assert response.status_code == 405
    assert response["Allow"] == "POST"
    page = response.content.decode()
    assert '<h1 id="error-title">This address is an action, not a page</h1>' in page
    assert "it was opened with GET" in page
    open_run.refresh_from_db()
    assert open_run.status == RunStatus.RUNNING


def test_the_api_and_the_webhooks_keep_their_own_405(client_of: Callable[[Any], Client], ops: Any) -> None:
    assert "error-page" not in client_of(ops).get("/hooks/anything").content.decode()
    assert "error-page" not in client_of(ops).delete("/api/approvals").content.decode()


# --- 403 ----------------------------------------------------------------------------------


def test_a_refused_action_is_the_products_403_with_its_reason(
    client_of: Callable[[Any], Client], open_run: Run, auditor: Any
) -> None:
    response = client_of(auditor).post(f"/runs/{open_run.pk}/cancel/", {"reason": "stop"})

    assert response.status_code == 403
    page = response.content.decode()
    assert '<h1 id="error-title">You may not open this</h1>' in page
    assert reason_on(page) == NOT_YOURS.replace("'", "&#x27;")
    assert_product_page(page, links=["/approvals/", "/"])
    open_run.refresh_from_db()
    assert open_run.status == RunStatus.RUNNING and open_run.finished_at is None


def test_a_refused_htmx_action_answers_with_the_reason_marked_for_the_page(
    client_of: Callable[[Any], Client], open_run: Run, auditor: Any
) -> None:
    response = client_of(auditor).post(
        f"/runs/{open_run.pk}/cancel/", {"reason": "stop"}, HTTP_HX_REQUEST="true"
    )

    # htmx does not swap a 403 (base.html's htmx-config); baton.js reads the marked sentence.
    assert response.status_code == 403
    assert reason_on(response.content.decode()) == NOT_YOURS.replace("'", "&#x27;")
    open_run.refresh_from_db()
    assert open_run.status == RunStatus.RUNNING


def test_someone_who_may_not_see_the_run_is_told_so(
    client_of: Callable[[Any], Client], open_run: Run, outsider: Any
) -> None:
    response = client_of(outsider).get(f"/runs/{open_run.pk}/")
    assert response.status_code == 403
    assert reason_on(response.content.decode()) == "You may not see this run."


def test_a_stale_form_is_a_403_saying_reload_and_changes_nothing(ops: Any, open_run: Run) -> None:
    # A page left open while its person signed in again elsewhere carries an old CSRF token.
    client = Client(enforce_csrf_checks=True)
    client.force_login(ops)

    response = client.post(f"/runs/{open_run.pk}/cancel/", {"reason": "stop"}, HTTP_HX_REQUEST="true")

    assert response.status_code == 403
    page = response.content.decode()
    assert "Reload the page and try again; nothing was changed." in reason_on(page)
    assert "CSRF verification failed" not in page
    assert_product_page(page, links=["/", "/approvals/"])
    open_run.refresh_from_db()
    assert open_run.status == RunStatus.RUNNING


# --- 500 ----------------------------------------------------------------------------------


def test_a_view_that_fails_is_the_products_500_without_its_details(
    client_of: Callable[[Any], Client], open_run: Run, ops: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"could not reach the model provider with key {SECRET}")

    monkeypatch.setattr("dashboard.read_models.run_page", broken)

    response = client_of(ops).get(f"/runs/{open_run.pk}/")

    assert response.status_code == 500
    page = response.content.decode()
    assert '<h1 id="error-title">Something went wrong on our side</h1>' in page
    assert "Nothing you sent is lost" in reason_on(page)
    assert 'href="/"' in page and '<header class="topbar">' in page
    assert SECRET not in page and "RuntimeError" not in page and "Traceback" not in page


@contextmanager
def database_down() -> Iterator[None]:
    """Every query fails as it does when PostgreSQL has gone away."""

    def refuse(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        raise OperationalError("could not connect to server: Connection refused")

    with connection.execute_wrapper(refuse):
        yield


def test_a_page_asked_for_while_the_database_is_down_is_still_the_products_500(
    client_of: Callable[[Any], Client], ops: Any
) -> None:
    client = client_of(ops)
    with database_down():
        # Signed in before the outage: reading the session is the first query that fails.
        response = client.get("/")

    assert response.status_code == 500
    page = response.content.decode()
    assert "Something went wrong on our side" in page
    assert "OperationalError" not in page and "Connection refused" not in page


def test_the_api_says_the_database_is_down_in_json(client_of: Callable[[Any], Client], ops: Any) -> None:
    client = client_of(ops)
    with database_down():
        response = client.get("/api/approvals", HTTP_AUTHORIZATION="Bearer not-a-real-token")

    assert response.status_code == 503
    assert response["Content-Type"].startswith("application/json")
    assert "database is unavailable" in json.loads(response.content)["detail"]


# --- 400 ----------------------------------------------------------------------------------


def test_a_request_django_refuses_to_read_is_the_products_400_and_changes_nothing(
    client_of: Callable[[Any], Client], open_run: Run, ops: Any, settings: Any
) -> None:
    settings.DATA_UPLOAD_MAX_NUMBER_FIELDS = 10
    fields = {f"field{n}": "x" for n in range(11)}

    response = client_of(ops).post(f"/runs/{open_run.pk}/cancel/", fields)

    assert response.status_code == 400
    page = response.content.decode()
    assert '<h1 id="error-title">Baton could not read this request</h1>' in page
    assert "nothing was changed" in reason_on(page)
    assert 'href="/static/css/baton.css"' in page and 'href="/"' in page
    assert "TooManyFields" not in page and "DATA_UPLOAD" not in page
    open_run.refresh_from_db()
    assert open_run.status == RunStatus.RUNNING


def test_the_400_and_500_pages_render_from_nothing_and_ask_nothing_of_the_database(
    django_assert_num_queries: Any,
) -> None:
    with django_assert_num_queries(0):
        for name in ("400.html", "405.html", "500.html"):
            page = loader.get_template(name).render()
            assert 'class="card error-page"' in page and "data-refusal-reason" in page
