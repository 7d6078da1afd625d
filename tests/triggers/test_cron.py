"""Schedules: a published `cron` trigger fires at its slots from the ticker, records the trigger
that started each run, catches up at most `catch_up` missed slots, and a paused one fires nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine

from orchestration import definitions, ticker
from orchestration.models import Run, Workflow
from orchestration.spec import SpecError
from orchestration.triggers import transitions
from orchestration.triggers.models import Firing, FiringOutcome, Trigger
from tests.support import load_workflow

pytestmark = pytest.mark.django_db

DIGEST = """
agents:
  - {name: echo, kind: python, config: {callable: "tests.agents.basic:echo"}}
workflow:
  key: digest
  name: Digest
  owner: ops
  inputs: {topic: {type: string, required: true}, slot: {type: string}}
  triggers:
    - cron: "CRON"
      input: {topic: "daily digest", slot: "{{ slot }}"}
      catch_up: CATCH_UP
  steps:
    - {key: write, agent: echo, input: {topic: "{{ input.topic }}"}}
"""

MONDAY_0859 = datetime(2026, 11, 30, 8, 59, tzinfo=UTC)


def publish(cron: str = "0 9 * * 1-5", catch_up: int = 1, **extra: str) -> Trigger:
    text = DIGEST.replace("CRON", cron).replace("CATCH_UP", str(catch_up))
    for name, value in extra.items():
        text = text.replace("      catch_up:", f"      {name}: {value}\n      catch_up:")
    load_workflow(text)
    return Trigger.objects.get(workflow__key="digest")


def cron_runs() -> list[Run]:
    return list(Run.objects.filter(workflow__key="digest", trigger="cron").order_by("pk"))


def test_a_published_schedule_knows_its_next_slot_in_its_time_zone(ops: Any) -> None:
    with time_machine.travel(MONDAY_0859, tick=False):
        trigger = publish(timezone='"Europe/Paris"')
    # 09:00 in Paris (UTC+1 in winter) is 08:00 UTC: today's has passed, so tomorrow's.
    assert trigger.next_fire_at == datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def test_the_ticker_starts_one_run_at_the_slot_with_the_rendered_input_and_records_the_trigger(
    ops: Any,
) -> None:
    with time_machine.travel(MONDAY_0859, tick=False) as clock:
        trigger = publish()
        ticker.tick()
        assert cron_runs() == []
        clock.move_to(MONDAY_0859 + timedelta(minutes=1, seconds=2))
        ticker.tick()
        ticker.tick()
    [run] = cron_runs()
    assert run.input == {"topic": "daily digest", "slot": "2026-11-30T09:00:00+00:00"}
    firing = Firing.objects.get(run=run)
    assert (firing.trigger, firing.outcome, firing.slot) == (
        trigger,
        FiringOutcome.STARTED,
        datetime(2026, 11, 30, 9, 0, tzinfo=UTC),
    )
    trigger.refresh_from_db()
    assert trigger.next_fire_at == datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def test_slots_missed_while_baton_was_down_start_at_most_catch_up_runs(ops: Any) -> None:
    with time_machine.travel(MONDAY_0859, tick=False) as clock:
        publish(cron="0 * * * *", catch_up=2)
        clock.move_to(MONDAY_0859 + timedelta(hours=4, minutes=30))  # 09:00 … 13:00 all missed
        ticker.tick()
    runs = cron_runs()
    assert [run.input["slot"] for run in runs] == ["2026-11-30T12:00:00+00:00", "2026-11-30T13:00:00+00:00"]
    skipped = Firing.objects.get(outcome=FiringOutcome.SKIPPED)
    assert skipped.detail.startswith("3 slot(s) missed while Baton was down, from 2026-11-30 09:00 UTC")


def test_with_catch_up_zero_missed_slots_start_nothing_but_the_next_slot_fires(ops: Any) -> None:
    with time_machine.travel(MONDAY_0859, tick=False) as clock:
        publish(cron="0 * * * *", catch_up=0)
        clock.move_to(MONDAY_0859 + timedelta(hours=2, minutes=30))
        ticker.tick()
        assert cron_runs() == []
        clock.move_to(MONDAY_0859 + timedelta(hours=3, minutes=1))
        ticker.tick()
    assert [run.input["slot"] for run in cron_runs()] == ["2026-11-30T12:00:00+00:00"]


def test_a_paused_trigger_fires_nothing_and_resumed_fires_at_its_next_slot_only(ops: Any) -> None:
    with time_machine.travel(MONDAY_0859, tick=False) as clock:
        trigger = publish(cron="0 * * * *", catch_up=5)
        transitions.set_paused(trigger=trigger, paused=True)
        clock.move_to(MONDAY_0859 + timedelta(hours=3, minutes=30))
        ticker.tick()
        assert cron_runs() == []
        transitions.set_paused(trigger=trigger, paused=False)
        ticker.tick()
        assert cron_runs() == []
        assert trigger.next_fire_at == datetime(2026, 11, 30, 13, 0, tzinfo=UTC)
        clock.move_to(datetime(2026, 11, 30, 13, 0, 1, tzinfo=UTC))
        ticker.tick()
    assert len(cron_runs()) == 1


def test_a_slot_whose_input_is_refused_is_recorded_as_not_started_and_the_schedule_goes_on(ops: Any) -> None:
    with time_machine.travel(MONDAY_0859, tick=False) as clock:
        load_workflow(
            DIGEST.replace("CRON", "0 * * * *")
            .replace("CATCH_UP", "1")
            .replace('topic: "daily digest", ', "")
        )
        clock.move_to(MONDAY_0859 + timedelta(minutes=1, seconds=1))
        ticker.tick()
    failed = Firing.objects.get()
    assert failed.outcome == FiringOutcome.FAILED
    assert "topic" in failed.detail
    assert Trigger.objects.get().next_fire_at == datetime(2026, 11, 30, 10, 0, tzinfo=UTC)


def test_a_new_version_with_the_same_schedule_keeps_its_pause_and_a_changed_one_starts_afresh(
    ops: Any,
) -> None:
    with time_machine.travel(MONDAY_0859, tick=False):
        trigger = publish()
        transitions.set_paused(trigger=trigger, paused=True)
        load_workflow(DIGEST.replace("CRON", "0 9 * * 1-5").replace("CATCH_UP", "3"))
        assert Trigger.objects.get().paused is True
        load_workflow(DIGEST.replace("CRON", "30 7 * * *").replace("CATCH_UP", "3"))
        changed = Trigger.objects.get()
    assert changed.cron == "30 7 * * *"
    assert changed.next_fire_at == datetime(2026, 12, 1, 7, 30, tzinfo=UTC)


def test_a_version_without_triggers_removes_them_and_rolling_back_brings_them_back(ops: Any) -> None:
    with time_machine.travel(MONDAY_0859, tick=False):
        publish()
        start, end = DIGEST.index("  triggers:"), DIGEST.index("  steps:")
        load_workflow(DIGEST[:start] + DIGEST[end:])
        assert not Trigger.objects.exists()
        definitions.roll_back_to(workflow=Workflow.objects.get(key="digest"), number=1, actor=ops)
    assert Trigger.objects.get().cron == "0 9 * * 1-5"


@pytest.mark.parametrize(
    ("cron", "message"),
    [
        ("61 * * * *", "field `cron`: '61 * * * *' is not a cron expression"),
        ("* * * * * *", "has 6 fields"),
    ],
)
def test_a_bad_schedule_is_refused_at_import_naming_the_field(ops: Any, cron: str, message: str) -> None:
    with pytest.raises(SpecError) as refused:
        publish(cron=cron)
    assert message in str(refused.value)
    assert "trigger 1" in str(refused.value)
    assert not Workflow.objects.filter(key="digest").exists()


def test_the_export_writes_the_triggers_back(ops: Any) -> None:
    publish()
    text = definitions.export_document("digest")
    assert "cron: 0 9 * * 1-5" in text
    assert "catch_up: 1" in text
