"""docs/workflow-format.md calls itself the complete reference: hold it to that."""

from __future__ import annotations

import re

import pytest

from orchestration import spec
from tests.support import ROOT

DOC = (ROOT / "docs" / "workflow-format.md").read_text()

# Every set of keys the parser accepts, with the prefix the doc may write them under.
ACCEPTED = {
    "the file": spec.DOCUMENT_FIELDS,
    "agent": spec.AGENT_FIELDS,
    "circuit": spec.CIRCUIT_FIELDS,
    "config (http)": spec.HTTP_CONFIG,
    "config (llm)": spec.LLM_CONFIG,
    "workflow": spec.WORKFLOW_FIELDS,
    "inputs": spec.INPUT_FIELDS,
    "step": spec.STEP_FIELDS,
    "retry": spec.RETRY_FIELDS,
    "loop": spec.LOOP_FIELDS,
    "wait": spec.WAIT_FIELDS,
    "approval": spec.APPROVAL_FIELDS,
    "gate": spec.GATE_FIELDS,
    "manual": spec.MANUAL_FIELDS,
    "approvers": spec.APPROVERS_FIELDS,
    "compensate": spec.COMPENSATE_FIELDS,
    "route": spec.ROUTE_FIELDS,
    "end": spec.END_FIELDS,
    "versions": spec.VERSION_FIELDS,
}
VALUES = {
    "step kinds": set(spec.STEP_KINDS),
    "agent kinds": spec.AGENT_KINDS_AVAILABLE,
    "input types": set(spec.INPUT_TYPES),
    "http methods": spec.HTTP_METHODS,
}


def mentioned(name: str, prefix: str = "") -> bool:
    """Written as code (`name`, `prefix.name`) or as a key in one of the doc's YAML examples."""
    if f"`{name}`" in DOC or (prefix and f"`{prefix}.{name}`" in DOC):
        return True
    return re.search(rf"^\s*(- )?{re.escape(name)}:\s", DOC, re.MULTILINE) is not None


@pytest.mark.parametrize("where", sorted(ACCEPTED))
def test_every_field_the_parser_accepts_is_in_the_reference(where: str) -> None:
    prefix = where.split()[0]
    missing = sorted(name for name in ACCEPTED[where] if not mentioned(name, prefix))
    assert not missing, f"docs/workflow-format.md does not describe these {where} fields: {missing}"


@pytest.mark.parametrize("what", sorted(VALUES))
def test_every_value_the_parser_accepts_is_in_the_reference(what: str) -> None:
    missing = sorted(value for value in VALUES[what] if f"`{value}`" not in DOC)
    assert not missing, f"docs/workflow-format.md does not name these {what}: {missing}"


def test_the_reference_promises_nothing_the_parser_refuses() -> None:
    # Each of these was once written in the reference and was not true.
    for untrue in (
        "any mapping is accepted",
        "publishes an identical spec as the next version",
        "A template may name any step of the workflow",
        "run once, after its first round",
    ):
        assert untrue not in DOC
