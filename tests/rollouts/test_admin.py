"""Rollouts in the admin: looked at, scoped to what orchestration.access shows, the stage and
history read-only."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse

from orchestration.models import Workflow
from orchestration.rollouts import history, metrics
from orchestration.rollouts import transitions as rollouts
from orchestration.rollouts.models import DailySnapshot, Rollout, RolloutEvent, Stage
from tests.support import load_workflow

pytestmark = pytest.mark.django_db

HIDDEN = """
agents:
  - {name: drafter, kind: python, config: {callable: "tests.agents.basic:echo"}}
workflow:
  key: hidden
  name: Hidden
  steps:
    - {key: only, agent: drafter}
"""


def staff(username: str, *codenames: str) -> Any:
    user = get_user_model().objects.create_user(username, f"{username}@example.com", "pass", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(content_type__app_label="rollouts", codename__in=codenames))
    return user


@pytest.fixture
def rollout(workflow: Workflow, ops: Any) -> Rollout:
    return rollouts.start_rollout(workflow=workflow, owner=ops, actor=ops)


def test_every_rollout_page_opens_for_a_superuser(admin_user: Any, rollout: Rollout) -> None:
    history.make_history(workflow=rollout.workflow, days=1, runs_per_day=2)
    metrics.rollup(rollout.started_on)
    client = Client()
    client.force_login(admin_user)
    for model in ("rollout", "dailysnapshot", "agentversionsnapshot", "rolloutevent"):
        assert client.get(reverse(f"admin:rollouts_{model}_changelist")).status_code == 200, model
    change = client.get(reverse("admin:rollouts_rollout_change", args=[rollout.pk])).content.decode()
    assert "/rollouts/review/" in change and "Automation Lead" in change
    snapshot = DailySnapshot.objects.first()
    assert snapshot is not None
    assert client.get(reverse("admin:rollouts_dailysnapshot_change", args=[snapshot.pk])).status_code == 200


def test_the_stage_is_read_only_and_the_briefs_words_are_edited(admin_user: Any, rollout: Rollout) -> None:
    client = Client()
    client.force_login(admin_user)
    url = reverse("admin:rollouts_rollout_change", args=[rollout.pk])
    form = {
        "owner": rollout.owner_id,
        "success_metric": "Reviews out the same day",
        "rollback_conditions": "Two misses a week",
        "drift_margin": "0.3",
        "stage": Stage.SCALED,
    }
    for prefix in ("criteria", "windows", "checklist", "notes", "events"):
        form.update({f"{prefix}-TOTAL_FORMS": "0", f"{prefix}-INITIAL_FORMS": "0"})
    response = client.post(url, form)
    assert response.status_code == 302, response.content.decode()[:2000]
    rollout.refresh_from_db()
    assert rollout.stage == Stage.PILOT and rollout.success_metric == "Reviews out the same day"
    assert client.get(reverse("admin:rollouts_rollout_add")).status_code == 403


def test_staff_see_only_rollouts_of_workflows_they_see(rollout: Rollout, ops: Any, admin_user: Any) -> None:
    load_workflow(HIDDEN)
    other = rollouts.start_rollout(workflow=Workflow.objects.get(key="hidden"), owner=admin_user, actor=admin_user)
    ops.is_staff = True
    ops.save()
    ops.user_permissions.add(*Permission.objects.filter(content_type__app_label="rollouts", codename__startswith="view_"))
    client = Client()
    client.force_login(ops)
    page = client.get(reverse("admin:rollouts_rollout_changelist")).content.decode()
    assert reverse("admin:rollouts_rollout_change", args=[rollout.pk]) in page
    assert reverse("admin:rollouts_rollout_change", args=[other.pk]) not in page
    assert client.get(reverse("admin:rollouts_rollout_change", args=[other.pk])).status_code == 302
    events = client.get(reverse("admin:rollouts_rolloutevent_changelist")).content.decode()
    assert "rollout of review" in events and "rollout of hidden" not in events


def test_events_and_snapshots_cannot_be_changed_or_deleted(rollout: Rollout) -> None:
    user = staff("auditor", "view_rolloutevent", "change_rolloutevent", "delete_rolloutevent")
    user.is_superuser = True
    user.save()
    client = Client()
    client.force_login(user)
    event = RolloutEvent.objects.first()
    assert event is not None
    assert client.post(reverse("admin:rollouts_rolloutevent_delete", args=[event.pk]), {"post": "yes"}).status_code == 403
    assert RolloutEvent.objects.filter(pk=event.pk).exists()
