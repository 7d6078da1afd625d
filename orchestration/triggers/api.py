"""POST /api/events: an outside event resumes the runs waiting for it and starts the workflows
subscribed to it (`triggers: [{event: name}]`). A django-ninja Router that approvals/api.py
mounts (that module owns the NinjaAPI and its authentication). The sender's permissions are the
pages': only runs and workflows they may operate are touched; the answer lists what was.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.http import HttpRequest
from ninja import Field, Router, Schema

from orchestration.api_errors import responses
from orchestration.triggers import transitions

router = Router(tags=["events"])


class EventIn(Schema):
    name: str = Field(..., min_length=1, max_length=100, pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    key: str = Field("", max_length=200)
    payload: Any = None


class StartedOut(Schema):
    run: int
    workflow: str
    url: str


class ResumedOut(Schema):
    run: int
    step: str
    url: str


class NotStartedOut(Schema):
    workflow: str
    detail: str


class EventOut(Schema):
    id: int
    name: str
    key: str
    received_at: datetime
    started: list[StartedOut]
    resumed: list[ResumedOut]
    not_started: list[NotStartedOut]
    # True: no step was waiting; the event waits for the first that comes, until keep_until.
    kept: bool
    keep_until: datetime | None


@router.post(
    "",
    response=responses({200: EventOut}),
    summary="Send an event: resume the runs waiting for it, start the workflows subscribed to it",
)
def send_event(request: HttpRequest, payload: EventIn) -> Any:
    actor = request.auth  # type: ignore[attr-defined]
    outcome = transitions.send_event(name=payload.name, key=payload.key, payload=payload.payload, actor=actor)
    event = outcome.event
    return {
        "id": event.pk,
        "name": event.name,
        "key": event.key,
        "received_at": event.received_at,
        "started": [
            {"run": run.pk, "workflow": key, "url": f"/runs/{run.pk}/"} for run, key in outcome.started
        ],
        "resumed": [
            {"run": run_id, "step": step, "url": f"/runs/{run_id}/"} for run_id, step in outcome.resumed
        ],
        "not_started": [{"workflow": key, "detail": detail} for key, detail in outcome.failed],
        "kept": outcome.kept,
        "keep_until": event.keep_until if outcome.kept else None,
    }
