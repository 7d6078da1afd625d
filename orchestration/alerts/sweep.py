"""The ticker's alerts pass (registered with orchestration.ticker in AlertsConfig.ready).

Each tick: deliveries whose retry is due, or whose message the broker lost, get a task
message; deliveries a dead worker held are tried again. At most every BATON_ALERT_SECONDS
(per process): every rule is evaluated against the current rows. Nothing here sends mail or
calls a webhook, so a slow receiver never holds the ticker (see queue.py).

A lost database connection is raised to the ticker, which ends the tick and says so once; any
other failure of one part is logged and the other part still runs.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import InterfaceError, OperationalError, transaction

from orchestration.alerts import queue, transitions

logger = logging.getLogger("baton.alerts")

# A message not taken this long after it was sent is presumed lost; a delivery held this long
# by a worker (its send has a 10 s timeout) is presumed abandoned.
LOST_AFTER_SECONDS = 300.0
STUCK_AFTER_SECONDS = 120.0

_last_evaluation: datetime | None = None


def forget_last_evaluation() -> None:
    """The next pass evaluates the rules whatever the time (tests, and a command's one pass)."""
    global _last_evaluation
    _last_evaluation = None


def due(now: datetime) -> bool:
    every = float(getattr(settings, "BATON_ALERT_SECONDS", 15.0))
    return _last_evaluation is None or not (_last_evaluation <= now < _last_evaluation + timedelta(seconds=every))


def sweep(now: datetime) -> int:
    global _last_evaluation
    done = 0
    try:
        with transaction.atomic():
            ids = transitions.due_deliveries(now, lost_after=LOST_AFTER_SECONDS)
            if ids:
                transaction.on_commit(lambda: queue.send(ids))
        done += len(ids)
        done += transitions.release_stuck(now, stuck_after=STUCK_AFTER_SECONDS)
    except (OperationalError, InterfaceError):
        raise
    except Exception:
        logger.exception("alerts: queueing due deliveries failed")
    if due(now):
        _last_evaluation = now
        done += transitions.evaluate(now)
    return done
