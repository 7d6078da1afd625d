"""Laying out a workflow's step graph: columns by longest path, rows that avoid crossings."""

from __future__ import annotations

from typing import Any

from dashboard import graph
from orchestration.models import StepRun


def spec(*steps: dict[str, Any]) -> dict[str, Any]:
    return {"steps": [{"after": [], "kind": "agent", "agent": "a", **s} for s in steps]}


def test_a_step_sits_one_column_after_the_longest_path_to_it() -> None:
    columns = graph.layers(
        spec({"key": "a"}, {"key": "b", "after": ["a"]}, {"key": "c", "after": ["b"]}, {"key": "d", "after": ["a", "c"]})["steps"]
    )
    assert columns == {"a": 0, "b": 1, "c": 2, "d": 3}


def test_parallel_steps_share_a_column_on_separate_rows() -> None:
    picture = graph.build(spec({"key": "a"}, {"key": "b", "after": ["a"]}, {"key": "c", "after": ["a"]}), {})
    nodes = {n.key: n for n in picture.nodes}
    assert nodes["b"].x == nodes["c"].x > nodes["a"].x
    assert nodes["b"].y != nodes["c"].y
    assert len(picture.edges) == 2
    assert picture.width >= nodes["b"].x + nodes["b"].width


def test_unstarted_steps_are_marked_and_started_ones_take_their_status() -> None:
    heads = {"a": StepRun(step_key="a", status="succeeded")}
    nodes = {n.key: n for n in graph.build(spec({"key": "a"}, {"key": "b", "after": ["a"]}), heads).nodes}
    assert nodes["a"].status == "succeeded"
    assert nodes["b"].status == "notstarted"
    assert nodes["b"].status_label == "not started"


def test_each_state_has_a_shape_of_its_own_besides_its_colour() -> None:
    heads = {key: StepRun(step_key=key, status=key) for key in ("succeeded", "failed", "running", "waiting")}
    steps = [{"key": key} for key in (*heads, "later")]
    nodes = {n.key: n for n in graph.build(spec(*steps), heads).nodes}
    glyphs = {key: node.glyph for key, node in nodes.items()}
    assert glyphs == {"succeeded": "✓", "failed": "✕", "running": "▶", "waiting": "‖", "later": "○"}


def test_labels_name_the_kind_of_step() -> None:
    heads = {
        "m": StepRun(step_key="m", status="running", items_total=7),
        "l": StepRun(step_key="l", status="running", iteration=3),
    }
    picture = graph.build(
        spec(
            {"key": "m", "for_each": "{{ input.xs }}", "agent": "summariser"},
            {"key": "w", "kind": "workflow", "workflow": "billing"},
            {"key": "h", "kind": "approval", "approval": {}},
            {"key": "l", "after": ["m"], "loop": {"back_to": "m", "until": "x", "max_iterations": 3}},
        ),
        heads,
    )
    details = {n.key: n.detail for n in picture.nodes}
    assert details == {"m": "summariser · ×7", "w": "↳ billing", "h": "approval", "l": "a · round 3"}
    assert [e.loop for e in picture.edges] == [False, True]


def test_long_keys_are_shortened_to_fit_the_box() -> None:
    node = graph.build(spec({"key": "a-very-long-step-key-that-does-not-fit"}), {}).nodes[0]
    assert node.title.endswith("…") and len(node.title) == graph.TITLE_CHARS
    assert node.key == "a-very-long-step-key-that-does-not-fit"


def test_an_empty_spec_draws_nothing() -> None:
    assert graph.build({"steps": []}, {}).nodes == []
