"""The unit of work of one state change: what it wrote and what must happen once it commits.

A transition (orchestration.transitions) opens one Work with its transaction and passes it
down to the engine and the guards, which record into it instead of acting on the world: the
events to write, the steps to send to workers, the parent runs to resume, the inbox items
that changed, and the one step the calling worker continues with. Just before commit the
events are written in one INSERT (the log stays complete, in the same transaction, at a
fraction of the round trips); after commit exactly one function,
orchestration.transitions.apply, does the rest. Nothing here touches the broker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from orchestration import limits, rows
from orchestration.models import Run, RunEvent, StepRun


@dataclass
class Work:
    # RunEvent rows, written just before commit.
    events: list[RunEvent] = field(default_factory=list)
    # Steps to send to workers after commit, in order; `first` ones go to the head of the
    # queue (recovered work: a due retry, a step taken back from a lost or stopping worker).
    send: list[int] = field(default_factory=list)
    send_first: list[int] = field(default_factory=list)
    # Lists of for_each items of one map each, sent in chunks (several items per message);
    # the second for items whose agent waits on the network, which a worker takes into its
    # slots a whole chunk at once (so their chunks are fewer and larger: dispatch.send_mapped).
    send_mapped: list[list[int]] = field(default_factory=list)
    send_mapped_in_slots: list[list[int]] = field(default_factory=list)
    # Child runs that ended: their parent steps take the outcome, each in its own transition.
    child_runs_ended: list[int] = field(default_factory=list)
    # Inbox items opened, decided or closed (the approvals app records them).
    items: set[int] = field(default_factory=set)
    # Set by a worker that records its step's success and would run the next step itself: the
    # engine chooses that step, only ever one of this run's, and never one it sends.
    continue_for_run: int | None = None
    continue_with: int | None = None

    def event(
        self,
        run: Run,
        kind: str,
        *,
        step: StepRun | None = None,
        from_status: str = "",
        to_status: str = "",
        message: str = "",
        data: dict[str, Any] | None = None,
        actor: Any = None,
    ) -> RunEvent:
        row = RunEvent(
            run=run,
            step_run=step,
            kind=kind,
            from_status=from_status,
            to_status=to_status,
            message=message,
            data=data or {},
            actor=actor if actor is not None and getattr(actor, "is_authenticated", False) else None,
        )
        self.events.append(row)
        return row

    @property
    def runs(self) -> set[int]:
        """The runs this change touched: every change of a run or its steps appends an event."""
        return {row.run_id for row in self.events}

    def write_events(self) -> None:
        """Inside the transaction, just before commit."""
        for start in range(0, len(self.events), limits.BATCH_SIZE):
            rows.insert_many(self.events[start : start + limits.BATCH_SIZE])
