"""`load_demo --history`: one demo workflow gets a rollout with a month of generated runs."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from orchestration.management.commands.load_demo import HISTORY_WORKFLOW
from orchestration.models import Run
from orchestration.rollouts.models import DailySnapshot, Rollout, Stage
from orchestration.status import RunStatus

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def load() -> str:
    out = StringIO()
    call_command("load_demo", "--history", stdout=out)
    return out.getvalue()


def test_the_history_gives_one_workflow_a_rollout_owned_by_ops_with_a_month_of_runs() -> None:
    assert "history:" in load()
    rollout = Rollout.objects.select_related("owner", "workflow").get()
    today = timezone.localdate()
    assert rollout.workflow.key == HISTORY_WORKFLOW and rollout.owner is not None
    assert rollout.owner.get_username() == "ops" and rollout.stage == Stage.PILOT
    assert rollout.started_on == today - timedelta(days=25)
    runs = Run.objects.filter(workflow=rollout.workflow, trigger="history")
    assert runs.count() > 150
    assert runs.order_by("created_at").first().created_at.date() <= today - timedelta(days=29)  # type: ignore[union-attr]
    failed = runs.filter(status=RunStatus.FAILED)
    assert failed.exists() and not failed.filter(error="").exists()
    days = DailySnapshot.objects.filter(workflow=rollout.workflow, version__isnull=True).count()
    assert days == 30
    assert rollout.notes.count() == 2


def test_loading_it_again_adds_nothing() -> None:
    load()
    before = Run.objects.count()
    assert "kept the history" in load()
    assert Run.objects.count() == before and Rollout.objects.count() == 1


def test_without_the_flag_there_is_no_history() -> None:
    call_command("load_demo", quiet=True)
    assert not Rollout.objects.exists() and not Run.objects.exists()


def test_the_demo_rollout_page_says_its_runs_are_demo_data(client: Client) -> None:
    load()
    from django.contrib.auth import get_user_model

    client.force_login(get_user_model().objects.get(username="ops"))
    page = client.get(f"/rollouts/{HISTORY_WORKFLOW}/").content.decode()
    assert "Demo data" in page and "load_demo --history" in page
