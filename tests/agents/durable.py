"""Agents for the durability tests, which kill real worker processes."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any


def block_on_first_attempt(payload: Any, context: Any) -> Any:
    """Attempt 1 announces its PID in a marker file and then hangs until it is killed."""
    if context.attempt == 1:
        Path(payload["marker"]).write_text(str(os.getpid()))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            time.sleep(0.05)
        raise RuntimeError("nobody killed this worker")
    return {"attempt": context.attempt, "pid": os.getpid()}


def who_am_i(payload: Any, context: Any) -> Any:
    return {"pid": os.getpid(), "attempt": context.attempt}


def nap(payload: Any, context: Any) -> Any:
    """Sleeps payload['seconds'] whatever happens (an agent that cannot be interrupted)."""
    time.sleep(float((payload or {}).get("seconds", 1)))
    return {"pid": os.getpid(), "attempt": context.attempt}


def block_in_round_two(payload: Any, context: Any) -> Any:
    """Round 1 answers at once; the first attempt of a later round (a loop's redo) announces its
    PID in a marker file and hangs until it is killed."""
    if context.iteration >= 2 and context.attempt == 1:
        Path(payload["marker"]).write_text(str(os.getpid()))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            time.sleep(0.05)
        raise RuntimeError("nobody killed this worker")
    return {"index": context.index, "round": context.iteration, "pid": os.getpid()}
