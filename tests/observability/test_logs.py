"""A worker's log lines name the attempt they were written in (run, step, attempt, agent), in
the plain format and, with BATON_LOG_FORMAT=json, as one JSON object per line."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.utils.module_loading import import_string

from orchestration import transitions
from orchestration.logcontext import AttemptFilter, attempt
from orchestration.models import Run
from orchestration.status import RunStatus
from tests.observability.test_metrics import CHATTY
from tests.support import WorkerCluster, drive, load_workflow, wait_for

pytestmark = pytest.mark.django_db


def formatter(name: str) -> logging.Formatter:
    """The console handler's formatter as settings.LOGGING configures it."""
    config = dict(settings.LOGGING["formatters"][name])
    factory = import_string(config.pop("()")) if "()" in config else logging.Formatter
    if "format" in config:
        config["fmt"] = config.pop("format")
    return factory(**config)  # type: ignore[no-any-return]


@pytest.fixture(params=["plain", "json"])
def console(request: pytest.FixtureRequest) -> Iterator[tuple[str, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(AttemptFilter())
    handler.setFormatter(formatter(request.param))
    logger = logging.getLogger("baton")
    logger.addHandler(handler)
    try:
        yield request.param, stream
    finally:
        logger.removeHandler(handler)


def test_a_line_written_during_an_attempt_names_it_and_one_outside_says_nothing(console: tuple[str, io.StringIO]) -> None:
    kind, stream = console
    version = load_workflow(CHATTY)
    assert version is not None
    run = drive(transitions.start_run(workflow=version.workflow, version=version, input={"items": [7]}))
    assert run.status == RunStatus.SUCCEEDED
    logging.getLogger("baton.tests").warning("between attempts")
    lines = [line for line in stream.getvalue().splitlines() if line]
    inside = next(line for line in lines if "writing about item 7" in line)
    outside = next(line for line in lines if "between attempts" in line)
    if kind == "plain":
        assert f"baton.tests.chatty [run {run.pk} step talk[0] attempt 1 agent chatty]: writing about item 7" in inside
        assert "baton.tests: between attempts" in outside
        return
    record = json.loads(inside)
    assert record["run_id"] == run.pk and record["step_key"] == "talk[0]" and record["attempt"] == 1
    assert record["agent"] == "chatty" and record["message"] == "writing about item 7"
    assert record["level"] == "WARNING" and record["logger"] == "baton.tests.chatty" and record["time"]
    assert "attempt_context" not in record
    between = json.loads(outside)
    assert between["run_id"] is None and between["step_key"] is None and between["attempt"] is None and between["agent"] is None
    assert all(isinstance(json.loads(line), dict) for line in lines)


def test_the_context_is_the_innermost_attempt_and_ends_with_it() -> None:
    seen: list[Any] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append((record.run_id, record.step_key, record.attempt, record.agent))  # type: ignore[attr-defined]

    handler = Keep()
    handler.addFilter(AttemptFilter())
    logger = logging.getLogger("baton.tests.context")
    logger.addHandler(handler)
    try:
        with attempt(run_id=1, step_key="a", attempt=2, agent="x"):
            with attempt(run_id=1, step_key="b", attempt=1, agent="y", map_index=4):
                logger.warning("inner")
            logger.warning("outer")
        logger.warning("none")
    finally:
        logger.removeHandler(handler)
    assert seen == [(1, "b[4]", 1, "y"), (1, "a", 2, "x"), (None, None, None, None)]


@pytest.mark.django_db(transaction=True)
def test_a_real_workers_json_lines_carry_the_attempt() -> None:
    version = load_workflow(CHATTY)
    assert version is not None
    with WorkerCluster(workers=2, env={"BATON_LOG_FORMAT": "json"}) as cluster:
        run = transitions.start_run(workflow=version.workflow, version=version, input={"items": [1, 2, 3]})
        wait_for(lambda: Run.objects.get(pk=run.pk).status == RunStatus.SUCCEEDED, timeout=60, message="the run")
        wait_for(lambda: cluster.log().count("writing about item") == 3, timeout=10, message="the agent's lines")
        output = cluster.log()
    records = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert records, output
    for record in records:
        assert {"time", "level", "logger", "message", "run_id", "step_key", "attempt", "agent"} <= set(record)
    agent_lines = sorted((r for r in records if r["message"].startswith("writing about item")), key=lambda r: r["step_key"])
    assert [(r["run_id"], r["step_key"], r["attempt"], r["agent"]) for r in agent_lines] == [
        (run.pk, f"talk[{i}]", 1, "chatty") for i in range(3)
    ]
