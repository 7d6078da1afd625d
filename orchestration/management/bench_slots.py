"""The slots rows of `manage.py bench` (alone with `--only slots`): agents that wait on the network,
many calls at once per worker process (orchestration/slots.py, docs/concurrency.md).

1. A for_each of 1,000 `http` calls to a local server answering each in 1 s, on the default
   set-up (2 worker processes): the run's wall time, start to finish.
2. 300 `llm` steps (a for_each over an `llm` agent) against a local OpenAI-compatible server
   answering each in 2 s: wall time, and how many attempts recorded their tokens and cost.
3. Worker memory: the resident set (VmRSS) of each worker process while its 100 slots are full
   (sampled during row 1), and again after a further 10,000 calls to a server that answers at
   once (run before row 2); the growth between the two.

The servers run in the bench's process (bench_agents.SlowJsonServer, one thread per connection,
HTTP/1.1 keep-alive), so the workers' connection pools are exercised as in production.
"""

from __future__ import annotations

import math
import socket
import threading
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import CommandError

from orchestration import transitions
from orchestration.bench_agents import SlowJsonServer, completion
from orchestration.management.benchkit import Row, Target, Workers, install, row, wait_for
from orchestration.models import Attempt, Run
from orchestration.status import RUN_FINAL, AttemptStatus, RunStatus

WORKERS = 2
HTTP_ITEMS = 1_000
HTTP_DELAY = 1.0
LLM_STEPS = 300
LLM_DELAY = 2.0
MANY_CALLS = 10_000
HTTP_TARGET = Target(12.0, at_most=True)
LLM_TARGET = Target(8.0, at_most=True)
GROWTH_TARGET = Target(20.0, at_most=True)


class SlotsBench:
    def __init__(self, *, database: str, scratch: Path, say: Any, quick: bool = False, keep: bool = False):
        self.database = database
        self.scratch = scratch
        self.say = say
        self.quick = quick
        self.keep = keep
        self.run_ids: list[int] = []
        self.notes: list[str] = []

    def run(self) -> list[Row]:
        http_items = 200 if self.quick else HTTP_ITEMS
        llm_steps = 60 if self.quick else LLM_STEPS
        many = 1_000 if self.quick else MANY_CALLS
        try:
            with Workers(WORKERS, self.scratch, say=self.say) as workers, workers.explain_failures():
                with SlowJsonServer(HTTP_DELAY) as server:
                    # A warm-up run first, as the other rows have: the workers' first tasks
                    # start their slots and import what the calls need.
                    warm = install(http_document("bench-slots-warm-up", server.url, 2 * WORKERS * 10))
                    self.wall(warm, timeout=60)
                    key = install(http_document(f"bench-slots-http-{http_items}", server.url, http_items))
                    self.say(f"{key}: {http_items:,} calls answering in {HTTP_DELAY:g} s on {WORKERS} workers")
                    sampler = RssSampler(server, full=min(WORKERS * settings.BATON_SLOTS, http_items))
                    with sampler:
                        http_wall = self.wall(key, timeout=120)
                    self.notes.append(
                        f"Slots, http row: at most {server.max_in_flight} calls in flight at once "
                        f"(of {sampler.full} the slots can hold), over {server.connections} connections."
                    )
                with SlowJsonServer(0.0) as fast:
                    # An agent of its own: a worker keeps what it read of an agent for
                    # specs.AGENT_CACHE_SECONDS, so the first calls after a re-install of the
                    # rows' agent would still go to the closed server above (refused). Only the
                    # workers' memory afterwards is measured here, so a refused connection is
                    # retried rather than a failed bench (the timed rows keep one attempt).
                    key = install(
                        http_document(
                            f"bench-slots-many-{many}",
                            fast.url,
                            many,
                            agent="bench-slots-http-fast",
                            retry={"attempts": 4, "backoff": 0.2, "jitter": True},
                        )
                    )
                    self.say(f"{key}: {many:,} calls answering at once, for the workers' memory afterwards")
                    self.wall(key, timeout=600)
                    after = rss(sampler.pids)
                with SlowJsonServer(LLM_DELAY, answer=completion) as model:
                    key = install(llm_document(f"bench-slots-llm-{llm_steps}", model.url.rsplit("/", 1)[0], llm_steps))
                    self.say(f"{key}: {llm_steps} llm steps answering in {LLM_DELAY:g} s on {WORKERS} workers")
                    llm_wall = self.wall(key, timeout=120)
                    recorded = Attempt.objects.filter(
                        step_run__run_id=self.run_ids[-1],
                        step_run__map_index__isnull=False,
                        status=AttemptStatus.SUCCEEDED,
                        total_tokens__gt=0,
                        cost__gt=0,
                    ).count()
        finally:
            if self.keep:
                self.say(f"kept runs {', '.join(map(str, self.run_ids))}")
            else:
                Run.objects.filter(pk__in=self.run_ids).delete()
        ideal_http = HTTP_DELAY * -(-http_items // (WORKERS * settings.BATON_SLOTS))
        ideal_llm = LLM_DELAY * -(-llm_steps // (WORKERS * settings.BATON_SLOTS))
        first = f"{http_items:,}-item for_each, http agent answering in {HTTP_DELAY:g} s, {WORKERS} workers"
        second = f"{llm_steps} llm steps, local OpenAI-compatible server answering in {LLM_DELAY:g} s, {WORKERS} workers"
        third = f"worker memory (VmRSS, largest of {WORKERS} workers)"
        gone = sorted(set(sampler.peak) - set(after))
        if gone:
            self.notes.append(f"WARNING: worker process(es) {gone} exited between the two memory samples.")
        during, later = max(sampler.peak.values(), default=0), max(after.values(), default=0)
        growth = max(((after[pid] - sampler.peak[pid]) / sampler.peak[pid] * 100 for pid in after if sampler.peak.get(pid)), default=math.nan)
        return [
            row(first, "wall time, start -> finish", http_wall, "s", HTTP_TARGET if not self.quick else None),
            row(first, f"  ideal: {WORKERS} x {settings.BATON_SLOTS} slots", ideal_http, "s"),
            row(second, "wall time, start -> finish", llm_wall, "s", LLM_TARGET if not self.quick else None),
            row(second, f"  ideal: {WORKERS} x {settings.BATON_SLOTS} slots", ideal_llm, "s"),
            row(second, "attempts with tokens and cost recorded", recorded, "attempts", Target(llm_steps, at_most=False)),
            row(third, f"with {settings.BATON_SLOTS} calls in flight", during / 1024, "MiB"),
            row(third, f"after {many:,} more calls", later / 1024, "MiB"),
            row(third, "growth, largest of the workers", growth, "%", GROWTH_TARGET),
        ]

    def wall(self, key: str, *, timeout: float) -> float:
        run = transitions.start_run(workflow=key, trigger="bench")
        self.run_ids.append(run.pk)
        wait_for(
            lambda: Run.objects.filter(pk=run.pk, status__in=RUN_FINAL).exists(),
            timeout=timeout,
            interval=0.05,
            what=f"run {run.pk} of {key}",
        )
        run.refresh_from_db()
        if run.status != RunStatus.SUCCEEDED:
            raise CommandError(f"run {run.pk} of {key} {run.status}: {run.error}")
        assert run.finished_at is not None
        return float((run.finished_at - run.created_at).total_seconds())


class RssSampler:
    """Samples the worker processes' VmRSS, keeping each one's peak, while the server holds
    calls: the peak is when the slots are fullest. Every tick with a call in flight counts, not
    only those with `full` calls at once: on a loaded machine the calls may never all be in
    flight together, and a row without a sample would say nothing (the note says how many were)."""

    def __init__(self, server: SlowJsonServer, *, full: int):
        self.server = server
        self.full = full
        self.peak: dict[int, int] = {}
        self.pids: list[int] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> RssSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()
        if not self.pids:
            self.pids = worker_pids()

    def _sample(self) -> None:
        while not self.done.wait(0.05):
            if self.server.in_flight > 0:
                if len(self.pids) < WORKERS:
                    self.pids = worker_pids()
                for pid, kib in rss(self.pids).items():
                    self.peak[pid] = max(self.peak.get(pid, 0), kib)


def worker_pids() -> list[int]:
    """The worker processes holding attempts now (their label is host:pid)."""
    host = socket.gethostname()
    labels = (
        Attempt.objects.filter(worker__startswith=f"{host}:", status=AttemptStatus.RUNNING)
        .values_list("worker", flat=True)
        .distinct()
    )
    return sorted({int(label.rsplit(":", 1)[1]) for label in labels[:100]})


def rss(pids: list[int]) -> dict[int, int]:
    """VmRSS in KiB of each process still alive."""
    found = {}
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    found[pid] = int(line.split()[1])
        except OSError:
            continue
    return found


def http_document(
    key: str, url: str, items: int, *, agent: str = "bench-slots-http", retry: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "agents": [
            {
                "name": agent,
                "kind": "http",
                "description": "POSTs to the local server manage.py bench starts; used by manage.py bench.",
                "config": {"url": url, "method": "POST", "timeout": "30s"},
                "retry": retry or {"attempts": 1},
            }
        ],
        "workflow": {
            "key": key,
            "name": f"Bench: for_each over {items:,} http calls at once",
            "description": "Created by manage.py bench to measure the workers' slots.",
            "steps": [{"key": "calls", "agent": agent, "for_each": f"range({items})", "input": {"n": "{{ item }}"}}],
        },
    }


def llm_document(key: str, base_url: str, steps: int) -> dict[str, Any]:
    return {
        "agents": [
            {
                "name": "bench-slots-llm",
                "kind": "llm",
                "description": "A local OpenAI-compatible server manage.py bench starts; used by manage.py bench.",
                "config": {
                    "base_url": f"{base_url}/v1",
                    "model": "bench-model",
                    "api_key_env": "",
                    "prompt": "Summarise item {{ input.n }}",
                    "prices": {"prompt": 0.5, "completion": 1.5},
                    "timeout": "30s",
                },
                "retry": {"attempts": 1},
            }
        ],
        "workflow": {
            "key": key,
            "name": f"Bench: {steps} llm steps at once",
            "description": "Created by manage.py bench to measure the workers' slots.",
            "steps": [{"key": "drafts", "agent": "bench-slots-llm", "for_each": f"range({steps})", "input": {"n": "{{ item }}"}}],
        },
    }
