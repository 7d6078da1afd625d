"""The `python` agent kind: `config.callable` is `module:function`, called as fn(input, context)."""

from __future__ import annotations

import importlib
from typing import Any

from orchestration.agents.base import AgentContext, PermanentError


def call(config: dict[str, Any], payload: Any, context: AgentContext) -> Any:
    path = config["callable"]
    module_name, _, attr = path.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise PermanentError(f"cannot load callable {path!r}: {exc}") from None
    return function(payload, context)
