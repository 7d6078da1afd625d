"""The ticker's rollout pass: snapshots kept current, and each active rollout's gate and drift
checked once a day. Registered with orchestration.ticker in RolloutsConfig.ready (the core
never imports this app).

At most one pass per BATON_ROLLUP_SECONDS in each process; cheap when nothing changed (one
query for the days to rewrite, one for the rollouts due). Several tickers may run it: each
snapshot day and each rollout is written under a lock.
"""

from __future__ import annotations

import logging
from datetime import datetime

from orchestration.rollouts import metrics, transitions

logger = logging.getLogger("baton.rollouts")


def sweep(now: datetime) -> int:
    if not metrics.due(now):
        return 0
    done = 0
    # Each part logs its own failures; one must not keep the other from running.
    try:
        done += metrics.sweep(now)
    except Exception:
        logger.exception("rollouts: refreshing the snapshots failed")
    try:
        done += transitions.check_rollouts(now)
    except Exception:
        logger.exception("rollouts: the daily checks failed")
    return done
