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
    "NETWORK_KINDS",
    "invoke_async",
    "waits_on_network",
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


# The kinds whose every call waits on the network, whatever their config.
NETWORK_KINDS = ("http", "llm")


def waits_on_network(kind: str, config: dict[str, Any]) -> bool:
    """Whether calls of this agent mostly wait (http, llm, an `async def` python agent): a
    worker runs up to BATON_SLOTS of them at once on its event loop (orchestration.slots)."""
    if kind in NETWORK_KINDS:
        return True
    if kind == "python":
        from orchestration.agents import python

        return python.is_async(config)
    return False


async def invoke_async(kind: str, config: dict[str, Any], payload: Any, context: AgentContext) -> AgentResult:
    """invoke() for the kinds waits_on_network() names, on the running event loop."""
    from orchestration.agents import http, llm, python

    if kind == "http":
        result = await http.call_async(config, payload, context)
    elif kind == "llm":
        result = await llm.call_async(config, payload, context)
    elif kind == "python":
        result = await python.call_async(config, payload, context)
    else:
        raise PermanentError(f"agent kind {kind!r} does not run in a slot")
    if isinstance(result, AgentResult):
        return result
    return AgentResult(output=result)
