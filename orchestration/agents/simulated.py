"""The `simulated` agent kind: realistic stand-ins for demos, labelled as such in the UI."""

from __future__ import annotations

import random
from typing import Any

from orchestration.agents.base import AgentContext, AgentResult, PermanentError
from orchestration.durations import parse_duration
from orchestration.templating import TemplateError, render


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
        # Waiting on the stop event rather than sleeping lets a cancelled run end at once.
        context.stop_event.wait(seconds)
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
