"""What the workflow page and the run page show of triggers (nothing here writes)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestration.models import Run, Workflow
from orchestration.triggers.models import Firing, Trigger

FIRINGS_SHOWN = 20


@dataclass(frozen=True)
class TriggersView:
    triggers: list[Trigger]
    # The last deliveries and slots, newest first; only for those who may change the workflow
    # (a refused delivery's reason says something about the sender).
    firings: list[Firing]

    @property
    def all_paused(self) -> bool:
        return bool(self.triggers) and all(t.paused for t in self.triggers)


def for_workflow(workflow: Workflow, *, with_firings: bool) -> TriggersView:
    triggers = list(Trigger.objects.filter(workflow=workflow).order_by("position"))
    firings: list[Firing] = []
    if with_firings and triggers:
        firings = list(
            Firing.objects.filter(workflow=workflow)
            .select_related("trigger")
            .order_by("-at", "-id")[:FIRINGS_SHOWN]
        )
    return TriggersView(triggers, firings)


def firing_of(run: Run) -> Any:
    """The firing that started the run, or None (started by a person or a parent)."""
    if run.trigger not in ("cron", "webhook", "event"):
        return None
    return Firing.objects.select_related("trigger").filter(run=run).first()
