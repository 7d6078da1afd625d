"""The agent kinds, and the names agent authors import.

A python agent is `fn(input, context)` returning a JSON-serialisable value or an AgentResult.
Raising PermanentError fails the step at once; any other exception is retried by the step's
retry policy (TransientError may say how long to wait first).
"""

from __future__ import annotations

from typing import Any

from orchestration.agents.base import (
    AgentContext,
    AgentResult,
    PermanentError,
    StepTimeout,
    TransientError,
    idempotency_key,
)

__all__ = [
    "AgentContext",
    "AgentResult",
    "PermanentError",
    "StepTimeout",
    "TransientError",
    "idempotency_key",
    "invoke",
]


def invoke(kind: str, config: dict[str, Any], payload: Any, context: AgentContext) -> AgentResult:
    from orchestration.agents import http, llm, python, simulated

    if kind == "python":
        result = python.call(config, payload, context)
    elif kind == "simulated":
        result = simulated.simulate(config, payload, context)
    elif kind == "http":
        result = http.call(config, payload, context)
    elif kind == "llm":
        result = llm.call(config, payload, context)
    else:
        raise PermanentError(f"agent kind {kind!r} is not available")
    if isinstance(result, AgentResult):
        return result
    return AgentResult(output=result)
