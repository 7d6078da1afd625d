"""`manage.py bench`: how fast work moves through Baton on this database and broker.

Five measurements, printed as one table:

1. the floor: a plain django-q2 task (no Baton tables), enqueue until it runs;
2. a sequential workflow of no-op agent steps on one worker: wall time and the step-to-step
   handoff (the next step's claim minus the previous step's finished_at);
3. a for_each of no-op items on four workers: items per second;
4. a for_each of `http` agent calls to a local server that takes 50 ms to answer, on four
   workers: wall time against its ideal. Every worker runs up to BATON_SLOTS such calls at
   once, so the calls of a small map all overlap, and what no agent latency can hide is the
   engine's own cost of moving the items through the database: the ideal is that floor,
   measured as the same map of `http` calls to a second local server that answers at once
   (same agent kind, chunks, slots and client, on the same workers; the median of as many
   runs, interleaved with the calls' runs), plus one call's 50 ms. The old figure,
   50 ms x ceil(items / (workers x slots)), which counts no engine cost, is shown for reference;
5. the start and the cancel of a 10,000-item for_each: the longest transaction each holds
   (on SQLite, how long every other writer may have to wait).

Before the workers start, the bench runs the same task functions in its own process, one
sequential run and one map, with every SQL statement counted: the statements per hand-off (a
step's record and the next step's claim, one transaction) and per for_each item, and how long
that hand-off transaction takes with no broker in the way.

Then the live push (orchestration/management/bench_live.py, alone with `--only live`): from a
step's commit to an open run page's DOM in headless Chromium, and 200 websocket clients that
refetch their partials while a 1,000-item for_each runs, against a real daphne process.

Last the rollout metrics (orchestration/management/bench_rollup.py, alone with `--only
rollup`): a day's snapshot over 100,000 generated runs (`--rollup-runs` for another size).

The operations console's pages (orchestration/management/bench_console.py) run only with
`--only console`: their fixture of 100,000 runs and a million step runs stays in the bench's
database to be reused, and would weigh on every other row. `--only overview` times the home page
(and a /metrics scrape) alone on that same fixture.

The row "messages re-sent" counts the task messages the ticker had to re-send during the first
five: a fault-free bench needs none, so any is marked MISSED and the command fails.

The bench starts its own `baton_worker` processes on a private queue, so it neither takes
work from nor gives work to a running deployment, and deletes its runs afterwards.
"""

from __future__ import annotations

import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.utils import timezone
from django_q.tasks import async_task

from orchestration import dispatch, tasks, transitions
from orchestration.bench_agents import SlowJsonServer
from orchestration.management.bench_console import RUNS as CONSOLE_RUNS
from orchestration.management.bench_console import ConsoleBench
from orchestration.management.bench_live import NAP_CALLABLE, LiveBench
from orchestration.management.bench_rollup import RUNS as ROLLUP_RUNS
from orchestration.management.bench_rollup import RollupBench
from orchestration.management.bench_slots import SlotsBench
from orchestration.management.benchkit import (
    AGENT,
    DRIVER_ENV,
    Row,
    Target,
    Workers,
    bench_agent,
    install,
    percentile,
    row,
    shown,
    wait_for,
)
from orchestration.models import Attempt, Run, RunEvent, StepRun
from orchestration.status import RUN_FINAL, EventKind, RunStatus

HTTP_AGENT = "bench-http"
# The same calls to a server that answers at once: the 50 ms row's floor.
INSTANT_AGENT = "bench-http-instant"
HTTP_DELAY = 0.05  # seconds the local server takes to answer each call
FANOUT_WORKERS = 4
RUNS = 3
FOOTNOTE = (
    "Published figures for a 40-step sequential flow, per handoff: Windmill (dedicated worker) "
    "~10 ms, Temporal (tuned) ~19 ms, Hatchet ~31 ms, Airflow (tuned) ~228 ms."
)


@dataclass(frozen=True)
class Sizes:
    round_trips: int
    steps: int
    items: int
    http_steps: int
    map_items: int


FULL = Sizes(round_trips=50, steps=40, items=1000, http_steps=100, map_items=10_000)
QUICK = Sizes(round_trips=10, steps=10, items=100, http_steps=20, map_items=1_000)


# On every backend: no message of a fault-free run may need the lost-message sweep.
RESENT_TARGET = Target(0, at_most=True)
# On every backend: a map start or cancel never holds the database for long (on SQLite its
# transaction holds the only write lock; every other write waits for it).
TRANSACTION_TARGET = Target(1.0, at_most=True)
# On every backend: the 50 ms HTTP map close to its ideal at the workers' concurrency.
HTTP_RATIO_TARGET = Target(1.2, at_most=True)


def targets(database: str, broker: str) -> dict[str, Target]:
    """Targets by backend; a combination not listed (PostgreSQL + ORM broker) has none."""
    if database == "postgresql" and broker == "redis":
        return {"handoff": Target(5.0, at_most=True), "throughput": Target(500.0, at_most=False)}
    if database == "sqlite":
        return {"handoff": Target(50.0, at_most=True), "throughput": Target(500.0, at_most=False)}
    return {}


class Command(BaseCommand):
    help = "Measures task round trip, step handoff and fan-out throughput on this database and broker."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--quick",
            action="store_true",
            help="Small sizes (10 round trips, 10 steps, 100 items, 20 HTTP calls, a 1,000-item map start); no live push rows.",
        )
        parser.add_argument("--json", action="store_true", help="Also print the rows as one line of JSON.")
        parser.add_argument(
            "--keep", action="store_true", help="Keep the bench's runs instead of deleting them."
        )
        parser.add_argument(
            "--only",
            choices=["live", "rollup", "console", "overview", "slots"],
            help="Only these rows: `live`, the live push (commit -> browser, fan-out to 200 sockets); "
            "`slots`, network-bound agents many at once per worker (1,000 http calls, 300 llm steps, memory); "
            "`rollup`, a day's rollout metrics snapshot over 100,000 runs; `console`, the runs list, "
            "workflow page and run pages over 100,000 runs (never part of a full bench: its fixture stays); "
            "`overview`, the home page and a /metrics scrape on that same fixture.",
        )
        parser.add_argument(
            "--console-runs",
            type=int,
            default=CONSOLE_RUNS,
            metavar="N",
            help=f"How many runs of the 20 workflows the console rows' fixture holds (default {CONSOLE_RUNS:,}).",
        )
        parser.add_argument(
            "--rollup-runs",
            type=int,
            default=ROLLUP_RUNS,
            metavar="N",
            help=f"How many runs the rollup row generates for its day (default {ROLLUP_RUNS:,}).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if os.environ.get(DRIVER_ENV) != "1":
            self.relaunch(options)
            return
        # A SIGTERM unwinds through the `finally` blocks, so the workers stop and runs go.
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
        if options["rollup_runs"] < 1:
            raise CommandError("--rollup-runs: must be at least 1")
        if not 1 <= options["console_runs"] <= 1_000_000:
            raise CommandError("--console-runs: from 1 to 1,000,000")
        bench = Bench(QUICK if options["quick"] else FULL, progress=self.stderr)
        only = options["only"]
        rows = [] if only else bench.run(keep=options["keep"])
        if only in (None, "slots"):
            with tempfile.TemporaryDirectory(prefix="baton-bench-slots-") as scratch:
                slots = SlotsBench(
                    database=bench.database, scratch=Path(scratch), say=bench.say, quick=options["quick"], keep=options["keep"]
                )
                rows += slots.run()
            bench.notes += slots.notes
            if only == "slots":
                bench.notes.append(f"Load when measured: {load_average()}.")
        if only in ("console", "overview"):
            console = ConsoleBench(
                database=bench.database, say=bench.say, runs=options["console_runs"], only_overview=only == "overview"
            )
            rows += console.run()
            bench.notes += console.notes
        elif only == "slots":
            pass
        elif options["quick"] and not only:
            # A browser, a web server and 200 sockets are not quick; `--only live` runs them.
            bench.notes.append("Live push rows: not run with --quick (manage.py bench --only live runs them).")
            bench.notes.append("Rollup row: not run with --quick (manage.py bench --only rollup runs it).")
        else:
            if only != "rollup":
                with tempfile.TemporaryDirectory(prefix="baton-bench-live-") as scratch:
                    live = LiveBench(
                        database=bench.database, broker=bench.broker, scratch=Path(scratch), say=bench.say, keep=options["keep"]
                    )
                    rows += live.run()
                bench.notes += live.notes
            if only != "live":
                rollup = RollupBench(database=bench.database, say=bench.say, runs=options["rollup_runs"], keep=options["keep"])
                rows += rollup.run()
                bench.notes += rollup.notes
        self.stdout.write(
            render(bench.database, bench.broker, rows, bench.notes, handoffs=not only, live=only in (None, "live"))
        )
        if options["json"]:
            document = {
                "database": bench.database,
                "broker": bench.broker,
                "rows": rows,
                "notes": bench.notes,
            }
            self.stdout.write(json.dumps(document))
        resent = [r for r in rows if r["measure"] == "messages re-sent" and r["status"] == "MISSED"]
        if resent:
            # Unlike a slow figure, this is a fault: the bench fails.
            raise CommandError(f"the ticker re-sent {resent[0]['value']:.0f} task message(s) during the bench")

    def relaunch(self, options: dict[str, Any]) -> None:
        """Run the bench in a child process whose settings name the private queue.

        django-q2 reads its queue name, and the salt it signs messages with, when it is
        imported; this process already has both from BATON_QUEUE. The workers and the process
        that starts runs (and so sends the first messages) must agree on them.
        """
        env = dict(os.environ)
        env.update({"BATON_QUEUE": f"baton-bench-{os.getpid()}", DRIVER_ENV: "1", "PYTHONUNBUFFERED": "1"})
        # This process starts the fan-out runs, so it sizes their for_each chunks (about eight
        # per worker): it must count the workers that will take them.
        env["BATON_WORKERS"] = str(FANOUT_WORKERS)
        # The live rows' napping agent must be allowed here, in the workers and in daphne.
        env["BATON_PYTHON_AGENTS"] = ",".join(dict.fromkeys([*settings.BATON_PYTHON_AGENTS, NAP_CALLABLE]))
        flags = [f"--{name}" for name in ("quick", "json", "keep") if options[name]]
        if options["only"]:
            flags += ["--only", options["only"]]
        flags += ["--rollup-runs", str(options["rollup_runs"]), "--console-runs", str(options["console_runs"])]
        command = [sys.executable, str(Path(settings.BASE_DIR) / "manage.py"), "bench", *flags]
        child = subprocess.Popen(command, env=env, cwd=settings.BASE_DIR, stdout=subprocess.PIPE, text=True)
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signal.SIGTERM))
        try:
            assert child.stdout is not None
            for line in child.stdout:
                self.stdout.write(line, ending="")
            code = child.wait()
        except KeyboardInterrupt:
            # Ctrl-C reached the child too (same process group); let it stop its workers.
            child.wait()
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)
        if code:
            raise CommandError(f"the bench stopped with exit status {code}", returncode=code)


# ---------------------------------------------------------------------------------------------
# Measuring


class Bench:
    def __init__(self, sizes: Sizes, *, progress: Any):
        self.sizes = sizes
        self.progress = progress
        self.database = connection.vendor
        self.broker = "redis" if settings.REDIS_URL else "orm"
        self.run_ids: list[int] = []
        self.notes: list[str] = []

    def say(self, message: str) -> None:
        self.progress.write(f"bench: {message}")
        self.progress.flush()

    def run(self, *, keep: bool) -> list[Row]:
        sequential = install(sequential_document(self.sizes.steps))
        fanout = install(fanout_document(self.sizes.items))
        mapstart = install(mapstart_document(self.sizes.map_items))
        locked: list[str] = []
        try:
            # In this process and before any worker runs: no worker can take these steps, and
            # the messages their start sent are dropped later by whichever worker reads them
            # (the steps are no longer queued).
            counted = self.statements(sequential, fanout)
            with tempfile.TemporaryDirectory(prefix="baton-bench-") as scratch:
                with Workers(1, Path(scratch), say=self.say) as workers, workers.explain_failures():
                    # First the messages of the steps run above, which the worker drops.
                    wait_for(
                        lambda: dispatch.broker().queue_size() == 0,
                        timeout=60,
                        interval=0.01,
                        what="the worker to drop the messages of steps already run",
                    )
                    floor = self.floor(Path(scratch))
                    chain = self.sequential(sequential)
                locked += workers.lines_with("database is locked")
                with (
                    SlowJsonServer(HTTP_DELAY) as server,
                    SlowJsonServer(0.0) as instant,
                    Workers(FANOUT_WORKERS, Path(scratch), say=self.say) as workers,
                    workers.explain_failures(),
                ):
                    fan = self.fanout(fanout)
                    # The server's port is new each time, so the agent is updated each time.
                    calls = self.http_calls(
                        install(http_document(self.sizes.http_steps, server.url)),
                        install(http_document(self.sizes.http_steps, instant.url, agent=INSTANT_AGENT)),
                        server,
                    )
                    start = self.map_start(mapstart)
                locked += workers.lines_with("database is locked")
            # Every figure above assumes no message was lost: a step that had to wait for the
            # ticker's re-send sweep is a fault (a step nobody sent), never part of the cost.
            resent = RunEvent.objects.filter(run_id__in=self.run_ids, kind=EventKind.MESSAGE_RESENT).count()
        finally:
            if keep:
                self.say(f"kept runs {', '.join(map(str, self.run_ids))}")
            else:
                Run.objects.filter(pk__in=self.run_ids).delete()
        if locked:
            self.notes.append(f'WARNING: "database is locked" appeared {len(locked)} times in worker logs:')
            self.notes += [f"  {line}" for line in locked[:5]]
        else:
            self.notes.append('Worker logs: no "database is locked".')
        if resent:
            self.notes.append(
                f"WARNING: the ticker re-sent {resent} task message(s); a fault-free run must need none."
            )
        return self.rows(floor, chain, fan, calls, start, resent, counted)

    def statements(self, sequential: str, fanout: str) -> dict[str, float]:
        """Run a sequential run and a map through the workers' task functions in this process,
        counting the SQL statements each sends (transaction control not counted).

        execute_step on the first step runs the whole sequence, as a worker does: each step's
        record and the next step's claim share one transaction, so the statements of every
        transaction but the first (the first claim) and the last (the last record, which also
        finishes the run) are one hand-off's. The map's items run in chunks as dispatch sends
        them, through execute_steps.
        """
        self.say(f"{sequential}, {fanout}: statements counted in this process")
        with StatementLog() as log:
            run = transitions.start_run(workflow=sequential, trigger="bench")
            self.run_ids.append(run.pk)
            heads = StepRun.objects.filter(run=run, map_index__isnull=True).order_by("id")
            first = heads.values_list("pk", flat=True)[0]
            log.clear()
            tasks.execute_step(first)
            handoffs = log.transactions()[1:-1]
        run.refresh_from_db()
        if run.status != RunStatus.SUCCEEDED or not handoffs:
            raise CommandError(f"run {run.pk} of {sequential} (in this process) {run.status}: {run.error}")
        with StatementLog() as log:
            run = transitions.start_run(workflow=fanout, trigger="bench")
            self.run_ids.append(run.pk)
            mapped = StepRun.objects.filter(run=run, map_index__isnull=False).order_by("map_index")
            items = list(mapped.values_list("pk", flat=True))
            log.clear()
            size = dispatch.MAX_CHUNK
            for start in range(0, len(items), size):
                tasks.execute_steps(items[start : start + size])
            per_item = log.count() / len(items)
        run.refresh_from_db()
        if run.status != RunStatus.SUCCEEDED:
            raise CommandError(f"run {run.pk} of {fanout} (in this process) {run.status}: {run.error}")
        return {
            "handoff": statistics.median(len(t.statements) for t in handoffs),
            "handoff_ms": statistics.median(t.seconds * 1000 for t in handoffs),
            "item": per_item,
        }

    def floor(self, scratch: Path) -> list[float]:
        """Plain django-q2 tasks, one at a time: enqueue until the task function runs (ms)."""
        self.say(f"django-q2 round trips x {self.sizes.round_trips}")
        samples = []
        for number in range(3 + self.sizes.round_trips):  # the first three warm the worker up
            path = scratch / f"stamp-{number}"
            sent = time.time()
            async_task(
                "orchestration.bench_agents.stamp",
                str(path),
                broker=dispatch.broker(),
                task_name=f"bench-stamp-{number}",
            )
            ran = float(
                wait_for(
                    lambda path=path: path.exists() and path.read_text(), timeout=30, what="a no-op task"
                )
            )
            if number >= 3:
                samples.append((ran - sent) * 1000)
        return samples

    def sequential(self, key: str) -> dict[str, list[float]]:
        """Runs of the sequential workflow; per run: wall time (s) and handoff figures (ms)."""
        self.say(f"{key}: a warm-up run and {RUNS} measured runs on 1 worker")
        per_run: dict[str, list[float]] = {"wall": [], "median": [], "p95": [], "engine": [], "broker": []}
        for number in range(1 + RUNS):
            started = timezone.now()
            run = self.start_and_wait(key, timeout=60 + 2 * self.sizes.steps)
            if number == 0:
                continue
            heads = list(StepRun.objects.filter(run=run, map_index__isnull=True).order_by("id"))
            handoff, engine, broker = [], [], []
            for before, after in zip(heads, heads[1:], strict=False):
                # A step's started_at is its claim by a worker; queued_at is when it was sent.
                handoff.append(seconds(before.finished_at, after.started_at) * 1000)
                engine.append(seconds(before.finished_at, after.queued_at) * 1000)
                broker.append(seconds(after.queued_at, after.started_at) * 1000)
            per_run["wall"].append(seconds(started, run.finished_at))
            per_run["median"].append(statistics.median(handoff))
            per_run["p95"].append(percentile(handoff, 95))
            per_run["engine"].append(statistics.median(engine))
            per_run["broker"].append(statistics.median(broker))
        return per_run

    def fanout(self, key: str) -> dict[str, float]:
        self.say(f"{key}: one run on {FANOUT_WORKERS} workers")
        started = timezone.now()
        run = self.start_and_wait(key, timeout=600)
        head = StepRun.objects.get(run=run, map_index__isnull=True)
        mapping = seconds(head.started_at, head.finished_at)
        return {"throughput": self.sizes.items / mapping, "wall": seconds(started, run.finished_at)}

    def http_calls(self, key: str, floor_key: str, server: SlowJsonServer) -> dict[str, float]:
        """Runs of the HTTP for_each: the map's wall time, start to finish (s), and each call as
        the agent timed it (ms), which separates the server and the network from Baton.

        Each run follows a run of the same map against the server that answers at once (the
        floor): interleaved, so a busy spell of the machine weighs on both alike.
        """
        steps = self.sizes.http_steps
        self.say(f"{key}, {floor_key}: a warm-up run and {RUNS} measured runs each on {FANOUT_WORKERS} workers")
        walls: list[float] = []
        floors: list[float] = []
        calls: list[float] = []
        for number in range(1 + RUNS):
            noop = self.start_and_wait(floor_key, timeout=60 + steps)
            run = self.start_and_wait(key, timeout=60 + steps * HTTP_DELAY * 10)
            if number == 0:
                continue
            floors.append(map_wall(noop))
            walls.append(map_wall(run))
            usages = Attempt.objects.filter(step_run__run=run, step_run__map_index__isnull=False)
            calls += [u["latency_ms"] for u in usages.values_list("usage", flat=True) if "latency_ms" in u]
        expected = (1 + RUNS) * steps
        if server.answered != expected:
            self.notes.append(
                f"WARNING: the local HTTP server answered {server.answered} calls for {expected} steps."
            )
        floor = statistics.median(floors)
        return {
            "wall": statistics.median(walls),
            "floor": floor,
            # Every worker runs up to BATON_SLOTS of these calls at once (orchestration/slots.py),
            # so they all overlap: one call's time on top of what moving the items costs.
            "ideal": floor + HTTP_DELAY,
            "slots_only": HTTP_DELAY * math.ceil(steps / (FANOUT_WORKERS * settings.BATON_SLOTS)),
            "call": statistics.median(calls) if calls else math.nan,
        }

    def map_start(self, key: str) -> dict[str, float]:
        """Start a big for_each and cancel it at once, timing the transactions of each (s).

        The workers are running, so they contend for the database as they would in use, and
        they take (and drop) the messages of the cancelled items, which empties the queue.
        """
        items = self.sizes.map_items
        self.say(f"{key}: start and cancel a {items:,}-item map on {FANOUT_WORKERS} workers")
        began = time.perf_counter()
        with transaction_clock() as starting:
            run = transitions.start_run(workflow=key, trigger="bench")
        call = time.perf_counter() - began
        self.run_ids.append(run.pk)
        with transaction_clock() as cancelling:
            transitions.cancel_run(run_id=run.pk, reason="cancelled by manage.py bench")
        wait_for(lambda: dispatch.broker().queue_size() == 0, timeout=120, interval=0.05, what="the queue to empty")
        if StepRun.objects.filter(run=run, map_index__isnull=False).count() != items:
            raise CommandError(f"run {run.pk} of {key} did not create its {items:,} items")
        return {"start": max(starting), "call": call, "cancel": max(cancelling)}

    def start_and_wait(self, key: str, *, timeout: float) -> Run:
        run = transitions.start_run(workflow=key, trigger="bench")
        self.run_ids.append(run.pk)
        # Polling only decides when we look; the figures come from the rows' own timestamps.
        wait_for(
            lambda: Run.objects.filter(pk=run.pk, status__in=RUN_FINAL).exists(),
            timeout=timeout,
            interval=0.025,
            what=f"run {run.pk} of {key}",
        )
        run.refresh_from_db()
        if run.status != RunStatus.SUCCEEDED:
            raise CommandError(f"run {run.pk} of {key} {run.status}: {run.error}")
        return run

    def rows(
        self,
        floor: list[float],
        chain: dict[str, list[float]],
        fan: dict[str, float],
        calls: dict[str, float],
        start: dict[str, float],
        resent: int,
        counted: dict[str, float],
    ) -> list[Row]:
        goals = targets(self.database, self.broker)
        steps, items, http_steps = self.sizes.steps, self.sizes.items, self.sizes.http_steps
        delay_ms = round(HTTP_DELAY * 1000)
        first = "django-q2 no-op task (floor)"
        second = f"{steps}-step sequential workflow"
        third = f"{items}-item for_each, {FANOUT_WORKERS} workers"
        fourth = (
            f"{http_steps} steps against a local HTTP agent answering in {delay_ms} ms, "
            f"{FANOUT_WORKERS} workers"
        )
        fifth = f"{self.sizes.map_items:,}-item for_each, start and cancel"
        table = [
            row(first, f"enqueue -> running, median of {len(floor)}", statistics.median(floor), "ms"),
            row(first, "enqueue -> running, p95", percentile(floor, 95), "ms"),
            row(second, f"total wall time, median of {RUNS} runs", statistics.median(chain["wall"]), "s"),
            row(
                second,
                "step-to-step handoff, median",
                statistics.median(chain["median"]),
                "ms",
                goals.get("handoff"),
            ),
            row(second, "step-to-step handoff, p95", statistics.median(chain["p95"]), "ms"),
            row(second, "  finished -> next queued, median", statistics.median(chain["engine"]), "ms"),
            row(second, "  queued -> claimed, median", statistics.median(chain["broker"]), "ms"),
            row(second, "SQL statements per hand-off (in-process), median", counted["handoff"], "statements"),
            row(second, "  the hand-off's transaction (in-process), median", counted["handoff_ms"], "ms"),
            row(
                third,
                "throughput, map start -> finish",
                fan["throughput"],
                "steps/s",
                goals.get("throughput"),
            ),
            row(third, "total wall time", fan["wall"], "s"),
            row(third, "SQL statements per item (in-process)", counted["item"], "statements"),
            row(fourth, f"wall time, map start -> finish, median of {RUNS} runs", calls["wall"], "s"),
            row(
                fourth,
                f"  floor: the same map against a server answering at once, median of {RUNS} runs",
                calls["floor"],
                "s",
            ),
            row(fourth, f"ideal: floor + {delay_ms} ms (every call at once)", calls["ideal"], "s"),
            row(fourth, "wall / ideal", calls["wall"] / calls["ideal"], "x", HTTP_RATIO_TARGET),
            row(fourth, "  one call as the agent timed it, median", calls["call"], "ms"),
            row(
                fourth,
                f"  for reference, no engine cost: {delay_ms} ms x ceil({http_steps} / "
                f"({FANOUT_WORKERS} workers x {settings.BATON_SLOTS} slots))",
                calls["slots_only"],
                "s",
            ),
            row(fifth, "start: longest transaction", start["start"], "s", TRANSACTION_TARGET),
            row(fifth, "  start_run call, items sent to the broker", start["call"], "s"),
            row(fifth, "cancel: longest transaction", start["cancel"], "s", TRANSACTION_TARGET),
            row("every bench run", "messages re-sent", resent, "messages", RESENT_TARGET),
        ]
        return table


# ---------------------------------------------------------------------------------------------
# Workflows


def sequential_document(steps: int) -> dict[str, Any]:
    keys = [f"step-{number:03d}" for number in range(1, steps + 1)]
    return {
        "agents": [bench_agent()],
        "workflow": {
            "key": f"bench-sequential-{steps}",
            "name": f"Bench: {steps} sequential no-op steps",
            "description": "Created by manage.py bench to measure step-to-step handoff.",
            "steps": [
                {"key": key, "agent": AGENT, **({"after": [keys[index - 1]]} if index else {})}
                for index, key in enumerate(keys)
            ],
        },
    }


def fanout_document(items: int) -> dict[str, Any]:
    return {
        "agents": [bench_agent()],
        "workflow": {
            "key": f"bench-fanout-{items}",
            "name": f"Bench: for_each over {items} no-op items",
            "description": "Created by manage.py bench to measure fan-out throughput.",
            "steps": [{"key": "items", "agent": AGENT, "for_each": f"range({items})"}],
        },
    }


def mapstart_document(items: int) -> dict[str, Any]:
    return {
        "agents": [bench_agent()],
        "workflow": {
            "key": f"bench-mapstart-{items}",
            "name": f"Bench: start and cancel a for_each over {items} no-op items",
            "description": "Created by manage.py bench to measure how long a big map start holds the database.",
            # Each item renders its own input, as most maps do.
            "steps": [{"key": "items", "agent": AGENT, "for_each": f"range({items})", "input": {"n": "{{ item }}"}}],
        },
    }


def http_document(steps: int, url: str, *, agent: str = HTTP_AGENT) -> dict[str, Any]:
    """A map of `steps` calls to `url` through the agent named `agent` (one per server: the
    port is new each time, so each document updates its agent)."""
    definition = {
        "name": agent,
        "kind": "http",
        "description": "POSTs to the local server manage.py bench starts; used by manage.py bench.",
        "config": {"url": url, "method": "POST", "timeout": "10s"},
        "retry": {"attempts": 1},
    }
    return {
        "agents": [definition],
        "workflow": {
            "key": f"{agent}-{steps}",
            "name": f"Bench: for_each over {steps} calls to a local HTTP agent",
            "description": "Created by manage.py bench to measure how busy the workers keep a slow agent.",
            "steps": [
                {
                    "key": "calls",
                    "agent": agent,
                    "for_each": f"range({steps})",
                    "input": {"n": "{{ item }}"},
                }
            ],
        },
    }


# ---------------------------------------------------------------------------------------------
# Small helpers


@dataclass
class Transaction:
    statements: list[str]
    seconds: float  # from its first statement to the end of its commit


class StatementLog:
    """The SQL statements this thread's connection sends, split into transactions at each
    commit; a statement sent outside a transaction (autocommit) counts with the next one.

    BEGIN and COMMIT are not counted (PostgreSQL's BEGIN is not a statement Django sends);
    savepoints are, as they cost a round trip like any other statement.
    """

    def __init__(self) -> None:
        self.done: list[Transaction] = []
        self.current: list[str] = []
        self.began: float | None = None

    def __enter__(self) -> StatementLog:
        wrapper = connections[DEFAULT_DB_ALIAS]
        wrapper.ensure_connection()
        wrapper.execute_wrappers.append(self.execute)
        real_commit = wrapper.commit

        def commit() -> None:
            real_commit()
            if self.began is not None:
                self.done.append(Transaction(self.current, time.perf_counter() - self.began))
            self.current, self.began = [], None

        wrapper.commit = commit  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        wrapper = connections[DEFAULT_DB_ALIAS]
        wrapper.execute_wrappers.remove(self.execute)
        del wrapper.commit

    def execute(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if self.began is None:
            self.began = time.perf_counter()
        if not sql.lstrip().upper().startswith("BEGIN"):
            self.current.append(sql)
        return execute(sql, params, many, context)

    def clear(self) -> None:
        self.done, self.current, self.began = [], [], None

    def transactions(self) -> list[Transaction]:
        return self.done

    def count(self) -> int:
        return sum(len(t.statements) for t in self.done) + len(self.current)


@contextmanager
def transaction_clock() -> Iterator[list[float]]:
    """Seconds each outermost transaction of this thread's connection stayed open, from its
    BEGIN to the end of its commit (or rollback); on-commit hooks run after and do not count.

    On SQLite a writing transaction holds the database's only write lock until it ends, so
    the longest of these is the longest any other writer may have had to wait.
    """
    wrapper = connections[DEFAULT_DB_ALIAS]
    durations: list[float] = []
    opened: list[float] = []
    real_set_autocommit, real_commit, real_rollback = wrapper.set_autocommit, wrapper.commit, wrapper.rollback

    def set_autocommit(autocommit: bool, force_begin_transaction_with_broken_autocommit: bool = False) -> None:
        real_set_autocommit(autocommit, force_begin_transaction_with_broken_autocommit)
        if not autocommit:
            # After BEGIN: on SQLite (IMMEDIATE) that is when the write lock was granted.
            opened.append(time.perf_counter())

    def ended(real: Any) -> Any:
        def end() -> None:
            real()
            if opened:
                durations.append(time.perf_counter() - opened.pop())

        return end

    wrapper.set_autocommit = set_autocommit  # type: ignore[method-assign]
    wrapper.commit = ended(real_commit)  # type: ignore[method-assign]
    wrapper.rollback = ended(real_rollback)  # type: ignore[method-assign]
    try:
        yield durations
    finally:
        del wrapper.set_autocommit, wrapper.commit, wrapper.rollback


def map_wall(run: Run) -> float:
    """A map run's wall time (s): its map step's start (the first claim) to its finish."""
    head = StepRun.objects.get(run=run, map_index__isnull=True)
    return seconds(head.started_at, head.finished_at)


def seconds(start: datetime | None, end: datetime | None) -> float:
    if start is None or end is None:
        raise CommandError("a finished bench run has a step without its timestamps")
    return (end - start).total_seconds()


def load_average() -> str:
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return "unknown"
    return f"{one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


def render(
    database: str, broker: str, rows: list[Row], notes: list[str], *, handoffs: bool = True, live: bool = True
) -> str:
    header = ("benchmark", "measure", "value", "target")
    cells = [
        (
            r["benchmark"],
            r["measure"],
            shown(r["value"], r["unit"]),
            f"{r['target']}  {r['status']}".rstrip(),
        )
        for r in rows
    ]
    widths = [max(len(line[column]) for line in [header, *cells]) for column in range(4)]

    def line(values: tuple[str, ...]) -> str:
        # Values are right-aligned so the decimal points line up.
        parts = [
            v.rjust(w) if column == 2 else v.ljust(w)
            for column, (v, w) in enumerate(zip(values, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    out = [f"database: {database}, broker: {broker}", "", line(header), line(tuple("-" * w for w in widths))]
    out += [line(c) for c in cells]
    out.append("")
    if handoffs:
        out += [
            FOOTNOTE,
            "Handoff: the next step's claim by a worker minus the previous step's finished_at; "
            "each handoff row is the median over the runs of that run's figure.",
        ]
    if live:
        out.append(
            "Live: commit = the change's RunEvent created_at (written in its transaction, just before "
            "the commit); commit -> DOM is read in the page (MutationObserver, performance.timeOrigin "
            "+ now()); a hint's latency is per client and per change, to the first hint after it."
        )
    out += notes
    stamp = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    # Other processes on the machine slow every figure; the load average says how busy it was.
    load = os.getloadavg()[0]
    out.append(f"Measured {stamp} on {os.cpu_count()} CPUs; 1-minute load average at the end {load:.1f}.")
    return "\n".join(out)
