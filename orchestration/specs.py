"""Looking things up: a version's workflow spec, one step's spec, and agents by name.

The bottom of the core: it reads and caches, never writes. Versions are immutable, so a
process keeps their specs for as long as it lives; agents are read live (an admin's edit
applies to the next attempt) with a short cache to spare a query per step on hot paths.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from orchestration.models import Agent, AgentVersion, Run, StepKind, WorkflowVersion
from orchestration.spec import loop_body

UNDO = ".undo"  # suffix of a compensation step's key; '.' never appears in a step key


@lru_cache(maxsize=512)
def version_spec(version_id: int) -> dict[str, Any]:
    spec: dict[str, Any] = WorkflowVersion.objects.values_list("spec", flat=True).get(pk=version_id)
    return spec


def spec_for(run: Run) -> dict[str, Any]:
    return version_spec(run.version_id)


def step_spec(run: Run, key: str) -> dict[str, Any]:
    return version_step_spec(run.version_id, key)


def version_step_spec(version_id: int, key: str) -> dict[str, Any]:
    original = key.removesuffix(UNDO)
    for step in version_spec(version_id)["steps"]:
        if step["key"] == original:
            if key == original:
                return step  # type: ignore[no-any-return]
            # A compensation runs like an agent step of its own.
            compensate = step["compensate"]
            return {
                "key": key,
                "kind": StepKind.COMPENSATION,
                "agent": compensate["agent"],
                "after": [],
                "retry": compensate.get("retry"),
                "timeout": step.get("timeout"),
            }
    raise KeyError(key)


@lru_cache(maxsize=512)
def steps_by_key(version_id: int) -> dict[str, dict[str, Any]]:
    """A version's steps by key (the engine asks on every hand-off: built once per version)."""
    return {step["key"]: step for step in version_spec(version_id)["steps"]}


@lru_cache(maxsize=512)
def route_steps(version_id: int) -> tuple[str, ...]:
    """The keys of a version's `route` steps, whose results templates see as the branch taken."""
    return tuple(step["key"] for step in version_spec(version_id)["steps"] if step["kind"] == StepKind.ROUTE)


@lru_cache(maxsize=512)
def loop_waits(version_id: int) -> dict[str, tuple[str, ...]]:
    """For each step outside a loop that comes after one of the loop's body steps: the loop's
    judging step (the one with `loop:`), which it waits for besides its `after`.

    So such a step starts once the loop has finished and sees the final round of the body,
    whatever the timing; without this it would start after the first round, or after
    whichever round had finished when its slowest other dependency did.
    """
    spec = version_spec(version_id)
    bodies = {s["key"]: loop_body(spec, s["loop"]["back_to"], s["key"]) for s in spec["steps"] if s.get("loop")}
    waits: dict[str, tuple[str, ...]] = {}
    for step in spec["steps"]:
        judges = tuple(
            judge
            for judge, body in bodies.items()
            if step["key"] not in body and judge not in step["after"] and body.intersection(step["after"])
        )
        if judges:
            waits[step["key"]] = judges
    return waits


def forget_specs() -> None:
    """Drop every cached spec (tests: their databases reuse version ids)."""
    for cached in (version_spec, steps_by_key, route_steps, loop_waits):
        cached.cache_clear()


# Agents are read live, so an edit in the admin applies to the next attempt; a process keeps
# what it read for this long to spare a query per step on hot paths.
AGENT_CACHE_SECONDS = 2.0
_agents: dict[str, tuple[float, Agent | None]] = {}


def load_agent(name: str) -> Agent | None:
    now = time.monotonic()
    cached = _agents.get(name)
    if cached is not None and cached[0] > now:
        return cached[1]
    agent = Agent.objects.filter(name=name).first()
    _agents[name] = (now + AGENT_CACHE_SECONDS, agent)
    return agent


@dataclass(frozen=True)
class VersionOption:
    """One version of an agent as a claim needs it: what to pick by and what to run with."""

    id: int
    label: str
    weight: int
    config: dict[str, Any]


# Every agent's versions, read in one query and kept as long as an agent is: most agents have
# none, and asking per claim would cost the hot claim path a query for nothing.
_versions: list[tuple[float, dict[str, tuple[VersionOption, ...]]]] = []


def agent_versions(name: str) -> tuple[VersionOption, ...]:
    """The versions of an agent whose weights add up to more than 0, zero-weight ones too (a
    run that chose one before its weight was taken away keeps it); empty when the agent has
    none of positive weight: it runs with its own config."""
    now = time.monotonic()
    if not _versions or _versions[0][0] <= now:
        found: dict[str, list[VersionOption]] = defaultdict(list)
        rows = AgentVersion.objects.order_by("agent_id", "label").values_list("agent__name", "id", "label", "weight", "config")
        for agent_name, pk, label, weight, config in rows:
            found[agent_name].append(VersionOption(pk, label, weight, config if isinstance(config, dict) else {}))
        by_agent = {agent: tuple(options) for agent, options in found.items() if sum(o.weight for o in options) > 0}
        _versions[:] = [(now + AGENT_CACHE_SECONDS, by_agent)]
    return _versions[0][1].get(name, ())


def forget_agents() -> None:
    _agents.clear()
    _versions.clear()
