"""Templates and expressions in workflow files, evaluated in Jinja2's sandbox.

A string that is exactly one `{{ expr }}` keeps the expression's type (a list stays a list);
any other string is rendered as text. Mappings and lists are rendered value by value.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, Undefined, nodes
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment

_SINGLE_EXPRESSION = re.compile(r"^\s*\{\{(?P<expr>.*)\}\}\s*$", re.DOTALL)


class TemplateError(Exception):
    """A template that does not compile, or fails while rendering."""


class _Environment(ImmutableSandboxedEnvironment):
    def getattr(self, obj: Any, attribute: str) -> Any:
        # Workflow data is JSON: `input.items` means the key "items", not dict.items().
        if isinstance(obj, dict) and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)


@lru_cache(maxsize=1)
def environment() -> ImmutableSandboxedEnvironment:
    # StrictUndefined turns a typo such as `input.topc` into an error naming it, instead of
    # silently passing an empty string to an agent.
    return _Environment(undefined=StrictUndefined, autoescape=False)


def _single_expression(text: str) -> str | None:
    match = _SINGLE_EXPRESSION.match(text)
    if match is None:
        return None
    inner = match.group("expr")
    # "{{ a }} and {{ b }}" also matches the pattern; it is a text template.
    if "{{" in inner or "}}" in inner:
        return None
    return inner.strip()


def expression_source(text: str) -> str:
    """Expressions may be written bare (`input.x > 3`) or wrapped (`{{ input.x > 3 }}`)."""
    inner = _single_expression(text)
    return inner if inner is not None else text.strip()


@lru_cache(maxsize=4096)
def _compiled_expression(source: str) -> Any:
    return environment().compile_expression(source, undefined_to_none=False)


@lru_cache(maxsize=4096)
def _compiled_template(source: str) -> Any:
    return environment().from_string(source)


def check_expression(text: str) -> nodes.Node:
    """Compile an expression; returns its syntax tree or raises TemplateError."""
    source = expression_source(text)
    if not source:
        raise TemplateError("is empty")
    try:
        _compiled_expression(source)
        return environment().parse("{{ " + source + " }}")
    except TemplateSyntaxError as exc:
        raise TemplateError(f"does not compile: {exc.message}") from None


def check_template(value: Any) -> list[nodes.Node]:
    """Compile every string inside a value; returns their syntax trees."""
    trees: list[nodes.Node] = []
    for text in _strings(value):
        inner = _single_expression(text)
        try:
            if inner is not None:
                trees.append(check_expression(inner))
            elif "{{" in text or "{%" in text:
                trees.append(environment().parse(text))
                _compiled_template(text)
        except TemplateSyntaxError as exc:
            raise TemplateError(f"does not compile: {exc.message}") from None
    return trees


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def referenced_steps(trees: list[nodes.Node]) -> set[str]:
    """Names used as `steps.<name>` in the given syntax trees."""
    found: set[str] = set()
    for tree in trees:
        for node in tree.find_all(nodes.Getattr):
            if isinstance(node.node, nodes.Name) and node.node.name == "steps":
                found.add(node.attr)
        for item in tree.find_all(nodes.Getitem):
            if (
                isinstance(item.node, nodes.Name)
                and item.node.name == "steps"
                and isinstance(item.arg, nodes.Const)
            ):
                found.add(str(item.arg.value))
    return found


def evaluate(text: str, context: dict[str, Any]) -> Any:
    source = expression_source(text)
    try:
        result = _compiled_expression(source)(**context)
    except (UndefinedError, SecurityError, TypeError, ValueError, ZeroDivisionError) as exc:
        raise TemplateError(f"`{source}`: {exc}") from None
    except TemplateSyntaxError as exc:
        raise TemplateError(f"`{source}` does not compile: {exc.message}") from None
    if isinstance(result, Undefined):
        # Strict undefined values only raise when used; a bare `{{ input.missing }}` is
        # returned unused, so name it here.
        raise TemplateError(f"`{source}` is undefined")
    return result


def render(value: Any, context: dict[str, Any]) -> Any:
    if isinstance(value, str):
        inner = _single_expression(value)
        if inner is not None:
            return evaluate(inner, context)
        if "{{" not in value and "{%" not in value:
            return value
        try:
            return _compiled_template(value).render(**context)
        except (UndefinedError, SecurityError, TypeError, ValueError, ZeroDivisionError) as exc:
            raise TemplateError(f"{value!r}: {exc}") from None
    if isinstance(value, dict):
        return {k: render(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, context) for v in value]
    return value
