"""Limits on what people and programs may hand to Baton, and the one check of JSON values.

Every path that stores a value somebody typed or sent (the start form, the API, `start_run`,
approval comments, edited inputs, manual task forms) calls `check_json_value` or `check_text`,
so a value that would break storage or pages later is refused up front with a message naming
the field: NUL characters (PostgreSQL cannot store them), lone surrogates (not valid Unicode:
SQLite stores them, then every page showing the run fails to encode), NaN and infinities (not
JSON), nesting deeper than MAX_JSON_DEPTH, and more than a size limit.

The configurable limits are settings read when used (tests change them): see the README.
"""

from __future__ import annotations

import json
import math
from typing import Any

from django.conf import settings

# Deeper nesting than this is no real input, and Python's JSON and template code recurse.
MAX_JSON_DEPTH = 32
# Approval comments, reassignment notes and other free text people type.
MAX_COMMENT_CHARS = 5_000
# The most items `StepRun` rows are written or updated with in one statement (SQLite allows
# 32,766 variables per statement, older builds 999; a few hundred rows keep each one short).
BATCH_SIZE = 500


def max_input_bytes() -> int:
    """BATON_MAX_INPUT_BYTES: a run's whole input as JSON (UTF-8 bytes)."""
    return int(getattr(settings, "BATON_MAX_INPUT_BYTES", 262_144))


def max_map_items() -> int:
    """BATON_MAX_MAP_ITEMS: the most items one `for_each` may map over."""
    return int(getattr(settings, "BATON_MAX_MAP_ITEMS", 10_000))


def _string_problem(text: str) -> str | None:
    if "\x00" in text:
        return "contains a NUL character (\\u0000), which cannot be stored"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"contains a lone surrogate ({text[exc.start]!r}), which is not valid Unicode"
    return None


def check_text(text: str, *, field: str, max_chars: int = MAX_COMMENT_CHARS) -> None:
    """Free text a person typed; raises ValueError("<field>: ...")."""
    if len(text) > max_chars:
        raise ValueError(f"{field}: {len(text):,} characters; at most {max_chars:,} are allowed")
    problem = _string_problem(text)
    if problem:
        raise ValueError(f"{field}: {problem}")


def check_json_value(
    value: Any, *, field: str, max_bytes: int | None = None, max_depth: int = MAX_JSON_DEPTH
) -> None:
    """Refuse a value that must not be stored; raises ValueError("<field>: ...").

    Walks the value without recursion (a 100,000-deep list must not raise RecursionError
    here) and stops as soon as it is known to be too large, so a huge value costs little.
    """
    # `size` never exceeds the length of json.dumps(value), so refusing early is never wrong.
    size = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list, tuple)):
            if depth > max_depth:
                raise ValueError(f"{field}: nested more than {max_depth} levels deep")
            size += max(2, 2 * len(item))  # brackets and ", " between items
            if max_bytes is not None and size > max_bytes:
                raise ValueError(f"{field}: larger than {max_bytes:,} bytes as JSON (BATON_MAX_INPUT_BYTES)")
            if isinstance(item, dict):
                for key, inner in item.items():
                    if isinstance(key, str):
                        problem = _string_problem(key)
                        if problem:
                            raise ValueError(f"{field}: a key {problem}")
                        size += len(key) + 4  # quotes and ": "
                    stack.append((inner, depth + 1))
            else:
                stack.extend((inner, depth + 1) for inner in item)
        elif isinstance(item, str):
            problem = _string_problem(item)
            if problem:
                raise ValueError(f"{field}: {problem}")
            size += len(item) + 2
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise ValueError(f"{field}: {item!r} is not a finite number")
            size += len(repr(item))
        elif isinstance(item, int) and not isinstance(item, bool):
            size += (max(item.bit_length(), 1) - 1) * 3 // 10 + 1
        else:
            size += 4  # true, false, null
        if max_bytes is not None and size > max_bytes:
            raise ValueError(f"{field}: larger than {max_bytes:,} bytes as JSON (BATON_MAX_INPUT_BYTES)")
    if max_bytes is not None:
        # The walk counts characters; the limit is in bytes of the stored JSON.
        exact = len(json.dumps(value, ensure_ascii=False).encode("utf-8"))
        if exact > max_bytes:
            raise ValueError(f"{field}: {exact:,} bytes as JSON; at most {max_bytes:,} are allowed (BATON_MAX_INPUT_BYTES)")


def load_json(text: str, *, field: str) -> Any:
    """json.loads that turns a too-deep document into ValueError instead of RecursionError."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError(f"{field}: nested more than {MAX_JSON_DEPTH} levels deep") from None
