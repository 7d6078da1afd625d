"""The alerts' only contact with django-q2: one task message per delivery to send.

Why a django-q2 task and not the ticker itself: a webhook that takes its whole timeout (or a
mail server that hangs) would hold the ticker, and with it every retry, lease and timer of the
engine, for that long. A worker takes the message instead, like a step; the ticker only writes
rows and sends messages. A message the broker loses is sent again by the ticker's pass
(orchestration/alerts/sweep.py), and a duplicate does nothing: the task claims its delivery by
compare-and-set.
"""

from __future__ import annotations

import logging

from orchestration import dispatch

logger = logging.getLogger("baton.alerts")

TASK = "orchestration.alerts.tasks.deliver"


def send(delivery_ids: list[int]) -> None:
    """Called after commit: the rows exist before a worker looks for them."""
    from django_q.tasks import async_task

    for pk in delivery_ids:
        try:
            async_task(TASK, pk, broker=dispatch.broker(), task_name=f"alert-delivery-{pk}")
        except Exception:
            # The row stays pending; the ticker's pass sends its message again later.
            logger.exception("alerts: could not send delivery %s to the broker", pk)
