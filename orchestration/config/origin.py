"""Which pages may open a websocket: our own, the way Django's CSRF check decides for a POST.

A socket rides on the user's session cookie, so a page on another site could open one and
listen. Channels' AllowedHostsOriginValidator compares the Origin with ALLOWED_HOSTS, which
development sets to `*` (any Host, so `make run HOST=0.0.0.0` works from another machine); that
would let every origin through. Instead, as Django's CsrfViewMiddleware does for unsafe
requests, the Origin must be the host the request was made to (same origin), or one of
CSRF_TRUSTED_ORIGINS (a proxy in front that serves another name). No Origin, no socket:
browsers always send one.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings


def _header(scope: dict[str, Any], name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin1"))
    return ""


def allowed_origin(scope: dict[str, Any]) -> bool:
    origin = _header(scope, b"origin").strip()
    if not origin or origin == "null":
        return False
    if origin in settings.CSRF_TRUSTED_ORIGINS:
        return True
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False
    host = _header(scope, b"host").strip().lower()
    return bool(host) and parts.netloc.lower() == host


class SameOriginValidator:
    """ASGI middleware: websockets from other origins are denied before the consumer runs."""

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: Any, receive: Any, send: Any) -> Any:
        if scope["type"] == "websocket" and not allowed_origin(scope):
            return await WebsocketDenier.as_asgi()(scope, receive, send)
        return await self.application(scope, receive, send)
