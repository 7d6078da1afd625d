"""At most BATON_WEB_CONCURRENCY requests inside Django at once per web process; the rest wait.

Django's ASGI handler runs each request's sync view in a thread of its own (asgiref's
ThreadSensitiveContext), and each such thread opens its own database connection. Nothing bounds
them: when 200 live pages are told at once that a run changed, 200 fetches arrive together, and
the process starts 200 threads and asks PostgreSQL for 200 connections (past its
max_connections of 100, so most answer 500). The threads also fight over the GIL with the event
loop that carries the live pushes, so hints wait behind renders. Waiting here costs a coroutine,
not a thread or a connection, and the requests are served as fast as before: sync views share
one GIL, so more of them at once never finished sooner. Websockets and static files pass by.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from django.conf import settings


class BoundedRequests:
    """ASGI middleware around the Django application (HTTP only)."""

    def __init__(self, application: Any) -> None:
        self.application = application
        # One gate per event loop: daphne has one; tests may make several.
        self.gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] != "http":
            return await self.application(scope, receive, send)
        loop = asyncio.get_running_loop()
        gate = self.gates.get(loop)
        if gate is None:
            # Read when first needed, not at import (tests change it).
            gate = self.gates[loop] = asyncio.Semaphore(settings.BATON_WEB_CONCURRENCY)
        async with gate:
            return await self.application(scope, receive, send)
