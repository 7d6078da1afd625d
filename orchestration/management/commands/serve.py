"""Run the whole product in one terminal: daphne (web + websockets) and `baton_worker`.

This is what `make run` ends with. Both children get this process's environment, so
DATABASE_URL / REDIS_URL / BATON_QUEUE chosen for `serve` apply to the web server and the worker
alike. Ctrl-C or SIGTERM stops both; if either one dies, the other is stopped too, because a web
server without a worker (or the reverse) looks alive but never advances a run.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

# How long each child may take to stop after SIGTERM before it and its process group are
# killed. The worker finishes the steps in hand within BATON_DRAIN_SECONDS and then releases
# what is left; it gets that long plus this margin.
STOP_TIMEOUT_SECONDS = 15.0
# How long daphne may take to accept connections before we print the URL anyway.
READY_TIMEOUT_SECONDS = 30.0
POLL_SECONDS = 0.2


def _die_with_parent() -> None:
    """Runs in each child before exec: ask Linux to SIGTERM it if `serve` itself dies.

    Children live in their own process groups (see `Child.start`), so a `serve` killed with SIGKILL
    would otherwise leave daphne and the worker running, holding the port and the queue.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM))


class Child:
    """One supervised process, started as the leader of its own process group."""

    def __init__(
        self, name: str, argv: list[str], env: dict[str, str] | None = None, *, stop_timeout: float = STOP_TIMEOUT_SECONDS
    ) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.stop_timeout = stop_timeout
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.argv,
            cwd=settings.BASE_DIR,
            env=dict(os.environ) if self.env is None else self.env,
            # A process group of its own keeps the terminal's Ctrl-C away from the child, so
            # only `serve` decides how it stops (one SIGTERM, not SIGINT plus SIGTERM), and lets
            # a last-resort SIGKILL reach the django-q2 processes the worker forked.
            process_group=0,
            preexec_fn=_die_with_parent,
        )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def terminate(self) -> None:
        # Only the leader gets SIGTERM: the worker stops its own cluster, whose processes reset
        # SIGTERM to the default action and would die mid-task if signalled directly.
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGTERM)

    def kill_group(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)


def demo_logins() -> list[tuple[str, str, str]] | None:
    """The demo accounts `load_demo` creates, or None when that module is not there."""
    try:
        # Imported late and by name: the module belongs to the demo data, and `serve` must
        # still start without it (or with an older shape of it).
        module = importlib.import_module("orchestration.demo_users")
    except ImportError:
        return None
    users = getattr(module, "DEMO_USERS", None)
    if not isinstance(users, Sequence):
        return None
    logins: list[tuple[str, str, str]] = []
    for entry in users:
        if isinstance(entry, Sequence) and not isinstance(entry, str) and len(entry) >= 2:
            what = str(entry[2]) if len(entry) >= 3 else ""
            logins.append((str(entry[0]), str(entry[1]), what))
    return logins or None


def browse_host(host: str) -> str:
    """The address to print and to probe: a wildcard bind is reached through loopback."""
    if host in {"", "0.0.0.0"}:
        return "127.0.0.1"
    if host in {"::", "[::]"}:
        return "::1"
    return host


def url_for(host: str, port: int) -> str:
    shown = browse_host(host)
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/"


def child_environment(host: str, port: int) -> dict[str, str]:
    """This environment, with links in emails pointing where this `serve` listens.

    The worker sends most emails, and it has no idea which port daphne was given: without this,
    `--port 8101` still mailed links to :8000. An explicit BATON_BASE_URL (a proxy, a public
    name) wins.
    """
    env = dict(os.environ)
    if not env.get("BATON_BASE_URL", "").strip():
        env["BATON_BASE_URL"] = url_for(host, port).rstrip("/")
    return env


def accepts_connections(host: str, port: int) -> bool:
    try:
        with socket.create_connection((browse_host(host).strip("[]"), port), timeout=0.5):
            return True
    except OSError:
        return False


class Command(BaseCommand):
    help = "Runs daphne and the Baton worker together; Ctrl-C or SIGTERM stops both."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1", help="Address daphne binds (default 127.0.0.1).")
        parser.add_argument("--port", type=int, default=8000, help="Port daphne listens on (default 8000).")

    def handle(self, *args: Any, **options: Any) -> None:
        host: str = options["host"]
        port: int = options["port"]
        if not 0 < port < 65536:
            raise CommandError(f"--port {port} is not a TCP port.")
        if accepts_connections(host, port):
            # daphne would fail to bind a moment later with a less helpful message.
            raise CommandError(f"Something already listens on {url_for(host, port)}; use --port.")

        stop_requested = threading.Event()
        signals_seen: list[int] = []

        def on_signal(signum: int, frame: FrameType | None) -> None:
            signals_seen.append(signum)
            stop_requested.set()

        # Installed before any child exists, so there is no moment in which Ctrl-C would raise
        # KeyboardInterrupt here and leave children behind.
        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        python = sys.executable
        asgi_app = "orchestration.config.asgi:application"
        env = child_environment(host, port)
        children = [
            Child("daphne", [python, "-m", "daphne", "-b", host, "-p", str(port), asgi_app], env),
            Child(
                "worker",
                [python, str(settings.BASE_DIR / "manage.py"), "baton_worker"],
                env,
                stop_timeout=settings.BATON_DRAIN_SECONDS + STOP_TIMEOUT_SECONDS,
            ),
        ]
        try:
            for child in children:
                child.start()
            self.stdout.write(
                f"Started daphne (pid {children[0].pid}) and baton_worker (pid {children[1].pid}); "
                f"queue {settings.QUEUE_NAME!r}."
            )
            self.stdout.flush()
            failed = self._supervise(children, host, port, stop_requested)
        finally:
            self._stop_all(children, signals_seen)
            for sig, handler in previous.items():
                signal.signal(sig, handler)

        if failed is not None:
            raise CommandError(
                f"{failed.name} exited with code {failed.returncode()}; stopped the other process too."
            )
        self.stdout.write("Baton stopped.")

    def _supervise(
        self, children: list[Child], host: str, port: int, stop_requested: threading.Event
    ) -> Child | None:
        """Wait for a stop signal (returns None) or for a child to exit (returns that child)."""
        announced = False
        started = time.monotonic()
        while not stop_requested.is_set():
            for child in children:
                if child.returncode() is not None:
                    return child
            if not announced and (
                accepts_connections(host, port) or time.monotonic() - started > READY_TIMEOUT_SECONDS
            ):
                self._announce(host, port)
                announced = True
            stop_requested.wait(POLL_SECONDS)
        return None

    def _announce(self, host: str, port: int) -> None:
        lines = ["", f"Baton is running at {url_for(host, port)}", ""]
        logins = demo_logins()
        if logins:
            lines.append("Demo logins (user / password):")
            name_width = max(len(name) for name, _, _ in logins)
            password_width = max(len(password) for _, password, _ in logins)
            for name, password, what in logins:
                row = f"  {name.ljust(name_width)}  {password.ljust(password_width)}  {what}"
                lines.append(row.rstrip())
        else:
            lines.append(
                "Demo logins: admin / ops / approver, created by `manage.py load_demo` "
                "(orchestration/demo_users.py holds the passwords)."
            )
        lines += ["", "Press Ctrl-C to stop the web server and the worker.", ""]
        self.stdout.write("\n".join(lines))
        self.stdout.flush()

    def _stop_all(self, children: list[Child], signals_seen: list[int]) -> None:
        running = [c for c in children if c.process is not None and c.returncode() is None]
        if not running:
            return
        self.stdout.write("Stopping " + " and ".join(c.name for c in running) + " ...")
        self.stdout.flush()
        for child in running:
            child.terminate()
        # They stop in parallel, so a slow worker doesn't add its wait to daphne's.
        started = time.monotonic()
        seen_before = len(signals_seen)
        while any(c.returncode() is None and time.monotonic() < started + c.stop_timeout for c in running):
            if len(signals_seen) > seen_before:
                # Another Ctrl-C while stopping means "now": don't make the user wait 15 s.
                break
            time.sleep(0.1)
        for child in running:
            if child.returncode() is None:
                self.stderr.write(f"{child.name} did not stop in time; killing it.")
                child.kill_group()
                assert child.process is not None
                child.process.wait(timeout=5)
            else:
                # The leader exited; anything it forked and left behind (a django-q2 process
                # that missed the stop) goes with the group.
                child.kill_group()
