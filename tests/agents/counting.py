"""Agents that leave a trace of every call, for tests that count how often an agent ran.

Each call appends one line `<index> <time.time()>` to the file named by payload['log'], with
O_APPEND, so worker processes writing at once do not mix their lines.
"""

from __future__ import annotations

import os
import time
from typing import Any

from orchestration.agents import PermanentError


def _note(path: str, index: Any) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{index} {time.time():.6f}\n".encode())
    finally:
        os.close(fd)


def counted(payload: Any, context: Any) -> Any:
    """Notes the call, then takes payload['seconds'] (default 0.05); item 0 fails for good
    when payload['fail_first'] is true."""
    _note(payload["log"], context.index)
    if payload.get("fail_first") and context.index == 0:
        raise PermanentError("item 0 cannot be processed")
    time.sleep(float(payload.get("seconds", 0.05)))
    return {"index": context.index}


def calls(path: str) -> list[tuple[int, float]]:
    """The calls noted in a log file, as (index, time) in the order they were written."""
    if not os.path.exists(path):
        return []
    with open(path) as log:
        rows = [line.split() for line in log if line.strip()]
    return [(int(index), float(at)) for index, at in rows]
