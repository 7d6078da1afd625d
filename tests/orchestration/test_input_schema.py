"""The keywords of an input schema: refused at import when they make no sense, and checked on
every value a run is started with (the start form, the API and commands share the check)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from orchestration import definitions, transitions
from orchestration.models import Run, Workflow
from orchestration.spec import MAX_PATTERN_INPUT, SpecError, check_input_value, load_text

AGENTS = """
agents:
  - {name: echo, kind: python, config: {callable: "tests.agents.basic:echo"}}
"""


def workflow(inputs: str) -> str:
    return (
        AGENTS
        + """
workflow:
  key: refunds
  name: Refunds
  inputs:
"""
        + "".join(f"    {line}\n" for line in inputs.strip().splitlines())
        + """  steps:
    - {key: pay, agent: echo}
"""
    )


def rejected(inputs: str) -> str:
    with pytest.raises(SpecError) as caught:
        definitions.import_document(load_text(workflow(inputs)))
    assert not Workflow.objects.exists(), "a refused file must not change anything"
    return str(caught.value)


REFUNDS = """
refund: {type: number, required: true, minimum: 0, maximum: 500, title: Refund amount, description: In euros}
reason: {type: string, min_length: 3, max_length: 40}
order: {type: string, pattern: "[A-Z]{2}-[0-9]{4}"}
email: {type: string, format: email}
tags:
  type: list
  min_items: 1
  max_items: 3
  default: [late]
  items: {type: string, enum: [late, broken, lost]}
"""


@pytest.fixture
def refunds(db: Any) -> Workflow:
    definitions.import_document(load_text(workflow(REFUNDS)))
    return Workflow.objects.get(key="refunds")


# --- at import ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (
            "x: {type: string, minimum: 0}",
            "input 'x': field `minimum` applies only to integer and number inputs, not string",
        ),
        (
            "x: {type: integer, pattern: '[0-9]+'}",
            "input 'x': field `pattern` applies only to string inputs, not integer",
        ),
        (
            "x: {type: string, min_items: 1}",
            "input 'x': field `min_items` applies only to list inputs, not string",
        ),
        (
            "x: {type: integer, minimum: 10, maximum: 5}",
            "input 'x': field `minimum` (10) is more than field `maximum` (5)",
        ),
        (
            "x: {type: string, min_length: 9, max_length: 2}",
            "field `min_length` (9) is more than field `max_length` (2)",
        ),
        ("x: {type: integer, minimum: zero}", "input 'x': field `minimum` must be a number, not 'zero'"),
        (
            "x: {type: string, max_length: -1}",
            "field `max_length` must be a whole number of at least 0, not -1",
        ),
        (
            "x: {type: integer, minimum: 0, default: -1}",
            "input 'x': field `default`: -1 is less than the minimum 0",
        ),
        (
            "x: {type: string, format: email, default: nobody}",
            "field `default`: 'nobody' is not an email address",
        ),
        (
            "x: {type: integer, enum: [1, two]}",
            "input 'x': field `enum`: the choice 'two' does not fit (expected integer, got str)",
        ),
        (
            "x: {type: integer, enum: [1, 50], maximum: 10}",
            "the choice 50 does not fit (50 is more than the maximum 10)",
        ),
        ("x: {type: string, format: phone}", "input 'x': field `format`: 'phone' is not one of ['email']"),
        ("x: {type: string, pattern: '[a-'}", "input 'x': field `pattern`: not a valid regular expression"),
        ("x: {type: string, pattern: '(a+)+b'}", "field `pattern`: repeats a part that itself repeats"),
        (
            "x: {type: string, pattern: '(a|ab)*c'}",
            "field `pattern`: repeats a choice whose alternatives may start alike",
        ),
        ("x: {type: list, items: {type: list}}", "field `items.type`: 'list' is not one of"),
        ("x: {type: list, items: {type: integer, minimum: 1, default: 3}}", "unknown field `items.default`"),
        (
            "x: {type: list, items: {type: string}, default: [1]}",
            "field `default`: item 1: expected string, got int",
        ),
        ("x: {type: list, max_items: 1, default: [a, b]}", "field `default`: 2 items, at most 1 are allowed"),
    ],
)
def test_a_schema_keyword_that_makes_no_sense_is_refused_naming_the_input(
    db: Any, inputs: str, message: str
) -> None:
    assert message in rejected(inputs)


def test_an_unknown_keyword_is_refused_naming_the_allowed_ones(db: Any) -> None:
    message = rejected("x: {type: integer, min: 0}")
    assert "input 'x': unknown field `min` (allowed: default, description, enum, format, items" in message
    assert "minimum" in message


def test_a_pattern_is_bounded_in_length(db: Any) -> None:
    assert "field `pattern`: 501 characters; at most 500 are allowed" in rejected(
        f"x: {{type: string, pattern: '{'a' * 501}'}}"
    )


@pytest.mark.parametrize("pattern", ["(ab{2})*", "(foo|bar)+", "[A-Z]{2}-[0-9]{4}", "(x|y)*z"])
def test_a_pattern_without_a_risky_shape_is_accepted(db: Any, pattern: str) -> None:
    definitions.import_document(load_text(workflow(f"x: {{type: string, pattern: '{pattern}'}}")))
    assert Workflow.objects.get(key="refunds").latest_version.spec["inputs"]["x"]["pattern"] == pattern


def test_the_export_gives_the_keywords_back_and_imports_again_unchanged(refunds: Workflow) -> None:
    before = refunds.latest_version.spec["inputs"]
    exported = yaml.safe_load(definitions.export_document("refunds"))
    assert exported["workflow"]["inputs"]["refund"] == {
        "type": "number",
        "required": True,
        "title": "Refund amount",
        "description": "In euros",
        "minimum": 0,
        "maximum": 500,
    }
    definitions.import_document(load_text(definitions.export_document("refunds")))
    refunds.refresh_from_db()
    assert refunds.latest_version.spec["inputs"] == before
    assert refunds.versions.count() == 1, "the same file again is no new version"


# --- on every value ----------------------------------------------------------------------------


def started(**values: Any) -> str:
    """Start a refunds run with `values`, expect it refused, check nothing started; the message."""
    with pytest.raises(ValueError) as caught:
        transitions.start_run(workflow="refunds", input=values)
    assert not Run.objects.exists()
    return str(caught.value)


def test_a_refund_below_the_minimum_is_refused_naming_the_field(refunds: Workflow) -> None:
    assert started(refund=-5) == "input `refund`: -5 is less than the minimum 0"
    assert started(refund=500.5) == "input `refund`: 500.5 is more than the maximum 500"


def test_every_keyword_is_checked_and_every_problem_named_at_once(refunds: Workflow) -> None:
    message = started(
        refund=10, reason="no", order="ab-1234", email="not-an-address", tags=["late", "stolen"]
    )
    # In the schema's stored order, which PostgreSQL's jsonb keeps by key length: compare as a set.
    assert set(message.split("; ")) == {
        "input `reason`: 2 characters, at least 3 are needed",
        "input `order`: 'ab-1234' does not match the pattern [A-Z]{2}-[0-9]{4}",
        "input `email`: 'not-an-address' is not an email address",
        "input `tags`: item 2: 'stolen' is not one of ['late', 'broken', 'lost']",
    }


def test_a_list_is_held_to_its_item_counts(refunds: Workflow) -> None:
    assert started(refund=1, tags=[]) == "input `tags`: 0 items, at least 1 are needed"
    assert started(refund=1, tags=["late"] * 4) == "input `tags`: 4 items, at most 3 are allowed"


def test_a_blank_required_string_is_refused_like_a_missing_one(db: Any) -> None:
    definitions.import_document(load_text(workflow("who: {type: string, required: true}")))
    assert started(who="   ") == "input `who`: required"
    assert started() == "input `who`: required"


def test_a_value_that_fits_starts_the_run_with_it(refunds: Workflow) -> None:
    run = transitions.start_run(
        workflow="refunds",
        input={"refund": 0, "reason": "late", "order": "AB-1234", "email": "ann@example.com"},
    )
    assert run.input["refund"] == 0 and run.input["tags"] == ["late"]


def test_a_pattern_is_matched_whole_not_only_at_the_start(refunds: Workflow) -> None:
    assert "does not match the pattern" in started(refund=1, order="AB-1234 and more")


def test_a_pattern_runs_on_bounded_text_only() -> None:
    # Backtracking grows with the text even for a pattern of no risky shape.
    message = check_input_value({"type": "string", "pattern": "a*c"}, "a" * (MAX_PATTERN_INPUT + 1))
    assert message == "1,001 characters, at most 1,000 are checked against a pattern"
