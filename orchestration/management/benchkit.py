"""What `manage.py bench` and its live rows share: the table's rows and targets, the bench's own
worker processes, the bench workflows' no-op agent, and a few small helpers.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

from django.conf import settings
from django.core.management.base import CommandError

from orchestration import definitions
from orchestration.models import Agent, Workflow

# Set in the environment of the process that does the measuring (see bench.Command.relaunch).
DRIVER_ENV = "BATON_BENCH_DRIVER"
AGENT = "bench-noop"


class Row(TypedDict):
    benchmark: str
    measure: str
    value: float
    unit: str
    target: str
    status: str  # "ok", "MISSED", or "" when there is no target on this backend


@dataclass(frozen=True)
class Target:
    limit: float
    at_most: bool  # True: the value must not exceed the limit; False: it must reach it

    def label(self, unit: str) -> str:
        return f"{'<=' if self.at_most else '>='} {shown(self.limit, unit)}"

    def met(self, value: float) -> bool:
        return value <= self.limit if self.at_most else value >= self.limit


def row(benchmark: str, measure: str, value: float, unit: str, target: Target | None = None) -> Row:
    status = "" if target is None else ("ok" if target.met(value) else "MISSED")
    label = "-" if target is None else target.label(unit)
    return Row(
        benchmark=benchmark, measure=measure, value=round(value, 3), unit=unit, target=label, status=status
    )


class Workers:
    """`manage.py baton_worker` in a session of its own, on the bench's queue and database."""

    def __init__(self, count: int, scratch: Path, *, say: Any):
        self.count = count
        self.say = say
        self.log_path = scratch / f"worker-{count}-{time.monotonic_ns()}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Workers:
        env = dict(os.environ)
        env.update({"BATON_WORKERS": str(self.count), "PYTHONUNBUFFERED": "1"})
        # The http agent calls the bench's own server on loopback, refused unless listed.
        allowed = env.get("BATON_HTTP_ALLOWED_HOSTS", "").strip()
        env["BATON_HTTP_ALLOWED_HOSTS"] = f"{allowed},127.0.0.1" if allowed else "127.0.0.1"
        env.pop(DRIVER_ENV, None)
        self.say(f"starting {self.count} worker(s) on queue {settings.QUEUE_NAME}")
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(Path(settings.BASE_DIR) / "manage.py"), "baton_worker"],
                env=env,
                cwd=settings.BASE_DIR,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in the terminal is ours to handle, not theirs
            )
        try:
            wait_for(self.ready, timeout=60, what="the workers to start")
        except BaseException:
            self.stop()
            raise
        return self

    def ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise CommandError(f"the worker process exited at start-up:\n{self.tail()}")
        return b"baton worker ready" in self.log_path.read_bytes()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        # Only the main process: it stops the django-q2 cluster in order. SIGTERM to the whole
        # group also hits the sentinel, and Cluster.stop then hangs in Event.set() waiting
        # for it (seen with 4 workers).
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.say("the workers did not stop within 30 s of SIGTERM; killing them")
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    @contextmanager
    def explain_failures(self) -> Iterator[None]:
        """A bench that fails shows the end of the workers' log, which is about to be deleted."""
        try:
            yield
        except CommandError as exc:
            raise CommandError(f"{exc}\n--- worker log (last lines) ---\n{self.tail()}") from None

    def lines_with(self, text: str) -> list[str]:
        log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return [line for line in log.splitlines() if text in line]

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def install(document: dict[str, Any]) -> str:
    """Import a bench workflow unless its latest published version is already this one."""
    agents, spec = definitions.check_document(document)
    assert spec is not None
    workflow = Workflow.objects.filter(key=spec["key"]).first()
    latest = workflow.latest_version if workflow else None
    stored = {agent.name: agent for agent in Agent.objects.filter(name__in=[a["name"] for a in agents])}
    unchanged = (
        latest is not None
        and latest.spec == spec
        and all(a["name"] in stored and definitions.agent_spec(stored[a["name"]]) == a for a in agents)
    )
    if not unchanged:
        definitions.import_document(document, note="imported by manage.py bench")
    return spec["key"]


def bench_agent() -> dict[str, Any]:
    return {
        "name": AGENT,
        "kind": "python",
        "description": "Does nothing; used by manage.py bench.",
        "config": {"callable": "orchestration.bench_agents:noop"},
        # One attempt: a failure should stop the bench, not be hidden inside its timings.
        "retry": {"attempts": 1},
    }


def wait_for(predicate: Any, *, timeout: float, what: str, interval: float = 0.001) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise CommandError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile: the smallest value with pct% of the values at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def shown(value: float, unit: str) -> str:
    if unit == "ms":
        return f"{value:.1f} ms"
    if unit == "s":
        return f"{value:.2f} s"
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "statements":
        return f"{value:.1f} {unit}"
    return f"{value:.0f} {unit}"
