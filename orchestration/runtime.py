"""The worker runtime: what a worker process does with the steps it is handed.

It claims them (a transition), keeps their leases alive from a heartbeat thread, calls the
agent under a deadline, turns what the agent did into an outcome (a result, or a failure with
its class), records it (a transition), and goes on with the next step of the same run when
the engine picks one for it. The django-q2 task adapters (orchestration.tasks) only call in.
Every record is compare-and-set on the claim, so a message delivered twice runs nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from django.conf import settings
from django.db import DatabaseError, IntegrityError, InterfaceError, connection
from django.utils import timezone

from orchestration import dispatch, limits, logcontext, transitions
from orchestration.agents import (
    AgentContext,
    AgentResult,
    PermanentError,
    StepTimeout,
    TransientError,
    idempotency_key,
    invoke,
    invoke_async,
)
from orchestration.agents import logs as agent_logs
from orchestration.agents import secrets as agent_secrets
from orchestration.agents import waits_on_network as agents_waits_on_network
from orchestration.durations import format_duration
from orchestration.models import Agent
from orchestration.specs import load_agent, version_step_spec
from orchestration.status import ErrorClass

logger = logging.getLogger("baton.runtime")

T = TypeVar("T")


def worker_label() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@contextmanager
def deadline(seconds: float | None, label: str) -> Iterator[None]:
    """Stop the agent with StepTimeout once `seconds` have passed.

    django-q2 runs a task in the main thread of a worker process, where SIGALRM can interrupt
    any Python code; django-q2 uses the same timer for its own (much longer) task timeout, so
    it is saved and re-armed afterwards. Elsewhere (a thread), remote calls still honour the
    timeout through their own client timeouts.
    """
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise StepTimeout(f"{label} ran past its timeout of {format_duration(seconds)}")

    started = time.monotonic()
    previous_handler = signal.signal(signal.SIGALRM, expire)
    previous_delay, _ = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)
        if previous_delay:
            left = previous_delay - (time.monotonic() - started)
            signal.setitimer(signal.ITIMER_REAL, max(left, 0.001))


# Set when this worker process is asked to stop (SIGTERM from a service manager, or the
# drain of `baton_worker`): take no new step, finish the ones in hand. `baton_worker` replaces
# it, before forking its cluster, by a process-shared event, so that setting it in the
# command's process reaches every worker at once; a plain threading.Event serves in-process
# callers (tests, `drive`).
_stop_flag: Any = threading.Event()


def share_stop_flag(event: Any) -> None:
    """Use `event` (a multiprocessing.Event created before the cluster forks) as the stop flag."""
    global _stop_flag
    _stop_flag = event


def stop_taking_steps(signum: int = 0, frame: Any = None) -> None:
    """Also a signal handler: a worker process signalled to stop drains instead of dying."""
    _stop_flag.set()


def stopping() -> bool:
    return bool(_stop_flag.is_set())


class Heartbeat:
    """Renews the leases of the steps a worker holds, from a background thread.

    When the worker process dies the renewals stop, the leases run out, and the ticker gives
    the steps to other workers. When a renewal finds the steps no longer held (the run was
    cancelled, or the lease was given away) it sets `stop`, which agents see as
    context.should_stop(). An error (the database restarting) is not the end of the claim:
    the next beat tries again, sooner than usual, until a renewal answers either way.
    """

    def __init__(self, step_run_ids: list[int], token: str):
        self.step_run_ids = step_run_ids
        self.token = token
        self.stopped = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True, name=f"heartbeat-{step_run_ids[0]}")

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join()

    def _beat(self) -> None:
        used_db = False
        failing_since: float | None = None
        interval = settings.BATON_HEARTBEAT_SECONDS
        try:
            while not self.stopped.wait(interval):
                used_db = True
                try:
                    held = transitions.renew_lease(step_run_ids=self.step_run_ids, token=self.token)
                except Exception as exc:
                    # One line when renewals start failing and one when they work again, not one
                    # per beat: a database restart must not flood the log.
                    if failing_since is None:
                        failing_since = time.monotonic()
                        logger.error(
                            "heartbeat: could not renew the lease of steps %s (%s); retrying",
                            self.step_run_ids[:5],
                            _one_line(exc),
                        )
                    # A broken connection stays broken: open a new one at the next try.
                    _close_connection()
                    # The lease is running out meanwhile: try again well before it does.
                    interval = min(settings.BATON_HEARTBEAT_SECONDS, max(settings.BATON_LEASE_SECONDS / 10, 0.05))
                    continue
                if failing_since is not None:
                    logger.warning(
                        "heartbeat: lease renewals of steps %s work again after %.1f s",
                        self.step_run_ids[:5],
                        time.monotonic() - failing_since,
                    )
                    failing_since = None
                    interval = settings.BATON_HEARTBEAT_SECONDS
                if not held:
                    self.stop.set()
                    return
        finally:
            if used_db:
                _close_connection()


def _close_connection() -> None:
    with contextlib.suppress(Exception):
        connection.close()


def _with_database(action: Callable[[], T], *, what: str, give_up: threading.Event | None = None) -> T:
    """Run `action` (one transition), riding out a database that is briefly away.

    A result recorded after an agent ran for minutes must not be lost to a restart of the
    database that happened meanwhile (the worker's connection is then dead): reconnect and try
    again for up to BATON_DB_RETRY_SECONDS. Transitions are compare-and-set on the claim, so a
    try that did commit before the error is refused the second time, never applied twice.
    """
    deadline = time.monotonic() + settings.BATON_DB_RETRY_SECONDS
    delay = 0.1
    failing = False
    while True:
        try:
            result = action()
        except (DatabaseError, InterfaceError) as exc:
            if isinstance(exc, IntegrityError) or time.monotonic() > deadline or (give_up and give_up.is_set()):
                raise
            if not failing:
                failing = True
                logger.error("%s: database unavailable (%s); retrying", what, _one_line(exc))
            _close_connection()
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
            continue
        if failing:
            logger.warning("%s: database available again", what)
        return result


@dataclass
class Outcome:
    result: AgentResult | None
    output: Any = None
    error_class: str = ""
    message: str = ""
    traceback: str = ""
    retry_after: float | None = None
    # The attempt's log lines (orchestration/agents/logs.py), already bounded and redacted.
    log: list[agent_logs.LogLine] = field(default_factory=list)


def _run_agent(agent: Agent, claim: transitions.Claim, stop: threading.Event) -> Outcome:
    # Redacted here, before anything is stored: a remote service may echo a token back in a
    # successful answer as well as in an error, and outputs are shown to every viewer.
    secrets = agent_secrets.values()
    return _redacted(_call_agent(agent, claim, stop, secrets), secrets)


def _redacted(outcome: Outcome, secrets: list[str]) -> Outcome:
    if not secrets:
        return outcome
    if outcome.result is not None:
        outcome.result = AgentResult(
            output=agent_secrets.redact(outcome.result.output, secrets),
            usage=agent_secrets.redact(outcome.result.usage, secrets),
        )
    outcome.output = agent_secrets.redact(outcome.output, secrets)
    outcome.message = agent_secrets.redact_text(outcome.message, secrets)
    outcome.traceback = agent_secrets.redact_text(outcome.traceback, secrets)
    # The log lines need nothing here: the capture redacts each line before it cuts one.
    return outcome


def _call_agent(agent: Agent, claim: transitions.Claim, stop: threading.Event, secrets: list[str]) -> Outcome:
    """The agent's outcome, with what it logged and printed meanwhile (in this context only:
    another agent call running at the same time in this process keeps its own lines)."""
    with agent_logs.capturing(secrets=secrets) as capture, logcontext.attempt(
        run_id=claim.run_id, step_key=claim.step_key, attempt=claim.attempt, agent=agent.name, map_index=claim.map_index
    ):
        outcome = _outcome_of(agent, claim, stop)
    outcome.log = capture.lines()
    return outcome


def context_of(agent: Agent, claim: transitions.Claim, stop: threading.Event) -> tuple[AgentContext, float | None]:
    """The agent's context for this claim, and the step's timeout (reads the version's spec)."""
    spec = version_step_spec(claim.version_id, claim.step_key)
    timeout = spec.get("timeout") or agent.timeout_seconds
    context = AgentContext(
        run_id=claim.run_id,
        step_key=claim.step_key,
        attempt=claim.attempt,
        iteration=claim.iteration,
        item=claim.item,
        index=claim.map_index,
        agent=agent.name,
        idempotency_key=idempotency_key(claim.run_id, claim.step_key, claim.iteration, claim.map_index),
        timeout=timeout,
        stop_event=stop,
    )
    return context, timeout


def _outcome_of(agent: Agent, claim: transitions.Claim, stop: threading.Event) -> Outcome:
    context, timeout = context_of(agent, claim, stop)
    try:
        with deadline(timeout, f"step '{claim.step_key}'"):
            # A version's config (a model, a prompt, a URL) is laid over the agent's own.
            result = invoke(agent.kind, {**agent.config, **claim.version_config}, claim.input, context)
        return Outcome(result=result, output=_json_safe(result.output))
    except Exception as exc:
        return _failed(exc)


def _failed(exc: Exception) -> Outcome:
    if isinstance(exc, PermanentError):
        return Outcome(None, error_class=ErrorClass.PERMANENT, message=_one_line(exc), traceback=traceback.format_exc())
    if isinstance(exc, TransientError):
        return Outcome(
            None,
            error_class=exc.error_class,
            message=_one_line(exc),
            traceback=exc.detail or traceback.format_exc(),
            retry_after=exc.retry_after,
        )
    return Outcome(None, error_class=ErrorClass.TRANSIENT, message=_one_line(exc), traceback=traceback.format_exc())


def waits_on_network(agent: Agent, claim: transitions.Claim) -> bool:
    """Whether this step's agent runs in a slot (orchestration.slots) rather than alone."""
    return agents_waits_on_network(agent.kind, {**agent.config, **claim.version_config})


async def outcome_async(
    agent: Agent, claim: transitions.Claim, context: AgentContext, timeout: float | None, secrets: list[str]
) -> Outcome:
    """What _run_agent does, on an event loop: the call, its log lines, its timeout, redacted.

    The timeout bounds the whole call (asyncio cancels it where it waits), so a server that
    trickles its answer a byte at a time is stopped as surely as one that never answers.
    Cancelling the task that awaits this (the run was cancelled) stops the call too. Nothing
    here may touch the database (it runs on the event loop): `context_of` is read beforehand.
    """
    with agent_logs.capturing(secrets=secrets) as capture:
        try:
            try:
                async with asyncio.timeout(timeout or None):
                    result = await invoke_async(agent.kind, {**agent.config, **claim.version_config}, claim.input, context)
            except TimeoutError:
                raise StepTimeout(
                    f"step '{claim.step_key}' ran past its timeout of {format_duration(timeout or 0)}"
                ) from None
            outcome = Outcome(result=result, output=_json_safe(result.output))
        except Exception as exc:
            outcome = _failed(exc)
    outcome.log = capture.lines()
    return _redacted(outcome, secrets)


def _record_failure(claim: transitions.Claim, outcome: Outcome) -> None:
    _with_database(
        lambda: transitions.record_failure(
            claim=claim,
            error_class=outcome.error_class,
            message=outcome.message,
            traceback=outcome.traceback,
            retry_after=outcome.retry_after,
            log=outcome.log,
        ),
        what=f"recording the failure of step {claim.step_run_id}",
    )


def with_database(action: Callable[[], T], *, what: str) -> T:
    """_with_database for the slots' recorder (orchestration.slots)."""
    return _with_database(action, what=what)


def record_failure(claim: transitions.Claim, outcome: Outcome) -> None:
    _record_failure(claim, outcome)


def record_success(claim: transitions.Claim, outcome: Outcome) -> None:
    """Record a step's result (no next step taken: the slots run only what they are handed)."""
    assert outcome.result is not None
    _with_database(
        partial(transitions.record_success, claim=claim, output=outcome.output, usage=outcome.result.usage, log=outcome.log),
        what=f"recording the result of step {claim.step_run_id}",
    )


def run_step(step_run_id: int, *, hand_off: Callable[[Agent, transitions.Claim], bool] | None = None) -> None:
    """Claim a step, run it, record it, and go on with its run's next step while allowed.

    `hand_off(agent, claim)` (orchestration.slots) may take a claimed step whose agent waits on
    the network, to run it in a slot; True means it did, and this worker is done with it.
    """
    # django-q2's worker closes stale database connections around every task.
    if stopping():
        # This worker is draining: the message goes back to the broker for another worker
        # (the step is still queued, nobody claimed it).
        dispatch.send_steps([step_run_id], first=True)
        return
    worker = worker_label()
    claim = _with_database(
        lambda: transitions.claim_step(step_run_id=step_run_id, worker=worker), what=f"claiming step {step_run_id}"
    )
    started = time.monotonic()
    while claim is not None:  # None: a duplicate message, or the step was cancelled meanwhile
        agent = load_agent(claim.agent_name)
        if agent is None:
            _record_failure(claim, Outcome(None, error_class=ErrorClass.PERMANENT, message=f"agent '{claim.agent_name}' no longer exists"))
            return
        if hand_off is not None and waits_on_network(agent, claim) and hand_off(agent, claim):
            return
        with Heartbeat([claim.step_run_id], claim.token) as heartbeat:
            outcome = _run_agent(agent, claim, heartbeat.stop)
        if outcome.result is None:
            _record_failure(claim, outcome)
            return
        usage = outcome.result.usage
        # A worker goes on with the next step of a sequence (record_success_and_take_next) for
        # at most BATON_CONTINUE_SECONDS per task, well inside django-q2's task timeout; then
        # the broker hands the next step to whichever worker is free. A stopping worker takes
        # no next step: it is queued for another worker as usual.
        if stopping() or time.monotonic() - started >= settings.BATON_CONTINUE_SECONDS:
            _with_database(
                partial(transitions.record_success, claim=claim, output=outcome.output, usage=usage, log=outcome.log),
                what=f"recording the result of step {claim.step_run_id}",
            )
            return
        claim = _with_database(
            partial(
                transitions.record_success_and_take_next,
                claim=claim,
                output=outcome.output,
                usage=usage,
                log=outcome.log,
                worker=worker,
            ),
            what=f"recording the result of step {claim.step_run_id}",
        )


# How stale the last look at a chunk's claim may be before the next item starts.
LOOK_SECONDS = 0.01


def run_items(step_run_ids: list[int]) -> None:
    """A chunk of for_each items of one map step, run one after another by this worker.

    Claiming and recording the chunk in one transaction each is what lets a large fan-out of
    short steps go faster than one round of bookkeeping per item; each item keeps its own
    attempt, lease and retry policy.
    """
    run_claimed_items(transitions.claim_steps(step_run_ids=step_run_ids, worker=worker_label()))


def run_claimed_items(claims: list[transitions.Claim]) -> None:
    """The chunk's items this worker has claimed, one after another (see run_items)."""
    if not claims:
        return
    agent = load_agent(claims[0].agent_name)
    if agent is None:
        for claim in claims:
            _record_failure(claim, Outcome(None, error_class=ErrorClass.PERMANENT, message=f"agent '{claim.agent_name}' no longer exists"))
        return
    successes: list[transitions.Success] = []
    secrets = agent_secrets.values()  # read once per chunk: it scans the environment
    looked = -LOOK_SECONDS
    with Heartbeat([c.step_run_id for c in claims], claims[0].token) as heartbeat:
        for claim in claims:
            # Cancelled (or the map failed, here or on another worker): what is left is no
            # longer ours. The heartbeat notices only at its next beat, so look before an
            # item, unless the last look is less than LOOK_SECONDS old: a cancel committed
            # since then is the same race as one committed just after a look, and whatever
            # is reported for a cancelled item is refused anyway. Stopping: baton_worker
            # releases the items left once this worker process has exited.
            if heartbeat.stop.is_set() or stopping():
                break
            if time.monotonic() - looked >= LOOK_SECONDS:
                if not transitions.still_held(step_run_id=claim.step_run_id, token=claim.token):
                    break
                looked = time.monotonic()
            started = timezone.now()
            outcome = _redacted(_call_agent(agent, claim, heartbeat.stop, secrets), secrets)
            if outcome.result is None:
                _record_failure(claim, outcome)
                continue
            successes.append(
                transitions.Success(claim, outcome.output, outcome.result.usage, started, timezone.now(), outcome.log)
            )
    transitions.record_item_successes(successes=successes)


def _json_safe(value: Any) -> Any:
    try:
        safe = json.loads(json.dumps(value))
    except (TypeError, ValueError) as exc:
        raise PermanentError(f"the agent's output is not JSON-serialisable: {exc}") from None
    # What the database would refuse (a NUL on PostgreSQL, a lone surrogate on SQLite, NaN)
    # must fail this attempt here: refused inside the transaction that records the success, it
    # would roll that back and the agent would run again each time its lease ran out.
    try:
        limits.check_json_value(safe, field="the agent's output")
    except ValueError as exc:
        raise PermanentError(str(exc)) from None
    return safe


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
