"""`access: {viewers, operators}` in workflow files: validated, imported onto the workflow,
exported as the workflow's current groups."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from django.contrib.auth.models import Group

from orchestration import definitions
from orchestration.models import Workflow, WorkflowVersion
from orchestration.spec import SpecError, load_text

pytestmark = pytest.mark.django_db

FILE = """
agents:
  - {name: echo, kind: python, config: {callable: "tests.agents.basic:echo"}}
workflow:
  key: wf
  name: Test
%s
  steps:
    - {key: a, agent: echo}
"""


def imported(access_line: str) -> Workflow:
    definitions.import_document(load_text(FILE % access_line))
    return Workflow.objects.get(key="wf")


def groups(workflow: Workflow) -> tuple[set[str], set[str]]:
    return (
        set(workflow.viewer_groups.values_list("name", flat=True)),
        set(workflow.operator_groups.values_list("name", flat=True)),
    )


@pytest.fixture(autouse=True)
def teams(db: Any) -> None:
    for name in ("legal", "operations", "auditors"):
        Group.objects.create(name=name)


def test_importing_sets_the_groups_and_exporting_writes_them_back() -> None:
    workflow = imported("  access: {viewers: [legal, auditors], operators: [operations]}")
    assert groups(workflow) == ({"legal", "auditors"}, {"operations"})
    document = yaml.safe_load(definitions.export_document("wf"))
    assert document["workflow"]["access"] == {"viewers": ["auditors", "legal"], "operators": ["operations"]}


def test_a_file_without_access_leaves_only_the_owner_and_superusers() -> None:
    imported("  access: {viewers: [legal]}")
    workflow = imported("")
    assert groups(workflow) == (set(), set())
    assert "access" not in yaml.safe_load(definitions.export_document("wf"))["workflow"]


def test_export_writes_the_groups_given_since_in_the_admin_so_reimporting_keeps_them() -> None:
    workflow = imported("  access: {viewers: [legal]}")
    workflow.operator_groups.add(Group.objects.get(name="operations"))
    text = definitions.export_document("wf")
    assert yaml.safe_load(text)["workflow"]["access"] == {"viewers": ["legal"], "operators": ["operations"]}
    definitions.import_document(load_text(text))
    assert groups(workflow) == ({"legal"}, {"operations"})


def test_publishing_the_draft_records_the_current_groups_in_the_version() -> None:
    workflow = imported("")
    workflow.viewer_groups.add(Group.objects.get(name="auditors"))
    version = definitions.publish_draft(workflow)
    assert version.number == 2
    assert version.spec["access"] == {"viewers": ["auditors"]}


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("  access: {viewers: [legl]}", "field `access.viewers`: unknown group 'legl'"),
        ("  access: {operators: operations}", "field `access.operators` must be a list of group names"),
        ("  access: [legal]", "field `access` must be a mapping with `viewers` and/or `operators`"),
        ("  access: {editors: [legal]}", "field `access.editors` is unknown"),
    ],
)
def test_a_bad_access_field_is_refused_naming_it_and_nothing_is_saved(line: str, problem: str) -> None:
    with pytest.raises(SpecError) as caught:
        definitions.import_document(load_text(FILE % line))
    assert f"workflow 'wf': {problem}" in str(caught.value)
    assert not Workflow.objects.exists() and not WorkflowVersion.objects.exists()


def test_the_same_groups_in_another_order_publish_no_new_version() -> None:
    imported("  access: {viewers: [legal, auditors]}")
    imported("  access: {viewers: [auditors, legal, legal]}")
    assert WorkflowVersion.objects.count() == 1
