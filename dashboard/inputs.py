"""The "Start run" form, generated from a workflow version's `inputs` schema.

Parsing here only turns form text into JSON values (a number field into a number, a JSON
textarea into a list or object). Whether a value is acceptable (required, type, enum) is
decided by `transitions.start_run`, the same check the API and commands go through; its
error message names each bad field, and `field_errors` files each part under its field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from django.http import QueryDict

from orchestration.spec import TRUE_WORDS, value_from_text

_FIELD_MESSAGE = re.compile(r"^input `(?P<name>[^`]+)`: (?P<message>.+)$", re.DOTALL)


@dataclass
class InputField:
    """One form control; `value` is the text shown in it (or `checked` for a checkbox)."""

    name: str
    type: str
    required: bool = False
    description: str = ""
    choices: list[str] = field(default_factory=list)
    value: str = ""
    checked: bool = False
    error: str = ""

    @property
    def widget(self) -> str:
        if self.choices:
            return "select"
        if self.type == "string" and "\n" in self.value:
            # A text input would drop the line breaks of a multi-line default (meeting notes).
            return "textarea"
        return {
            "integer": "number",
            "number": "number",
            "boolean": "checkbox",
            "list": "json",
            "object": "json",
        }.get(self.type, "text")

    @property
    def step(self) -> str:
        return "1" if self.type == "integer" else "any"

    @property
    def rows(self) -> int:
        return min(max(self.value.count("\n") + 1, 2), 10)

    @property
    def placeholder(self) -> str:
        return {"list": '["first", "second"]', "object": '{"key": "value"}'}.get(self.type, "")


@dataclass
class StartForm:
    fields: list[InputField]
    error: str = ""

    @property
    def has_errors(self) -> bool:
        return bool(self.error) or any(f.error for f in self.fields)

    @property
    def problems(self) -> list[str]:
        listed = [f"{f.name}: {f.error}" for f in self.fields if f.error]
        return ([self.error] if self.error else []) + listed


def _as_text(kind: str, value: Any) -> str:
    if value is None:
        return ""
    if kind in ("list", "object"):
        return json.dumps(value, indent=2, ensure_ascii=False)
    return str(value)


def build_form(
    schema: Mapping[str, Mapping[str, Any]],
    data: QueryDict | None = None,
    errors: Mapping[str, str] | None = None,
) -> StartForm:
    """The form for `schema`: defaults prefilled, or the submitted `data` with its `errors`."""
    errors = errors or {}
    fields: list[InputField] = []
    for name, definition in schema.items():
        kind = str(definition.get("type", "string"))
        item = InputField(
            name=name,
            type=kind,
            required=bool(definition.get("required")),
            description=str(definition.get("description", "")),
            choices=[_as_text(kind, c) for c in definition.get("enum", [])],
            error=errors.get(name, ""),
        )
        if data is None:
            item.value = _as_text(kind, definition.get("default"))
            item.checked = definition.get("default") is True
        else:
            item.value = data.get(name, "")
            item.checked = data.get(name, "").lower() in TRUE_WORDS
        fields.append(item)
    return StartForm(fields=fields, error=errors.get("", ""))


def parse(schema: Mapping[str, Mapping[str, Any]], data: QueryDict) -> tuple[dict[str, Any], dict[str, str]]:
    """Turn submitted form text into run input; blank fields are left out so defaults apply."""
    values: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for name, definition in schema.items():
        kind = definition.get("type", "string")
        raw = data.get(name, "")
        if kind == "boolean" and "enum" not in definition:
            # An unticked checkbox sends nothing, which means false, not "use the default".
            values[name] = raw.lower() in TRUE_WORDS
            continue
        if raw.strip() == "":
            continue
        if "enum" in definition:
            match = [c for c in definition["enum"] if _as_text(kind, c) == raw]
            if match:
                values[name] = match[0]
            else:
                errors[name] = f"{raw!r} is not one of the choices"
            continue
        try:
            values[name] = value_from_text(kind, raw)
        except ValueError as exc:
            errors[name] = str(exc)
    return values, errors


def field_errors(message: str, names: set[str]) -> dict[str, str]:
    """Split start_run's "input `a`: required; input `b`: ..." into errors by field.

    A part that names no known field is kept under the key "" for the form as a whole.
    """
    errors: dict[str, str] = {}
    for part in message.split("; "):
        match = _FIELD_MESSAGE.match(part.strip())
        if match and match["name"] in names:
            errors[match["name"]] = match["message"]
        else:
            errors[""] = f"{errors[''] + '; ' if errors.get('') else ''}{part}"
    return errors
