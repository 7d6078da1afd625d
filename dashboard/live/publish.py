"""With Redis: every process tells the channel layer's groups about its committed changes.

orchestration.transitions.apply calls `after_commit` once a change has committed, in whatever
process made it (a worker finishing a step, a web process deciding an item, a command). The
hook only queues the change; one thread per process turns the queued changes into group names
(reading the database, after commit) and publishes them on the Redis pub/sub channel layer, so
a worker's hand-off never waits for Redis, and a burst of changes leaves as one message per
group. If Redis is down the hint is lost and logged; pages catch up when their socket comes
back, because every (re)connect refetches (docs/live-push.md).

In the embedded set-up (no Redis) this hook does nothing: web processes read the event log.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import queue
import threading
from typing import Any

from channels.layers import get_channel_layer
from django.conf import settings
from django.db import close_old_connections, connection

from dashboard.live.changes import Changes, groups_for
from orchestration.work import Work

logger = logging.getLogger(__name__)

# How long a process that exits (a management command) waits for its last hints to leave.
FLUSH_AT_EXIT_SECONDS = 2.0
# At most this many changes wait in a process; beyond, the oldest are merged, never dropped.
QUEUE_LIMIT = 10_000
# After this long without a change, the thread closes its database connection.
IDLE_SECONDS = 0.5
# A Redis that does not answer holds one batch this long, then the batch is dropped and logged.
SEND_TIMEOUT_SECONDS = 5.0


def after_commit(work: Work) -> None:
    if settings.BATON_LIVE_SOURCE != "publish":
        return
    changes = Changes.from_work(work)
    if changes:
        Publisher.for_this_process().put(changes)


class Publisher:
    _instance: Publisher | None = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.queue: queue.Queue[Changes] = queue.Queue(maxsize=QUEUE_LIMIT)
        self.thread = threading.Thread(target=self._run, name="baton-live-publish", daemon=True)
        self.thread.start()
        atexit.register(self.flush, FLUSH_AT_EXIT_SECONDS)

    @classmethod
    def for_this_process(cls) -> Publisher:
        # django-q2 forks its workers: a thread started before the fork does not exist in the
        # child, so each process starts its own.
        with cls._lock:
            if cls._instance is None or cls._instance.pid != os.getpid():
                cls._instance = cls()
            return cls._instance

    def put(self, changes: Changes) -> None:
        try:
            self.queue.put_nowait(changes)
        except queue.Full:
            # Keep the hint: fold it into one taken from the queue instead of blocking the caller.
            try:
                older = self.queue.get_nowait()
            except queue.Empty:
                older = None
            if older is not None:
                changes.update(older)
                self.queue.task_done()
            self.queue.put_nowait(changes)

    def flush(self, timeout: float) -> bool:
        """Wait until what was queued so far has been published (for tests and exiting commands)."""
        pending = self.queue.all_tasks_done
        with pending:
            return pending.wait_for(lambda: not self.queue.unfinished_tasks, timeout)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        layer = get_channel_layer()
        while True:
            try:
                batch = self.queue.get(timeout=IDLE_SECONDS)
            except queue.Empty:
                # Idle: give the database connection back (a test database can then be dropped,
                # and PostgreSQL does not keep a backend per quiet process).
                connection.close()
                continue
            taken = 1
            while True:
                try:
                    batch.update(self.queue.get_nowait())
                except queue.Empty:
                    break
                taken += 1
            try:
                close_old_connections()
                groups = groups_for(batch)
                loop.run_until_complete(asyncio.wait_for(_send(layer, groups), SEND_TIMEOUT_SECONDS))
            except Exception:
                logger.exception("live push: could not publish %d runs, %d items", len(batch.runs), len(batch.items))
                # A connection broken by a restarted database must not break every later hint.
                connection.close()
            for _ in range(taken):
                self.queue.task_done()


async def _send(layer: Any, groups: set[str]) -> None:
    for group in sorted(groups):
        await layer.group_send(group, {"type": "live.changed", "group": group})
