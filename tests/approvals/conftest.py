"""The approvals cast: ops owns the workflows and starts the runs; approver and carol sit in legal
(and approver in editors and support too); dave is the person escalations go to; outsider is
nobody's approver. Workflows are small and driven in-process."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from approvals.models import Item
from orchestration import transitions
from orchestration.agents import PermanentError
from orchestration.models import Run
from tests.support import drive, load_workflow

AGENTS = """
agents:
  - {name: echo, kind: python, config: {callable: "tests.agents.basic:echo"}}
  - {name: refund, kind: python, risk: high, config: {callable: "tests.agents.basic:echo"}}
  - {name: picky, kind: python, config: {callable: "tests.approvals.conftest:picky"}}
  - {name: flaky, kind: python, config: {callable: "tests.agents.basic:flaky"}, retry: {attempts: 1}}
"""


def picky(payload: Any, context: Any) -> Any:
    """Fails for good unless its input says ok (an owner can fix that by editing the input)."""
    if not (isinstance(payload, dict) and payload.get("ok")):
        raise PermanentError("the input is not ok")
    return {"done": payload}


def flow(steps: str, *, key: str = "wf", extra: str = "", owner: str = "ops") -> None:
    load_workflow(
        AGENTS + f"workflow:\n  key: {key}\n  name: {key}\n  owner: {owner}\n{extra}\n  steps:\n{steps}\n"
    )


def start(key: str = "wf", *, by: Any = None, input: Any = None) -> Run:
    return drive(transitions.start_run(workflow=key, started_by=by, input=input))


def item_for(run: Run, step_key: str, **filters: Any) -> Item:
    return Item.objects.filter(run=run, step_run__step_key=step_key, **filters).latest("id")


def history(item: Item) -> list[str]:
    """The item's audit kinds in order, emails left out."""
    return list(item.events.exclude(kind="notified").order_by("id").values_list("kind", flat=True))


def _user(username: str, *groups: str) -> Any:
    user = get_user_model().objects.create_user(username, f"{username}@example.com", f"{username}-pass-1")
    for name in groups:
        user.groups.add(Group.objects.get_or_create(name=name)[0])
    return user


@pytest.fixture
def people(ops: Any, approver: Any, outsider: Any) -> dict[str, Any]:
    for name in ("legal", "editors", "support"):
        approver.groups.add(Group.objects.get_or_create(name=name)[0])
    return {
        "ops": ops,
        "approver": approver,
        "outsider": outsider,
        "carol": _user("carol", "legal"),
        "dave": _user("dave"),
    }


@pytest.fixture
def carol(people: dict[str, Any]) -> Any:
    return people["carol"]


@pytest.fixture
def dave(people: dict[str, Any]) -> Any:
    return people["dave"]
