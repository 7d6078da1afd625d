"""The embedded set-up: each web process reads the event logs for what committed since its last look.

Without Redis, web and worker processes share nothing but the database, so a worker cannot
reach a socket held by daphne. Every change appends a row to an event log in its own
transaction (orchestration's RunEvent, approvals' ItemEvent), so a row is visible exactly when
its change has committed. One task per web process, started by the first socket, asks each log
for rows past the last id it saw, every BATON_LIVE_TAIL_SECONDS (one indexed range query per
log, returning nothing when nothing happened), turns them into group names and sends them on the
process's in-memory channel layer to its own sockets. Its cost is per process, not per client:
a hundred open pages cost the same queries as one. docs/live-push.md has the figures.

Ids are handed out in order but may commit out of order (PostgreSQL without Redis; a rolled
back insert leaves a hole on any database): an id skipped over is remembered as a gap and read
again for GAP_SECONDS, so a row that commits late behind a higher id is still heard of.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import SyncToAsync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import close_old_connections

from dashboard.live.changes import EVENT_LOGS, Changes, EventLog, groups_for

logger = logging.getLogger(__name__)

# Rows read per log per look; a longer backlog is read over the next looks.
BATCH = 5_000
# How long a skipped id is waited for; a transaction that commits later than this is heard of
# only through its next change or the page's next reconnect.
GAP_SECONDS = 5.0
# At most this many gaps are remembered per log (a mass rollback would otherwise grow the set).
MAX_GAPS = 1_000


class _Position:
    def __init__(self, mark: int) -> None:
        self.mark = mark
        self.gaps: dict[int, float] = {}  # id → when it was first skipped

    def read(self, log: EventLog, now: float) -> set[int]:
        """The refs of rows not read before; moves the mark and remembers the holes."""
        for gap in [gap for gap, since in self.gaps.items() if now - since > GAP_SECONDS]:
            del self.gaps[gap]
        refs: set[int] = set()
        if self.gaps:
            for row_id, ref in log.rows_with_ids(set(self.gaps)):
                del self.gaps[row_id]
                refs.add(ref)
        expected = self.mark + 1
        for row_id, ref in log.rows(self.mark, BATCH):
            for hole in range(expected, min(row_id, expected + MAX_GAPS)):
                if len(self.gaps) < MAX_GAPS:
                    self.gaps[hole] = now
            expected = row_id + 1
            self.mark = row_id
            refs.add(ref)
        return refs


class Tail:
    """One per web process; its task runs on the process's event loop."""

    def __init__(self) -> None:
        self.positions: dict[str, _Position] = {}
        self.task: asyncio.Task[None] | None = None
        # Its own thread (and so its own database connection): Django's sync views all run in
        # one thread under daphne, and the tail must not queue behind a page being rendered.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="baton-live-tail")

    def ensure_started(self) -> None:
        # One task on the loop the sockets live on (daphne has one; a test may make several).
        loop = asyncio.get_running_loop()
        if self.task is None or self.task.done() or self.task.get_loop() is not loop:
            self.task = loop.create_task(self._run(), name="baton-live-tail")

    async def _run(self) -> None:
        layer = get_channel_layer()
        assert layer is not None, "CHANNEL_LAYERS has no default layer"
        await SyncToAsync(self.start, thread_sensitive=False, executor=self.executor)()
        while True:
            await asyncio.sleep(settings.BATON_LIVE_TAIL_SECONDS)
            try:
                groups = await SyncToAsync(self.look, thread_sensitive=False, executor=self.executor)()
            except Exception:
                logger.exception("live push: reading the event logs failed; trying again")
                continue
            for group in sorted(groups):
                await layer.group_send(group, {"type": "live.changed", "group": group})

    def start(self) -> None:
        """Begin at the end of each log: pages already show what committed before."""
        close_old_connections()
        self.positions = {log.name: _Position(log.latest()) for log in EVENT_LOGS}

    def look(self) -> set[str]:
        """The groups of what committed since the last look (synchronous: it reads the database)."""
        close_old_connections()
        changes = Changes()
        now = time.monotonic()
        for log in EVENT_LOGS:
            position = self.positions.setdefault(log.name, _Position(0))
            refs = position.read(log, now)
            if refs:
                changes.update(log.changes(refs))
        return groups_for(changes) if changes else set()


TAIL = Tail()
