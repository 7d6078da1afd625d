"""One item's page and its actions: what will happen and why, approve / reject in place, stale
clicks, manual task forms, exception retry / skip / abort, and reassignment."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from approvals import transitions as decisions
from approvals.models import Item
from orchestration import transitions
from orchestration.agents import PermanentError
from orchestration.models import Run, StepRun
from orchestration.status import RunStatus
from tests.support import drive, load_workflow

pytestmark = pytest.mark.django_db


def picky(payload: Any, context: Any) -> Any:
    """Fails for good unless its input says ok: an owner fixes that by editing the input."""
    if not (isinstance(payload, dict) and payload.get("ok")):
        raise PermanentError("the input is not ok")
    return {"done": True}


def chatty(payload: Any, context: Any) -> Any:
    """Agent output worth escaping and folding."""
    return {"summary": payload["topic"], "notes": "line of notes " * 40}


AGENTS = """
agents:
  - {name: echo, kind: python, config: {callable: "tests.agents.basic:echo"}}
  - {name: chatty, kind: python, config: {callable: "tests.approvals.test_views_item:chatty"}}
  - {name: payments, kind: python, risk: high, config: {callable: "tests.agents.basic:echo"}}
  - {name: picky, kind: python, config: {callable: "tests.approvals.test_views_item:picky"}}
"""

ARTICLE = (
    AGENTS
    + """
workflow:
  key: article
  name: Article
  owner: ops
  inputs: {topic: {type: string, required: true}}
  steps:
    - {key: draft, agent: chatty, input: {topic: "{{ input.topic }}"}}
    - key: review
      after: [draft]
      approval:
        title: "Publish '{{ input.topic }}'?"
        details: "{{ steps.draft.output.summary }}"
        approvers: {users: [approver]}
        deadline: 48h
    - {key: publish, agent: echo, after: [review], input: {topic: "{{ input.topic }}"}}
"""
)

REFUND = (
    AGENTS
    + """
workflow:
  key: refund
  name: Refunds
  owner: ops
  inputs: {customer: {type: string, required: true}}
  steps:
    - {key: lookup, agent: echo, input: {order: A-1}}
    - key: pay
      agent: payments
      after: [lookup]
      input: {customer: "{{ input.customer }}", amount: 120, order: "{{ steps.lookup.output.order }}"}
      gate: {approvers: {users: [approver]}}
"""
)

ADDRESS = (
    AGENTS
    + """
workflow:
  key: address
  name: Address fix
  owner: ops
  steps:
    - key: fix
      manual:
        title: Correct the customer's address
        instructions: The welcome pack came back.
        assignees: {users: [approver]}
        form:
          street: {type: string, required: true, description: Street and number}
          floor: {type: integer}
          verified: {type: boolean}
    - {key: send, agent: echo, after: [fix], input: {street: "{{ steps.fix.output.street }}"}}
"""
)

FRAGILE = (
    AGENTS
    + """
workflow:
  key: fragile
  name: Fragile
  owner: ops
  on_failure: escalate
  steps:
    - {key: call, agent: picky, input: {ok: false, n: 1}}
    - {key: after, agent: echo, after: [call], input: {got: "{{ steps.call.output }}"}}
"""
)


def start(key: str, by: Any, **input: Any) -> Run:
    return drive(transitions.start_run(workflow=key, input=input, started_by=by))


def article(ops: Any, topic: str = "tides") -> Item:
    load_workflow(ARTICLE)
    return Item.objects.get(run=start("article", ops, topic=topic))


def page_of(client: Client, item: Item) -> str:
    response = client.get(reverse("approvals:item", args=[item.pk]))
    assert response.status_code == 200
    return response.content.decode()


def post(client: Client, name: str, item: Item, data: dict[str, Any], *, htmx: bool = True) -> Any:
    extra = {"HTTP_HX_REQUEST": "true"} if htmx else {}
    return client.post(reverse(f"approvals:{name}", args=[item.pk]), {"place": "page", **data}, **extra)


def decide(client: Client, item: Item, decision: str, comment: str = "", **data: Any) -> Any:
    return post(client, "decide", item, {"decision": decision, "comment": comment, **data})


def triggered(response: Any) -> dict[str, Any]:
    return json.loads(response["HX-Trigger-After-Settle"])["approvals:decided"]


@pytest.fixture
def approver_client(client: Client, approver: Any) -> Client:
    client.force_login(approver)
    return client


@pytest.fixture
def ops_client(client: Client, ops: Any) -> Client:
    client.force_login(ops)
    return client


# ---------------------------------------------------------------------------------------------
# What will happen and why


def test_the_page_shows_what_is_asked_the_steps_that_led_here_the_graph_and_the_history(
    approver_client: Client, ops: Any
) -> None:
    item = article(ops, "the northern lights")
    # A viewer of the workflow too, so the page draws the whole run (test_run_access.py has
    # the assignee who is not).
    readers = Group.objects.create(name="readers")
    item.run.workflow.viewer_groups.add(readers)
    get_user_model().objects.get(username="approver").groups.add(readers)

    page = page_of(approver_client, item)

    assert "What you are asked to decide" in page
    assert '<div class="item-details">the northern lights</div>' in page
    assert 'id="step-draft"' in page  # the draft's output, where its graph node links to
    assert "line of notes" in page
    # The waiting step is outlined (a class: the Content-Security-Policy allows no inline style).
    assert (
        '<a class="node node--waiting node--highlight" href="#step-review" data-step="review" data-status="waiting">'
        in page
    )
    assert page.count("node--highlight") == 1
    assert 'data-status="notstarted"' in page  # publish has not started
    assert 'data-kind="created"' in page
    assert "assigned to approver" in page
    assert '<span class="person">approver</span>' in page
    assert "in 2 d" in page
    assert "If nobody decides" in page
    assert 'name="decision" value="approve"' in page


def test_a_gate_shows_the_exact_action_about_to_run(approver_client: Client, ops: Any) -> None:
    load_workflow(REFUND)
    item = Item.objects.get(run=start("refund", ops, customer="ACME Corp"), kind="gate")

    page = page_of(approver_client, item)

    assert "The exact action about to run" in page
    assert '<code class="agent-name">payments</code>' in page
    action = page.split("The exact action about to run", 1)[1].split("Steps that led here", 1)[0]
    assert "ACME Corp" in action
    assert "A-1" in action  # rendered from the earlier step's output, not the template
    assert "{{" not in action
    assert "high risk" in page


def test_agent_output_is_shown_as_text_never_as_markup(approver_client: Client, ops: Any) -> None:
    item = article(ops, "<script>alert('x')</script>")
    load_workflow(REFUND)
    gate = Item.objects.get(run=start("refund", ops, customer="<img src=x onerror=alert(1)>"), kind="gate")

    for page in (page_of(approver_client, item), page_of(approver_client, gate)):
        assert "<script>alert" not in page
        assert "<img src=x" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page_of(approver_client, item)
    assert "&lt;img src=x onerror=alert(1)&gt;" in page_of(approver_client, gate)
    inbox = approver_client.get(reverse("approvals:inbox")).content.decode()
    assert "<script>alert" not in inbox
    assert "Publish &#x27;&lt;script&gt;" in inbox


def test_long_outputs_are_folded(approver_client: Client, ops: Any) -> None:
    page = page_of(approver_client, article(ops))
    notes = page.split('id="step-draft"', 1)[1]
    assert re.search(r'<details class="fold" id="out-draft-notes"><summary><code>line of notes', notes)


def test_an_unknown_item_is_not_found(approver_client: Client) -> None:
    assert approver_client.get(reverse("approvals:item", args=[999])).status_code == 404


# ---------------------------------------------------------------------------------------------
# Approve and reject


def test_approving_records_the_decision_and_the_run_goes_on(
    approver_client: Client, ops: Any, approver: Any
) -> None:
    item = article(ops)

    response = decide(approver_client, item, "approve", "Looks right")

    assert response.status_code == 200
    body = response.content.decode()
    assert body.lstrip().startswith('<div id="item-live"')
    assert "You approved this." in body
    assert 'data-status="approved"' in body
    assert 'name="decision"' not in body
    item.refresh_from_db()
    assert (item.status, item.decided_by, item.comment) == ("approved", approver, "Looks right")
    run = drive(item.run)
    assert run.status == RunStatus.SUCCEEDED
    review = StepRun.objects.get(run=run, step_key="review")
    assert review.output["decision"] == "approve"


def test_after_a_decision_focus_moves_to_the_next_waiting_item(approver_client: Client, ops: Any) -> None:
    first = article(ops, "tides")
    second = article(ops, "owls")

    response = decide(approver_client, first, "approve")

    body = response.content.decode()
    assert re.search(
        rf'<a class="button button--primary button--block next-item" href="/approvals/{second.pk}/" data-next-item autofocus>',
        body,
    )
    assert triggered(response) == {"item": first.pk, "next": second.pk}

    last = decide(approver_client, second, "approve")
    assert "nothing else waits for you" in last.content.decode()
    assert triggered(last) == {"item": second.pk, "next": None}


def test_a_decision_from_an_inbox_row_returns_the_row_in_place(approver_client: Client, ops: Any) -> None:
    first = article(ops, "tides")
    second = article(ops, "owls")

    response = decide(approver_client, first, "approve", place="row")

    assert response.status_code == 200
    body = response.content.decode().strip()
    assert body.startswith(f'<tr id="item-row-{first.pk}" class="inbox-row inbox-row--done"')
    assert 'data-status="approved"' in body
    assert "You approved this." in body
    assert "by approver" in body
    assert triggered(response)["next"] == second.pk


def test_without_javascript_a_decision_comes_back_to_the_item_page(approver_client: Client, ops: Any) -> None:
    item = article(ops)

    response = post(approver_client, "decide", item, {"decision": "approve"}, htmx=False)

    assert response.status_code == 302
    assert response["Location"] == reverse("approvals:item", args=[item.pk])
    page = approver_client.get(response["Location"]).content.decode()
    assert "You approved this." in page
    assert "Outcome" in page


def test_rejecting_without_a_comment_is_refused_and_changes_nothing(
    approver_client: Client, ops: Any
) -> None:
    item = article(ops)

    on_page = decide(approver_client, item, "reject", "   ")
    in_row = decide(approver_client, item, "reject", place="row")
    without_js = post(approver_client, "decide", item, {"decision": "reject"}, htmx=False)

    for response in (on_page, in_row, without_js):
        assert response.status_code == 422
        assert "Say why you reject it." in response.content.decode()
    assert 'name="decision" value="reject"' in on_page.content.decode()  # the form is still there
    assert 'aria-invalid="true"' in in_row.content.decode()
    item.refresh_from_db()
    assert item.status == "pending"
    assert not item.votes.exists()


def test_rejecting_with_a_comment_stops_the_run_and_says_why(approver_client: Client, ops: Any) -> None:
    item = article(ops)

    response = decide(approver_client, item, "reject", "<b>Not</b> before the launch")

    assert response.status_code == 200
    body = response.content.decode()
    assert "You rejected this." in body
    assert "&lt;b&gt;Not&lt;/b&gt; before the launch" in body
    run = drive(item.run)
    assert run.status == RunStatus.FAILED
    assert "Not</b> before the launch" in run.error


def test_a_stale_click_changes_nothing_and_says_who_decided_and_when(
    approver_client: Client, ops: Any, admin_user: Any
) -> None:
    item = article(ops)
    with time_machine.travel(timezone.now().replace(hour=14, minute=2), tick=False):
        decisions.vote(item_id=item.pk, user=admin_user, decision="approve")

    for place in ("page", "row"):
        response = decide(approver_client, item, "reject", "too late?", place=place)
        assert response.status_code == 409
        assert "Nothing changed: already approved by admin at" in response.content.decode()
        assert "14:02" in response.content.decode()
    item.refresh_from_db()
    assert (item.status, item.decided_by, item.decision) == ("approved", admin_user, "approve")
    assert list(item.votes.values_list("user__username", flat=True)) == ["admin"]


def test_a_click_after_the_deadline_passed_is_refused(approver_client: Client, ops: Any) -> None:
    with time_machine.travel(timezone.now(), tick=False) as clock:
        item = article(ops)
        clock.shift(timedelta(hours=49))
        drive(item.run)  # the ticker applies the deadline

        response = decide(approver_client, item, "approve")

    assert response.status_code == 409
    assert "Nothing changed: expired" in response.content.decode()
    item.refresh_from_db()
    assert item.status == "expired"
    page = page_of(approver_client, item)
    assert "the deadline passed" in page
    assert 'name="decision"' not in page


def test_the_person_who_started_the_run_sees_it_but_may_not_approve_it(
    client: Client, ops: Any, approver: Any
) -> None:
    load_workflow(ARTICLE)
    item = Item.objects.get(run=start("article", approver, topic="mine"))
    client.force_login(approver)

    page = page_of(client, item)
    assert "you started this run, so someone else approves it" in page
    assert 'name="decision"' not in page
    assert decide(client, item, "approve").status_code == 403
    item.refresh_from_db()
    assert item.status == "pending"


def test_one_of_two_approvals_waits_for_the_second(client: Client, ops: Any, approver: Any) -> None:
    load_workflow(
        AGENTS
        + """
workflow:
  key: budget
  name: Budget
  owner: ops
  steps:
    - key: sign_off
      approval: {title: Budget, approvers: {users: [approver, ops]}, required: 2}
"""
    )
    carol = get_user_model().objects.create_user("carol", "carol@example.com", "carol-pass-1")
    item = Item.objects.get(run=start("budget", carol))
    client.force_login(approver)

    response = decide(client, item, "approve", "fine by me")

    body = response.content.decode()
    assert response.status_code == 200
    assert "You approved" in body
    assert "1 of 2 approvals so far" in body
    assert 'name="decision"' not in body
    assert 'class="vote vote--approve"' in body
    item.refresh_from_db()
    assert item.status == "pending"
    # Clicking again (a second tab) changes nothing.
    assert decide(client, item, "approve").status_code == 200
    assert item.votes.count() == 1


# ---------------------------------------------------------------------------------------------
# Manual tasks


def test_a_manual_task_shows_its_form_and_server_side_messages_per_field(
    approver_client: Client, ops: Any
) -> None:
    load_workflow(ADDRESS)
    item = Item.objects.get(run=start("address", ops))

    page = page_of(approver_client, item)
    assert "What to do" in page
    assert "The welcome pack came back." in page
    assert '<input type="text" id="task-street" name="street" value="">' in page
    assert '<input type="number" id="task-floor" name="floor" value="" step="1">' in page
    assert 'type="checkbox" id="task-verified" name="verified"' in page
    assert "Street and number" in page

    response = post(approver_client, "submit", item, {"street": "", "floor": "third"})

    assert response.status_code == 422
    body = response.content.decode()
    assert "The task was not submitted." in body
    # Every problem at once: the text that is no number, and the required field left empty.
    assert re.search(r'<p class="field__error" data-field="floor">Enter a whole number\.</p>', body)
    assert re.search(r'<p class="field__error" data-field="street">Required\.</p>', body)
    assert 'value="third"' in body  # what was typed comes back
    item.refresh_from_db()
    assert item.status == "pending"

    response = post(approver_client, "submit", item, {"street": "   ", "floor": "3"})
    assert response.status_code == 422
    assert re.search(r'<p class="field__error" data-field="street">Required\.</p>', response.content.decode())


def test_a_submitted_task_becomes_the_steps_output(approver_client: Client, ops: Any) -> None:
    load_workflow(ADDRESS)
    item = Item.objects.get(run=start("address", ops))

    response = post(
        approver_client, "submit", item, {"street": "1 Harbour Road", "floor": "3", "verified": "true"}
    )

    assert response.status_code == 200
    assert "Task submitted." in response.content.decode()
    item.refresh_from_db()
    assert item.status == "submitted"
    assert item.submitted == {"street": "1 Harbour Road", "floor": 3, "verified": True}
    run = drive(item.run)
    assert run.status == RunStatus.SUCCEEDED
    assert StepRun.objects.get(run=run, step_key="send").output == {"street": "1 Harbour Road"}


# ---------------------------------------------------------------------------------------------
# Exceptions


def exception(ops: Any) -> Item:
    """An exception item for ops, the owner, in a run somebody else started (the starter of a
    run may not resolve its exceptions: access.SELF_APPROVAL_KINDS)."""
    load_workflow(FRAGILE)
    starter = get_user_model().objects.create_user("sam", "sam@example.com", "sam-pass-1")
    return Item.objects.get(run=start("fragile", starter), kind="exception")


def test_an_exception_shows_what_went_wrong_and_how_to_resolve_it(ops_client: Client, ops: Any) -> None:
    item = exception(ops)

    page = page_of(ops_client, item)

    assert "What went wrong" in page
    assert "the input is not ok" in page
    assert "Retry step" in page
    assert "Skip with this output" in page
    assert "Abort the run" in page
    # The retry form starts from the input the step failed on.
    retry = re.search(r'<textarea id="retry-input"[^>]*>(.*?)</textarea>', page, re.DOTALL)
    assert retry and "&quot;ok&quot;: false" in retry.group(1) and "&quot;n&quot;: 1" in retry.group(1)


def test_an_exception_is_retried_with_edited_input(ops_client: Client, ops: Any) -> None:
    item = exception(ops)

    response = post(ops_client, "resolve", item, {"action": "retry", "input": '{"ok": true, "n": 2}'})

    assert response.status_code == 200
    assert "The step is running again." in response.content.decode()
    item.refresh_from_db()
    assert (item.status, item.decision) == ("resolved", "retry")
    run = drive(item.run)
    assert run.status == RunStatus.SUCCEEDED
    assert StepRun.objects.get(run=run, step_key="call").input == {"ok": True, "n": 2}


def test_a_retry_with_the_input_unchanged_is_a_plain_retry(ops_client: Client, ops: Any) -> None:
    item = exception(ops)
    post(ops_client, "resolve", item, {"action": "retry", "input": '{"n": 1, "ok": false}'})
    assert item.events.get(kind="resolved").data["edited_input"] is False


def test_an_exception_is_skipped_with_an_output_of_the_owners(ops_client: Client, ops: Any) -> None:
    item = exception(ops)

    response = post(ops_client, "resolve", item, {"action": "skip", "output": '{"done": "by hand"}'})

    assert response.status_code == 200
    run = drive(item.run)
    assert run.status == RunStatus.SUCCEEDED
    assert StepRun.objects.get(run=run, step_key="after").output == {"got": {"done": "by hand"}}


def test_an_exception_aborts_the_run(ops_client: Client, ops: Any) -> None:
    item = exception(ops)

    response = post(ops_client, "resolve", item, {"action": "abort", "comment": "the customer cancelled"})

    assert response.status_code == 200
    assert "The run was aborted." in response.content.decode()
    run = Run.objects.get(pk=item.run_id)
    assert run.status == RunStatus.FAILED
    assert run.error == "the customer cancelled"


def test_json_that_does_not_parse_is_refused_with_where_it_broke(ops_client: Client, ops: Any) -> None:
    item = exception(ops)

    response = post(ops_client, "resolve", item, {"action": "skip", "output": '{"done": '})

    assert response.status_code == 422
    assert "Not valid JSON (Expecting value, line 1 column 10)." in response.content.decode()
    assert "{&quot;done&quot;: " in response.content.decode()
    item.refresh_from_db()
    assert item.status == "pending"


def test_an_approver_may_not_resolve_the_owners_exception(approver_client: Client, ops: Any) -> None:
    item = exception(ops)
    assert approver_client.get(reverse("approvals:item", args=[item.pk])).status_code == 403
    assert post(approver_client, "resolve", item, {"action": "abort"}).status_code == 403


# ---------------------------------------------------------------------------------------------
# Reassignment


def test_an_approver_hands_an_item_to_someone_else_with_a_note(approver_client: Client, ops: Any) -> None:
    carol = get_user_model().objects.create_user("carol", "carol@example.com", "carol-pass-1")
    load_workflow(ARTICLE.replace("approvers: {users: [approver]}", "approvers: {users: [approver, carol]}"))
    item = Item.objects.get(run=start("article", ops, topic="tides"))

    response = post(
        approver_client, "reassign", item, {"to_user": "carol", "note": "Carol knows the legal side"}
    )

    assert response.status_code == 200
    body = response.content.decode()
    assert "Reassigned to carol." in body
    assert "Carol knows the legal side" in body  # in the history
    assert 'name="decision"' not in body
    assert list(item.users.all()) == [carol]


def test_reassigning_needs_a_known_person_and_a_note(approver_client: Client, ops: Any) -> None:
    item = article(ops)

    response = post(approver_client, "reassign", item, {"to_user": "nobody", "note": ""})

    assert response.status_code == 422
    body = response.content.decode()
    assert "No active user by that name." in body
    assert "Say why you hand it over." in body
    assert '<details class="reassign" open>' in body
    assert list(item.users.values_list("username", flat=True)) == ["approver"]
