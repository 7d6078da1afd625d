"""The `python` agent kind: `config.callable` is `module:function`, called as fn(input, context).

Only callables on BATON_PYTHON_AGENTS (see orchestration.agents.registry) are called. Import
and the admin refuse others already; this check is the last line, for an agent row that was
written some other way or a registry that changed since.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

from orchestration.agents import registry
from orchestration.agents.base import AgentContext, PermanentError


def _function(config: dict[str, Any]) -> Callable[..., Any]:
    path = config.get("callable")
    try:
        return registry.load(path)  # type: ignore[arg-type]  # problem() checks the type
    except ValueError as exc:
        raise PermanentError(f"cannot call {path!r}: {exc}") from None


def is_async(config: dict[str, Any]) -> bool:
    """Whether the agent is an `async def`: a worker runs it in a slot, beside other calls.
    False for a callable that cannot be loaded (calling it fails the step as before)."""
    try:
        return inspect.iscoroutinefunction(_function(config))
    except PermanentError:
        return False


def call(config: dict[str, Any], payload: Any, context: AgentContext) -> Any:
    function = _function(config)
    if inspect.iscoroutinefunction(function):
        # Outside a worker's slots (a test's in-process drive, a worker with BATON_SLOTS=1):
        # an event loop of its own for this one call.
        return asyncio.run(function(payload, context))
    return function(payload, context)


async def call_async(config: dict[str, Any], payload: Any, context: AgentContext) -> Any:
    function = _function(config)
    if not inspect.iscoroutinefunction(function):
        raise PermanentError(f"{config.get('callable')!r} is not an async def; it cannot run in a slot")
    return await function(payload, context)
