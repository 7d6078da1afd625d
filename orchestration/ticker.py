"""The ticker: the periodic sweep that makes execution durable.

It queues retries whose time has come, takes steps back from dead workers, re-sends task
messages the broker lost, wakes timers, and resumes parents of finished sub-workflow runs.
Every action is a compare-and-set transition, so several tickers (one per worker host) may run
at once.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection
from django.utils import timezone

from orchestration import dispatch, transitions
from orchestration.models import Run, StepKind, StepRun, TickerPass
from orchestration.status import RUN_FINAL, StepStatus

logger = logging.getLogger("baton.ticker")

BATCH = 500

# Other apps' periodic sweeps (the approvals app's deadlines), registered in AppConfig.ready so
# this module never imports them. Each is called with `now` and returns how much it did.
SWEEPS: list[Callable[[datetime], int]] = []


def register_sweep(sweep: Callable[[datetime], int]) -> None:
    if sweep not in SWEEPS:
        SWEEPS.append(sweep)


@dataclass
class TickReport:
    retried: int = 0
    lost: int = 0
    resent: int = 0
    woken: int = 0
    resumed: int = 0
    released: int = 0
    swept: int = 0

    def __bool__(self) -> bool:
        return any((self.retried, self.lost, self.resent, self.woken, self.resumed, self.released, self.swept))


def _database_gone(exc: Exception) -> bool:
    """True when the connection itself is lost: the whole tick stops and the worker says so once.

    A lock timeout or a bad row is an OperationalError too, but leaves the connection usable;
    those stay one logged failure, and the rest of the tick goes on.
    """
    if not isinstance(exc, (OperationalError, InterfaceError)):
        return False
    try:
        return not connection.is_usable()
    except Exception:
        return True


def _each(rows: Any, action: Callable[..., Any]) -> int:
    """Apply one transition per row; one bad row is logged and must not stop the sweep."""
    done = 0
    for row in rows:
        try:
            done += int(bool(action(*row) if isinstance(row, tuple) else action(row)))
        except Exception as exc:
            if _database_gone(exc):
                raise
            logger.exception("ticker: %s failed for %s", getattr(action, "__name__", action), row)
    return done


# When this ticker first saw a queued step's message missing from the broker (step id -> time).
_absent_since: dict[int, datetime] = {}


_last_scan: datetime | None = None


def resend_lost(now: datetime, *, older_than: float | None = None, absent_for: float | None = None) -> int:
    """Send again the messages of queued steps that no worker will ever receive.

    A step queued long ago is usually not lost at all: its message waits in the broker behind
    others (a backlog), and re-sending it only makes the queue longer. So a message counts as
    lost only when it is missing from the broker's queue and has been missing for
    BATON_REQUEUE_AFTER_SECONDS, as seen by this ticker: a cluster's pusher holds a message or
    two it has taken until one of its workers is free, and those are missing from the broker
    for a while without being lost.
    """
    global _last_scan
    requeue = settings.BATON_REQUEUE_AFTER_SECONDS
    older_than = requeue if older_than is None else older_than
    absent_for = requeue if absent_for is None else absent_for
    # Reading the broker's queue costs more than the other sweeps: a tenth of the requeue
    # time between looks is plenty.
    if absent_for and _last_scan is not None and _last_scan <= now < _last_scan + timedelta(seconds=requeue / 10):
        return 0
    _last_scan = now
    stale = now - timedelta(seconds=older_than)
    # Every queued step is watched from the start, oldest first, so that a message lost on
    # its way is noticed missing at once and sent again BATON_REQUEUE_AFTER_SECONDS later.
    candidates = list(
        StepRun.objects.filter(status=StepStatus.QUEUED).order_by("queued_at").values_list("pk", "queued_at")[:BATCH]
    )
    if not candidates:
        _absent_since.clear()
        return 0
    present = dispatch.queued_step_ids()
    lost = []
    for pk, queued_at in candidates:
        if pk in present:
            _absent_since.pop(pk, None)  # waiting behind others: not lost
            continue
        since = _absent_since.setdefault(pk, now)
        if queued_at is not None and queued_at < stale and (now - since).total_seconds() >= absent_for:
            lost.append((pk, queued_at))
    for pk in set(_absent_since) - {pk for pk, _ in candidates}:
        del _absent_since[pk]
    done = _each(lost, lambda pk, queued_at: transitions.resend_lost_message(step_run_id=pk, queued_at=queued_at))
    for pk, _ in lost:
        _absent_since.pop(pk, None)
    return done


def tick(now: datetime | None = None) -> TickReport:
    now = now or timezone.now()
    report = TickReport()
    steps = StepRun.objects
    report.retried = _each(
        steps.filter(status=StepStatus.RETRYING, next_attempt_at__lte=now).values_list("pk", flat=True)[:BATCH],
        lambda pk: transitions.queue_due_retry(step_run_id=pk),
    )
    report.lost = _each(
        steps.filter(status=StepStatus.RUNNING, lease_expires_at__lt=now).values_list(
            "pk", "claim_token", "attempts", "run_id"
        )[:BATCH],
        lambda pk, token, attempts, run_id: transitions.expire_lease(
            step_run_id=pk, token=token, attempt=attempts, run_id=run_id
        ),
    )
    broker_error: Exception | None = None
    try:
        report.resent = resend_lost(now)
    except Exception as exc:
        # The broker is away: the other sweeps still run, and the caller hears of it once.
        broker_error = exc
    report.woken = _each(
        steps.filter(status=StepStatus.WAITING, kind=StepKind.WAIT, wake_at__lte=now).values_list("pk", flat=True)[:BATCH],
        lambda pk: transitions.wake_timer(step_run_id=pk),
    )
    report.resumed = _each(
        Run.objects.filter(
            status__in=RUN_FINAL, parent_step__status=StepStatus.WAITING, parent_step__kind=StepKind.WORKFLOW
        ).values_list("pk", flat=True)[:BATCH],
        lambda pk: transitions.finish_child_run(child_run_id=pk),
    )
    # Throttled steps are released when a slot frees; this catches a release that was missed
    # (a cancelled run's steps, a worker that died holding a slot).
    for agent in transitions.throttled_agents():
        try:
            report.released += transitions.release_throttled(agent=agent)
        except Exception as exc:
            if _database_gone(exc):
                raise
            logger.exception("ticker: releasing throttled steps of %s failed", agent.name)
    for sweep in SWEEPS:
        try:
            report.swept += sweep(now)
        except Exception as exc:
            if _database_gone(exc):
                raise
            logger.exception("ticker: sweep %s failed", getattr(sweep, "__name__", sweep))
    if report:
        logger.info("tick: %s", report)
    if broker_error is not None:
        raise broker_error
    record_pass(now)
    return report


# A pass is recorded at most this often: /healthz needs the age to a few seconds, and one write
# per host every few seconds costs nothing where one per 0.5 s tick would.
PASS_RECORD_SECONDS = 5.0
_recorded_at: datetime | None = None


def record_pass(now: datetime) -> None:
    """Note that this host's ticker finished a whole pass (a failing pass raises before this)."""
    global _recorded_at
    if _recorded_at is not None and _recorded_at <= now < _recorded_at + timedelta(seconds=PASS_RECORD_SECONDS):
        return
    host = socket.gethostname()[:200]
    if not TickerPass.objects.filter(host=host).update(passed_at=now):
        TickerPass.objects.update_or_create(host=host, defaults={"passed_at": now})
    _recorded_at = now


def forget_recorded_pass() -> None:
    """For tests: the next pass is recorded whenever it comes."""
    global _recorded_at
    _recorded_at = None
