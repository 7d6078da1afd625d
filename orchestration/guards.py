"""Admission guards: an agent's circuit breaker and max_concurrency, which agent a step may
fall back to, and what an approved gate covers.

Called inside the transactions of orchestration.transitions (through the engine or directly).
The guards say whether a claimed step may run now and update an agent's health; what happens
to a step that may not (a fallback, a later retry) is the engine's decision. An agent's
AgentHealth row is the lock that serialises claims against that agent (taken with no run lock
held, so the order "run, then agent" used when recording outcomes never inverts).
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db.models import F, QuerySet

from orchestration.models import (
    Agent,
    AgentEvent,
    AgentHealth,
    Attempt,
    CircuitState,
    Run,
    RunEvent,
    StepKind,
    StepRun,
)
from orchestration.specs import load_agent, step_spec
from orchestration.status import AttemptStatus, ErrorClass, EventKind, Risk, StepStatus
from orchestration.work import Work

# Failures that say the agent's service is unwell (a 4xx for bad input does not).
HEALTH_FAILURES = (ErrorClass.TRANSIENT, ErrorClass.TIMEOUT, ErrorClass.LOST)
# While a half-open circuit's trial runs, other steps look again this soon.
TRIAL_WAIT = timedelta(seconds=1)


def _guarded(agent: Agent | None) -> bool:
    return agent is not None and bool(agent.circuit or agent.max_concurrency)


def watches(agent_name: str) -> bool:
    """Whether a guard watches the agent's steps (a circuit or a max_concurrency): they are
    admitted by `gate` when claimed, under the agent's lock, never inserted already claimed."""
    return _guarded(load_agent(agent_name))


def _lock_health(agent: Agent) -> AgentHealth:
    AgentHealth.objects.get_or_create(agent=agent)
    return AgentHealth.objects.select_for_update(no_key=True).get(agent=agent)


# ---------------------------------------------------------------------------------------------
# At claim time


@dataclass(frozen=True)
class Refused:
    """A claimed step whose agent's circuit is open: it may not run before `until`."""

    step: StepRun
    agent: Agent
    reason: str
    until: datetime


def gate(work: Work, steps: list[StepRun], now: datetime) -> tuple[list[StepRun], list[Refused]]:
    """Of steps just claimed (RUNNING, with their claim token), those that may run now.

    A step whose agent is at max_concurrency is put back, throttled, to wait for a slot.
    A step whose agent's circuit is open is returned as refused, still claimed: the engine
    decides where it goes (its fallback, or a retry once the circuit may let it through).
    """
    by_agent: dict[str, list[StepRun]] = defaultdict(list)
    for step in steps:
        by_agent[step.agent_name].append(step)
    allowed: list[StepRun] = []
    refused: list[Refused] = []
    for name, group in by_agent.items():
        agent = load_agent(name)
        if agent is None or not _guarded(agent):
            allowed.extend(group)
            continue
        health = _lock_health(agent)
        if agent.circuit:
            group = _apply_circuit(agent, health, group, now, refused)
        if agent.max_concurrency:
            group = _apply_concurrency(work, agent, group)
        allowed.extend(group)
    return allowed, refused


def _apply_circuit(
    agent: Agent, health: AgentHealth, group: list[StepRun], now: datetime, refused: list[Refused]
) -> list[StepRun]:
    if health.circuit_state == CircuitState.CLOSED:
        return group
    if health.circuit_state == CircuitState.OPEN and health.reopens_at and now < health.reopens_at:
        refused.extend(Refused(step, agent, f"circuit of agent {agent.name} is open", health.reopens_at) for step in group)
        return []
    half_open = f"circuit of agent {agent.name} is half-open; its trial is running"
    trial_running = (
        health.circuit_state == CircuitState.HALF_OPEN
        and health.trial_step_id is not None
        and StepRun.objects.filter(pk=health.trial_step_id, status=StepStatus.RUNNING).exists()
    )
    if trial_running:
        refused.extend(Refused(step, agent, half_open, now + TRIAL_WAIT) for step in group)
        return []
    # The cooldown is over (or the last trial vanished): exactly one trial goes through.
    trial, rest = group[0], group[1:]
    if health.circuit_state == CircuitState.OPEN:
        _set_circuit(health, CircuitState.HALF_OPEN, "cooldown over: one trial call", now)
    health.trial_step = trial
    health.save(update_fields=["trial_step", "updated_at"])
    refused.extend(Refused(step, agent, half_open, now + TRIAL_WAIT) for step in rest)
    return [trial]


def _apply_concurrency(work: Work, agent: Agent, group: list[StepRun]) -> list[StepRun]:
    assert agent.max_concurrency is not None
    # Under the AgentHealth lock, every other claim of this agent has committed or waits, so
    # this count is exact.
    running = in_flight(agent.name).exclude(pk__in=[s.pk for s in group]).count()
    free = max(0, agent.max_concurrency - running)
    for step in group[free:]:
        if put_back(step, status=StepStatus.THROTTLED):
            work.event(
                step.run,
                EventKind.STEP_THROTTLED,
                step=step,
                from_status=StepStatus.RUNNING,
                to_status=StepStatus.THROTTLED,
                message=f"agent {agent.name} is at its limit of {agent.max_concurrency} in flight; waiting for a slot",
            )
    return group[:free]


def in_flight(agent_name: str) -> QuerySet[StepRun]:
    # Claimed steps only: a for_each head is "running" too but never holds a slot.
    return StepRun.objects.filter(agent_name=agent_name, status=StepStatus.RUNNING).exclude(claim_token="")


def put_back(step: StepRun, **changes: Any) -> bool:
    """Undo a claim that must not run (no attempt was recorded for it); compare-and-set on
    the claim token, so False means the step is no longer this claim's."""
    return bool(
        StepRun.objects.filter(pk=step.pk, status=StepStatus.RUNNING, claim_token=step.claim_token).update(
            attempts=F("attempts") - 1, claim_token="", lease_expires_at=None, **changes
        )
    )


# ---------------------------------------------------------------------------------------------
# Gates: an approval covers one exact input


def action_digest(value: Any) -> str:
    """A fingerprint of a step's rendered input, recorded when its gate is approved.

    Canonical JSON (sorted keys), so the same mapping always gives the same digest; a digest
    rather than a copy, because a gated map's input lists every item.
    """
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def gate_covers(step: StepRun, value: Any) -> bool:
    """Whether the step's latest gate approval was given for exactly this input.

    An owner's retry of a gated step with the input the approvers saw is the same action
    (as an automatic retry is) and runs under that approval; any other input, or a step whose
    gate was never approved for the input it now has, must be approved again.
    """
    released = (
        RunEvent.objects.filter(step_run=step, kind=EventKind.STEP_RELEASED).order_by("-id").values("data").first()
    )
    if released is None:
        return False
    return bool(released["data"].get("input_sha256") == action_digest(value))


# ---------------------------------------------------------------------------------------------
# Fallback


def fallback_for(run: Run, step: StepRun, agent: Agent | None) -> str | None:
    """The agent to try next for this step, or None. Each agent is tried once per step."""
    if step.kind == StepKind.COMPENSATION:
        return None
    spec = step_spec(run, step.step_key)
    own = step.agent_name == spec.get("agent") or (step.agent_name in (spec.get("agents") or ()) and not step.fallback_from)
    if own and spec.get("fallback"):
        candidate = str(spec["fallback"])
    else:
        candidate = agent.fallback if agent is not None else ""
    if not candidate:
        return None
    tried = set(Attempt.objects.filter(step_run=step).values_list("agent_name", flat=True))
    tried |= {step.agent_name, step.fallback_from, str(spec.get("agent") or "")}
    fallback = load_agent(candidate) if candidate not in tried else None
    if fallback is None:
        return None
    if fallback.risk == Risk.HIGH and not gate_covers(step, step.input):
        # A high-risk agent runs only after approval of its exact input: a failing low-risk
        # agent's fallback is no way round the gate. (A step whose gate approved this input may
        # fall back: the approvers saw the step, its input and its declared fallback.)
        return None
    return candidate


def attempts_with_current_agent(step: StepRun) -> int:
    # Attempts of earlier rounds (before an owner's retry of an escalated step) do not count.
    return Attempt.objects.filter(step_run=step, agent_name=step.agent_name, number__gt=step.attempts_base).count()


# ---------------------------------------------------------------------------------------------
# After an attempt


def record_outcome(agent_name: str, *, succeeded: bool, now: datetime, error_class: str = "") -> Agent | None:
    """Update the agent's circuit after an attempt. Returns the agent when it has a
    max_concurrency (a slot came free: the engine releases throttled steps), else None."""
    agent = load_agent(agent_name)
    if agent is None or not _guarded(agent):
        return None
    if agent.circuit:
        health = _lock_health(agent)
        if succeeded:
            if health.circuit_state != CircuitState.CLOSED:
                _set_circuit(health, CircuitState.CLOSED, "a call succeeded", now)
        elif error_class in HEALTH_FAILURES:
            _count_failure(agent, health, now)
    return agent if agent.max_concurrency else None


def _count_failure(agent: Agent, health: AgentHealth, now: datetime) -> None:
    circuit = agent.circuit
    if health.circuit_state == CircuitState.HALF_OPEN:
        _set_circuit(health, CircuitState.OPEN, "the trial call failed", now, cooldown=circuit["cooldown"])
        return
    if health.circuit_state == CircuitState.OPEN:
        return
    since = now - timedelta(seconds=circuit["window"])
    if health.counting_since and health.counting_since > since:
        since = health.counting_since
    failures = Attempt.objects.filter(
        agent_name=agent.name,
        status=AttemptStatus.FAILED,
        error_class__in=HEALTH_FAILURES,
        finished_at__gte=since,
    ).count()
    if failures >= circuit["failures"]:
        _set_circuit(
            health,
            CircuitState.OPEN,
            f"{failures} failures within {circuit['window']:g}s",
            now,
            cooldown=circuit["cooldown"],
        )


def _set_circuit(health: AgentHealth, state: str, reason: str, now: datetime, *, cooldown: float | None = None) -> None:
    before = health.circuit_state
    health.circuit_state = state
    if state == CircuitState.OPEN:
        health.opened_at = now
        health.reopens_at = now + timedelta(seconds=cooldown or 0)
        health.trial_step = None
    elif state == CircuitState.CLOSED:
        health.counting_since = now
        health.opened_at = None
        health.reopens_at = None
        health.trial_step = None
    health.save()
    AgentEvent.objects.create(agent=health.agent, from_state=before, to_state=state, message=reason)


def free_slots(agent: Agent) -> int:
    """How many more steps of this agent may run now (0 for an agent without a limit)."""
    if not agent.max_concurrency:
        return 0
    return max(0, agent.max_concurrency - in_flight(agent.name).count())


def throttled_agents() -> list[Agent]:
    names = set(StepRun.objects.filter(status=StepStatus.THROTTLED).values_list("agent_name", flat=True))
    return [a for a in (load_agent(n) for n in names) if a is not None]
