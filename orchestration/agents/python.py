"""The `python` agent kind: `config.callable` is `module:function`, called as fn(input, context).

Only callables on BATON_PYTHON_AGENTS (see orchestration.agents.registry) are called. Import
and the admin refuse others already; this check is the last line, for an agent row that was
written some other way or a registry that changed since.
"""

from __future__ import annotations

from typing import Any

from orchestration.agents import registry
from orchestration.agents.base import AgentContext, PermanentError


def call(config: dict[str, Any], payload: Any, context: AgentContext) -> Any:
    path = config.get("callable")
    try:
        function = registry.load(path)  # type: ignore[arg-type]  # problem() checks the type
    except ValueError as exc:
        raise PermanentError(f"cannot call {path!r}: {exc}") from None
    return function(payload, context)
