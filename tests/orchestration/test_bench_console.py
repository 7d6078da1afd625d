"""`manage.py bench --only console` against the test database, with a small fixture."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
from django.db import connection

from orchestration.models import Run, StepRun
from orchestration.status import RunStatus, StepStatus
from tests.support import ROOT, database_url

PAGES = [
    "runs list, first page",
    "workflow page (bench-console-00)",
    "run page, 1,000 steps",
    "run page, 1,000-item map",
    "map items page (failed)",
]


def console_bench(runs: int) -> tuple[dict[str, Any], str]:
    env = dict(os.environ)
    env.update({"DATABASE_URL": database_url(), "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"})
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "manage.py"),
            "bench",
            "--only",
            "console",
            "--console-runs",
            str(runs),
            "--json",
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stdout


@pytest.mark.django_db(transaction=True)
def test_the_console_rows_time_each_page_over_a_fixture_built_once_and_then_reused() -> None:
    if connection.vendor != "postgresql":
        document, out = console_bench(50)
        assert document["rows"] == []
        assert "Console rows: not run on SQLite" in out
        return
    document, out = console_bench(3000)
    benchmarks = list(dict.fromkeys(row["benchmark"] for row in document["rows"]))
    # The filtered list is followed as deep as the small fixture's failed runs of its biggest
    # workflow go (page 50 at 100,000 runs).
    assert benchmarks[0] == PAGES[0] and benchmarks[2:] == PAGES[1:]
    assert benchmarks[1].startswith("runs list, bench-console-00 + failed, page ")
    assert int(benchmarks[1].rsplit(" ", 1)[1]) > 1
    measures = [(row["measure"], row["unit"], row["target"]) for row in document["rows"][:3]]
    assert measures == [
        ("server time, median of 20", "ms", "-"),
        ("server time, p95 of 20", "ms", "<= 150.0 ms"),
        ("SQL queries per request", "queries", "-"),
    ]
    queries = {row["benchmark"]: row["value"] for row in document["rows"] if row["unit"] == "queries"}
    assert queries["run page, 1,000 steps"] == queries["run page, 1,000-item map"] == 18
    assert "built in" in out
    # The fixture: runs of every kind the pages show, and the two big runs.
    assert Run.objects.filter(trigger="bench-console").count() == 3002
    statuses = set(Run.objects.filter(trigger="bench-console").values_list("status", flat=True))
    assert {RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.RUNNING} <= statuses
    assert StepRun.objects.filter(run__trigger="bench-console", status=StepStatus.WAITING).exists()
    assert StepRun.objects.filter(run__workflow__key="bench-console-long").count() == 1000
    assert (
        StepRun.objects.filter(run__workflow__key="bench-console-map", parent__isnull=False).count() == 1000
    )

    again, out = console_bench(3000)
    assert "reused from an earlier bench" in out
    assert len(again["rows"]) == len(document["rows"])
    assert Run.objects.filter(trigger="bench-console").count() == 3002


@pytest.mark.django_db(transaction=True)
def test_the_overview_row_times_the_home_page_and_a_scrape_on_the_console_fixture() -> None:
    env = dict(os.environ)
    env.update({"DATABASE_URL": database_url(), "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"})
    command = [sys.executable, str(ROOT / "manage.py"), "bench", "--only", "overview", "--console-runs", "400", "--json"]
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    document = json.loads(result.stdout.strip().splitlines()[-1])
    if connection.vendor != "postgresql":
        assert document["rows"] == []
        return
    rows = {(row["benchmark"], row["measure"]): row for row in document["rows"]}
    assert rows[("overview (home page)", "server time, p95 of 20")]["target"] == "<= 150.0 ms"
    assert rows[("overview (home page)", "SQL queries per request")]["value"] == 14
    assert ("/metrics scrape", "server time, median of 20") in rows
