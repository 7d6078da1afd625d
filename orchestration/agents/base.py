"""What every agent kind shares: the context it is called with, its result, its errors."""

from __future__ import annotations

import math
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
class UsageFigures:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost: float


def usage_figures(usage: Any) -> UsageFigures:
    """An agent's usage as numbers: what a run's page sums and what an attempt stores in its
    total_tokens and cost columns (so rollups sum them in SQL).

    Usage is whatever an agent returned, so a value that is not a number counts as 0 (one
    python agent's `"cost": "n/a"` must not break a page or a rollup), and the total is
    prompt + completion when the agent gave none.
    """
    if not isinstance(usage, dict):
        return UsageFigures(0, 0, 0, 0.0)
    prompt = _number(usage.get("prompt_tokens"))
    completion = _number(usage.get("completion_tokens"))
    total = _number(usage.get("total_tokens")) or prompt + completion
    return UsageFigures(int(prompt), int(completion), int(total), _number(usage.get("cost")))


def _number(value: Any) -> float:
    # bool is an int to Python, but `true` is no count of tokens; NaN and infinities are no
    # amount either (and a database column would refuse them).
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return 0.0
    return float(value)


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
