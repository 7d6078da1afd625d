"""The log lines an agent writes during one attempt: captured in the worker, stored with the attempt.

What is captured while `capturing()` is open: Python `logging` records (through AttemptLogHandler,
which LOGGING puts on the root logger), writes to sys.stdout and sys.stderr (`print`), and the
summary lines the http and llm kinds add with `note()`. The capture is found through a context
variable, not a global or a thread-local, so two agent calls running at once in one process
(threads, or asyncio tasks, which each run in a copy of the context) keep their own lines. A
thread an agent starts itself has a fresh context and is not captured, unless the agent runs it
in a copy of its own (`contextvars.copy_context().run`).

Bounded per attempt (BATON_ATTEMPT_LOG_LINES, _BYTES and _LINE_BYTES in settings): a line longer
than the line limit is cut and says so; once the attempt's lines or bytes are used up, further
lines are counted, not kept, and a last line says how many lines and bytes were dropped. Secret
values are replaced before a line is measured or cut, so no part of a secret is ever kept.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TextIO, TypedDict

from django.conf import settings

from orchestration.agents import secrets as agent_secrets

# The level of a line written with print (its source says which stream).
PRINT = "PRINT"
# The level of the last line when lines were dropped.
CUT = "CUT"
CUT_SOURCE = "baton"
# How many line limits of text printed without a newline are held, waiting for one.
HELD_LINES = 16
# HTTP clients whose INFO and DEBUG lines are not kept: they repeat a request's full URL (a
# token in its query included) and the http and llm kinds write their own summary instead.
# Their warnings are kept.
QUIET = frozenset({"httpx", "httpx2", "httpcore", "openai", "urllib3"})


class LogLine(TypedDict):
    at: str  # ISO 8601, UTC
    level: str  # a logging level name, PRINT, or CUT
    source: str  # the logger's name, "stdout", "stderr", "http", "llm", or "baton" for the cut line
    text: str


class Capture:
    """One attempt's lines. Locked: an agent may log from a thread run in its context."""

    def __init__(self, *, secrets: Sequence[str] = (), max_lines: int, max_bytes: int, max_line_bytes: int):
        self.secrets = list(secrets)
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self.max_line_bytes = max_line_bytes
        self.kept: list[LogLine] = []
        self.kept_bytes = 0
        self.dropped_lines = 0
        self.dropped_bytes = 0
        # Text printed without its newline yet, per stream: a line is stored once it is whole,
        # so that a secret printed in two pieces is still found and replaced.
        self.partial: dict[str, str] = {}
        self.lock = threading.Lock()

    def add(self, level: str, source: str, text: str) -> None:
        with self.lock:
            if len(self.kept) >= self.max_lines or self.kept_bytes >= self.max_bytes:
                # Full already: an agent printing in a loop costs a count per line, not a
                # redaction (so the bytes dropped are counted before any secret is replaced).
                self.dropped_lines += 1
                self.dropped_bytes += len(text.rstrip("\n").encode(errors="replace"))
                return
        text = storable(agent_secrets.redact_text(text.rstrip("\n"), self.secrets))
        size = len(text.encode())
        if size > self.max_line_bytes:
            head = text.encode()[: self.max_line_bytes].decode(errors="ignore")
            text = f"{head} … [line cut: {size - len(head.encode()):,} more bytes]"
            size = len(text.encode())
        line = LogLine(at=datetime.now(UTC).isoformat(), level=level, source=source[:100], text=text)
        with self.lock:
            if len(self.kept) >= self.max_lines or self.kept_bytes + size > self.max_bytes:
                self.dropped_lines += 1
                self.dropped_bytes += size
                return
            self.kept.append(line)
            self.kept_bytes += size

    def write(self, stream: str, text: str) -> None:
        with self.lock:
            pending = self.partial.pop(stream, "") + text
            *whole, rest = pending.split("\n")
            if rest:
                # Held back until its newline (print writes the text, then the newline), but
                # not without end: a stream written without newlines is cut into lines.
                if len(rest) > HELD_LINES * self.max_line_bytes:
                    whole.append(rest)
                else:
                    self.partial[stream] = rest
        for line in whole:
            self.add(PRINT, stream, line)

    def lines(self) -> list[LogLine]:
        """What the attempt keeps: the lines, and a last one saying what was dropped, if anything."""
        for stream in list(self.partial):
            rest = self.partial.pop(stream)
            if rest:
                self.add(PRINT, stream, rest)
        lines = list(self.kept)
        if self.dropped_lines:
            s = "" if self.dropped_lines == 1 else "s"
            lines.append(
                LogLine(
                    at=datetime.now(UTC).isoformat(),
                    level=CUT,
                    source=CUT_SOURCE,
                    text=(
                        f"{self.dropped_lines:,} more line{s} ({self.dropped_bytes:,} bytes) dropped: an attempt "
                        f"keeps at most {self.max_lines:,} lines and {self.max_bytes:,} bytes"
                    ),
                )
            )
        return lines


def storable(text: str) -> str:
    # PostgreSQL's jsonb refuses NUL and a lone surrogate cannot be encoded: either would roll
    # back the transaction recording the attempt's outcome.
    return text.replace("\x00", "\\x00").encode("utf-8", "replace").decode("utf-8")


_current: ContextVar[Capture | None] = ContextVar("baton_attempt_log", default=None)
# Set while our own code writes to the streams on logging's behalf (lastResort writes to
# sys.stderr), so that the record is not captured a second time as a printed line.
_forwarding: ContextVar[bool] = ContextVar("baton_attempt_log_forwarding", default=False)


@contextmanager
def capturing(*, secrets: Sequence[str] = ()) -> Iterator[Capture]:
    """Capture what the code run inside writes, in this context only."""
    _tee_streams()
    capture = Capture(
        secrets=secrets,
        max_lines=settings.BATON_ATTEMPT_LOG_LINES,
        max_bytes=settings.BATON_ATTEMPT_LOG_BYTES,
        max_line_bytes=settings.BATON_ATTEMPT_LOG_LINE_BYTES,
    )
    token = _current.set(capture)
    try:
        yield capture
    finally:
        _current.reset(token)


def note(source: str, text: str, *, level: str = "INFO") -> None:
    """Add a line to the attempt being captured in this context (none: nothing happens)."""
    capture = _current.get()
    if capture is not None:
        capture.add(level, source, text)


class AttemptLogHandler(logging.Handler):
    """On the root logger (see LOGGING): a record made during an attempt goes to that attempt.

    It adds to the attempt and takes nothing away from the worker's log: Baton's loggers keep
    their own handlers. A record that no other handler would take (an agent's own logger, with
    nothing configured) still reaches logging's last resort, as it would without this handler,
    so the worker's stderr shows an agent's warnings as before.
    """

    def emit(self, record: logging.LogRecord) -> None:
        capture = _current.get()
        if capture is not None and not (
            record.levelno < logging.WARNING and record.name.split(".")[0] in QUIET
        ):
            try:
                text = record.getMessage()
                if record.exc_info:
                    text = f"{text}\n{logging.Formatter().formatException(record.exc_info)}"
                elif record.exc_text:
                    text = f"{text}\n{record.exc_text}"
            except Exception:
                self.handleError(record)
                return
            capture.add(record.levelname, record.name, text)
        last = logging.lastResort
        if last is not None and record.levelno >= last.level and not self._others_take(record.name):
            forwarding = _forwarding.set(True)
            try:
                last.handle(record)
            finally:
                _forwarding.reset(forwarding)

    def _others_take(self, name: str) -> bool:
        # logging's own walk (Logger.callHandlers), ignoring this handler.
        logger: logging.Logger | None = logging.getLogger(name)
        while logger is not None:
            if any(handler is not self for handler in logger.handlers):
                return True
            if not logger.propagate:
                return False
            logger = logger.parent
        return False


class _Tee:
    """sys.stdout or sys.stderr: every write goes to the real stream as before, and also to the
    attempt being captured in the writer's context, if any."""

    def __init__(self, stream: TextIO, name: str):
        self._stream = stream
        self._name = name

    def write(self, text: str) -> int:
        written = self._stream.write(text)
        capture = _current.get()
        if capture is not None and not _forwarding.get() and isinstance(text, str):
            capture.write(self._name, text)
        return written

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


_tee_lock = threading.Lock()


def _tee_streams() -> None:
    # Checked at every capture, not once: a test runner (or a library) may put its own stream
    # in sys.stdout meanwhile, and that one must be wrapped too.
    with _tee_lock:
        if not isinstance(sys.stdout, _Tee):
            sys.stdout = _Tee(sys.stdout, "stdout")
        if not isinstance(sys.stderr, _Tee):
            sys.stderr = _Tee(sys.stderr, "stderr")
