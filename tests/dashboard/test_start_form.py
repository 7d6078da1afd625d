"""The start form drawn from an input schema's keywords: labels, help, the browser's own checks,
lists entered item by item, and the server's refusals shown beside each field."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.http import QueryDict
from django.test import Client
from django.urls import reverse

from dashboard import inputs
from orchestration.models import Run, WorkflowVersion
from tests.dashboard.conftest import AGENTS
from tests.support import load_workflow

pytestmark = pytest.mark.django_db

START = reverse("dashboard:start", args=["refunds"])
REFUNDS = (
    AGENTS
    + """
workflow:
  key: refunds
  name: Refunds
  owner: ops
  inputs:
    refund_amount: {type: number, required: true, minimum: 0, maximum: 500, default: 10, description: In euros}
    reason: {type: string, title: Why, max_length: 40}
    order: {type: string, pattern: "[A-Z]{2}-[0-9]{4}"}
    email: {type: string, format: email}
    tags:
      type: list
      title: Tags
      max_items: 3
      default: [late, broken]
      items: {type: string, min_length: 2}
    counts: {type: list, items: {type: integer, minimum: 1}}
    kinds: {type: list, items: {type: string, enum: [a, b]}}
    lines: {type: list, items: {type: object}}
  steps:
    - {key: pay, agent: echo}
"""
)


@pytest.fixture
def refunds(ops: Any) -> WorkflowVersion:
    version = load_workflow(REFUNDS)
    assert version is not None
    return version


def form_html(client: Client) -> str:
    page = client.get(reverse("dashboard:workflows")).content.decode()
    match = re.search(r'<form id="start-refunds".*?</form>', page, re.DOTALL)
    assert match, "no start form for refunds"
    return match.group(0)


def tag(html: str, name: str, kind: str = "input") -> str:
    """The first <input> (or other `kind`) tag with this name attribute."""
    match = re.search(rf'<{kind}\b[^>]*\bname="{name}"[^>]*>', html)
    assert match, f"no <{kind} name={name}>"
    return match.group(0)


# --- what the form shows -----------------------------------------------------------------------


def test_a_field_is_labelled_by_its_title_or_its_name_humanised_and_described_by_its_description(
    ops_client: Client, refunds: WorkflowVersion
) -> None:
    html = form_html(ops_client)
    assert re.search(
        r'<label class="field__label" for="input-refunds-refund_amount">\s*Refund amount <abbr', html
    )
    assert re.search(r'<label class="field__label" for="input-refunds-reason">\s*Why\s', html)
    assert 'aria-describedby="input-refunds-refund_amount-help"' in tag(html, "refund_amount")
    assert '<p class="field__help" id="input-refunds-refund_amount-help">In euros</p>' in html


def test_the_browser_is_told_the_schemas_checks(ops_client: Client, refunds: WorkflowVersion) -> None:
    html = form_html(ops_client)
    amount = tag(html, "refund_amount")
    for attribute in ('type="number"', 'step="any"', 'min="0"', 'max="500"', "required", 'value="10"'):
        assert attribute in amount
    assert 'maxlength="40"' in tag(html, "reason")
    assert 'pattern="[A-Z]{2}-[0-9]{4}"' in tag(html, "order")
    assert 'type="email"' in tag(html, "email")
    assert 'type="number"' in tag(html, "counts") and 'min="1"' in tag(html, "counts")


def test_a_list_of_strings_is_one_input_per_item_with_spare_slots_up_to_its_most(
    ops_client: Client, refunds: WorkflowVersion
) -> None:
    html = form_html(ops_client)
    items = re.findall(
        r'<input type="text" name="tags" value="([^"]*)" aria-label="Tags, item (\d)" minlength="2">', html
    )
    # Two defaults and one spare slot: max_items is 3.
    assert items == [("late", "1"), ("broken", "2"), ("", "3")]
    assert "data-item-add hidden>Add another</button>" in html
    assert "data-item-remove hidden>Remove</button>" in html
    # A list of choices is a select per item; a list of objects stays a JSON box.
    assert re.search(
        r'<select name="kinds" aria-label="Kinds, item 1">\s*<option value="">—</option>\s*<option value="a">a</option>',
        html,
    )
    assert re.search(r'<textarea id="input-refunds-lines" name="lines"', html)


# --- parsing -----------------------------------------------------------------------------------


def test_item_inputs_become_a_typed_list_and_blank_slots_are_skipped(refunds: WorkflowVersion) -> None:
    schema = refunds.spec["inputs"]
    values, errors = inputs.parse(
        schema, QueryDict("refund_amount=3&tags=ab&tags=&tags=cd&counts=2&counts=&kinds=b")
    )
    assert errors == {}
    assert values["tags"] == ["ab", "cd"] and values["counts"] == [2] and values["kinds"] == ["b"]


def test_an_item_that_is_not_its_type_is_named_by_its_number(refunds: WorkflowVersion) -> None:
    _, errors = inputs.parse(
        refunds.spec["inputs"], QueryDict("refund_amount=1&counts=2&counts=many&kinds=z")
    )
    assert errors["counts"] == "item 2: enter a whole number"
    assert errors["kinds"] == "item 1: 'z' is not one of the choices"


def test_a_blank_required_field_is_an_error_not_its_default(refunds: WorkflowVersion) -> None:
    values, errors = inputs.parse(refunds.spec["inputs"], QueryDict("refund_amount=+"))
    assert errors == {"refund_amount": "required"}
    assert "refund_amount" not in values


def test_a_blank_optional_field_is_left_out_so_its_default_applies(refunds: WorkflowVersion) -> None:
    values, errors = inputs.parse(refunds.spec["inputs"], QueryDict("refund_amount=1&tags=&tags="))
    assert errors == {} and "tags" not in values


# --- starting a run ----------------------------------------------------------------------------


def test_a_refund_below_the_minimum_is_refused_beside_its_field_and_what_was_typed_stays(
    ops_client: Client, refunds: WorkflowVersion
) -> None:
    data = {"refund_amount": "-5", "tags": ["ab", "c"], "email": "nope", "reason": "late parcel"}
    for headers in ({}, {"HX-Request": "true"}):
        response = ops_client.post(START, data, headers=headers)
        assert response.status_code == 422
        html = response.content.decode()
        assert (
            '<p class="field__error" id="input-refunds-refund_amount-error">'
            "refund_amount: -5 is less than the minimum 0</p>"
        ) in html
        assert "tags: item 2: 1 character, at least 2 are needed" in html
        assert "email: &#x27;nope&#x27; is not an email address" in html
        amount = tag(html, "refund_amount")
        assert 'value="-5"' in amount and 'aria-invalid="true"' in amount
        assert "input-refunds-refund_amount-error" in amount
        assert 'value="late parcel"' in tag(html, "reason")
        assert re.findall(r'name="tags" value="([^"]*)"', html) == ["ab", "c", ""]
    assert not Run.objects.exists()


def test_a_filled_in_form_starts_the_run_with_typed_values(
    ops_client: Client, refunds: WorkflowVersion
) -> None:
    response = ops_client.post(
        START, {"refund_amount": "12.5", "order": "AB-1234", "tags": ["ab", "", "cd"], "counts": ["4"]}
    )
    assert response.status_code == 302
    run = Run.objects.get()
    assert run.input["refund_amount"] == 12.5
    assert run.input["tags"] == ["ab", "cd"] and run.input["counts"] == [4]


def test_what_someone_types_into_a_pattern_field_never_breaks_the_page(
    ops_client: Client, refunds: WorkflowVersion
) -> None:
    response = ops_client.post(START, {"refund_amount": "1", "order": "<b>x</b>" * 200})
    assert response.status_code == 422
    html = response.content.decode()
    assert "order: 1,600 characters, at most 1,000 are checked against a pattern" in html
    assert "<b>x</b>" not in html
