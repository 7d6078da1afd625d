"""Test helpers: load a workflow from YAML text, drive a run in-process, run real workers.

`drive` plays the part of a worker pool inside the test process: it executes queued steps with
the same `execute_step` the django-q2 task calls and runs the ticker, so engine rules are tested
without a broker. Durability is tested with `WorkerCluster`, real `baton_worker` processes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.db import connection

from orchestration import definitions
from orchestration.models import Run, StepRun, WorkflowVersion
from orchestration.spec import load_text
from orchestration.status import StepStatus
from orchestration.tasks import execute_step
from orchestration.ticker import tick

ROOT = Path(__file__).resolve().parent.parent


def load_workflow(text: str) -> WorkflowVersion | None:
    _, version = definitions.import_document(load_text(text))
    return version


def run_tree(run: Run) -> list[int]:
    """The run and every sub-workflow run below it."""
    ids = [run.pk]
    frontier = [run.pk]
    while frontier:
        frontier = list(Run.objects.filter(parent_step__run_id__in=frontier).values_list("pk", flat=True))
        ids.extend(frontier)
    return ids


def drive(run: Run, *, max_rounds: int = 500, clock: Any = None) -> Run:
    """Execute queued steps and tick until the run ends or nothing can move.

    With a time_machine `clock`, retries waiting for their backoff are reached by moving the
    clock instead of sleeping.
    """
    for _ in range(max_rounds):
        queued = list(
            StepRun.objects.filter(run_id__in=run_tree(run), status=StepStatus.QUEUED)
            .order_by("id")
            .values_list("pk", flat=True)
        )
        for pk in queued:
            execute_step(pk)
        report = tick()
        run.refresh_from_db()
        if run.is_final:
            return run
        if not queued and not report:
            waiting = StepRun.objects.filter(run_id__in=run_tree(run), status=StepStatus.RETRYING).order_by("next_attempt_at").first()
            if waiting is None or clock is None:
                return run
            clock.move_to(waiting.next_attempt_at + timedelta(milliseconds=1))
    return run


def wait_for(predicate: Callable[[], Any], *, timeout: float = 30.0, interval: float = 0.05, message: str = "") -> Any:
    """Poll until predicate() is truthy; fail with a message after the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message or predicate}")
        time.sleep(interval)


def database_url() -> str:
    """A URL for the database the tests use, for worker processes to connect to."""
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or ""
    auth = f"{user}@" if user else ""
    return f"postgres://{auth}{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


class WorkerCluster:
    """Real `manage.py baton_worker` processes (django-q2 cluster + ticker) on the test database."""

    def __init__(self, *, workers: int = 2, env: dict[str, str] | None = None):
        self.workers = workers
        self.extra_env = env or {}
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = ROOT / "var" / f"worker-{os.getpid()}-{time.monotonic_ns()}.log"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "DATABASE_URL": database_url(),
                "BATON_QUEUE": settings.QUEUE_NAME,
                "BATON_WORKERS": str(self.workers),
                "BATON_HEARTBEAT_SECONDS": "0.2",
                "BATON_LEASE_SECONDS": "1.5",
                "BATON_TICK_SECONDS": "0.1",
                # Large: a fault-free test must never wait for the lost-message sweep, and a
                # short requeue would hide a step that nobody sent (it is re-sent in a second).
                # Tests that lose messages on purpose set it low themselves.
                "BATON_REQUEUE_AFTER_SECONDS": "120",
                "BATON_BROKER_POLL": "0.01",
                "PYTHONPATH": str(ROOT),
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.extra_env)
        return env

    def start(self) -> WorkerCluster:
        self.log_path.parent.mkdir(exist_ok=True)
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "baton_worker"],
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
        )
        wait_for(lambda: b"baton worker ready" in self.log_path.read_bytes(), timeout=30, message="worker start")
        return self

    def worker_pids(self) -> list[int]:
        """PIDs of the django-q2 worker processes (grandchildren of our process)."""
        assert self.process is not None
        out = subprocess.run(["ps", "-o", "pid=,ppid=,args=", "-e"], capture_output=True, text=True).stdout
        rows = [line.split(None, 2) for line in out.strip().splitlines()]
        children = {int(pid) for pid, ppid, _ in rows if int(ppid) == self.process.pid}
        return [int(pid) for pid, ppid, _ in rows if int(ppid) in children]

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        # SIGTERM to the command only: it stops the cluster in order (pusher, workers,
        # monitor). Whatever is left of the process group afterwards is killed.
        self.process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=20)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> WorkerCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class WebServer:
    """A real daphne process (HTTP + websockets) on the test database, like `make run` starts.

    The live push needs a server that holds sockets: Django's live_server speaks WSGI only.
    `restart()` kills it with SIGKILL and starts it again on the same port, as a crashed web
    process would come back.
    """

    def __init__(self, *, port: int | None = None, env: dict[str, str] | None = None):
        self.port = port or free_port()
        self.extra_env = env or {}
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = ROOT / "var" / f"web-{os.getpid()}-{time.monotonic_ns()}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "DATABASE_URL": database_url(),
                "BATON_QUEUE": settings.QUEUE_NAME,
                "BATON_BASE_URL": self.url,
                "PYTHONPATH": str(ROOT),
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.extra_env)
        return env

    def start(self) -> WebServer:
        self.log_path.parent.mkdir(exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port), "orchestration.config.asgi:application"],
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
        )
        wait_for(self._answers, timeout=30, message=f"daphne on port {self.port}")
        return self

    def _answers(self) -> bool:
        import urllib.error
        import urllib.request

        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"daphne exited with {self.process.returncode}:\n{self.log()}")
        try:
            with urllib.request.urlopen(f"{self.url}/login/", timeout=1) as answer:
                return bool(answer.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def restart(self) -> WebServer:
        self.kill()
        return self.start()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def session_cookie(self, user: Any) -> dict[str, Any]:
        """A signed-in session for `user`, as a Playwright cookie for this server."""
        name, value = session_for(user)
        return {"name": name, "value": value, "url": self.url}

    def sign_in(self, page: Any, user: Any) -> None:
        """Sign a Playwright page's browser context in as `user`."""
        page.context.add_cookies([self.session_cookie(user)])

    def __enter__(self) -> WebServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def session_for(user: Any) -> tuple[str, str]:
    """The session cookie (name, value) of `user` signed in, made in the shared database: what a
    socket or HTTP client of a server process presents."""
    from django.test import Client

    client = Client()
    client.force_login(user)
    name = settings.SESSION_COOKIE_NAME
    return name, client.cookies[name].value


class ServerCheckablePasswordHasher(PBKDF2PasswordHasher):
    """PBKDF2 with few iterations: cheap in tests, and a server process with Django's default
    hashers checks it (it reads the iteration count from the hash), unlike the MD5 the other
    tests use. tests/browser/conftest.py hashes with it."""

    iterations = 1_000


def naps_in_sequence(count: int, *, seconds: float = 1) -> str:
    """Steps s1 … s<count> of the `nap` agent, each after the one before, as a flow-style list body."""
    return ", ".join(
        f"{{key: s{i}, agent: nap, input: {{seconds: {seconds}}}" + (f", after: [s{i - 1}]" if i > 1 else "") + "}"
        for i in range(1, count + 1)
    )
