"""Decisions that race: real concurrent transactions, each thread with its own connection.

Meant for PostgreSQL, where the row locks (run, then item) do the work; on SQLite the same tests
pass because IMMEDIATE transactions serialise every writer, so they still check the outcome
(one decision, the loser told who won) though not the locks themselves.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from functools import partial
from typing import Any

import pytest
from django.db import connection

from approvals import transitions
from approvals.models import Item, ItemEvent, ItemStatus, Vote
from orchestration import transitions as runs
from orchestration.models import RunEvent
from orchestration.status import EventKind, RunStatus
from tests.approvals.conftest import flow, item_for, start

pytestmark = pytest.mark.django_db(transaction=True)

ROUNDS = 5


def at_once(*calls: Callable[[], Any]) -> list[Any]:
    """Run the calls in threads released together; each returns its result or its exception."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def work(index: int, call: Callable[[], Any]) -> None:
        try:
            barrier.wait(timeout=10)
            results[index] = call()
        except Exception as exc:
            results[index] = exc
        finally:
            connection.close()  # each thread opened its own connection

    threads = [threading.Thread(target=work, args=(i, call)) for i, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
        assert not thread.is_alive(), "a decision hung: a lock-order deadlock?"
    return results


def review() -> None:
    flow(
        "    - {key: review, approval: {title: Publish, approvers: {groups: [legal]}, deadline: 1h}}\n"
        "    - {key: publish, agent: echo, after: [review], input: '{{ steps.review.output.decision }}'}"
    )


def test_two_approvers_clicking_at_once_make_one_decision(people: dict[str, Any]) -> None:
    review()
    for _ in range(ROUNDS):
        run = start(by=people["ops"])
        item = item_for(run, "review")
        results = at_once(
            partial(transitions.vote, item_id=item.pk, user=people["approver"], decision="approve"),
            partial(transitions.vote, item_id=item.pk, user=people["carol"], decision="reject", comment="no"),
        )
        won = [r for r in results if isinstance(r, Item)]
        lost = [r for r in results if isinstance(r, transitions.AlreadyDecided)]
        assert len(won) == 1 and len(lost) == 1, results
        item.refresh_from_db()
        assert item.status in (ItemStatus.APPROVED, ItemStatus.REJECTED)
        assert Vote.objects.filter(item=item).count() == 1
        assert ItemEvent.objects.filter(item=item, kind="decided").count() == 1
        winner = item.decided_by
        assert lost[0].decided_by == winner and lost[0].decided_at == item.decided_at
        assert str(lost[0]).startswith(f"already {item.status} by {winner.username} at ")
        finished = RunEvent.objects.filter(run=run, step_run__step_key="review").exclude(
            kind=EventKind.STEP_WAITING
        )
        assert finished.count() == 1, "the engine resumed once"


def test_a_click_racing_the_deadline_makes_one_outcome(people: dict[str, Any]) -> None:
    review()
    for _ in range(ROUNDS):
        run = start(by=people["ops"])
        item = item_for(run, "review")
        late = item.deadline + timedelta(seconds=1)
        results = at_once(
            partial(transitions.vote, item_id=item.pk, user=people["approver"], decision="approve"),
            partial(transitions.expire_item, item_id=item.pk, now=late),
        )
        item.refresh_from_db()
        if item.status == ItemStatus.APPROVED:
            assert results[1] is False, "the sweep found it decided"
        else:
            assert item.status == ItemStatus.EXPIRED
            assert isinstance(results[0], transitions.AlreadyDecided), results
            assert not Vote.objects.filter(item=item).exists()
        assert ItemEvent.objects.filter(item=item, kind="decided").count() == 1


def test_a_click_racing_a_cancel_neither_deadlocks_nor_decides_a_cancelled_item(
    people: dict[str, Any],
) -> None:
    review()
    for _ in range(ROUNDS):
        run = start(by=people["ops"])
        item = item_for(run, "review")
        results = at_once(
            partial(transitions.vote, item_id=item.pk, user=people["approver"], decision="approve"),
            partial(runs.cancel_run, run_id=run.pk, actor=people["ops"], reason="stop"),
        )
        item.refresh_from_db()
        run.refresh_from_db()
        assert run.status == RunStatus.CANCELLED and not isinstance(results[1], Exception), results
        if item.status == ItemStatus.CANCELLED:
            assert isinstance(results[0], transitions.AlreadyDecided), results
            assert not Vote.objects.filter(item=item).exists()
        else:
            # The approval committed first; the cancel then stopped the step it had released.
            assert item.status == ItemStatus.APPROVED and isinstance(results[0], Item), results
