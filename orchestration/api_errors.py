"""The JSON API's error body, written once: `{"error": code, "detail": "...", "fields": {...}}`.

`error` is a stable code a client may switch on (one per status, or a finer one such as
`idempotency_conflict`), `detail` a sentence for people, `fields` the input fields at fault,
each with its problem. Routers raise `ApiError` (through `refuse`); the NinjaAPI's exception
handlers (approvals/api.py) turn it, and every other failure, into this body, so no endpoint
writes an error dict of its own. Routers list the statuses they answer with `responses`, so the
OpenAPI description documents each one.
"""

from __future__ import annotations

import re
from typing import Any, NoReturn, TypedDict

from ninja import Schema

CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    422: "invalid",
    429: "throttled",
    500: "server_error",
    503: "unavailable",
}

# "reason: required", "input `topic`: required": a message that names the field it is about
# (the transitions' and the engine's habit).
FIELD_MESSAGE = re.compile(
    r"^(?P<field>[a-z_][a-z0-9_.\[\]-]*(?: [a-z]+)?(?: `[^`]{1,200}`)?): (?P<problem>.+)$", re.DOTALL
)


class ErrorBody(TypedDict):
    error: str
    detail: str
    fields: dict[str, str]


class ErrorOut(Schema):
    error: str
    detail: str
    fields: dict[str, str] = {}


class ApiError(Exception):
    """A refusal with its status; `extra` adds keys beside the three (e.g. who decided first)."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        fields: dict[str, str] | None = None,
        code: str = "",
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.fields = fields or {}
        self.code = code or code_for(status)
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        return {**self.extra, **error_body(self.status, self.detail, self.fields, code=self.code)}


def code_for(status: int) -> str:
    return CODES.get(status, "server_error" if status >= 500 else "bad_request")


def error_body(
    status: int, detail: str, fields: dict[str, str] | None = None, *, code: str = ""
) -> ErrorBody:
    return {"error": code or code_for(status), "detail": detail, "fields": fields or {}}


def fields_of(message: str) -> dict[str, str]:
    """{field: problem} for messages like "input.topic: required; priority: too large"."""
    fields: dict[str, str] = {}
    for part in message.split("; "):
        match = FIELD_MESSAGE.match(part.strip())
        if match:
            # "input `topic`" -> "input.topic", "input name" -> "input_name"
            name = match["field"].replace(" `", ".").replace("`", "").replace(" ", "_")
            fields.setdefault(name, match["problem"])
    return fields


def refuse(
    status: int,
    detail: str,
    *,
    field: str | None = None,
    fields: dict[str, str] | None = None,
    code: str = "",
) -> NoReturn:
    """Stop the endpoint with this error. A 422 without `fields` takes them from the message
    ("topic: required"), or names `field` with the whole message."""
    if fields is None and status == 422:
        fields = fields_of(detail) or ({field: detail} if field else None)
    raise ApiError(status, detail, fields=fields, code=code)


# What every operation may answer besides its own: no token (401), a bad parameter (422), the
# database away (503). Callers add the statuses their endpoint answers.
ALWAYS = (401, 422, 503)


def responses(ok: dict[int, Any], *statuses: int, out: Any = ErrorOut) -> dict[int, Any]:
    """`response=` for an operation: its successes, and ErrorOut for each failure it answers."""
    return {**{status: out for status in (*ALWAYS, *statuses)}, **ok}
