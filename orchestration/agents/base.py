"""What every agent kind shares: the context it is called with, its result, its errors."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from orchestration.status import ErrorClass


class PermanentError(Exception):
    """Raised by an agent when retrying cannot help (bad input, a refused request...)."""

    error_class = ErrorClass.PERMANENT


class TransientError(Exception):
    """A failure worth retrying; `retry_after` (seconds) delays the next attempt at least that long."""

    error_class = ErrorClass.TRANSIENT

    def __init__(self, message: str, *, retry_after: float | None = None, detail: str = ""):
        super().__init__(message)
        self.retry_after = retry_after
        # A response body excerpt or similar, stored with the attempt instead of a traceback.
        self.detail = detail


class StepTimeout(TransientError):
    """The step ran past its timeout; counted as a transient failure."""

    error_class = ErrorClass.TIMEOUT


@dataclass
class AgentResult:
    output: Any
    usage: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AgentContext:
    run_id: int
    step_key: str
    attempt: int
    iteration: int
    item: Any
    index: int | None
    agent: str
    # Stable across retries of the same step, iteration and item: an agent that calls a
    # remote service passes it on so a retried call is not performed twice.
    idempotency_key: str
    # Seconds this attempt may take (None: no limit); remote calls use it as their timeout.
    timeout: float | None = None
    # Set when the run is cancelled or the step was taken over: long agents should check
    # should_stop() between units of work and return early.
    stop_event: threading.Event = field(default_factory=threading.Event, compare=False)

    def should_stop(self) -> bool:
        return self.stop_event.is_set()


def idempotency_key(run_id: int, step_key: str, iteration: int, index: int | None) -> str:
    item = "-" if index is None else str(index)
    return f"baton-{run_id}-{step_key}-{iteration}-{item}"
