"""Templates and expressions in workflow files, evaluated in Jinja2's sandbox.

A string that is exactly one `{{ expr }}` keeps the expression's type (a list stays a list);
any other string is rendered as text. Mappings and lists are rendered value by value.

The sandbox is bounded as well as safe: huge powers, repetitions (`'x' * 10**9`), paddings,
joins, replacements and format widths are refused with a SecurityError before anything is
allocated, and so is an expression that builds too much in all (`range(10**5)|map('center',
10**6)` builds a hundred thousand strings that are each allowed). Any exception while rendering
becomes a TemplateError, so a bad template fails its own step and nothing else.

Not bounded: the time a template takes (nested loops over big ranges), and strings doubled with
`~` inside a loop (Jinja compiles `~` to a join the sandbox cannot intercept).
"""

from __future__ import annotations

import operator
import re
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, Undefined, meta, nodes
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

_SINGLE_EXPRESSION = re.compile(r"^\s*\{\{(?P<expr>.*)\}\}\s*$", re.DOTALL)


class TemplateError(Exception):
    """A template that does not compile, or fails while rendering."""


# The largest string or list a template may build by repetition, padding or formatting, and
# the largest integer power (in bits). Far above anything a step input needs (run inputs are
# limited to BATON_MAX_INPUT_BYTES), far below what would stall a worker or exhaust memory.
MAX_BUILT_SIZE = 1_000_000
MAX_POWER_BITS = 65_536
# What one expression or text template may build in all, adding every bounded operation's size.
MAX_BUILT_TOTAL = 10 * MAX_BUILT_SIZE
_FORMAT_NUMBER = re.compile(r"%[-+ #0]*(\*|\d+)?(?:\.(\*|\d+))?")
_BRACE_SPEC = re.compile(r"\{[^{}]*:([^{}]*)\}")
_NESTED_SPEC = re.compile(r"\{[^{}]*:[^{}]*\{")
_DIGITS = re.compile(r"\d+")


def _too_big(what: str) -> SecurityError:
    return SecurityError(f"{what} would be larger than the sandbox allows ({MAX_BUILT_SIZE:,})")


# How much the expression being evaluated has built so far; None outside evaluate and render.
_built: ContextVar[int | None] = ContextVar("baton_template_built", default=None)


@contextmanager
def _budget() -> Iterator[None]:
    token = _built.set(0)
    try:
        yield
    finally:
        _built.reset(token)


def _build(size: int, what: str) -> None:
    """Refuse to build `size` characters (or items) if that one result, or everything the
    expression has built with it, is larger than the sandbox allows."""
    if size > MAX_BUILT_SIZE:
        raise _too_big(what)
    total = _built.get()
    if total is None:
        return
    total += size
    if total > MAX_BUILT_TOTAL:
        raise SecurityError(f"the template builds more than the sandbox allows in all ({MAX_BUILT_TOTAL:,})")
    _built.set(total)


def _weight(value: Any) -> int:
    """The size an element adds to what is built from it: its length if it has one that grows."""
    return len(value) if isinstance(value, (str, list, tuple, dict)) else 1


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_repeat(sequence: Any, times: Any) -> None:
    if isinstance(sequence, (str, list, tuple)) and _is_int(times) and times > 0:
        # A list of one big string repeated is small itself, but is as big as its text once joined.
        size = len(sequence) if isinstance(sequence, str) else sum(_weight(v) for v in sequence)
        _build(size * times, f"repeating a {type(sequence).__name__} {times:,} times")


def _check_format(template: str, args: Any) -> None:
    """`'%0999999999d' % 1` and `'%*d' % (10**9, 1)` build huge strings from tiny ones."""
    values = args if isinstance(args, tuple) else (args,)
    for match in _FORMAT_NUMBER.finditer(template):
        for number in match.groups():
            if number == "*":
                if any(_is_int(v) and abs(v) > MAX_BUILT_SIZE for v in values):
                    raise _too_big("a `*` width in a format")
            elif number:
                _build(int(number), f"a format width of {int(number):,}")


def _check_brace_format(template: str, args: tuple[Any, ...]) -> None:
    for spec in _BRACE_SPEC.findall(template):
        for number in _DIGITS.findall(spec):
            _build(int(number), f"a format width of {int(number):,}")
    # '{:{}}'.format('x', 10**9): the width is an argument (a field nested in the spec).
    if _NESTED_SPEC.search(template):
        for value in args:
            if _is_int(value):
                _build(abs(value), f"a format width of {value:,}")


def _check_power(base: Any, exponent: Any) -> None:
    if (
        _is_int(base)
        and _is_int(exponent)
        and exponent > 0
        and abs(base) > 1
        and exponent * abs(base).bit_length() > MAX_POWER_BITS
    ):
        raise SecurityError(f"{base} ** {exponent} is larger than the sandbox allows ({MAX_POWER_BITS:,} bits)")


def _bounded_filter(name: str, check: Callable[..., None], original: Callable[..., Any]) -> Callable[..., Any]:
    def bounded(*args: Any, **kwargs: Any) -> Any:
        check(*args, **kwargs)
        return original(*args, **kwargs)

    bounded.__name__ = f"bounded_{name}"
    # Keep @pass_environment / @pass_eval_context markers, so Jinja passes the same arguments.
    if hasattr(original, "jinja_pass_arg"):
        bounded.jinja_pass_arg = original.jinja_pass_arg  # type: ignore[attr-defined]
    return bounded


def _width_check(position: int, keyword: str, *, per_line: bool = False) -> Callable[..., None]:
    def check(*args: Any, **kwargs: Any) -> None:
        width: Any = kwargs.get(keyword, args[position] if len(args) > position else None)
        if _is_int(width):
            # indent adds its width to every line: 100,000 lines indented by 999,999 is huge.
            lines = str(args[0]).count("\n") + 1 if per_line and args else 1
            what = f"indenting {lines:,} lines by {width:,}" if lines > 1 else f"a {keyword} of {width:,}"
            _build(abs(width) * lines, what)

    return check


def _replace_check(*args: Any, **kwargs: Any) -> None:
    # replace(eval_ctx, s, old, new, count=None); the filter makes strings of all three, so
    # `12345|replace('', big)` builds as much as `'12345'|replace('', big)`.
    if len(args) >= 4:
        text, old, new = str(args[1]), str(args[2]), str(args[3])
        _build(len(text) + (text.count(old) if old else len(text) + 1) * len(new), "the replaced string")


def _format_filter_check(*args: Any, **kwargs: Any) -> None:
    if args and isinstance(args[0], str):
        _check_format(args[0], tuple(args[1:]) or tuple(kwargs.values()))


def _check_join(parts: list[Any], separator: Any) -> None:
    _build(sum(_weight(p) for p in parts) + len(str(separator)) * max(0, len(parts) - 1), "the joined string")


def _bounded_join(original: Callable[..., Any]) -> Callable[..., Any]:
    # join(eval_ctx, value, d="", attribute=None); the value may be a generator, read once
    # here and handed on as a list.
    def bounded(eval_ctx: Any, value: Any, d: Any = "", attribute: Any = None) -> Any:
        parts = list(value)
        _check_join(parts, d)
        return original(eval_ctx, parts, d, attribute)

    bounded.__name__ = "bounded_join"
    bounded.jinja_pass_arg = original.jinja_pass_arg  # type: ignore[attr-defined]
    return bounded


class _Environment(ImmutableSandboxedEnvironment):
    # Intercepted operators also stay unfolded at compile time: `'x' * 10**9` in a file would
    # otherwise be computed by Jinja's optimiser while the file is being checked.
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        # lipsum(10**9) generates a billion paragraphs; nothing in a workflow needs it.
        self.globals.pop("lipsum", None)
        bounded = {
            "center": _width_check(1, "width"),
            "indent": _width_check(1, "width", per_line=True),
            # slice takes the eval context first (it has an async variant): slice(ctx, value, slices).
            "slice": _width_check(2, "slices"),
            "batch": _width_check(1, "linecount"),
            "replace": _replace_check,
            "format": _format_filter_check,
        }
        for name, check in bounded.items():
            self.filters[name] = _bounded_filter(name, check, self.filters[name])
        self.filters["join"] = _bounded_join(self.filters["join"])

    def getattr(self, obj: Any, attribute: str) -> Any:
        # Workflow data is JSON: `input.items` means the key "items", not dict.items().
        if isinstance(obj, dict) and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            _check_repeat(left, right)
            _check_repeat(right, left)
        elif operator == "**":
            _check_power(left, right)
        elif operator == "+" and isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
            _build(len(left) + len(right), "the concatenation")
        elif operator == "%" and isinstance(left, str):
            _check_format(left, right)
        return _BINOPS[operator](left, right)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        # 'x'.ljust(10**9), '\t'.expandtabs(10**9), '{:>999999999}'.format(1): a method of a
        # string or list given a huge number builds something huge.
        # (The sandbox hands out str.format wrapped; look at the method underneath.)
        method = getattr(__obj, "__wrapped__", __obj)
        owner = getattr(method, "__self__", None)
        if isinstance(method, types.BuiltinMethodType) and isinstance(owner, (str, bytes)):
            name = method.__name__
            numbers = [abs(v) for v in (*args, *kwargs.values()) if _is_int(v)]
            if name in _PADDING_METHODS and numbers:
                # expandtabs widens every tab: a million tabs expanded by a million is huge.
                per = (owner.count("\t") if isinstance(owner, str) else owner.count(b"\t")) if name == "expandtabs" else 1
                _build(len(owner) + max(numbers) * per, f"calling {name} with a huge number")
            if name in ("format", "format_map") and isinstance(owner, str):
                _check_brace_format(owner, (*args, *kwargs.values()))
            if name == "join" and args:
                parts = list(args[0])
                _check_join(parts, owner)
                args = (parts, *args[1:])
        return super().call(__context, __obj, *args, **kwargs)


# String methods whose numeric argument is the length of what they build.
_PADDING_METHODS = frozenset({"ljust", "rjust", "center", "zfill", "expandtabs"})

_BINOPS: dict[str, Callable[[Any, Any], Any]] = {
    "*": operator.mul,
    "**": operator.pow,
    "+": operator.add,
    "%": operator.mod,
}


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
    except (RecursionError, MemoryError) as exc:
        raise TemplateError(f"does not compile: {type(exc).__name__} (nested too deeply or too large)") from None


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
        except (RecursionError, MemoryError) as exc:
            raise TemplateError(f"does not compile: {type(exc).__name__} (nested too deeply or too large)") from None
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


# A path a template reads: the root name and the attribute or key names after it, as written.
NamePath = tuple[str, ...]


def _path_of(node: nodes.Node) -> NamePath | None:
    """`steps.research.output["summary"]` as ("steps", "research", "output", "summary"); None
    when a part is computed (`steps[name]`, `items[0]`) or the chain does not start at a name."""
    parts: list[str] = []
    while True:
        if isinstance(node, nodes.Getattr):
            parts.append(node.attr)
            node = node.node
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            parts.append(node.arg.value)
            node = node.node
        elif isinstance(node, nodes.Name) and node.ctx == "load":
            return (node.name, *reversed(parts))
        else:
            return None


def name_paths(trees: list[nodes.Node]) -> list[NamePath]:
    """Every path the templates read from the context they are rendered with, in the order
    first written: `{{ input.topic }}` gives ("input", "topic"), and also ("input",).

    Left out: what a template defines itself (a `{% set %}`, a for loop's target and its
    `loop`) and the sandbox's globals (`range`, `dict`...). A name a template both reads and
    defines somewhere (`{% for input in ... %}`) is given as its root alone, since which one a
    path reads depends on where it stands.
    """
    found: dict[NamePath, None] = {}
    globals_ = set(environment().globals)
    for tree in trees:
        if not isinstance(tree, nodes.Template):
            continue
        free = meta.find_undeclared_variables(tree) - globals_
        defined = {n.name for n in tree.find_all(nodes.Name) if n.ctx in ("store", "param")}
        # `x | default(...)` and `x is defined` are written for a name that may be missing:
        # they work whatever the context holds, so what they read is not listed.
        guarded = {
            id(inner)
            for node in tree.find_all((nodes.Filter, nodes.Test))
            if node.name in _GUARDS and node.node is not None
            for inner in (node.node, *node.node.find_all(nodes.Node))
        }
        for node in tree.find_all((nodes.Name, nodes.Getattr, nodes.Getitem)):
            path = _path_of(node)
            if path is None or path[0] not in free or id(node) in guarded:
                continue
            found.setdefault(path[:1], None)
            if path[0] not in defined:
                found.setdefault(path, None)
    return list(found)


# Filters and tests that make sense of a missing name.
_GUARDS = frozenset({"default", "d", "defined", "undefined"})


def _failure(source: str, exc: BaseException) -> str:
    detail = str(exc)[:300] or "no detail"
    return f"template error in `{source}`: {type(exc).__name__}: {detail}"


def evaluate(text: str, context: dict[str, Any]) -> Any:
    """The value of an expression (bare or in `{{ }}`), keeping its type; TemplateError if it fails."""
    source = expression_source(text)
    try:
        with _budget():
            result = _compiled_expression(source)(**context)
    except TemplateSyntaxError as exc:
        raise TemplateError(f"`{source}` does not compile: {exc.message}") from None
    except (UndefinedError, TypeError, ValueError, ZeroDivisionError) as exc:
        raise TemplateError(f"`{source}`: {exc}") from None
    except Exception as exc:  # noqa: BLE001
        # OverflowError, RecursionError, MemoryError, LookupError...: whatever a template does
        # wrong is that template's error, never the transaction's that happens to render it.
        raise TemplateError(_failure(source, exc)) from None
    if isinstance(result, Undefined):
        # Strict undefined values only raise when used; a bare `{{ input.missing }}` is
        # returned unused, so name it here.
        raise TemplateError(f"`{source}` is undefined")
    return result


def render(value: Any, context: dict[str, Any]) -> Any:
    """A value with every string in it rendered: one `{{ expr }}` keeps its type, other text is
    rendered as text, anything else is returned as it is; TemplateError if any fails."""
    if isinstance(value, str):
        inner = _single_expression(value)
        if inner is not None:
            return evaluate(inner, context)
        if "{{" not in value and "{%" not in value:
            return value
        try:
            with _budget():
                return _compiled_template(value).render(**context)
        except TemplateSyntaxError as exc:
            raise TemplateError(f"{value!r} does not compile: {exc.message}") from None
        except (UndefinedError, TypeError, ValueError, ZeroDivisionError) as exc:
            raise TemplateError(f"{value!r}: {exc}") from None
        except Exception as exc:  # noqa: BLE001
            raise TemplateError(_failure(repr(value), exc)) from None
    if isinstance(value, dict):
        return {k: render(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, context) for v in value]
    return value
