"""The agent kinds, and the names agent authors import.

A python agent is `fn(input, context)` returning a JSON-serialisable value or an AgentResult.
Raising PermanentError fails the step at once; any other exception is retried by the step's
retry policy.
"""

from __future__ import annotations

import importlib
import random
import time
from dataclasses import dataclass, field
from typing import Any

from orchestration.durations import parse_duration
from orchestration.templating import TemplateError, render


class PermanentError(Exception):
    """Raised by an agent when retrying cannot help (bad input, a refused request...)."""


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


def idempotency_key(run_id: int, step_key: str, iteration: int, index: int | None) -> str:
    item = "-" if index is None else str(index)
    return f"baton-{run_id}-{step_key}-{iteration}-{item}"


def invoke(kind: str, config: dict[str, Any], payload: Any, context: AgentContext) -> AgentResult:
    if kind == "python":
        result = _callable(config["callable"])(payload, context)
    elif kind == "simulated":
        result = simulate(config, payload, context)
    else:
        raise PermanentError(f"agent kind {kind!r} is not available")
    if isinstance(result, AgentResult):
        return result
    return AgentResult(output=result)


def _callable(path: str) -> Any:
    module_name, _, attr = path.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise PermanentError(f"cannot load callable {path!r}: {exc}") from None
    return function


def simulate(config: dict[str, Any], payload: Any, context: AgentContext) -> AgentResult:
    """A stand-in agent for demos: waits like a real one, fails now and then, answers in shape.

    config: delay (a duration, or [min, max]), failure_rate (0..1), output (a template over
    `input`, `attempt`, `iteration`, `item`, `index`), tokens (usage to report).
    """
    delay = config.get("delay", 0)
    if isinstance(delay, list):
        low, high = (parse_duration(d) for d in delay)
        seconds = random.uniform(low, high)
    else:
        seconds = parse_duration(delay)
    if seconds:
        time.sleep(seconds)
    if random.random() < float(config.get("failure_rate", 0)):
        raise RuntimeError(f"simulated failure of {context.agent} (attempt {context.attempt})")
    variables = {
        "input": payload,
        "attempt": context.attempt,
        "iteration": context.iteration,
        "item": context.item,
        "index": context.index,
        "agent": context.agent,
    }
    if "output" in config:
        try:
            output = render(config["output"], variables)
        except TemplateError as exc:
            raise PermanentError(f"the simulated output template fails: {exc}") from None
    else:
        output = {"agent": context.agent, "summary": f"{context.agent} finished", "input": payload}
    tokens = int(config.get("tokens", 0) or 0)
    usage = {"prompt_tokens": tokens, "completion_tokens": tokens // 2} if tokens else {}
    return AgentResult(output=output, usage=usage)
