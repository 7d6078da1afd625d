"""The leaf that talks to django-q2: task messages to workers, and the one look back at the
broker (which steps still have a message waiting, for the ticker).

Nothing here decides or writes our tables. orchestration.transitions.apply calls the senders
after the transaction that decided the sends has committed, so a worker never sees a step
that is not in the database yet.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from orchestration import limits

logger = logging.getLogger("baton.dispatch")

_broker: Any = None
MAX_CHUNK = 50
CHUNKS_PER_WORKER = 8


def broker() -> Any:
    # django-q2 opens a new connection per get_broker(); one per process is plenty.
    global _broker
    if _broker is None:
        from django_q.brokers import get_broker

        _broker = get_broker()
    return _broker


def _send_all(messages: list[Any], send: Callable[[Any], None], failed: Callable[[Any], None]) -> None:
    """Send each message; one that fails is logged and the rest still go.

    The ORM broker writes a row per message and, outside a transaction, django-q2 first calls
    close_old_connections(), which (CONN_MAX_AGE 0) closes and reopens the database
    connection each time: the 400 chunk messages of a 10,000-item map took 3.5 s on SQLite,
    44 s with busy workers contending for the write lock. So on that broker the messages of
    each batch of BATCH_SIZE share one short transaction (a savepoint each, so one that fails
    is the only one lost; the ticker re-sends it).
    """
    from django_q.brokers.orm import ORM
    from django_q.conf import Conf

    orm = isinstance(broker(), ORM)
    for start in range(0, len(messages), limits.BATCH_SIZE):
        batch = messages[start : start + limits.BATCH_SIZE]
        try:
            with transaction.atomic(using=Conf.ORM) if orm and len(batch) > 1 else nullcontext():
                for message in batch:
                    try:
                        with transaction.atomic(using=Conf.ORM) if orm and len(batch) > 1 else nullcontext():
                            send(message)
                    except Exception:
                        failed(message)
        except Exception:
            # The batch's transaction itself failed (the database went away): none of it is
            # in the queue; the ticker re-sends what stays queued in our table.
            logger.exception("could not send %d task messages to the broker", len(batch))


def send_steps(step_run_ids: list[int], *, first: bool = False) -> None:
    """One message per step; `first` puts them at the head of the queue (see _Front)."""
    from django_q.tasks import async_task

    def send(step_run_id: int) -> None:
        async_task(
            "orchestration.tasks.execute_step",
            step_run_id,
            broker=_Front(broker()) if first else broker(),
            task_name=f"step-{step_run_id}",
        )

    def failed(step_run_id: int) -> None:
        # The step stays queued in our table; the ticker re-sends it after
        # BATON_REQUEUE_AFTER_SECONDS, so a broker outage delays work but loses none.
        logger.exception("could not send step %s to the broker", step_run_id)

    _send_all(step_run_ids, send, failed)


class _Front:
    """A broker whose enqueue puts the message at the head of the queue.

    django-q2's Redis broker pushes on the right and pops on the left, so LPUSH is the head.
    The ORM broker has no order to jump (its dequeue takes any unlocked row; SQLite and
    PostgreSQL hand back the oldest in practice), so there the message simply joins the queue.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.list_key = inner.list_key

    def enqueue(self, package: str) -> Any:
        connection: Any = getattr(self.inner, "connection", None)
        if hasattr(connection, "lpush"):
            return connection.lpush(self.inner.list_key, package)
        return self.inner.enqueue(package)


def queued_step_ids(limit: int = 20000) -> set[int]:
    """The step ids that have a message waiting in the broker (a chunk names all of its items).

    Messages already taken by a cluster's pusher and waiting inside that cluster are not in
    the broker any more; the ticker allows for them (see ticker.resend_lost). Raises what the
    broker raises when it is unavailable.
    """
    from django_q.signing import SignedPackage

    current = broker()
    connection: Any = getattr(current, "connection", None)
    if hasattr(connection, "lrange"):
        packages = list(connection.lrange(current.list_key, 0, limit - 1))
    else:
        # A locked row was taken by a cluster's pusher: it is in that cluster now, not here.
        rows = current.get_connection().filter(key=current.list_key, lock__lte=timezone.now())
        packages = list(rows.values_list("payload", flat=True)[:limit])
    ids: set[int] = set()
    for package in packages:
        try:
            task = SignedPackage.loads(package)
        except Exception:
            continue
        for arg in task.get("args") or ():
            if isinstance(arg, int):
                ids.add(arg)
            elif isinstance(arg, list):
                ids.update(a for a in arg if isinstance(a, int))
    return ids


def send_mapped(step_run_ids: list[int], *, in_slots: bool = False) -> None:
    """for_each items in chunks, so a large fan-out of short steps is not one message each.

    Chunks stay small enough that every worker gets several (no loss of parallelism for slow
    agents): about CHUNKS_PER_WORKER per worker of this deployment, at most MAX_CHUNK items
    each. A chunk holds its worker for all its items, so a retry put at the head of the queue
    still waits for the chunks a cluster has already taken: fewer chunks per worker made a
    killed step's retry wait behind a whole backlog of 0.1 s items.

    Items whose agent waits on the network (`in_slots`) go one chunk per worker, at most
    MAX_CHUNK items each: a worker claims such a chunk in one transaction, hands its items to
    its slots and takes its next message at once, so the chunk holds the worker for
    milliseconds, not for its calls, and the items' results are recorded together. Sent one
    message each (20 items on 4 workers were), each item's message, claim and record came
    one after another in its worker and took ten times as long as the calls themselves.
    """
    if in_slots:
        size = min(MAX_CHUNK, -(-len(step_run_ids) // settings.WORKERS))
    else:
        size = max(1, min(MAX_CHUNK, len(step_run_ids) // (settings.WORKERS * CHUNKS_PER_WORKER)))
    if size == 1:
        send_steps(step_run_ids)
        return
    send_step_chunks([step_run_ids[i : i + size] for i in range(0, len(step_run_ids), size)])


def send_step_chunks(chunks: list[list[int]]) -> None:
    from django_q.tasks import async_task

    def send(chunk: list[int]) -> None:
        async_task(
            "orchestration.tasks.execute_steps",
            chunk,
            broker=broker(),
            task_name=f"steps-{chunk[0]}-{chunk[-1]}",
        )

    def failed(chunk: list[int]) -> None:
        logger.exception("could not send steps %s..%s to the broker", chunk[0], chunk[-1])

    _send_all(chunks, send, failed)
