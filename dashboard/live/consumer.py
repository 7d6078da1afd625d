"""The one websocket of every page: it says which of the page's parts changed, nothing more.

The browser (static/js/live.js) sends `{"subscribe": [topics]}` with the topics its live parts
carry, again whenever a swap changes them; this consumer joins the groups of the topics the user
may follow (topics.resolve) and answers `{"subscribed": [...], "refused": [...]}`. When a group
hears of a change, the topics listening to it are sent as `{"changed": [...]}`, at most once per
BATON_LIVE_COALESCE_SECONDS: the first change after a quiet spell at once (GATHER_SECONDS
later), a burst as one more message at the end of the window, so a run that changes a thousand times a second costs a page
a few refreshes. Nothing is ever decided here: decisions are CSRF-protected POSTs.

Refused before the handshake completes: anonymous or inactive users (the browser sees the
upgrade fail with 403) and, in orchestration/config/asgi.py, origins outside ALLOWED_HOSTS.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from dashboard.live import topics
from dashboard.live.tail import TAIL

# The largest message a page may send (a subscribe with MAX_TOPICS topics fits easily).
MAX_MESSAGE_BYTES = 8_192
# One change reaches a socket as one message per group (its run, its workflows, …), sent one
# after the other: the first waits this long for its siblings, so the page hears of them at once.
GATHER_SECONDS = 0.01
# Each subscribe asks the database who may see what: a page sends one per swap that changes its
# parts, far below this; a client sending more per window is closed (and reconnects, slower).
SUBSCRIBES_PER_WINDOW = 30
SUBSCRIBE_WINDOW_SECONDS = 10.0
# Close codes (4000–4999 are the application's): the browser reconnects after any of them.
TOO_LARGE = 1009
BAD_MESSAGE = 4400
TOO_MANY = 4429


class LiveConsumer(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated or not user.is_active:
            await self.close()
            return
        self.user = user
        self.listening: dict[str, set[str]] = {}  # group → topics
        self.pending: set[str] = set()
        self.last_sent = 0.0
        self.flush_task: asyncio.Task[None] | None = None
        self.subscribes: list[float] = []
        if settings.BATON_LIVE_SOURCE == "tail":
            TAIL.ensure_started()
        await self.accept()

    async def disconnect(self, code: int) -> None:
        for group in list(getattr(self, "listening", {})):
            await self.channel_layer.group_discard(group, self.channel_name)
        task = getattr(self, "flush_task", None)
        if task is not None:
            task.cancel()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if bytes_data is not None or text_data is None:
            await self.close(code=BAD_MESSAGE)
            return
        if len(text_data.encode()) > MAX_MESSAGE_BYTES:
            await self.close(code=TOO_LARGE)
            return
        wanted = _topics_from(text_data)
        if wanted is None:
            await self.close(code=BAD_MESSAGE)
            return
        now = time.monotonic()
        self.subscribes = [at for at in self.subscribes if now - at < SUBSCRIBE_WINDOW_SECONDS] + [now]
        if len(self.subscribes) > SUBSCRIBES_PER_WINDOW:
            await self.close(code=TOO_MANY)
            return
        granted, refused = await database_sync_to_async(topics.resolve)(self.user, wanted)
        listening: dict[str, set[str]] = {}
        for topic, groups in granted.items():
            for group in groups:
                listening.setdefault(group, set()).add(topic)
        for group in set(self.listening) - set(listening):
            await self.channel_layer.group_discard(group, self.channel_name)
        for group in set(listening) - set(self.listening):
            await self.channel_layer.group_add(group, self.channel_name)
        self.listening = listening
        await self.send(text_data=json.dumps({"subscribed": sorted(granted), "refused": refused}))

    async def live_changed(self, message: dict[str, Any]) -> None:
        changed = self.listening.get(str(message.get("group", "")))
        if not changed:
            return
        self.pending |= changed
        if self.flush_task is not None and not self.flush_task.done():
            return  # the window's last message will carry it
        wait = max(GATHER_SECONDS, self.last_sent + settings.BATON_LIVE_COALESCE_SECONDS - time.monotonic())
        self.flush_task = asyncio.get_running_loop().create_task(self._flush_after(wait))

    async def _flush_after(self, wait: float) -> None:
        await asyncio.sleep(wait)
        await self._flush()

    async def _flush(self) -> None:
        if not self.pending:
            return
        changed, self.pending = sorted(self.pending), set()
        self.last_sent = time.monotonic()
        await self.send(text_data=json.dumps({"changed": changed}))


def _topics_from(text: str) -> list[str] | None:
    """The topics of a subscribe message, or None when it is not one."""
    try:
        message = json.loads(text)
    except ValueError:
        return None
    wanted = message.get("subscribe") if isinstance(message, dict) else None
    if not isinstance(wanted, list) or len(wanted) > topics.MAX_TOPICS:
        return None
    if not all(isinstance(topic, str) and len(topic) <= 64 for topic in wanted):
        return None
    return list(dict.fromkeys(wanted))
