"""The "Start run" form, generated from a workflow version's `inputs` schema.

Each field is labelled with the schema's `title` (else the name, humanised), described by its
`description`, and carries the HTML attributes its keywords mirror (`min`, `max`, `pattern`,
`type=email`, `required`) so the browser helps; the server stays the authority. A list whose
`items` are strings or numbers is entered one input per item.

Parsing here only turns form text into JSON values (a number field into a number, a JSON
textarea into a list or object, the item inputs into a list) and refuses a blank required
field. Whether a value is acceptable (type, enum, minimum, pattern...) is decided by
`transitions.start_run`, the same check the API and commands go through; its error message
names each bad field, and `field_errors` files each part under its field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from django.http import QueryDict

from orchestration.spec import INPUT_TYPES, TRUE_WORDS, check_input_value, value_from_text

_FIELD_MESSAGE = re.compile(r"^input `(?P<name>[^`]+)`: (?P<message>.+)$", re.DOTALL)
# The item types entered one input per item; lists of objects or booleans keep the JSON box.
ITEM_BY_ITEM = frozenset({"string", "integer", "number"})
# Empty item inputs after the filled ones: without JavaScript there is no "Add another", so a
# person can still add this many items per submission (the form comes back with more).
BLANK_SLOTS = 2


@dataclass
class Control:
    """What an <input> of one type takes from the schema: its HTML type and attributes."""

    type: str
    choices: list[str] = field(default_factory=list)
    minimum: str = ""
    maximum: str = ""
    min_length: str = ""
    max_length: str = ""
    pattern: str = ""
    format: str = ""

    @property
    def input_type(self) -> str:
        if self.type in ("integer", "number"):
            return "number"
        return "email" if self.format == "email" else "text"

    @property
    def step(self) -> str:
        return "1" if self.type == "integer" else "any"


@dataclass
class InputField:
    """One form control; `value` is the text shown in it (or `checked` for a checkbox, or
    `items` for a list entered item by item)."""

    name: str
    type: str
    required: bool = False
    title: str = ""
    description: str = ""
    choices: list[str] = field(default_factory=list)
    value: str = ""
    checked: bool = False
    error: str = ""
    control: Control = field(default_factory=lambda: Control("string"))
    item: Control | None = None  # set for a list entered item by item
    items: list[str] = field(default_factory=list)
    min_items: str = ""
    max_items: str = ""

    @property
    def label(self) -> str:
        return self.title or self.name.replace("_", " ").strip().capitalize() or self.name

    @property
    def widget(self) -> str:
        if self.item is not None:
            return "items"
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
        return self.control.step

    @property
    def rows(self) -> int:
        return min(max(self.value.count("\n") + 1, 2), 10)

    @property
    def placeholder(self) -> str:
        return {"list": '["first", "second"]', "object": '{"key": "value"}'}.get(self.type, "")

    @property
    def slots(self) -> list[str]:
        """The item inputs' values: the items, then blank slots up to `max_items`."""
        room = (
            BLANK_SLOTS
            if not self.max_items
            else max(0, min(BLANK_SLOTS, int(self.max_items) - len(self.items)))
        )
        return [*self.items, *([""] * room)] or [""]


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


def _number_text(value: Any) -> str:
    return "" if value is None else str(value)


def _control(definition: Mapping[str, Any]) -> Control:
    kind = str(definition.get("type", "string"))
    return Control(
        type=kind,
        choices=[_as_text(kind, c) for c in definition.get("enum", [])],
        minimum=_number_text(definition.get("minimum")),
        maximum=_number_text(definition.get("maximum")),
        min_length=_number_text(definition.get("min_length")),
        max_length=_number_text(definition.get("max_length")),
        pattern=str(definition.get("pattern", "")),
        format=str(definition.get("format", "")),
    )


def _item_schema(definition: Mapping[str, Any], item_lists: bool) -> Mapping[str, Any] | None:
    items = definition.get("items")
    if (
        item_lists
        and definition.get("type") == "list"
        and isinstance(items, Mapping)
        and items.get("type") in ITEM_BY_ITEM
    ):
        return items
    return None


def build_form(
    schema: Mapping[str, Mapping[str, Any]],
    data: QueryDict | None = None,
    errors: Mapping[str, str] | None = None,
    *,
    item_lists: bool = True,
) -> StartForm:
    """The form for `schema`: defaults prefilled, or the submitted `data` with its `errors`.

    `item_lists=False` keeps every list a JSON box (the manual task form draws no item inputs).
    """
    errors = errors or {}
    fields: list[InputField] = []
    for name, definition in schema.items():
        kind = str(definition.get("type", "string"))
        control = _control(definition)
        item_schema = _item_schema(definition, item_lists)
        item = InputField(
            name=name,
            type=kind,
            required=bool(definition.get("required")),
            title=str(definition.get("title", "")),
            description=str(definition.get("description", "")),
            choices=control.choices,
            error=errors.get(name, ""),
            control=control,
            item=_control(item_schema) if item_schema is not None else None,
            min_items=_number_text(definition.get("min_items")),
            max_items=_number_text(definition.get("max_items")),
        )
        if data is None:
            default = definition.get("default")
            item.value = _as_text(kind, default)
            item.checked = default is True
            if item_schema is not None and isinstance(default, list):
                item.items = [_as_text(str(item_schema["type"]), v) for v in default]
        else:
            item.value = data.get(name, "")
            item.checked = data.get(name, "").lower() in TRUE_WORDS
            if item_schema is not None:
                # What was typed comes back, blanks dropped: the blank slots follow anyway.
                item.items = [text for text in data.getlist(name) if text.strip()]
        fields.append(item)
    return StartForm(fields=fields, error=errors.get("", ""))


def parse(
    schema: Mapping[str, Mapping[str, Any]], data: QueryDict, *, item_lists: bool = True
) -> tuple[dict[str, Any], dict[str, str]]:
    """Turn submitted form text into run input. A blank optional field is left out, so its
    default applies; a blank required one is an error, never silently its default."""
    values: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for name, definition in schema.items():
        kind = definition.get("type", "string")
        item_schema = _item_schema(definition, item_lists)
        if item_schema is not None:
            _parse_items(name, definition, item_schema, data, values, errors)
            continue
        raw = data.get(name, "")
        if kind == "boolean" and "enum" not in definition:
            # An unticked checkbox sends nothing, which means false, not "use the default".
            values[name] = raw.lower() in TRUE_WORDS
            continue
        if raw.strip() == "":
            if definition.get("required"):
                errors[name] = "required"
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
    # start_run checks again, with this same function; checking here too lets a form with one
    # unreadable field still name every other field's problem in the same answer.
    for name, value in values.items():
        if schema[name].get("type", "string") not in INPUT_TYPES:
            continue  # an old manual form's odd type: the approvals check names it
        problem = check_input_value(schema[name], value)
        if problem and name not in errors:
            errors[name] = problem
    return values, errors


def _parse_items(
    name: str,
    definition: Mapping[str, Any],
    item_schema: Mapping[str, Any],
    data: QueryDict,
    values: dict[str, Any],
    errors: dict[str, str],
) -> None:
    """One input per item: blank inputs (the spare slots) are skipped, the rest typed."""
    kind = str(item_schema["type"])
    texts = [text for text in data.getlist(name) if text.strip()]
    if not texts:
        if definition.get("required"):
            errors[name] = "required"
        return
    items: list[Any] = []
    for number, text in enumerate(texts, start=1):
        if "enum" in item_schema:
            match = [c for c in item_schema["enum"] if _as_text(kind, c) == text]
            if not match:
                errors[name] = f"item {number}: {text!r} is not one of the choices"
                return
            items.append(match[0])
            continue
        try:
            items.append(value_from_text(kind, text))
        except ValueError as exc:
            errors[name] = f"item {number}: {exc}"
            return
    values[name] = items


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
