"""Turning the start form's text into run input, and start_run's message back into field errors."""

from __future__ import annotations

from django.http import QueryDict

from dashboard import inputs

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
