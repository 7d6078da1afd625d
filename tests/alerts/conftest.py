"""The alerts cast: ops owns the workflows (and so sees and acknowledges their alerts), viewer
only sees them (a viewer group), outsider sees nothing; pager is a recipient group. Runs are
real runs driven in-process; time is frozen and moved, never slept through."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import time_machine
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.utils import timezone

from orchestration import transitions as core
from orchestration.alerts import sweep, tasks
from orchestration.alerts.models import Alert, AlertEvent, AlertRule, Delivery, DeliveryStatus
from orchestration.models import Run
from tests.servers import ScriptedServer
from tests.support import drive, load_workflow

AGENTS = """
agents:
  - {name: echo, kind: python, config: {callable: "tests.agents.basic:echo"}}
  - {name: picky, kind: python, config: {callable: "tests.approvals.conftest:picky"}, retry: {attempts: 1}}
"""


def flow(steps: str, *, key: str = "wf", extra: str = "", agents: str = AGENTS) -> None:
    Group.objects.get_or_create(name="watchers")
    load_workflow(
        agents
        + f"workflow:\n  key: {key}\n  name: Flow {key}\n  owner: ops\n  access: {{viewers: [watchers]}}\n{extra}\n  steps:\n{steps}\n"
    )


def start(key: str = "wf", *, input: Any = None, clock: Any = None) -> Run:
    return drive(core.start_run(workflow=key, input=input), clock=clock)


def rule(kind: str, **fields: Any) -> AlertRule:
    users = fields.pop("users", [])
    groups = fields.pop("groups", [])
    made = AlertRule(name=fields.pop("name", f"{kind} rule"), kind=kind, **fields)
    made.full_clean()
    made.save()
    made.users.set(users)
    made.groups.set(groups)
    return made


def evaluate() -> None:
    """One ticker pass of the alerts, whatever the time since the last one."""
    sweep.forget_last_evaluation()
    sweep.sweep(timezone.now())


def open_alerts(on: AlertRule | None = None) -> list[Alert]:
    alerts = Alert.objects.filter(status__in=["firing", "acknowledged"])
    return list((alerts.filter(rule=on) if on else alerts).order_by("pk"))


def history(alert: Alert) -> list[str]:
    """The alert's audit kinds in order, deliveries left out."""
    return list(
        AlertEvent.objects.filter(alert=alert, kind__in=["fired", "acknowledged", "resolved"])
        .order_by("id")
        .values_list("kind", flat=True)
    )


def deliver_all() -> int:
    """What a worker does with every delivery's task message: sends those that are due."""
    due = list(
        Delivery.objects.filter(status=DeliveryStatus.PENDING, next_attempt_at__lte=timezone.now())
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    for pk in due:
        tasks.deliver(pk)
    return len(due)


@pytest.fixture(autouse=True)
def _alerts_settings(settings: Any) -> None:
    settings.BATON_ALERT_SECONDS = 0
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.BATON_HTTP_ALLOWED_HOSTS = "127.0.0.1"
    settings.BATON_BASE_URL = "http://baton.example"


@pytest.fixture
def clock() -> Iterator[Any]:
    with time_machine.travel(timezone.now(), tick=False) as traveller:
        yield traveller


@pytest.fixture
def viewer(db: Any) -> Any:
    user = get_user_model().objects.create_user("viewer", "viewer@example.com", "viewer-pass-1")
    user.groups.add(Group.objects.get_or_create(name="watchers")[0])
    return user


@pytest.fixture
def pager(db: Any, ops: Any, outsider: Any) -> Group:
    """A recipient group with ops and outsider in it (outsider may not see the workflows)."""
    group = Group.objects.create(name="pager")
    group.user_set.add(ops, outsider)
    return group


@pytest.fixture
def receiver() -> Iterator[ScriptedServer]:
    with ScriptedServer() as server:
        yield server
