"""Every write to a rollout: start, promote (gate or written override), pause, resume, roll
back, restart, windows, checklist, notes, criteria, agent-version weights.

Each function is keyword-only, locks the rollout row, checks the state it starts from, runs in
one transaction and appends a RolloutEvent (who, from, to, why, the gate's verdicts).
Views, the API, admin and the daily pass call these and nothing else writes a rollout.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from orchestration.models import Agent, Run, Workflow
from orchestration.rollouts.gates import Gate
from orchestration.rollouts.models import ChecklistItem, Criterion, Note, Rollout, Window


class RolloutError(Exception):
    """A refused change; the message says why, in words for the person who asked."""


class NotAllowed(RolloutError):
    pass


class GateFailed(RolloutError):
    """Promotion refused: a criterion fails and no override reason was given."""

    def __init__(self, message: str, gate: Gate):
        super().__init__(message)
        self.gate = gate


def may_decide(user: Any, rollout: Rollout) -> bool:
    """Promote, override, pause, resume, roll back, restart, edit criteria: the rollout's
    owner, the workflow's owner, superusers."""
    raise NotImplementedError


def may_contribute(user: Any, rollout: Rollout) -> bool:
    """Notes, windows and checklist: those who may decide, and the workflow's operators."""
    raise NotImplementedError


def start_rollout(*, workflow: Workflow, owner: Any, actor: Any, started_on: date | None = None) -> Rollout:
    """A rollout in pilot with the playbook's windows, checklist and default criteria."""
    raise NotImplementedError


def promote(*, rollout: Rollout, actor: Any, override_reason: str = "") -> Rollout:
    raise NotImplementedError


def pause(*, rollout: Rollout, actor: Any, reason: str = "") -> Rollout:
    raise NotImplementedError


def resume(*, rollout: Rollout, actor: Any, reason: str = "") -> Rollout:
    raise NotImplementedError


def roll_back(*, rollout: Rollout, actor: Any, reason: str) -> Rollout:
    raise NotImplementedError


def restart_pilot(*, rollout: Rollout, actor: Any, reason: str = "") -> Rollout:
    raise NotImplementedError


def set_window_done(*, window: Window, done: bool, actor: Any) -> Window:
    raise NotImplementedError


def set_checklist_done(*, item: ChecklistItem, done: bool, actor: Any) -> ChecklistItem:
    raise NotImplementedError


def add_note(*, rollout: Rollout, kind: str, text: str, actor: Any, runs: list[Run] | None = None) -> Note:
    raise NotImplementedError


def resolve_issue(*, note: Note, actor: Any) -> Note:
    raise NotImplementedError


def change_criterion(
    *, criterion: Criterion, actor: Any, target: float | None = None, window_days: int | None = None, enabled: bool | None = None
) -> Criterion:
    raise NotImplementedError


def shift_weights(*, rollout: Rollout, agent: Agent, weights: dict[str, int], actor: Any, reason: str = "") -> None:
    """Set an agent's version weights from a rollout page (orchestration.definitions does the
    write and its AgentVersionEvent); the rollout records it too."""
    raise NotImplementedError
