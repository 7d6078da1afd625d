"""Templates and expressions in workflow files: what they see, what the sandbox refuses, how big
they may build, and that every way a template goes wrong is a TemplateError naming it."""

from __future__ import annotations

from typing import Any

import pytest

from orchestration.templating import (
    MAX_BUILT_SIZE,
    TemplateError,
    check_expression,
    check_template,
    evaluate,
    expression_source,
    referenced_steps,
    render,
)

CONTEXT: dict[str, Any] = {
    "input": {"topic": "tides", "count": 3, "items": ["a", "b"], "__class__": "just data"},
    "steps": {"research": {"output": {"notes": "high and low"}, "status": "succeeded"}},
    "iteration": 1,
}


def refusal(text: str) -> str:
    with pytest.raises(TemplateError) as refused:
        evaluate(text, CONTEXT)
    return str(refused.value)


# ---------------------------------------------------------------------------------------------
# Evaluate and render


def test_an_expression_keeps_its_type_bare_or_in_braces() -> None:
    assert evaluate("input.count > 2", CONTEXT) is True
    assert evaluate("{{ input.items }}", CONTEXT) == ["a", "b"]
    assert evaluate("  {{ input.count + 1 }}  ", CONTEXT) == 4
    assert expression_source("{{ input.count }}") == "input.count"
    assert expression_source(" input.count ") == "input.count"


def test_a_single_expression_keeps_its_type_and_other_text_is_rendered_as_text() -> None:
    assert render("{{ input.items }}", CONTEXT) == ["a", "b"]
    assert render("About {{ input.topic }}", CONTEXT) == "About tides"
    assert render("{{ input.count }} and {{ iteration }}", CONTEXT) == "3 and 1"
    assert render("{% for i in input.items %}{{ i }}{% endfor %}", CONTEXT) == "ab"


def test_render_walks_mappings_and_lists_and_leaves_other_values_alone() -> None:
    value = {"a": ["{{ input.count }}", 7, None], "b": {"c": "{{ input.topic }}"}, "d": "plain"}
    assert render(value, CONTEXT) == {"a": [3, 7, None], "b": {"c": "tides"}, "d": "plain"}
    assert render(42, CONTEXT) == 42


def test_a_key_of_workflow_data_wins_over_a_method_of_the_same_name() -> None:
    # JSON data: `input.items` is the key "items", not dict.items().
    assert evaluate("input.items", CONTEXT) == ["a", "b"]
    assert evaluate("input.__class__", CONTEXT) == "just data"


def test_it_names_the_steps_a_template_reads() -> None:
    trees = check_template({"a": "{{ steps.research.output }}", "b": ["x {{ steps['write'] }} y"], "c": 3})
    assert referenced_steps(trees) == {"research", "write"}


# ---------------------------------------------------------------------------------------------
# The sandbox


@pytest.mark.parametrize(
    "text",
    [
        "input.topic.__class__",
        "input.topic._private",
        "''.__class__.__mro__",
        "input.count.__class__.__subclasses__()",
        "input.topic.__len__()",
        "input.count|attr('__class__')",
        "'{0.__class__}'.format(1)",
    ],
)
def test_no_dunder_or_private_attribute_is_reachable(text: str) -> None:
    message = refusal(text)
    assert "is unsafe" in message or "is undefined" in message


@pytest.mark.parametrize("text", ["lipsum(10)", "int('3')", "__import__('os')", "open('/etc/passwd')"])
def test_only_jinja_s_harmless_globals_exist(text: str) -> None:
    assert "is undefined" in refusal(text)


def test_data_cannot_be_changed_in_place() -> None:
    # The immutable sandbox: a template reads the run's data and never edits it.
    assert "unsafe" in refusal("input.items.append('c')")
    assert CONTEXT["input"]["items"] == ["a", "b"]


# ---------------------------------------------------------------------------------------------
# Limits: refused before anything is built


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("2 ** 70000", "is larger than the sandbox allows (65,536 bits)"),
        ("'x' * 10**9", "repeating a str 1,000,000,000 times"),
        ("['x'] * 10**9", "repeating a list 1,000,000,000 times"),
        ("[('x' * 20000)] * 100", "repeating a list 100 times"),  # small list, big text
        ("('a' * 600000) + ('b' * 600000)", "the concatenation"),
        ("'%0999999999d' % 1", "a format width of 999,999,999"),
        ("'%*d' % (10**9, 1)", "a `*` width in a format"),
        ("'%*d'|format(10**9, 1)", "a `*` width in a format"),
        ("'{:>999999999}'.format(1)", "a format width of 999,999,999"),
        ("'{:{}}'.format('x', 2000000)", "a format width of 2,000,000"),
        ("'{:>{w}}'.format('x', w=2000000)", "a format width of 2,000,000"),
        ("'x'.ljust(10**9)", "calling ljust with a huge number"),
        ("'x'.zfill(10**9)", "calling zfill with a huge number"),
        ("('\\t' * 100).expandtabs(20000)", "calling expandtabs with a huge number"),
        ("'a'|center(10**9)", "a width of 1,000,000,000"),
        ("('a\\n' * 100)|indent(20000)", "indenting 101 lines by 20,000"),
        ("[1]|batch(10**9)|list", "a linecount of 1,000,000,000"),
        ("[1]|slice(10**9)|list", "a slices of 1,000,000,000"),
        ("('a' * 1000)|replace('a', 'b' * 2000)", "the replaced string"),
        ("12345|replace('', 'x' * 500000)", "the replaced string"),  # a number is replaced as text
        ("range(100)|join('x' * 20000)", "the joined string"),
        ("('x' * 20000).join(range(100)|map('string'))", "the joined string"),
    ],
)
def test_anything_too_big_is_refused_saying_what(text: str, words: str) -> None:
    message = refusal(text)
    assert "SecurityError" in message and words in message


def test_sizes_up_to_the_limit_are_built() -> None:
    assert evaluate("('x' * 1000000)|length", CONTEXT) == MAX_BUILT_SIZE
    assert evaluate("2 ** 10", CONTEXT) == 1024
    assert evaluate("(range(100)|join(','))|length", CONTEXT) == 289
    assert evaluate("'%5d'|format(42)", CONTEXT) == "   42"
    assert evaluate("'{:>4}'.format('ab')", CONTEXT) == "  ab"
    assert evaluate("range(100000)|list|length", CONTEXT) == 100_000


def test_many_allowed_pieces_are_refused_once_they_add_up() -> None:
    # Each centred string is allowed; a thousand of them are twenty million characters.
    assert evaluate("range(100)|map('center', 20000)|list|length", CONTEXT) == 100
    message = refusal("range(1000)|map('center', 20000)|list|length")
    assert "builds more than the sandbox allows in all (10,000,000)" in message


def test_what_one_expression_built_does_not_count_against_the_next() -> None:
    for _ in range(20):
        assert evaluate("('x' * 1000000)|length", CONTEXT) == MAX_BUILT_SIZE


# ---------------------------------------------------------------------------------------------
# Every kind of bad template is a TemplateError


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("input.missing", "`input.missing` is undefined"),
        ("input.missing.deeper", "'dict object' has no attribute 'missing'"),
        ("1 / 0", "division by zero"),
        ("input.topic + 1", "can only concatenate str"),
        ("input.count > ", "does not compile"),
        ("", "does not compile"),
        ("[1, 2][5]", "is undefined"),
        # The sandbox's own range limit raises OverflowError: a `when:` with it fails its step.
        ("range(10**9)", "OverflowError: Range too big"),
        ("range(100001)|list", "OverflowError: Range too big"),
        ("'%d' % 'x'", "a real number is required"),
    ],
)
def test_every_failure_of_an_expression_is_a_template_error(text: str, words: str) -> None:
    assert words in refusal(text)


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("About {{ input.missing }}", "'dict object' has no attribute 'missing'"),
        ("{{ 1 / 0 }} later", "division by zero"),
        ("{% if %}x{% endif %}", "does not compile"),
        ("x {{ range(10**9)|list }}", "OverflowError: Range too big"),
        ("x {{ 'y' * 10**9 }}", "SecurityError"),
        ({"deep": ["{{ input.missing }}"]}, "`input.missing` is undefined"),
    ],
)
def test_every_failure_of_a_rendered_text_is_a_template_error(value: Any, words: str) -> None:
    with pytest.raises(TemplateError) as refused:
        render(value, CONTEXT)
    assert words in str(refused.value)


def test_an_expression_nested_too_deeply_fails_to_compile_as_a_template_error() -> None:
    with pytest.raises(TemplateError) as refused:
        check_expression("(" * 5000 + "1" + ")" * 5000)
    assert "nested too deeply or too large" in str(refused.value)


@pytest.mark.parametrize(
    ("value", "words"),
    [("", "is empty"), ("{{ }}", "is empty"), ("input.x >", "does not compile"), ("{% if %}", "does not compile")],
)
def test_checking_a_file_refuses_what_would_not_compile(value: str, words: str) -> None:
    with pytest.raises(TemplateError) as refused:
        check_template(value) if "{%" in value else check_expression(value)
    assert words in str(refused.value)


def test_checking_a_file_does_not_compute_its_templates() -> None:
    # Intercepted operators stay unfolded at compile time: the check must not build a gigabyte.
    check_expression("'x' * 10**9")
    check_template("a {{ 'x' * 10**9 }} b")
