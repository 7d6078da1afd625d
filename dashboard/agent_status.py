"""What the dashboard says about agents: the Agents page rows and the workflows' LLM warnings.

Everything here reads; the circuit breaker and the concurrency limit are decided in
orchestration/guards.py, and this module only counts the same rows the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Count, F, FloatField, Q, QuerySet, Sum, Window
from django.db.models.fields.json import KT
from django.db.models.functions import Cast, RowNumber
from django.utils import timezone

from orchestration.agents import llm
from orchestration.models import (
    Agent,
    AgentEvent,
    AgentHealth,
    AgentKind,
    Attempt,
    CircuitState,
    Run,
    StepRun,
)
from orchestration.spec import DEFAULT_RETRY, step_agents
from orchestration.status import StepStatus

EVENTS_PER_AGENT = 3
USAGE_WINDOW = timedelta(hours=24)


# ---------------------------------------------------------------------------------------------
# Workflows: which LLM agents a version relies on, and whether they can be called


@dataclass(frozen=True)
class LlmWarning:
    agent: str
    reason: str
    # Who answers instead, if anyone: the agent's own fallback or a step's.
    fallback: str = ""


def agents_used(spec: Mapping[str, Any]) -> set[str]:
    """Agents a version's steps name: as the step's agent, its fallback or its compensation."""
    names: set[str] = set()
    for step in spec.get("steps", []):
        compensate = step.get("compensate") or {}
        names.update(n for n in (*step_agents(step), step.get("fallback"), compensate.get("agent")) if n)
    return names


def llm_warnings(specs: Mapping[int, Mapping[str, Any]]) -> dict[int, list[LlmWarning]]:
    """For each spec (by any key), the LLM agents it uses that are not configured; one query.

    Agents' own fallbacks are followed transitively: an llm agent that only ever answers as
    another agent's fallback still fails when that agent does.
    """
    agents = {a.name: a for a in Agent.objects.only("name", "kind", "config", "fallback")}
    # The environment is read now, not at import: configuring a server shows on the next load.
    missing = {
        name: reason
        for name, agent in agents.items()
        if agent.kind == AgentKind.LLM and (reason := llm.configured(agent.config or {}))
    }
    warnings: dict[int, list[LlmWarning]] = {}
    if not missing:
        return warnings
    for key, spec in specs.items():
        used = _with_fallbacks(agents_used(spec), agents)
        step_fallbacks = {s.get("agent"): s["fallback"] for s in spec.get("steps", []) if s.get("fallback")}
        found = [
            LlmWarning(
                agent=name,
                reason=missing[name],
                fallback=step_fallbacks.get(name) or agents[name].fallback,
            )
            for name in sorted(used & set(missing))
        ]
        if found:
            warnings[key] = found
    return warnings


def _with_fallbacks(names: set[str], agents: Mapping[str, Agent]) -> set[str]:
    seen: set[str] = set()
    pending = list(names)
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        agent = agents.get(name)
        if agent is not None and agent.fallback:
            pending.append(agent.fallback)
    return seen


# ---------------------------------------------------------------------------------------------
# The Agents page


@dataclass(frozen=True)
class Usage:
    calls: int = 0
    total_tokens: int = 0
    cost: float = 0.0


@dataclass
class AgentRow:
    agent: Agent
    health: AgentHealth | None
    in_flight: int
    throttled: int
    now: datetime
    events: list[AgentEvent] = field(default_factory=list)
    # llm agents only: what is missing to call it (None: configured), and the last 24 h.
    not_configured: str | None = None
    usage: Usage | None = None
    # A half-open circuit's trial call, when its run may be shown to the reader.
    trial_run_id: int | None = None

    @property
    def is_llm(self) -> bool:
        return self.agent.kind == AgentKind.LLM

    @property
    def circuit_state(self) -> str:
        # No AgentHealth row yet: the engine has never had reason to open the circuit.
        return self.health.circuit_state if self.health is not None else CircuitState.CLOSED

    @property
    def circuit_label(self) -> str:
        return "half-open" if self.circuit_state == CircuitState.HALF_OPEN else self.circuit_state

    @property
    def reopens_in(self) -> float | None:
        """Seconds until an open circuit lets a trial call through; 0 once the cooldown is over."""
        if self.circuit_state != CircuitState.OPEN or self.health is None or self.health.reopens_at is None:
            return None
        return max(0.0, (self.health.reopens_at - self.now).total_seconds())

    @property
    def retry(self) -> dict[str, Any]:
        return {**DEFAULT_RETRY, **(self.agent.retry or {})}

    @property
    def slots_percent(self) -> int:
        limit = self.agent.max_concurrency
        return min(100, round(100 * self.in_flight / limit)) if limit else 0


def agent_rows(now: datetime | None = None, runs: QuerySet[Run] | None = None) -> list[AgentRow]:
    """Every agent with its circuit, load, recent circuit changes and LLM usage: four queries,
    and one more to check a half-open circuit's trial run against `runs`.

    With `runs`, load, usage and trial calls count only steps of those runs (the runs the
    reader may see); without, every run.
    """
    now = now or timezone.now()
    agents = list(Agent.objects.select_related("health", "health__trial_step"))
    names = [a.name for a in agents]
    steps = StepRun.objects.all() if runs is None else StepRun.objects.filter(run__in=runs)
    load: dict[str, tuple[int, int]] = {
        row["agent_name"]: (row["in_flight"], row["throttled"])
        for row in steps.filter(
            agent_name__in=names, status__in=[StepStatus.RUNNING, StepStatus.THROTTLED]
        )
        .order_by()
        .values("agent_name")
        .annotate(
            # As orchestration.guards.in_flight counts them: claimed rows only, since a
            # for_each head is "running" too but never holds a slot.
            in_flight=Count("id", filter=Q(status=StepStatus.RUNNING) & ~Q(claim_token="")),
            throttled=Count("id", filter=Q(status=StepStatus.THROTTLED)),
        )
    }
    events: dict[int, list[AgentEvent]] = {}
    for event in recent_events([a.pk for a in agents]):
        events.setdefault(event.agent_id, []).append(event)
    llm_names = [a.name for a in agents if a.kind == AgentKind.LLM]
    usage = usage_since(llm_names, now - USAGE_WINDOW, runs=runs) if llm_names else {}
    shown_trials = {
        health.trial_step.run_id
        for health in (getattr(a, "health", None) for a in agents)
        if health is not None and health.trial_step is not None
    }
    if runs is not None and shown_trials:
        shown_trials = set(runs.filter(pk__in=shown_trials).values_list("pk", flat=True))
    rows = []
    for agent in agents:
        in_flight, throttled = load.get(agent.name, (0, 0))
        is_llm = agent.kind == AgentKind.LLM
        health = getattr(agent, "health", None)
        trial_run = health.trial_step.run_id if health is not None and health.trial_step else None
        rows.append(
            AgentRow(
                agent=agent,
                health=health,
                in_flight=in_flight,
                throttled=throttled,
                now=now,
                events=events.get(agent.pk, []),
                not_configured=llm.configured(agent.config or {}) if is_llm else None,
                usage=usage.get(agent.name, Usage()) if is_llm else None,
                trial_run_id=trial_run if trial_run in shown_trials else None,
            )
        )
    return rows


def recent_events(agent_ids: Iterable[int], per_agent: int = EVENTS_PER_AGENT) -> list[AgentEvent]:
    """The newest few circuit changes of each agent, newest first, in one query."""
    ranked = AgentEvent.objects.filter(agent_id__in=list(agent_ids)).annotate(
        rank=Window(RowNumber(), partition_by=[F("agent_id")], order_by=F("id").desc())
    )
    return list(ranked.filter(rank__lte=per_agent).order_by("agent_id", "-id"))


def usage_since(agent_names: list[str], since: datetime, runs: QuerySet[Run] | None = None) -> dict[str, Usage]:
    """Calls, tokens and cost per agent over attempts started since `since` (of `runs` only,
    if given), summed in SQL.

    Only for llm agents: their usage is written by orchestration/agents/llm.py and always
    holds numbers, so the casts cannot fail (python agents may report anything; see
    orchestration/usage.py, which sums in Python for that reason).
    """
    attempts = Attempt.objects.all() if runs is None else Attempt.objects.filter(step_run__run__in=runs)
    rows = (
        attempts.filter(agent_name__in=agent_names, started_at__gte=since)
        .order_by()
        .values("agent_name")
        .annotate(
            calls=Count("id"),
            tokens=Sum(Cast(KT("usage__total_tokens"), FloatField())),
            cost=Sum(Cast(KT("usage__cost"), FloatField())),
        )
    )
    return {
        row["agent_name"]: Usage(calls=row["calls"], total_tokens=int(row["tokens"] or 0), cost=float(row["cost"] or 0))
        for row in rows
    }


@dataclass(frozen=True)
class WorkerSlots:
    """One worker process (host:pid) and the calls it holds, of `slots` it may hold at once."""

    worker: str
    in_use: int
    slots: int

    @property
    def percent(self) -> int:
        return min(100, round(self.in_use * 100 / self.slots)) if self.slots else 0


def worker_slots(runs: QuerySet[Run] | None = None) -> list[WorkerSlots]:
    """Slots in use per worker process: each worker's attempts in hand (one query), counted
    over `runs` (the runs the reader may see) as the rest of the Agents page is.

    An attempt in hand is the running, current attempt of a running step, as
    transitions.attempts_in_hand counts them for the drain: a cancelled step's attempt is
    ended by the cancel, and a step taken over has a newer attempt.
    """
    attempts = Attempt.objects.filter(
        status="running", step_run__status=StepStatus.RUNNING, number=F("step_run__attempts")
    )
    if runs is not None:
        attempts = attempts.filter(step_run__run__in=runs)
    counted = attempts.order_by().values("worker").annotate(in_use=Count("id")).order_by("worker")
    return [WorkerSlots(row["worker"], row["in_use"], settings.BATON_SLOTS) for row in counted]
