"""Which attempt a log line was written during: run id, step key, attempt number and agent.

The worker runtime opens `attempt(...)` around each agent call (orchestration/runtime.py); a
context variable carries it, so concurrent calls in one process (threads, asyncio) each keep
their own, and a line written outside any attempt (the ticker, the cluster's supervisor) says
so with empty fields. `AttemptFilter` copies it onto every record that reaches the console
handler (settings.LOGGING), for the plain and the JSON format alike.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class AttemptContext:
    run_id: int
    step_key: str
    attempt: int
    agent: str
    map_index: int | None = None


_current: contextvars.ContextVar[AttemptContext | None] = contextvars.ContextVar("baton_attempt", default=None)


@contextmanager
def attempt(*, run_id: int, step_key: str, attempt: int, agent: str, map_index: int | None = None) -> Iterator[None]:
    token = _current.set(AttemptContext(run_id, step_key, attempt, agent, map_index))
    try:
        yield
    finally:
        _current.reset(token)


def current() -> AttemptContext | None:
    return _current.get()


class AttemptFilter(logging.Filter):
    """Adds run_id, step_key, attempt and agent to each record (None outside an attempt), and
    `attempt_context`, the same as words for the plain format ("" outside an attempt)."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = _current.get()
        if context is None:
            record.run_id = record.step_key = record.attempt = record.agent = None
            record.attempt_context = ""
            return True
        step = context.step_key if context.map_index is None else f"{context.step_key}[{context.map_index}]"
        record.run_id = context.run_id
        record.step_key = step
        record.attempt = context.attempt
        record.agent = context.agent
        record.attempt_context = f" [run {context.run_id} step {step} attempt {context.attempt} agent {context.agent}]"
        return True
