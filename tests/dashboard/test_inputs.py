"""Turning the start form's text into run input, and start_run's message back into field errors."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.http import QueryDict
from django.test import Client
from django.urls import reverse

from dashboard import inputs
from orchestration.models import Run, WorkflowVersion

START = reverse("dashboard:start", args=["digest"])

SCHEMA = {
    "n": {"type": "integer"},
    "x": {"type": "number"},
    "flag": {"type": "boolean", "default": True},
    "tags": {"type": "list"},
    "meta": {"type": "object"},
    "size": {"type": "integer", "enum": [1, 2]},
    "name": {"type": "string"},
}


def parse(text: str) -> tuple[dict, dict]:
    return inputs.parse(SCHEMA, QueryDict(text))


def test_numbers_json_and_choices_become_their_types() -> None:
    values, errors = parse("n=4&x=2.5&flag=on&tags=%5B1%5D&meta=%7B%7D&size=2&name=ann")
    assert errors == {}
    assert values == {"n": 4, "x": 2.5, "flag": True, "tags": [1], "meta": {}, "size": 2, "name": "ann"}


def test_blank_fields_are_left_out_but_an_unticked_box_is_false() -> None:
    values, errors = parse("n=&name=")
    assert values == {"flag": False}
    assert errors == {}


def test_text_that_is_not_the_type_is_named_by_field() -> None:
    _, errors = parse("n=1.5&x=abc&tags=%5B&size=3")
    assert errors["n"] == "enter a whole number"
    assert errors["x"] == "enter a number"
    assert errors["tags"].startswith("not valid JSON")
    assert errors["size"] == "'3' is not one of the choices"


def test_infinity_is_not_a_number_we_accept() -> None:
    assert parse("x=inf")[1] == {"x": "enter a finite number"}


def test_start_runs_message_is_split_by_field() -> None:
    errors = inputs.field_errors("input `n`: required; input `tags`: expected list, got dict; input: odd", {"n", "tags"})
    assert errors == {"n": "required", "tags": "expected list, got dict", "": "input: odd"}


def test_the_form_prefills_defaults_and_keeps_what_was_typed() -> None:
    fresh = {f.name: f for f in inputs.build_form({"flag": {"type": "boolean", "default": True}, "tags": {"type": "list", "default": ["a"]}}).fields}
    assert fresh["flag"].checked and fresh["flag"].widget == "checkbox"
    assert fresh["tags"].value == '[\n  "a"\n]' and fresh["tags"].widget == "json"
    typed = inputs.build_form(SCHEMA, QueryDict("n=seven"), {"n": "enter a whole number"})
    first = typed.fields[0]
    assert (first.value, first.error, first.widget) == ("seven", "enter a whole number", "number")
    assert typed.problems == ["n: enter a whole number"]


def test_a_string_with_line_breaks_gets_a_textarea_so_they_survive() -> None:
    fields = {f.name: f for f in inputs.build_form({"notes": {"type": "string", "default": "one\ntwo"}, "title": {"type": "string", "default": "one line"}}).fields}
    assert fields["notes"].widget == "textarea"
    assert fields["title"].widget == "text"


# --- values that cannot be stored, refused through the page -------------------------------------


@pytest.mark.parametrize(
    ("field", "text", "problem"),
    [
        ("sections", '["\\ud800"]', "contains a lone surrogate"),
        ("topic", "tides\x00", "contains a NUL character"),
        ("sections", "[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ("sections", json.dumps([[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]), "nested more than 32 levels deep"),
    ],
)
def test_the_start_form_refuses_a_value_that_cannot_be_stored_with_422_and_the_field_named(
    ops_client: Client, digest: WorkflowVersion, field: str, text: str, problem: str
) -> None:
    data = {"topic": "tides", field: text}
    for headers in ({}, {"HX-Request": "true"}):
        response = ops_client.post(START, data, headers=headers)
        assert response.status_code == 422
        page = response.content.decode()
        assert f'<p class="field__error" id="input-digest-{field}-error">{field}: ' in page and problem in page
    assert not Run.objects.exists()


def test_the_start_form_refuses_an_input_over_the_size_limit_naming_the_field_and_the_limit(
    ops_client: Client, digest: WorkflowVersion, settings: Any
) -> None:
    settings.BATON_MAX_INPUT_BYTES = 4096
    response = ops_client.post(START, {"topic": "tides", "sections": json.dumps(list(range(2000)))}, headers={"HX-Request": "true"})
    assert response.status_code == 422
    page = response.content.decode()
    assert "sections: larger than 4,096 bytes as JSON (BATON_MAX_INPUT_BYTES)" in page
    assert not Run.objects.exists()


def test_a_request_body_over_the_limit_is_refused_before_it_is_read_with_413_naming_the_limit(
    ops_client: Client, digest: WorkflowVersion, settings: Any
) -> None:
    # The 2 MB post of a 1,000,000-item list froze the default set-up.
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
    body = {"topic": "tides", "sections": json.dumps(list(range(5000)))}
    response = ops_client.post(START, body, headers={"HX-Request": "true"})
    assert response.status_code == 413
    assert "at most 10,000 are accepted (BATON_MAX_REQUEST_BYTES)" in response.content.decode()
    api = ops_client.post("/api/approvals/1/decision", {"comment": "x" * 20_000}, content_type="application/json")
    assert api.status_code == 413 and "BATON_MAX_REQUEST_BYTES" in api.json()["detail"]
    assert not Run.objects.exists()
