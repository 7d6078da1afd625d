"""A worker process's slots: up to BATON_SLOTS agent calls that wait on the network, at once.

An `http` or `llm` agent, or a `python` agent written as `async def`, mostly waits. So in a
django-q2 worker process the task that delivers such a step does not run it: it takes a free
slot (waiting for one when all are taken, so a process never claims more than it has slots),
claims the step as any worker does (compare-and-set, guards, an attempt row), and hands the
claim to this process's event loop, then returns to django-q2 for the next message. Three
threads of the process look after what is in the slots:

- the loop thread runs each call as an asyncio task, under the step's timeout (a bound on the
  whole call, so a server that trickles bytes is stopped too), capturing its log lines;
- the recorder thread records outcomes, compare-and-set on each claim as ever (for_each items
  of one map that finish together in one transaction), and only then frees their slots;
- the watcher thread renews the leases of every claim in the slots in one statement per
  heartbeat, and every WATCH_SECONDS asks which claims are still held: a call whose run was
  cancelled (or whose step was taken over) is cancelled where it waits.

Synchronous agents run in the task's own thread, one at a time, exactly as before (they hold
a slot meanwhile). Outside a worker process (tests' in-process `drive`, `manage.py` commands)
or with BATON_SLOTS=1 nothing here is started: every step runs in the caller's thread. What
happens on each failure is in docs/concurrency.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from functools import partial
from typing import Any

from django.conf import settings
from django.db import connection
from django.utils import timezone

from orchestration import dispatch, outbound, runtime, transitions
from orchestration.agents import AgentContext
from orchestration.agents import secrets as agent_secrets
from orchestration.models import Agent
from orchestration.specs import load_agent

logger = logging.getLogger("baton.slots")

# How often the watcher asks whether the claims in the slots are still held: a cancelled
# run's calls stop within this (plus one call's cancellation).
WATCH_SECONDS = 0.25
# Outcomes recorded in one go, at most.
RECORD_BATCH = 200


@dataclass(eq=False)
class Flight:
    """One call in a slot: from its hand-off to the record of its outcome."""

    agent: Agent
    claim: transitions.Claim
    context: AgentContext
    timeout: float | None
    stop: threading.Event
    task: asyncio.Task[None] | None = None
    outcome: runtime.Outcome | None = None
    started_at: Any = None
    finished_at: Any = None


class Slots:
    def __init__(self, size: int) -> None:
        self.size = size
        self.pid = os.getpid()
        self.free = size
        self.changed = threading.Condition()
        self.flights: dict[int, Flight] = {}  # by step run id; under `changed`
        self.records: queue.Queue[Flight | None] = queue.Queue()
        self.closing = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.threads = [
            threading.Thread(target=self._run_loop, daemon=True, name="baton-slots-loop"),
            threading.Thread(target=self._record_loop, daemon=True, name="baton-slots-recorder"),
            threading.Thread(target=self._watch_loop, daemon=True, name="baton-slots-watcher"),
        ]
        for thread in self.threads:
            thread.start()

    # -----------------------------------------------------------------------------------------
    # The feeding side: the django-q2 task's thread

    def acquire(self, wanted: int, *, wait: float) -> int:
        """Take up to `wanted` free slots, waiting up to `wait` seconds for the first one;
        returns how many were taken (0: none came free in time, or this worker is stopping)."""
        deadline = time.monotonic() + wait
        with self.changed:
            while self.free == 0:
                left = deadline - time.monotonic()
                if left <= 0 or runtime.stopping():
                    return 0
                self.changed.wait(min(left, 0.5))
            taken = min(wanted, self.free)
            self.free -= taken
            return taken

    def release(self, count: int) -> None:
        if count:
            with self.changed:
                self.free += count
                self.changed.notify_all()

    def start(self, agent: Agent, claim: transitions.Claim) -> None:
        """Run a claimed step in a slot the caller has taken (the slot is the flight's now)."""
        if agent.kind == "llm":
            _import_openai()
        stop = threading.Event()
        context, timeout = runtime.context_of(agent, claim, stop)
        flight = Flight(agent, claim, context, timeout, stop)
        with self.changed:
            self.flights[claim.step_run_id] = flight
        asyncio.run_coroutine_threadsafe(self._fly(flight), self.loop)

    def in_use(self) -> int:
        with self.changed:
            return self.size - self.free

    # -----------------------------------------------------------------------------------------
    # The loop thread

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    async def _fly(self, flight: Flight) -> None:
        flight.task = asyncio.current_task()
        flight.started_at = timezone.now()
        if flight.stop.is_set():  # cancelled before it began
            self._land(flight)
            return
        try:
            # Read per call: a secret set in the environment since must still be redacted.
            flight.outcome = await runtime.outcome_async(
                flight.agent, flight.claim, flight.context, flight.timeout, agent_secrets.values()
            )
        except asyncio.CancelledError:
            # The claim is no longer ours (the run was cancelled, the step taken over): the
            # cancel already ended the attempt; whatever the call did is not recorded.
            self._land(flight)
            return
        except BaseException:
            logger.exception("slots: the call of step %s failed outside the agent", flight.claim.step_run_id)
            self._land(flight)  # its lease runs out and the ticker counts the attempt lost
            return
        flight.finished_at = timezone.now()
        self.records.put(flight)

    def _land(self, flight: Flight) -> None:
        """The flight is over, recorded or not: its slot is free for the next claim."""
        with self.changed:
            if self.flights.get(flight.claim.step_run_id) is flight:
                del self.flights[flight.claim.step_run_id]
            self.free += 1
            self.changed.notify_all()

    # -----------------------------------------------------------------------------------------
    # The recorder thread

    def _record_loop(self) -> None:
        while True:
            first = self.records.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < RECORD_BATCH:
                try:
                    more = self.records.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self.records.put(None)  # seen after this batch
                    break
                batch.append(more)
            landed: set[int] = set()
            try:
                self._record(batch, landed)
            except Exception:
                # Each record rides out a database restart (runtime._with_database); what is
                # left is a bug or a database away for longer: the leases run out and the
                # ticker gives the steps new attempts.
                logger.exception("slots: recording %d outcomes failed", len(batch))
                _close_connection()
            finally:
                for flight in batch:
                    if id(flight) not in landed:
                        self._land(flight)

    def _record(self, batch: list[Flight], landed: set[int]) -> None:
        """Record a batch; each flight's slot is freed as soon as its own record is done."""

        def land(flights: list[Flight]) -> None:
            for flight in flights:
                self._land(flight)
                landed.add(id(flight))

        items: dict[int, list[Flight]] = defaultdict(list)
        for flight in batch:
            outcome, claim = flight.outcome, flight.claim
            assert outcome is not None
            if outcome.result is None:
                runtime.record_failure(claim, outcome)
                land([flight])
            elif claim.parent_id is not None:
                items[claim.parent_id].append(flight)
            else:
                runtime.record_success(claim, outcome)
                land([flight])
        # The items of one map that finished together, whether claimed in one chunk or one by
        # one: one transaction (each still compare-and-set on its own claim).
        for flights in items.values():
            successes = [_success_of(flight) for flight in flights]
            runtime.with_database(
                partial(transitions.record_item_successes, successes=successes),
                what=f"recording {len(successes)} items of step {successes[0].claim.parent_id}",
            )
            land(flights)

    # -----------------------------------------------------------------------------------------
    # The watcher thread

    def _watch_loop(self) -> None:
        renewed = time.monotonic()
        failing_since: float | None = None
        while not self.closing.wait(WATCH_SECONDS):
            with self.changed:
                held = [(f.claim.step_run_id, f.claim.token) for f in self.flights.values()]
            if not held:
                renewed = time.monotonic()
                continue
            try:
                # Each iteration on its own: a failure is logged and the next one tries again.
                if time.monotonic() - renewed >= _beat_seconds(failing_since):
                    still = transitions.renew_leases(held=held)
                    renewed = time.monotonic()
                else:
                    still = transitions.still_held_of(held=held)
            except Exception as exc:
                if failing_since is None:
                    failing_since = time.monotonic()
                    logger.error("slots: could not renew or check %d claims (%s); retrying", len(held), exc)
                _close_connection()
                continue
            if failing_since is not None:
                logger.warning("slots: lease renewals work again after %.1f s", time.monotonic() - failing_since)
                failing_since = None
            lost = {pk for pk, _ in held} - still
            if lost:
                self._stop(lost)

    def _stop(self, step_run_ids: set[int]) -> None:
        with self.changed:
            flights = [self.flights[pk] for pk in step_run_ids if pk in self.flights]
        for flight in flights:
            if flight.outcome is None:  # still calling; a recorded one needs nothing
                flight.stop.set()
                task = flight.task
                if task is not None:
                    self.loop.call_soon_threadsafe(task.cancel)

    # -----------------------------------------------------------------------------------------
    # Stopping

    def drain(self, seconds: float) -> None:
        """Finish the calls in the slots (at most `seconds`), then stop the threads.

        Called as the worker process exits (after django-q2's last task): a graceful stop
        lets the calls in hand finish; what is still running afterwards is released by
        `baton_worker`, or its lease runs out.
        """
        deadline = time.monotonic() + seconds
        with self.changed:
            while self.flights and time.monotonic() < deadline:
                self.changed.wait(min(0.1, max(deadline - time.monotonic(), 0.001)))
        self.closing.set()
        self.records.put(None)
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(outbound.async_pools_close(), self.loop).result(timeout=2)
        self.loop.call_soon_threadsafe(self.loop.stop)
        for thread in self.threads:
            thread.join(timeout=2)


def _import_openai() -> None:
    """Import the SDK here, in the task's thread, before the first llm call reaches the loop:
    done by that call, on the loop, the import (0.4 s, more on a busy machine) would hold up
    every call in the slots. Not at start-up: a deployment without llm agents never pays it."""
    with contextlib.suppress(ImportError):
        import openai  # noqa: F401


def _success_of(flight: Flight) -> transitions.Success:
    outcome = flight.outcome
    assert outcome is not None and outcome.result is not None
    return transitions.Success(
        flight.claim, outcome.output, outcome.result.usage, flight.started_at, flight.finished_at, outcome.log
    )


def _beat_seconds(failing_since: float | None) -> float:
    if failing_since is not None:
        # The lease runs out meanwhile: try again well before it does.
        return min(settings.BATON_HEARTBEAT_SECONDS, max(settings.BATON_LEASE_SECONDS / 10, 0.05))
    return float(settings.BATON_HEARTBEAT_SECONDS)


def _close_connection() -> None:
    with contextlib.suppress(Exception):
        connection.close()


# ---------------------------------------------------------------------------------------------
# This process's slots

_enabled = False
_slots: Slots | None = None
_slots_lock = threading.Lock()


def enable() -> None:
    """Called in each worker process as it starts (baton_worker's post_spawn): from now on this
    process runs network-bound steps in its slots, when BATON_SLOTS allows more than one."""
    global _enabled
    _enabled = settings.BATON_SLOTS > 1


def current() -> Slots | None:
    """This process's slots, started on first use (in the process itself: threads do not
    survive a fork); None when this process runs every step in the caller's thread."""
    global _slots
    if not _enabled:
        return None
    with _slots_lock:
        if _slots is None or _slots.pid != os.getpid():
            _slots = Slots(settings.BATON_SLOTS)
            # Run as the process exits, after django-q2's worker loop has returned.
            import multiprocessing.util

            multiprocessing.util.Finalize(None, _drain_at_exit, exitpriority=50)
        return _slots


def _drain_at_exit() -> None:
    if _slots is not None and _slots.pid == os.getpid():
        _slots.drain(settings.BATON_DRAIN_SECONDS)


def in_use() -> tuple[int, int]:
    """(slots in use, slots) of this process; (0, 0) when it has none."""
    slots = _slots if _enabled else None
    return (slots.in_use(), slots.size) if slots is not None else (0, 0)


# ---------------------------------------------------------------------------------------------
# What the django-q2 tasks call


def run_step(step_run_id: int) -> None:
    """One queued step: in a slot when its agent waits on the network, in this thread if not."""
    slots = current()
    if slots is None:
        runtime.run_step(step_run_id)
        return
    if runtime.stopping() or not slots.acquire(1, wait=settings.BATON_SLOT_WAIT_SECONDS):
        # Draining, or every slot stayed taken: back to the broker for a worker with room
        # (the step is still queued, nobody claimed it).
        dispatch.send_steps([step_run_id], first=True)
        return
    handed = False

    def hand_off(agent: Agent, claim: transitions.Claim) -> bool:
        nonlocal handed
        slots.start(agent, claim)
        handed = True
        return True

    try:
        runtime.run_step(step_run_id, hand_off=hand_off)
    finally:
        if not handed:
            slots.release(1)


def run_items(step_run_ids: list[int]) -> None:
    """A chunk of for_each items: as many as there are free slots are claimed (the rest go back
    to the broker as a chunk of their own), then run in slots or one after another here."""
    slots = current()
    if slots is None:
        runtime.run_items(step_run_ids)
        return
    taken = 0 if runtime.stopping() else slots.acquire(len(step_run_ids), wait=settings.BATON_SLOT_WAIT_SECONDS)
    if taken < len(step_run_ids):
        dispatch.send_step_chunks([step_run_ids[taken:]])
    if not taken:
        return
    unused = taken
    try:
        claims = transitions.claim_steps(step_run_ids=step_run_ids[:taken], worker=runtime.worker_label())
        agent = load_agent(claims[0].agent_name) if claims else None
        if agent is not None and runtime.waits_on_network(agent, claims[0]):
            unused = taken - len(claims)
            for claim in claims:
                slots.start(agent, claim)
            return
        runtime.run_claimed_items(claims)
    finally:
        slots.release(unused)
