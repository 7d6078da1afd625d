"""Side effects that leave the database: task messages to django-q2 workers.

Everything here runs after the transaction that decided it has committed, so a worker never
sees a step that is not in the database yet.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import partial

from django.db import transaction

logger = logging.getLogger("baton.dispatch")

_broker = None
MAX_CHUNK = 25


def broker():  # type: ignore[no-untyped-def]
    # django-q2 opens a new connection per get_broker(); one per process is plenty.
    global _broker
    if _broker is None:
        from django_q.brokers import get_broker

        _broker = get_broker()
    return _broker


_keep = threading.local()


@contextmanager
def keeping_the_next_step() -> Iterator[list[int]]:
    """While active, a single step queued by the engine is kept for the calling worker
    instead of being sent: it runs it next, without a round trip through the broker.

    Only the first lone step is kept; anything else is sent as usual.

    Open it inside the transaction that records the worker's own step, and close it before
    that transaction commits: on-commit callbacks (a finished child run resuming its parent)
    run after the slot is gone, so what they queue goes to the broker. A step kept in a slot
    that nobody claims any more would wait for the ticker's lost-message sweep.
    """
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("keeping_the_next_step() belongs inside the transaction that records the step")
    kept: list[int] = []
    _keep.slot = kept
    try:
        yield kept
    finally:
        _keep.slot = None


def send_steps_on_commit(step_run_ids: Iterable[int]) -> None:
    ids = list(step_run_ids)
    slot = getattr(_keep, "slot", None)
    if slot is not None and not slot and len(ids) == 1:
        slot.append(ids[0])
        return
    if ids:
        transaction.on_commit(partial(send_steps, ids))


def send_steps(step_run_ids: list[int]) -> None:
    from django_q.tasks import async_task

    for step_run_id in step_run_ids:
        try:
            async_task(
                "orchestration.tasks.execute_step",
                step_run_id,
                broker=broker(),
                task_name=f"step-{step_run_id}",
            )
        except Exception:
            # The step stays queued in our table; the ticker re-sends it after
            # BATON_REQUEUE_AFTER_SECONDS, so a broker outage delays work but loses none.
            logger.exception("could not send step %s to the broker", step_run_id)


def send_chunks_on_commit(step_run_ids: list[int]) -> None:
    """for_each items in chunks, so a large fan-out of short steps is not one message each.

    Chunks stay small enough that every worker gets several (no loss of parallelism for slow
    agents): about eight per worker of this deployment, at most MAX_CHUNK items each.
    """
    from django.conf import settings

    size = max(1, min(MAX_CHUNK, len(step_run_ids) // (settings.WORKERS * 8)))
    if size == 1:
        send_steps_on_commit(step_run_ids)
        return
    chunks = [step_run_ids[i : i + size] for i in range(0, len(step_run_ids), size)]
    transaction.on_commit(partial(send_step_chunks, chunks))


def send_step_chunks(chunks: list[list[int]]) -> None:
    from django_q.tasks import async_task

    for chunk in chunks:
        try:
            async_task(
                "orchestration.tasks.execute_steps",
                chunk,
                broker=broker(),
                task_name=f"steps-{chunk[0]}-{chunk[-1]}",
            )
        except Exception:
            logger.exception("could not send steps %s..%s to the broker", chunk[0], chunk[-1])


def notify_parent_on_commit(run_id: int) -> None:
    def notify() -> None:
        from orchestration import transitions

        try:
            transitions.finish_child_run(child_run_id=run_id)
        except Exception:
            # The ticker finds finished children whose parent step still waits.
            logger.exception("could not resume the parent of run %s", run_id)

    transaction.on_commit(notify)
