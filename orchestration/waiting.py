"""Steps that wait for people: approvals, manual tasks, gates and exception items.

The engine knows *that* a step waits for a person; the approvals app knows *who* and *how*.
It registers a handler here (in its AppConfig.ready) so orchestration never imports it.
"""

from __future__ import annotations

from typing import Any, Protocol

from orchestration.work import Work


class PeopleHandler(Protocol):
    def open(self, work: Work, *, run: Any, step: Any, spec: dict[str, Any], context: dict[str, Any], kind: str) -> None:
        """Create the inbox item for a step that now waits (inside the engine's transaction),
        and note it in the unit of work.

        kind is "approval", "manual", "gate" (an agent step waiting for approval of its exact
        input) or "exception" (a step that failed for good, escalated to the workflow owner).
        """

    def close(self, work: Work, *, step_ids: list[int], reason: str) -> None:
        """The steps stopped waiting for another reason (run cancelled or failed)."""


_handler: PeopleHandler | None = None


def register(handler: PeopleHandler) -> None:
    global _handler
    _handler = handler


def open_wait(work: Work, *, run: Any, step: Any, spec: dict[str, Any], context: dict[str, Any], kind: str) -> None:
    if _handler is None:
        raise RuntimeError("no handler for steps that wait for people: is the approvals app installed?")
    _handler.open(work, run=run, step=step, spec=spec, context=context, kind=kind)


def close_waits(work: Work, *, step_ids: list[int], reason: str) -> None:
    if _handler is not None and step_ids:
        _handler.close(work, step_ids=step_ids, reason=reason)
