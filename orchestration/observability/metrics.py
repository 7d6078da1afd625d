"""Baton's Prometheus metrics, read from the database when Prometheus scrapes.

Why a custom Collector that queries the database, rather than counters incremented in process:
the work is done by separate processes (every django-q2 worker, each `baton_worker` host, each
web process), and a scrape reaches only one web process. Counters kept in memory would each see
a slice, and prometheus-client's multiprocess mode would need a shared directory on every host
and still lose counts when a process is killed. The database already holds every run, step and
attempt with its outcome, written in the same transaction as the change itself, so whichever
process answers the scrape reads the same, complete truth. Counters are therefore totals over
the rows (they drop only when rows are deleted, which Prometheus treats as a counter reset).

Label cardinality is bounded: `workflow` and `agent` are names an administrator defines (at
most MAX_LABEL_VALUES each, the rest folded into "other"), `status`, `state` and `kind` come from
fixed vocabularies; nothing user-supplied (inputs, step keys, ids) is ever a label.

Cost: one scrape is a handful of aggregate queries. The attempts' histogram reads every attempt
row (an index-only grouping would need the durations stored); see the README's metrics section
for its time at a million attempts.

Other apps add their families (approvals: pending and overdue items) with register_source, so
that orchestration never imports them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count, DurationField, ExpressionWrapper, F, Min, Q, Sum
from django.utils import timezone
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from orchestration.alerts import reads as alerts_reads
from orchestration.models import AgentHealth, Attempt, CircuitState, Run, StepRun, TickerPass, Workflow
from orchestration.status import STEP_FINAL, StepStatus

MAX_LABEL_VALUES = 200
OTHER = "other"
# Step attempts' durations, in seconds: agent calls take from milliseconds to many minutes.
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
UNFINISHED_STEPS = [s for s in StepStatus.values if s not in STEP_FINAL]

Source = Callable[[datetime], Iterable[Metric]]
_sources: list[Source] = []


def register_source(source: Source) -> None:
    if source not in _sources:
        _sources.append(source)


def alerts_firing() -> int:
    """How many alerts are firing now: every alert, as a scrape is not a person."""
    return alerts_reads.firing_count(None)


class _Names:
    """Label values for names: the first MAX_LABEL_VALUES seen, then "other"."""

    def __init__(self, known: Iterable[str]):
        self.kept = set(sorted(known)[:MAX_LABEL_VALUES])

    def __call__(self, name: str) -> str:
        return name if name in self.kept else OTHER


def _runs(now: datetime) -> Iterator[Metric]:
    workflows = dict(Workflow.objects.values_list("pk", "key"))
    label = _Names(workflows.values())
    runs = GaugeMetricFamily("baton_runs", "Runs in the database, by workflow and current status.", labels=["workflow", "status"])
    totals: dict[tuple[str, str], int] = {}
    # The (workflow, status, created_at, id) index answers this without reading the rows.
    for workflow_id, status, n in Run.objects.order_by().values_list("workflow_id", "status").annotate(n=Count("id")):
        key = (label(workflows.get(workflow_id, OTHER)), status)
        totals[key] = totals.get(key, 0) + n
    for (workflow, status), n in sorted(totals.items()):
        runs.add_metric([workflow, status], n)
    yield runs

    steps = GaugeMetricFamily(
        "baton_steps",
        "Step rows (steps, loop rounds and for_each items) not finished yet, by workflow and status.",
        labels=["workflow", "status"],
    )
    totals = {}
    # Finished step rows are most of the table and never change again; the unfinished ones are
    # few, and each status leads one of the ticker's indexes.
    for workflow_id, status, n in (
        StepRun.objects.filter(status__in=UNFINISHED_STEPS)
        .order_by()
        .values_list("run__workflow_id", "status")
        .annotate(n=Count("id"))
    ):
        key = (label(workflows.get(workflow_id, OTHER)), status)
        totals[key] = totals.get(key, 0) + n
    for (workflow, status), n in sorted(totals.items()):
        steps.add_metric([workflow, status], n)
    yield steps

    queue = StepRun.objects.filter(status=StepStatus.QUEUED).aggregate(n=Count("id"), oldest=Min("queued_at"))
    yield GaugeMetricFamily(
        "baton_queue_depth", "Steps queued: their message sent, no worker has claimed them yet.", value=queue["n"]
    )
    oldest = queue["oldest"]
    yield GaugeMetricFamily(
        "baton_queue_oldest_age_seconds",
        "How long the oldest queued step has waited for a worker (0 when none is queued).",
        value=max((now - oldest).total_seconds(), 0.0) if oldest else 0.0,
    )


def _attempts(now: datetime) -> Iterator[Metric]:
    took = ExpressionWrapper(F("finished_at") - F("started_at"), output_field=DurationField())
    buckets = {f"le_{i}": Count("id", filter=Q(took__lte=timedelta(seconds=b))) for i, b in enumerate(BUCKETS)}
    rows: list[dict[str, Any]] = [
        dict(row)
        for row in Attempt.objects.filter(finished_at__isnull=False)
        .order_by()
        .annotate(took=took)
        .values("agent_name", "status")
        .annotate(n=Count("id"), seconds=Sum("took"), tokens=Sum("total_tokens"), cost=Sum("cost"), **buckets)
    ]
    label = _Names({row["agent_name"] for row in rows})
    attempts = CounterMetricFamily(
        "baton_step_attempts", "Step attempts finished, by agent and outcome.", labels=["agent", "status"]
    )
    histogram = HistogramMetricFamily(
        "baton_step_duration_seconds", "How long finished step attempts took, by agent.", labels=["agent"]
    )
    tokens = CounterMetricFamily("baton_tokens", "Tokens agents reported using, by agent.", labels=["agent"])
    cost = CounterMetricFamily("baton_cost", "What agents' calls cost (the agents' pricing currency), by agent.", labels=["agent"])
    by_status: dict[tuple[str, str], int] = {}
    by_agent: dict[str, dict[str, Any]] = {}
    for row in rows:
        agent = label(row["agent_name"] or "none")
        key = (agent, row["status"])
        by_status[key] = by_status.get(key, 0) + row["n"]
        into = by_agent.setdefault(agent, {"n": 0, "seconds": 0.0, "tokens": 0, "cost": 0.0, "le": [0] * len(BUCKETS)})
        into["n"] += row["n"]
        seconds = row["seconds"]
        into["seconds"] += seconds.total_seconds() if isinstance(seconds, timedelta) else float(seconds or 0)
        into["tokens"] += row["tokens"] or 0
        into["cost"] += row["cost"] or 0.0
        for i in range(len(BUCKETS)):
            into["le"][i] += row[f"le_{i}"]
    for (agent, status), n in sorted(by_status.items()):
        attempts.add_metric([agent, status], n)
    for agent, figures in sorted(by_agent.items()):
        histogram.add_metric(
            [agent],
            [(_le(b), count) for b, count in zip(BUCKETS, figures["le"], strict=True)] + [("+Inf", figures["n"])],
            sum_value=figures["seconds"],
        )
        tokens.add_metric([agent], figures["tokens"])
        cost.add_metric([agent], figures["cost"])
    yield attempts
    yield histogram
    yield tokens
    yield cost


def _le(bucket: float) -> str:
    return f"{bucket:g}" if bucket != int(bucket) else f"{bucket:.1f}"


def _health(now: datetime) -> Iterator[Metric]:
    states = dict(
        AgentHealth.objects.exclude(circuit_state=CircuitState.CLOSED)
        .order_by()
        .values_list("circuit_state")
        .annotate(n=Count("id"))
    )
    yield GaugeMetricFamily("baton_circuits_open", "Agents whose circuit breaker is open.", value=states.get(CircuitState.OPEN, 0))
    yield GaugeMetricFamily(
        "baton_circuits_half_open",
        "Agents whose circuit breaker is half-open (one trial call allowed).",
        value=states.get(CircuitState.HALF_OPEN, 0),
    )
    yield GaugeMetricFamily("baton_alerts_firing", "Alerts firing now.", value=alerts_firing())
    last = TickerPass.objects.order_by("-passed_at").values_list("passed_at", flat=True).first()
    if last is not None:
        yield GaugeMetricFamily(
            "baton_ticker_last_pass_age_seconds",
            "Seconds since a worker's ticker last finished a whole pass (any host).",
            value=max((now - last).total_seconds(), 0.0),
        )


class BatonCollector(Collector):
    """Every family, computed from the database on each collect() (see the module docstring)."""

    def collect(self) -> Iterable[Metric]:
        now = timezone.now()
        yield from _runs(now)
        yield from _attempts(now)
        yield from _health(now)
        for source in _sources:
            yield from source(now)


def render() -> bytes:
    """The exposition text of Baton's metrics (and nothing else: no process or platform
    metrics of whichever web process answered, which would say nothing about Baton)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BatonCollector())
    return generate_latest(registry)

