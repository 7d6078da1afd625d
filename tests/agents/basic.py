"""Python agents used by the tests: small, deterministic, and honest about what they do."""

from __future__ import annotations

import logging
import os
from typing import Any

from orchestration.agents import AgentResult, PermanentError


def echo(payload: Any, context: Any) -> Any:
    return payload


def noop(payload: Any, context: Any) -> Any:
    return {"ok": True}


def upper(payload: Any, context: Any) -> Any:
    return str(payload.get("text", "")).upper()


def count_words(payload: Any, context: Any) -> AgentResult:
    words = len(str(payload).split())
    return AgentResult(output={"words": words}, usage={"prompt_tokens": words, "completion_tokens": 1})


def refuse(payload: Any, context: Any) -> Any:
    raise PermanentError("the input is not acceptable")


def flaky(payload: Any, context: Any) -> Any:
    """Fails until the attempt named by `succeed_on` (default 3)."""
    if context.attempt < int((payload or {}).get("succeed_on", 3)):
        raise ConnectionError(f"temporary outage on attempt {context.attempt}")
    return {"attempt": context.attempt}


def editor(payload: Any, context: Any) -> Any:
    """Approves the draft from round `approve_on` (default 2)."""
    approve_on = int((payload or {}).get("approve_on", 2))
    return {"ok": context.iteration >= approve_on, "round": context.iteration}


def route(payload: Any, context: Any) -> Any:
    return {"queue": (payload or {}).get("queue", "billing")}


def describe_context(payload: Any, context: Any) -> Any:
    return {
        "run_id": context.run_id,
        "step_key": context.step_key,
        "attempt": context.attempt,
        "iteration": context.iteration,
        "item": context.item,
        "index": context.index,
        "idempotency_key": context.idempotency_key,
    }


def not_json(payload: Any, context: Any) -> Any:
    return {"value": object()}


def unstorable(payload: Any, context: Any) -> Any:
    """Valid JSON no database keeps: a NUL (PostgreSQL), a lone surrogate (SQLite), NaN."""
    return {"nul": "a\x00b", "surrogate": "\ud800", "nan": float("nan")}[payload]


def always_down(payload: Any, context: Any) -> Any:
    raise ConnectionError("the service is down")


def slow(payload: Any, context: Any) -> Any:
    """Sleeps for payload['seconds'] (default 5) unless told to stop."""
    import time

    deadline = time.monotonic() + float((payload or {}).get("seconds", 5))
    while time.monotonic() < deadline:
        if context.should_stop():
            return {"stopped": True}
        time.sleep(0.01)
    return {"slept": True}


def undo(payload: Any, context: Any) -> Any:
    return {"undone": payload}


def broken_undo(payload: Any, context: Any) -> Any:
    raise PermanentError("cannot undo: the record is gone")


def reveal(payload: Any, context: Any) -> Any:
    """A careless agent: logs, returns and (with `fail`) raises the value of payload['variable']."""
    value = os.environ.get(payload["variable"], "")
    logging.getLogger("baton.tests.reveal").warning("calling the service with token %s", value)
    if payload.get("fail"):
        raise PermanentError(f"the service refused token {value}")
    return {"token": value, value: [value, f"Bearer {value}"]}


def priced(payload: Any, context: Any) -> AgentResult:
    """Reports the usage its input asks for, sensible or not."""
    return AgentResult(output={"ok": True}, usage=(payload or {}).get("usage", {}))


def fails_first(payload: Any, context: Any) -> Any:
    """Fails for good on a step's (or an item's) first attempt, unless payload['fail'] is false,
    or only for the item payload['only'] when given; later attempts echo the payload."""
    payload = payload if isinstance(payload, dict) else {"value": payload}
    only = payload.get("only")
    targeted = only is None or only == context.index
    if context.attempt == 1 and payload.get("fail", True) and targeted:
        raise PermanentError("first attempt refused" + ("" if context.index is None else f" (item {context.index})"))
    return {**payload, "attempt": context.attempt}


def chatty(payload: Any, context: Any) -> AgentResult:
    """Logs one line to a `baton.` logger (the worker's console handler prints those) and reports
    the tokens and cost its input names."""
    logging.getLogger("baton.tests.chatty").warning("writing about %s", (payload or {}).get("topic", "nothing"))
    usage = {"total_tokens": (payload or {}).get("tokens", 100), "cost": (payload or {}).get("cost", 0.002)}
    return AgentResult(output={"ok": True}, usage=usage)


async def nap_async(payload: Any, context: Any) -> Any:
    """An `async def` agent: it runs in a worker's slots, beside other calls. Says when it ran
    (wall clock) and in which process, and prints a line (captured per call)."""
    import asyncio
    import os
    import time

    began = time.time()
    print(f"napping for item {payload.get('n')}")
    await asyncio.sleep(float(payload.get("seconds", 0.5)))
    return {"n": payload.get("n"), "began": began, "ended": time.time(), "pid": os.getpid()}


def nap_sync(payload: Any, context: Any) -> Any:
    """nap_async as a plain function: it runs alone in its worker's thread."""
    import os
    import time

    began = time.time()
    time.sleep(float(payload.get("seconds", 0.5)))
    return {"n": payload.get("n"), "began": began, "ended": time.time(), "pid": os.getpid()}
