"""Start a django-q2 cluster and Baton's ticker in one process, and look after both.

Ctrl-C or SIGTERM is a graceful stop: the worker processes take no new step, finish the ones
in hand within BATON_DRAIN_SECONDS, and whatever is still running then is released to other
workers before every process of the cluster is killed; nothing is left behind.

A cluster that stops taking tasks is replaced: when a worker process is killed while it reads
the cluster's task queue (an OOM kill, an operator's `kill -9`), it takes the queue's read lock
with it, and the other workers wait for that lock for ever while django-q2's sentinel
reincarnates the dead one and looks healthy.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import close_old_connections, connections
from django.utils import timezone

logger = logging.getLogger("baton.worker")

# Slots for the pids of this command's django-q2 worker processes, which each one writes when
# it starts (django-q2 does not tell the parent which of its grandchildren are workers).
REGISTRY_SLOTS = 512
_registry: Any = None


def _worker_started(sender: Any = None, proc_name: str = "", **kwargs: Any) -> None:
    """django-q2's post_spawn, run inside each new worker process."""
    from orchestration import runtime, slots

    # This process runs network-bound agent calls in its slots (started on first use).
    slots.enable()
    # A worker signalled directly (a service manager signals the whole process group) drains
    # like the rest of the cluster instead of dying in the middle of a step.
    signal.signal(signal.SIGTERM, runtime.stop_taking_steps)
    if _registry is None:
        return
    with _registry.get_lock():
        for i in range(len(_registry)):
            if _registry[i] == 0 or not _alive(_registry[i]):
                _registry[i] = os.getpid()
                return


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in {"Z", "X"}


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process on the machine, from /proc."""
    result = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            result[int(entry.name)] = int(fields[1])
    return result


def _descendants(root: int) -> list[int]:
    parents = _parents()
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    found, frontier = [], [root]
    while frontier:
        frontier = [c for p in frontier for c in children.get(p, [])]
        found.extend(frontier)
    return found


def _wchan(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/wchan").read_text()
    return ""


def _become_subreaper() -> None:
    """Worker processes orphaned by a dead sentinel become our children, so we can find them,
    wait for them and kill them, instead of init adopting them and nobody stopping them."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(36, 1)  # PR_SET_CHILD_SUBREAPER


class Generation:
    """One django-q2 cluster and the processes it forked."""

    def __init__(self) -> None:
        from django_q.cluster import Cluster

        from orchestration import runtime

        context = multiprocessing.get_context("fork")
        # A stop flag of its own: a replaced cluster drains while its successor works.
        self.stop_flag = context.Event()
        runtime.share_stop_flag(self.stop_flag)
        # A connection open in this process must not be inherited by the forked cluster:
        # the first child to close it would close it for us too (PostgreSQL).
        connections.close_all()
        self.cluster = Cluster()  # its constructor installs signal handlers; ours replace them
        self.cluster.start()
        self.sentinel_pid = self.cluster.sentinel.pid
        self.known: set[int] = set()  # every process of this cluster seen so far
        self.stuck_since: float | None = None

    def processes(self) -> list[int]:
        alive = [pid for pid in self.known if _alive(pid)]
        if _alive(self.sentinel_pid):
            alive = sorted(set(alive) | set(_descendants(self.sentinel_pid)) | {self.sentinel_pid})
        self.known |= set(alive)
        return alive

    def workers(self) -> list[int]:
        registered = set(_registry[:]) - {0} if _registry is not None else set()
        return [pid for pid in self.processes() if pid in registered and pid != self.sentinel_pid]

    def labels(self) -> list[str]:
        host = socket.gethostname()
        return [f"{host}:{pid}" for pid in self.known]

    def sentinel_alive(self) -> bool:
        return bool(self.cluster.sentinel.is_alive())

    def is_stuck(self) -> bool:
        """True when, for BATON_STUCK_SECONDS, an idle worker waited for the task queue's lock
        and no worker read the queue: the reader holding the lock is gone."""
        workers = self.workers()
        channels = {pid: _wchan(pid) for pid in workers}
        if not workers or any("pipe" in ch for ch in channels.values()):
            self.stuck_since = None
            return False
        waiting = [pid for pid, ch in channels.items() if "futex" in ch]
        if not waiting:
            self.stuck_since = None
            return False
        host = socket.gethostname()
        busy = set(_holders([f"{host}:{pid}" for pid in waiting]))
        if len(busy) == len(waiting):
            self.stuck_since = None
            return False
        now = time.monotonic()
        if self.stuck_since is None:
            self.stuck_since = now
        return now - self.stuck_since >= settings.BATON_STUCK_SECONDS

    def kill(self, pids: list[int] | None = None) -> None:
        targets = pids if pids is not None else self.processes()
        for pid in targets:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        # Wait until they are gone: a process killed but not reaped stays in the process
        # group as a zombie, and a service manager waits for the group to be empty.
        deadline = time.monotonic() + 5
        for pid in targets:
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                self.reap()
                time.sleep(0.01)
        self.reap()

    def reap(self) -> None:
        # Only our orphans: the sentinel is reaped by multiprocessing, which would otherwise
        # think it alive for ever.
        for pid in self.known - {self.sentinel_pid}:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
        if not self.cluster.sentinel.is_alive():
            self.cluster.sentinel.join(timeout=0)


class Command(BaseCommand):
    help = "Runs the django-q2 worker cluster plus the ticker (retries, lost workers, lost messages)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--no-cluster", action="store_true", help="Run only the ticker.")
        parser.add_argument("--no-ticker", action="store_true", help="Run only the cluster.")

    def say(self, text: str, *, error: bool = False) -> None:
        (self.stderr if error else self.stdout).write(f"baton worker: {text}")
        (self.stderr if error else self.stdout).flush()

    def handle(self, *args: Any, **options: Any) -> None:
        global _registry
        from django_q.signals import post_spawn

        from orchestration.ticker import tick

        stopping = threading.Event()

        def stop(signum: int, frame: Any) -> None:
            # Only note it here: the loop below stops the cluster outside the signal handler.
            stopping.set()

        def install_handlers() -> None:
            signal.signal(signal.SIGTERM, stop)
            signal.signal(signal.SIGINT, stop)

        current: Generation | None = None
        retiring: list[tuple[Generation, float]] = []
        if not options["no_cluster"]:
            _become_subreaper()
            _registry = multiprocessing.get_context("fork").Array("i", REGISTRY_SLOTS)
            post_spawn.connect(_worker_started, dispatch_uid="baton-worker-started")
            current = Generation()
        install_handlers()
        self.stdout.write(f"baton worker ready (queue {settings.QUEUE_NAME}, {settings.WORKERS} workers)")
        self.stdout.flush()
        failing_since: float | None = None
        while not stopping.is_set():
            if current is not None:
                replace = ""
                try:
                    if not current.sentinel_alive():
                        replace = "django-q2's sentinel died"
                    elif current.is_stuck():
                        replace = (
                            f"no worker process has read the task queue for {settings.BATON_STUCK_SECONDS:g} s "
                            "while workers are idle (a worker killed while reading it holds the queue's lock)"
                        )
                except Exception:
                    current.stuck_since = None  # the database is away: the ticker says so below
                if replace and not stopping.is_set():  # a sentinel signalled with us is not a fault
                    self.say(f"RESTARTING THE CLUSTER: {replace}", error=True)
                    retiring.append((self._retire(current), time.monotonic() + settings.BATON_DRAIN_SECONDS))
                    current = Generation()
                    install_handlers()
                    self._resend_what_the_old_cluster_held()
                retiring = [(gen, deadline) for gen, deadline in retiring if not self._finish_retiring(gen, deadline)]
            if not options["no_ticker"]:
                try:
                    close_old_connections()
                    tick()
                except Exception as exc:  # keep ticking through a database or broker restart
                    if failing_since is None:
                        failing_since = time.monotonic()
                        self.say(f"the database or broker is unavailable ({_one_line(exc)}); retrying", error=True)
                    with contextlib.suppress(Exception):
                        from django.db import connection

                        connection.close()
                else:
                    if failing_since is not None:
                        self.say(
                            f"the database and broker are available again after {time.monotonic() - failing_since:.1f} s",
                            error=True,
                        )
                        failing_since = None
            stopping.wait(settings.BATON_TICK_SECONDS)
        generations = [gen for gen, _ in retiring] + ([current] if current is not None else [])
        if generations:
            self._drain(generations)
        self.stdout.write("baton worker stopped")
        self.stdout.flush()

    def _retire(self, gen: Generation) -> Generation:
        """Stop a stuck cluster taking work: its pusher and sentinel go at once, its workers
        finish the steps in hand (they take no next one) and are killed when idle."""
        gen.stop_flag.set()
        workers = set(gen.workers())
        gen.kill([pid for pid in gen.processes() if pid not in workers])
        return gen

    def _finish_retiring(self, gen: Generation, deadline: float) -> bool:
        """Kill the retired cluster's workers that hold no step (all of them at the deadline);
        True when none is left and what they still held has been released."""
        from orchestration import transitions

        host = socket.gethostname()
        left = gen.processes()
        if left:
            try:
                holders: set[str] | None = set(_holders([f"{host}:{pid}" for pid in left]))
            except Exception:
                holders = None  # the database is away: keep waiting, up to the deadline
            if time.monotonic() >= deadline:
                gen.kill(left)
            elif holders is not None:
                gen.kill([pid for pid in left if f"{host}:{pid}" not in holders])
            left = gen.processes()
        if left:
            return False
        with contextlib.suppress(Exception):
            transitions.release_steps(
                step_run_ids=transitions.steps_held_by(workers=gen.labels()),
                workers=gen.labels(),
                why="its cluster was restarted",
            )
        return True

    def _resend_what_the_old_cluster_held(self) -> None:
        # Messages the old cluster had taken from the broker but not started are gone with it;
        # send them again now rather than after BATON_REQUEUE_AFTER_SECONDS.
        from orchestration.ticker import resend_lost

        try:
            resent = resend_lost(timezone.now(), older_than=0.5, absent_for=0.0)
        except Exception as exc:
            self.say(f"could not re-send the messages of the old cluster ({_one_line(exc)})", error=True)
            return
        if resent:
            self.say(f"re-sent {resent} message(s) the old cluster had taken", error=True)

    def _drain(self, generations: list[Generation]) -> None:
        """Take no new step, finish the ones in hand for up to BATON_DRAIN_SECONDS, then release
        what is still held and kill every process left."""
        from orchestration import transitions

        deadline = time.monotonic() + settings.BATON_DRAIN_SECONDS
        self.say(f"stopping: finishing the steps in hand (at most {settings.BATON_DRAIN_SECONDS:g} s)")
        stoppers = []
        for gen in generations:
            gen.stop_flag.set()
            if gen.sentinel_alive():
                # django-q2's own stop: the pusher stops, the workers finish their task and
                # exit on a poison pill. From a thread: it may never return (a sentinel killed
                # inside its stop-event wait, a queue whose lock a dead worker holds).
                stopper = threading.Thread(target=gen.cluster.stop, daemon=True)
                stopper.start()
                stoppers.append(stopper)
        idle_since: float | None = None
        last = generations[-1]

        def everything() -> list[int]:
            # Every process below this one is a cluster's, including a worker forked just
            # before its sentinel died, which no generation has seen yet (we adopt orphans).
            for gen in generations:
                gen.reap()
            found = sorted(set(_descendants(os.getpid())) | {p for gen in generations for p in gen.processes()})
            last.known |= set(found)
            return found

        while time.monotonic() < deadline:
            if not everything():
                break
            if stoppers and all(not s.is_alive() for s in stoppers):
                break
            # django-q2's stop may never come (no sentinel to stop the workers, or a queue no
            # worker can read): once no step has been held for a moment, the rest is idle.
            held: list[str]
            try:
                held = _holders([label for gen in generations for label in gen.labels()])
            except Exception:
                held = ["?"]
            if held:
                idle_since = None
            elif idle_since is None:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > (0.5 if not any(g.sentinel_alive() for g in generations) else 3.0):
                break
            time.sleep(0.1)
        left = everything()
        if left:
            self.say(f"killing {len(left)} process(es) of the cluster left after the drain", error=True)
            last.kill(left)
        labels = [label for gen in generations for label in gen.labels()]
        try:
            unfinished = transitions.steps_held_by(workers=labels)
            if unfinished:
                released = transitions.release_steps(step_run_ids=unfinished, workers=labels, why="the worker stopped")
                self.say(f"released {released} unfinished step(s) to other workers", error=True)
        except Exception as exc:
            self.say(f"could not release the unfinished steps ({_one_line(exc)}); their leases will expire", error=True)


def _holders(labels: list[str]) -> list[str]:
    """Which of these worker labels hold a running attempt."""
    from orchestration import transitions

    if not labels:
        return []
    return list(transitions.attempts_in_hand(workers=labels).values_list("worker", flat=True))


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
