"""A picture of a workflow version's step DAG, laid out on the server and drawn as inline SVG.

Steps are placed in columns by their longest path from a root (a step with no `after`), so
every arrow points rightwards; a loop is the one arrow that goes back, drawn dashed under the
graph. This module only computes geometry and labels: `dashboard/_graph.html` draws it, so
every label passes through Django's autoescaping.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from orchestration.models import StepRun

NODE_WIDTH = 156
NODE_HEIGHT = 54
COLUMN_GAP = 46
ROW_GAP = 20
PADDING = 14
LOOP_LANE = 26
TITLE_CHARS = 19
# About what fits in a node at 11px; a longer agent name ran past the box.
DETAIL_CHARS = 22

# A node's state by shape as well as colour (and by the word in its tooltip and the steps table):
# a reader who cannot tell green from red still sees a tick from a cross.
GLYPHS = {
    "succeeded": "✓",
    "failed": "✕",
    "cancelled": "⊘",
    "running": "▶",
    "waiting": "‖",
    "retrying": "↻",
    "throttled": "⋯",
    "queued": "⋯",
    "pending": "⋯",
    "skipped": "–",
    "compensating": "↺",
    "compensated": "↺",
    "notstarted": "○",
}

KIND_LABELS = {
    "approval": "approval",
    "manual": "manual task",
    "wait": "wait",
    "route": "route",
    "end": "end",
}


@dataclass(frozen=True)
class Node:
    key: str
    title: str
    detail: str
    status: str
    x: int
    y: int
    width: int = NODE_WIDTH
    height: int = NODE_HEIGHT

    @property
    def title_x(self) -> int:
        return self.x + 14

    @property
    def title_y(self) -> int:
        return self.y + 23

    @property
    def detail_y(self) -> int:
        return self.y + 40

    @property
    def glyph(self) -> str:
        return GLYPHS.get(self.status, "")

    @property
    def glyph_x(self) -> int:
        return self.x + self.width - 12

    @property
    def status_label(self) -> str:
        return "not started" if self.status == "notstarted" else self.status


@dataclass(frozen=True)
class Edge:
    path: str
    loop: bool = False


@dataclass(frozen=True)
class Graph:
    nodes: list[Node]
    edges: list[Edge]
    width: int
    height: int

    @property
    def min_width(self) -> int:
        # A wide graph shrinks to fit its card down to 3/4 size, then scrolls sideways:
        # smaller than that and the labels stop being readable.
        return round(self.width * 0.75)


def layers(steps: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Column of each step: the length of the longest `after` path from a root."""
    after = {s["key"]: [d for d in s.get("after", []) if d != s["key"]] for s in steps}
    column: dict[str, int] = {}

    def depth(key: str, seen: frozenset[str]) -> int:
        if key in column:
            return column[key]
        # Specs are validated acyclic; `seen` only keeps a corrupt spec from recursing forever.
        parents = [d for d in after.get(key, []) if d in after and d not in seen]
        column[key] = 1 + max((depth(d, seen | {key}) for d in parents), default=-1)
        return column[key]

    for key in after:
        depth(key, frozenset())
    return column


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _detail(step: Mapping[str, Any], head: StepRun | None) -> str:
    kind = step.get("kind", "agent")
    parts: list[str] = []
    if kind == "agent":
        if head is not None and head.fallback_from:
            # The agent that answered, not the one the spec names: it failed or was skipped.
            parts.append(f"↪ {head.agent_name}")
        elif head is not None and head.agent_name:
            parts.append(head.agent_name)  # the agent it chose, when it chooses one
        elif step.get("agents"):
            parts.append(" | ".join(step["agents"]))
        else:
            parts.append(str(step.get("agent", "")))
    elif kind == "workflow":
        parts.append(f"↳ {' | '.join(step['workflows']) if step.get('workflows') else step.get('workflow', '')}")
    else:
        parts.append(KIND_LABELS.get(kind, kind))
    if step.get("for_each"):
        total = head.items_total if head is not None else None
        parts.append(f"×{total}" if total is not None else "×N")
    if head is not None and head.iteration > 1:
        parts.append(f"round {head.iteration}")
    elif step.get("loop"):
        parts.append("loop")
    # The arrow of a fallback is wider than a letter.
    limit = DETAIL_CHARS - 1 if head is not None and head.fallback_from else DETAIL_CHARS
    return _clip(" · ".join(p for p in parts if p), limit)


def build(spec: Mapping[str, Any], heads: Mapping[str, StepRun]) -> Graph:
    """Lay out the steps of `spec`, colouring each by its latest head row in `heads`."""
    steps: list[Mapping[str, Any]] = list(spec.get("steps", []))
    if not steps:
        return Graph(nodes=[], edges=[], width=0, height=0)
    column = layers(steps)
    order = {s["key"]: i for i, s in enumerate(steps)}
    columns: list[list[str]] = [[] for _ in range(max(column.values()) + 1)]
    row: dict[str, float] = {}
    for key in sorted(column, key=lambda k: (column[k], order[k])):
        columns[column[key]].append(key)
    by_key = {s["key"]: s for s in steps}

    def weight(key: str) -> tuple[float, int]:
        parents = [row[d] for d in by_key[key].get("after", []) if d in row]
        return (sum(parents) / len(parents) if parents else 0.0, order[key])

    # Barycentre ordering: a step sits near the average row of the steps it comes after,
    # which keeps fan-out/fan-in diagrams free of most crossings.
    for index, keys in enumerate(columns):
        if index:
            keys.sort(key=weight)
        for position, key in enumerate(keys):
            row[key] = position
    tallest = max(len(keys) for keys in columns)
    pitch = NODE_HEIGHT + ROW_GAP
    loops = [s for s in steps if s.get("loop") and s["loop"].get("back_to") in column]
    body_height = tallest * pitch - ROW_GAP
    nodes: dict[str, Node] = {}
    for index, keys in enumerate(columns):
        offset = (tallest - len(keys)) * pitch / 2
        for position, key in enumerate(keys):
            step = steps[order[key]]
            head = heads.get(key)
            nodes[key] = Node(
                key=key,
                title=_clip(key, TITLE_CHARS),
                detail=_detail(step, head),
                status=head.status if head is not None else "notstarted",
                x=PADDING + index * (NODE_WIDTH + COLUMN_GAP),
                y=round(PADDING + offset + position * pitch),
            )
    edges: list[Edge] = []
    bend = COLUMN_GAP // 2
    for step in steps:
        target = nodes[step["key"]]
        for dependency in step.get("after", []):
            source = nodes.get(dependency)
            if source is None or source is target:
                continue
            sx, sy = source.x + source.width, source.y + source.height // 2
            tx, ty = target.x - 3, target.y + target.height // 2
            edges.append(Edge(path=f"M{sx},{sy} C{sx + bend},{sy} {tx - bend},{ty} {tx},{ty}"))
    for lane, step in enumerate(loops, start=1):
        source, target = nodes[step["key"]], nodes[step["loop"]["back_to"]]
        sx, tx = source.x + source.width // 2, target.x + target.width // 2
        sy, ty = source.y + source.height, target.y + target.height + 3
        # Under every node, one lane per loop, so two loops never draw over each other.
        floor = PADDING + body_height + lane * LOOP_LANE - 8
        radius = 10
        if source is target:
            sx, tx = source.x + source.width - 30, source.x + 30
        edges.append(
            Edge(
                path=(
                    f"M{sx},{sy} V{floor - radius} Q{sx},{floor} {sx - radius},{floor} "
                    f"H{tx + radius} Q{tx},{floor} {tx},{floor - radius} V{ty}"
                ),
                loop=True,
            )
        )
    width = PADDING * 2 + len(columns) * NODE_WIDTH + (len(columns) - 1) * COLUMN_GAP
    height = PADDING * 2 + body_height + len(loops) * LOOP_LANE
    return Graph(nodes=list(nodes.values()), edges=edges, width=width, height=height)
