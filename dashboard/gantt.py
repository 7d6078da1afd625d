"""The run page's Gantt timeline: a row per step, each a line of segments in time.

A step's time is spent in a few ways, and the timeline draws each as what it is: queued for a
worker, waiting for a slot of its agent (throttled), running an attempt (one segment per
attempt, a failed one marked), backing off before a retry, waiting on a person, an event, a
timer or a sub-workflow run; then it ends (succeeded, failed, cancelled, skipped).

The segments come from the append-only event log, whose rows say which status a step moved to
and when (`to_status`), and from the attempt rows, which say precisely when each attempt ran,
on which worker and how it ended. A for_each step is one row: its span, with its items counted
(a thousand item rows would bury the rest). Times are seconds from the run's start; what is
still going runs to now (or to the run's end, if the run ended without it).

This module only computes segments and their geometry; `templates/dashboard/_gantt.html` draws
them, so every name and error passes through Django's autoescaping. Two queries, whatever the
number of steps, attempts or items: the steps' status events and the items' counts (the
caller hands in the head rows and their attempts, which the run page has already read, and may
hand in the items' counts too: the run page reads its items' attempts from them).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from django.db.models import Count, Sum
from django.utils import timezone

from orchestration.durations import human_duration
from orchestration.models import Attempt, Run, RunEvent, StepKind, StepRun
from orchestration.status import STEP_FINAL, AttemptStatus, StepStatus

# Rows drawn at most; the rest are counted ("and 12 more steps"). A step's rounds (a loop) are
# rows of their own, so a long loop counts against this too.
MAX_ROWS = 50

# Geometry, in pixels. The chart keeps its natural size and scrolls sideways inside its box on
# a narrow screen: shrunk, its labels and markers would be unreadable.
TRACK_WIDTH = 1000
ROW_HEIGHT = 28
BAR_HEIGHT = 16
THIN_HEIGHT = 6
AXIS_HEIGHT = 22
# Room after the latest moment for the end marker (✓ ✕ ⊘ –).
END_ROOM = 18
# The shortest segment drawn, so a 40 ms attempt in a ten-minute run is still there to hover.
MIN_SEGMENT = 3.0
ERROR_CHARS = 160

# Tick spacings, in seconds, from which the axis takes the first giving at most MAX_TICKS ticks.
TICK_STEPS = (
    0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30,
    60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200,
    86400, 172800, 604800, 2592000, 31536000,
)  # fmt: skip
MAX_TICKS = 8

# What a step's status means on the timeline. RUNNING is drawn from the attempt rows when the
# step has any (they say which worker and how each ended); a for_each head has none itself.
KIND_OF_STATUS = {
    StepStatus.PENDING: "queued",
    StepStatus.QUEUED: "queued",
    StepStatus.THROTTLED: "throttled",
    StepStatus.RETRYING: "backoff",
    StepStatus.WAITING: "waiting",
    StepStatus.RUNNING: "span",
}

KIND_WORDS = {
    "queued": "queued",
    "throttled": "waiting for a slot",
    "attempt": "attempt",
    "backoff": "retry backoff",
    "waiting": "waiting",
    "span": "running",
}

# The end of a step by shape as well as colour, as on the graph (dashboard/graph.py).
END_GLYPHS: dict[str, str] = {
    StepStatus.SUCCEEDED: "✓",
    StepStatus.FAILED: "✕",
    StepStatus.CANCELLED: "⊘",
    StepStatus.SKIPPED: "–",
}


@dataclass
class Segment:
    """A stretch of one row: `start` and `end` are seconds from the run's start."""

    kind: str
    start: float
    end: float
    label: str
    # An attempt's outcome ("succeeded", "failed", "running"); "" for the other kinds.
    outcome: str = ""
    # Still going: it ends now, and will be longer at the next refresh.
    open: bool = False
    x: float = 0.0
    width: float = 0.0

    @property
    def seconds(self) -> float:
        return self.end - self.start

    @property
    def words(self) -> str:
        return KIND_WORDS[self.kind]

    @property
    def right(self) -> float:
        return self.x + self.width

    @property
    def thin(self) -> bool:
        # Time spent not working and not held by anyone: drawn as a thin line under the bars.
        return self.kind in ("queued", "backoff")

    @property
    def mark_x(self) -> float:
        # A failed attempt's ✕: inside the bar's end when it is wide enough, else over its middle
        # (haloed in the stylesheet), where it cannot land on the next segment or the end marker.
        return round(self.right - 7 if self.width >= 16 else self.x + self.width / 2, 1)


@dataclass
class Row:
    step: StepRun | None
    key: str
    iteration: int
    kind: str
    status: str
    segments: list[Segment] = field(default_factory=list)
    # Where the step ended (seconds from the run's start), when it has.
    end_at: float | None = None
    # A for_each step's items in words: "300 items: 290 succeeded, 10 failed; 312 attempts".
    items: str = ""
    end_x: float = 0.0

    @property
    def label(self) -> str:
        return self.key if self.iteration <= 1 else f"{self.key} · round {self.iteration}"

    @property
    def end_glyph(self) -> str:
        return END_GLYPHS.get(self.status, "") if self.end_at is not None else ""

    @property
    def anchor(self) -> str:
        # The steps table's row of the step's latest round (templates/dashboard/_run_live.html).
        return f"step-{self.key}"

    @property
    def summary(self) -> str:
        """The row in words, for its tooltip and the screen reader."""
        parts = [f"{self.label}: {self.status_words}"]
        if self.items:
            parts.append(self.items)
        attempts = [s for s in self.segments if s.kind == "attempt"]
        if attempts:
            failed = sum(1 for s in attempts if s.outcome == "failed")
            parts.append(
                f"{len(attempts)} attempt{'s' if len(attempts) != 1 else ''}"
                + (f", {failed} failed" if failed else "")
            )
        return "; ".join(parts)

    @property
    def status_words(self) -> str:
        if not self.status:
            return "not started"
        return str(StepStatus(self.status).label).lower() if self.status in StepStatus.values else self.status


@dataclass
class Tick:
    x: float
    label: str


@dataclass
class Gantt:
    rows: list[Row]
    # Steps (and rounds) not drawn: more than MAX_ROWS.
    more: int
    span: float
    ticks: list[Tick]
    # Where "now" is, for a run still going.
    now_x: float | None
    track_width: int = TRACK_WIDTH
    row_height: int = ROW_HEIGHT
    axis_height: int = AXIS_HEIGHT

    @property
    def height(self) -> int:
        return AXIS_HEIGHT + ROW_HEIGHT * len(self.rows)

    @property
    def bar_y(self) -> float:
        return (ROW_HEIGHT - BAR_HEIGHT) / 2

    @property
    def thin_y(self) -> float:
        return (ROW_HEIGHT - THIN_HEIGHT) / 2

    @property
    def kinds(self) -> set[str]:
        return {segment.kind for row in self.rows for segment in row.segments}


# What the timeline reads of an attempt (drawn_attempts): not its log lines, traceback or usage.
ATTEMPT_COLUMNS = ("step_run_id", "number", "status", "worker", "agent_name", "error", "error_class", "started_at", "finished_at")


def drawn_attempts(heads: Sequence[StepRun]) -> dict[int, list[Attempt]]:
    """The attempts of the rows `build` draws of `heads` (the first MAX_ROWS), by step row id,
    oldest first: one query, with only what the timeline shows."""
    grouped: dict[int, list[Attempt]] = {}
    drawn = [head.pk for head in heads[:MAX_ROWS]]
    for attempt in Attempt.objects.filter(step_run__in=drawn).only(*ATTEMPT_COLUMNS).order_by("step_run_id", "number"):
        grouped.setdefault(attempt.step_run_id, []).append(attempt)
    return grouped


def for_run(run: Run, *, now: datetime | None = None) -> Gantt:
    """The run's timeline, reading its head rows, their attempts and its version's steps too
    (for a caller without them; the run page hands its own to build)."""
    heads = list(StepRun.objects.filter(run=run, map_index__isnull=True).order_by("iteration", "id"))
    attempts: dict[int, list[Attempt]] = {}
    for attempt in Attempt.objects.filter(step_run__run=run, step_run__map_index__isnull=True).order_by(
        "step_run_id", "number"
    ):
        attempts.setdefault(attempt.step_run_id, []).append(attempt)
    order = {s["key"]: i for i, s in enumerate(run.version.spec.get("steps", []))}
    rows = sorted(
        heads,
        key=lambda s: (s.kind == StepKind.COMPENSATION, order.get(s.step_key, len(order)), s.iteration, s.pk),
    )
    return build(run, rows, attempts, spec_keys=list(order), now=now)


def build(
    run: Run,
    heads: Sequence[StepRun],
    attempts: Mapping[int, Sequence[Attempt]],
    *,
    spec_keys: Sequence[str] = (),
    items: Mapping[int, ItemCounts] | None = None,
    waiting: Mapping[int, str] | None = None,
    now: datetime | None = None,
) -> Gantt:
    """The timeline of `run` from its head rows in the order to draw them, their attempts (by
    step row id, oldest first), the spec's step keys (a step not started yet is an empty row)
    and its for_each items' counts (item_counts; read here when not given). `waiting` says in
    words what a step waits for now ("waiting: approval by legal, due in 3 hours", the run
    page's waiting words), for its open wait's tooltip. One query, the drawn steps' status
    events, and one more without `items`."""
    now = now or timezone.now()
    started = {head.step_key for head in heads}
    pending = [key for key in spec_keys if key not in started]
    total = len(heads) + len(pending)
    drawn = list(heads[:MAX_ROWS])
    # The run's start; rows written without the engine (generated history) may start earlier.
    t0 = min([run.created_at] + [head.started_at for head in drawn if head.started_at is not None])
    # What is still going is drawn to now; in a run that ended, to its end.
    open_end = run.finished_at or now

    changes: dict[int, list[tuple[datetime, str, str]]] = {}
    events = (
        RunEvent.objects.filter(step_run_id__in=[head.pk for head in drawn])
        .exclude(to_status="")
        .order_by("id")
        .values_list("step_run_id", "created_at", "to_status", "message")
    )
    for step_id, at, to_status, message in events:
        changes.setdefault(step_id, []).append((at, to_status, message))
    if items is None:
        items = item_counts(run)

    def seconds(moment: datetime) -> float:
        return max(0.0, (moment - t0).total_seconds())

    rows: list[Row] = []
    for head in drawn:
        row = Row(step=head, key=head.step_key, iteration=head.iteration, kind=head.kind, status=head.status)
        row.items = _items_words(head, items.get(head.pk)) if head.items_total is not None else ""
        head_attempts = list(attempts.get(head.pk, ()))
        steps = changes.get(head.pk) or _changes_from_row(head)
        for index, (at, status, message) in enumerate(steps):
            if status in STEP_FINAL:
                row.end_at = seconds(at)
                continue
            # Moving again after an end (an owner's retry of a failed step): it has not ended.
            row.end_at = None
            kind = KIND_OF_STATUS.get(StepStatus(status)) if status in StepStatus.values else None
            if kind is None or (kind == "span" and head_attempts):
                continue
            is_open = index + 1 == len(steps)
            until = open_end if is_open else steps[index + 1][0]
            start, end = seconds(at), seconds(max(at, until))
            if kind == "waiting" and is_open and waiting and waiting.get(head.pk):
                message = waiting[head.pk]
            row.segments.append(
                Segment(
                    kind,
                    start,
                    end,
                    _words(kind, end - start, message, row, still_going=is_open and not run.is_final),
                    open=is_open and not run.is_final,
                )
            )
        for attempt in head_attempts:
            row.segments.append(_attempt_segment(attempt, seconds, open_end, run.is_final))
        # The step's own finish time where it has one: its end event is written a moment later,
        # in the transaction that records the outcome.
        if head.status in STEP_FINAL and head.finished_at is not None:
            row.end_at = seconds(head.finished_at)
        row.segments.sort(key=lambda s: (s.start, s.end))
        rows.append(row)
    for key in pending[: max(0, MAX_ROWS - len(drawn))]:
        rows.append(Row(step=None, key=key, iteration=1, kind="", status=""))

    latest = max(
        [seconds(open_end)]
        + [s.end for row in rows for s in row.segments]
        + [row.end_at or 0.0 for row in rows]
    )
    span = max(latest, 0.001)
    return _laid_out(rows, more=total - len(rows), span=span, now=None if run.is_final else seconds(now))


def _changes_from_row(head: StepRun) -> list[tuple[datetime, str, str]]:
    """A step's moves when its events say none (rows written without the engine, such as the
    generated history): queued when sent, running from its start, then its end."""
    moves = [(head.queued_at, StepStatus.QUEUED.value, "")] if head.queued_at is not None else []
    if head.started_at is not None:
        moves.append((head.started_at, StepStatus.RUNNING.value, ""))
    if head.finished_at is not None and head.status in STEP_FINAL:
        moves.append((head.finished_at, head.status, ""))
    return sorted(moves, key=lambda move: move[0])


def _words(kind: str, seconds: float, message: str, row: Row, *, still_going: bool = False) -> str:
    """A segment's tooltip: what the step was doing, for how long, and why if the log says."""
    took = human_duration(seconds) + (" so far" if still_going else "")
    if kind == "queued":
        return f"queued, waiting for a worker, {took}" + (f": {message}" if message else "")
    if kind == "throttled":
        return f"waiting for a slot, {took}" + (f": {message}" if message else "")
    if kind == "backoff":
        return f"retry backoff, {took}" + (f" ({message})" if message else "")
    if kind == "waiting":
        return f"{message or 'waiting'}, {took}"
    if row.items:
        return f"running, {took}: {row.items}"
    return f"running, {took}"


def _attempt_segment(
    attempt: Attempt, seconds: Callable[[datetime], float], open_end: datetime, run_final: bool
) -> Segment:
    end_at = attempt.finished_at or open_end
    start, end = seconds(attempt.started_at), seconds(max(attempt.started_at, end_at))
    took = human_duration(end - start)
    where = f" on worker {attempt.worker}" if attempt.worker else ""
    agent = f" of agent {attempt.agent_name}" if attempt.agent_name else ""
    label = f"attempt {attempt.number}{agent}{where}, {took}"
    if attempt.status == AttemptStatus.FAILED:
        why = (
            attempt.error.strip().splitlines()[0]
            if attempt.error.strip()
            else attempt.get_error_class_display()
        )
        if len(why) > ERROR_CHARS:
            why = why[: ERROR_CHARS - 1] + "…"
        label += f", failed: {why}"
    elif attempt.status == AttemptStatus.SUCCEEDED:
        label += ", succeeded"
    else:
        label += ", running" if not run_final else ", still running when the run ended"
    return Segment(
        "attempt",
        start,
        end,
        label,
        outcome=str(attempt.status),
        open=attempt.finished_at is None and not run_final,
    )


@dataclass(frozen=True)
class ItemCounts:
    """A for_each head's items: how many are in each status, and their attempts together."""

    by_status: dict[str, int]
    attempts: int


def item_counts(run: Run) -> dict[int, ItemCounts]:
    """Every for_each head's item counts (by head row id), in one grouped query over the run's
    items; the run page reads its items' attempts from it too."""
    counts: dict[int, dict[str, int]] = {}
    tried: dict[int, int] = {}
    for parent_id, status, n, attempts in (
        StepRun.objects.filter(run=run, parent__isnull=False)
        .order_by()
        .values("parent_id", "status")
        .annotate(n=Count("id"), tried=Sum("attempts"))
        .values_list("parent_id", "status", "n", "tried")
    ):
        counts.setdefault(parent_id, {})[status] = n
        tried[parent_id] = tried.get(parent_id, 0) + (attempts or 0)
    return {pk: ItemCounts(by_status=by_status, attempts=tried[pk]) for pk, by_status in counts.items()}


def _items_words(head: StepRun, counts: ItemCounts | None) -> str:
    """A for_each head's items in words: "300 items: 290 succeeded, 10 failed; 312 attempts"."""
    by_status = counts.by_status if counts else {}
    total = head.items_total or sum(by_status.values())
    # The statuses in their vocabulary's order, so the words read the same on every refresh.
    parts = [f"{by_status[s]:,} {StepStatus(s).label.lower()}" for s in StepStatus.values if by_status.get(s)]
    text = f"{total:,} item{'s' if total != 1 else ''}"
    if parts:
        text += ": " + ", ".join(parts)
    if counts and counts.attempts:
        text += f"; {counts.attempts:,} attempt{'s' if counts.attempts != 1 else ''}"
    return text


def _laid_out(rows: list[Row], *, more: int, span: float, now: float | None) -> Gantt:
    """Place every segment on the track: x in pixels from the track's left edge."""
    usable = TRACK_WIDTH - END_ROOM

    def x(t: float) -> float:
        return round(t / span * usable, 1)

    for row in rows:
        for segment in row.segments:
            segment.x = x(segment.start)
            segment.width = max(MIN_SEGMENT, round(x(segment.end) - segment.x, 1))
        if row.end_at is not None:
            # The glyph just after the end, clear of the last bar.
            row.end_x = round(max([x(row.end_at)] + [s.right for s in row.segments]) + 4, 1)
    return Gantt(
        rows=rows, more=max(0, more), span=span, ticks=axis(span), now_x=None if now is None else x(now)
    )


def axis(span: float) -> list[Tick]:
    """The time axis of a chart `span` seconds wide: ticks at a round spacing (1 s, 30 s, 5 min,
    1 h, ...), at most MAX_TICKS of them, labelled as every duration on the pages is."""
    step = next((s for s in TICK_STEPS if span / s <= MAX_TICKS), TICK_STEPS[-1])
    usable = TRACK_WIDTH - END_ROOM
    # A hair under a whole number of steps still gets its last tick (floating point).
    count = int(span / step + 1e-9)
    return [
        Tick(x=round(n * step / span * usable, 1), label=human_duration(n * step)) for n in range(count + 1)
    ]
