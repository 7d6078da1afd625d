"""The rollouts cast: ops owns the workflow `review`, an agent step (with a loop back), a
person's approval, and a last agent step; approver operates it; outsider is nobody.

Runs are generated as rows (orchestration.rollouts.history) with plans the tests choose, so
every figure is known in advance."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Group

from orchestration.models import Workflow
from orchestration.rollouts import metrics
from tests.support import load_workflow

REVIEW = """
agents:
  - {name: drafter, kind: python, config: {callable: "tests.agents.basic:echo"}}
  - {name: checker, kind: python, config: {callable: "tests.agents.basic:echo"}}
workflow:
  key: review
  name: Review
  owner: ops
  access: {operators: [reviewers]}
  steps:
    - key: draft
      agent: drafter
    - key: sign_off
      approval: {title: "Sign off", approvers: {users: [approver]}}
      after: [draft]
    - key: check
      agent: checker
      after: [sign_off]
"""


@pytest.fixture(autouse=True)
def _fresh_rollup_pass() -> Any:
    metrics.forget_last_pass()
    yield
    metrics.forget_last_pass()


@pytest.fixture
def workflow(ops: Any, approver: Any) -> Workflow:
    approver.groups.add(Group.objects.get_or_create(name="reviewers")[0])
    load_workflow(REVIEW)
    return Workflow.objects.get(key="review")
