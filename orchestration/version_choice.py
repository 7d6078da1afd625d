"""Which version of an agent a run uses: picked by weight at the run's first attempt with that
agent, then kept (AgentVersionChoice) for every later attempt of the run, so a run's retries,
its other steps and its map items all run one version and its figures belong to that version.

Called inside the claim's transaction (orchestration.transitions, and the engine when it inserts
a step already claimed). An agent with no version of positive weight costs no query here: the
versions come from the cache of orchestration.specs.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestration.models import AgentVersion, AgentVersionChoice, StepRun
from orchestration.specs import VersionOption, agent_versions


@dataclass(frozen=True)
class Chosen:
    """The version a claimed step runs with: recorded on its attempt, laid over the agent's config."""

    version_id: int
    label: str
    config: dict[str, Any] = field(default_factory=dict)


# Replaced by tests (set_rng) to make picks reproducible; `random` is plenty for traffic shares.
_rng: list[random.Random] = [random.Random()]


def set_rng(rng: random.Random) -> random.Random:
    """Use `rng` for the picks from now on; returns the one it replaces."""
    previous = _rng[0]
    _rng[0] = rng
    return previous


def pick(options: Sequence[VersionOption], rng: random.Random | None = None) -> VersionOption:
    """One option with probability weight / total weight; one of weight 0 is never picked."""
    weighted = [o for o in options if o.weight > 0]
    if not weighted:
        raise ValueError("no version has a positive weight")
    point = (rng or _rng[0]).random() * sum(o.weight for o in weighted)
    for option in weighted:
        point -= option.weight
        if point < 0:
            return option
    return weighted[-1]  # point == total - tiny float error


def choose(steps: Iterable[StepRun], *, rng: random.Random | None = None) -> dict[tuple[int, str], Chosen]:
    """The version of each (run, agent name) among steps just claimed whose agent has versions.

    A run that chose before keeps its choice; the others pick now and store it. Two workers
    claiming two steps of one run at once may both pick: the insert ignores the conflict on
    (run, agent name), and both read back the one that was stored first (on PostgreSQL the
    second insert waits for the first transaction, so the read after it sees its row).
    """
    options = {}
    for step in steps:
        found = agent_versions(step.agent_name)
        if found:
            options[(step.run_id, step.agent_name)] = found
    if not options:
        return {}
    stored = _stored(options)
    missing = sorted(set(options) - set(stored))
    if missing:
        # In a fixed order, so two claims inserting for the same runs wait for each other
        # instead of deadlocking.
        AgentVersionChoice.objects.bulk_create(
            [
                AgentVersionChoice(run_id=run_id, agent_name=name, version_id=pick(options[(run_id, name)], rng).id)
                for run_id, name in missing
            ],
            ignore_conflicts=True,
        )
        stored.update(_stored({pair: options[pair] for pair in missing}))
    chosen: dict[tuple[int, str], Chosen] = {}
    for pair, version_id in stored.items():
        option = next((o for o in options[pair] if o.id == version_id), None)
        if option is None:
            # Added in the last moments, so not yet in this process's cache: read it.
            row = AgentVersion.objects.only("label", "weight", "config").get(pk=version_id)
            option = VersionOption(row.pk, row.label, row.weight, row.config if isinstance(row.config, dict) else {})
        chosen[pair] = Chosen(option.id, option.label, option.config)
    return chosen


def _stored(options: dict[tuple[int, str], tuple[VersionOption, ...]]) -> dict[tuple[int, str], int]:
    runs = {run_id for run_id, _ in options}
    names = {name for _, name in options}
    rows = AgentVersionChoice.objects.filter(run_id__in=runs, agent_name__in=names).values_list(
        "run_id", "agent_name", "version_id"
    )
    return {(run_id, name): version_id for run_id, name, version_id in rows if (run_id, name) in options}
