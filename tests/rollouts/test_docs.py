"""docs/rollouts.md states the default criteria and the drift rule: hold it to the code."""

from __future__ import annotations

import re

from orchestration.rollouts.gates import DRIFT_DAYS, DRIFT_MIN_RUNS
from orchestration.rollouts.models import Metric, Rollout
from orchestration.rollouts.transitions import DEFAULT_CRITERIA
from tests.support import ROOT

DOC = (ROOT / "docs" / "rollouts.md").read_text()


def _criteria_rows() -> dict[str, str]:
    table = DOC.split("### Criteria and the gate", 1)[1].split("\n\n", 2)[1]
    rows = [line.split("|")[1:-1] for line in table.splitlines()[2:]]
    return {cells[0].strip(): cells[2].strip() for cells in rows}


def test_the_doc_lists_every_metric_with_its_default() -> None:
    rows = _criteria_rows()
    assert sorted(rows) == sorted(Metric(m).label.lower() for m, *_ in DEFAULT_CRITERIA)
    for metric, comparison, target, days in DEFAULT_CRITERIA:
        default = rows[Metric(metric).label.lower()]
        assert default.startswith("≥" if comparison == "gte" else "≤"), metric
        assert days == 7  # the doc says "7 days" once, for all of them
        number = float(re.sub(r"[^0-9.]", "", default.split(" over ")[0]))
        shown = {
            Metric.SUCCESS_RATE: target * 100,
            Metric.INTERVENTION_RATE: target * 100,
            Metric.P95_DURATION: target / 60,
            Metric.APPROVAL_WAIT: target / 3600,
        }.get(Metric(metric), target)
        assert number == shown, (metric, default)


def test_the_doc_states_the_drift_rule_as_the_code_applies_it() -> None:
    assert f"the last {DRIFT_DAYS} days against the {DRIFT_DAYS} before" in DOC
    assert f"at least {DRIFT_MIN_RUNS} runs" in DOC
    margin = Rollout._meta.get_field("drift_margin").get_default()
    assert f"({margin * 100:.0f} % by default)" in DOC
