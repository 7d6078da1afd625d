"""The live push's socket: who may open it, what each user hears, and how often.

These talk to the real consumer through Channels' communicator, on the channel layer of the
set-up under test (in-memory with the embedded default, Redis pub/sub with REDIS_URL), and
commit real changes: the hint must come from the one after-commit function (Redis) or the
event-log tail (embedded), not from the test.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import Client

from approvals import transitions as item_transitions
from approvals.live import item_groups
from approvals.models import Item
from dashboard.live import changes as live_changes
from dashboard.live.changes import Changes
from dashboard.live.consumer import LiveConsumer
from dashboard.live.publish import Publisher
from dashboard.live.tail import _Position
from orchestration import transitions
from orchestration.config.asgi import application
from orchestration.models import Run, StepRun
from orchestration.tasks import execute_step
from tests.support import drive, load_workflow, session_for

pytestmark = pytest.mark.django_db(transaction=True)

PUBLISH = """
agents:
  - {name: echo, kind: python, config: {callable: "tests.agents.basic:echo"}}
workflow:
  key: pub
  name: Publish
  owner: ops
  inputs: {topic: {type: string, required: true}}
  steps:
    - {key: draft, agent: echo, input: {text: "{{ input.topic }}"}}
    - key: review
      after: [draft]
      approval: {title: "Publish {{ input.topic }}?", approvers: {users: [approver]}}
    - {key: publish, agent: echo, after: [review]}
"""


def run_async(body: Callable[[], Awaitable[Any]]) -> Any:
    return async_to_sync(body)()


async def socket_for(user: Any) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(LiveConsumer.as_asgi(), "/ws/live/")
    communicator.scope["user"] = user
    connected, _ = await communicator.connect()
    assert connected
    return communicator


async def subscribe(communicator: WebsocketCommunicator, *topics: str) -> dict[str, Any]:
    await communicator.send_to(text_data=json.dumps({"subscribe": list(topics)}))
    return json.loads(await communicator.receive_from(timeout=5))


async def hint(communicator: WebsocketCommunicator, timeout: float = 5) -> list[str]:
    return list(json.loads(await communicator.receive_from(timeout=timeout))["changed"])


async def commit(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """A change made as a worker or a view would, committed; with Redis, published too."""
    result = await database_sync_to_async(function)(*args, **kwargs)
    if settings.BATON_LIVE_SOURCE == "publish":
        assert await asyncio.to_thread(Publisher.for_this_process().flush, 5)
    return result


def origin_headers(origin: str, cookie: str = "") -> list[tuple[bytes, bytes]]:
    headers = [(b"host", b"localhost"), (b"origin", origin.encode())]
    if cookie:
        headers.append((b"cookie", cookie.encode()))
    return headers


def session_cookie(user: Any) -> str:
    return "=".join(session_for(user))


@pytest.fixture
def waiting_run(ops: Any, approver: Any) -> Run:
    load_workflow(PUBLISH)
    return drive(transitions.start_run(workflow="pub", input={"topic": "tides"}, started_by=ops))


# ---------------------------------------------------------------------------------------------
# Who may open a socket


def test_an_anonymous_socket_is_refused() -> None:
    async def body() -> bool:
        communicator = WebsocketCommunicator(application, "/ws/live/", headers=origin_headers("http://localhost"))
        connected, _ = await communicator.connect()
        await communicator.disconnect()
        return connected

    assert run_async(body) is False


def test_a_signed_in_socket_from_another_site_is_refused_and_from_ours_accepted(ops: Any) -> None:
    cookie = session_cookie(ops)

    async def body(origin: str) -> bool:
        communicator = WebsocketCommunicator(application, "/ws/live/", headers=origin_headers(origin, cookie))
        connected, _ = await communicator.connect()
        await communicator.disconnect()
        return connected

    assert async_to_sync(body)("http://evil.example") is False
    assert async_to_sync(body)("http://localhost") is True


def test_an_inactive_users_socket_is_refused(ops: Any) -> None:
    ops.is_active = False
    ops.save()

    async def body() -> bool:
        communicator = WebsocketCommunicator(LiveConsumer.as_asgi(), "/ws/live/")
        communicator.scope["user"] = ops
        connected, _ = await communicator.connect()
        return connected

    assert run_async(body) is False


# ---------------------------------------------------------------------------------------------
# What each user hears


def test_an_outsider_subscribed_to_a_run_and_an_item_not_theirs_receives_nothing(
    waiting_run: Run, ops: Any, outsider: Any, approver: Any
) -> None:
    item = Item.objects.get(run=waiting_run)

    async def body() -> None:
        outsider_socket = await socket_for(outsider)
        owner_socket = await socket_for(ops)
        reply = await subscribe(outsider_socket, f"run:{waiting_run.pk}", f"item:{item.pk}", "runs", "inbox")
        assert set(reply["refused"]) == {f"run:{waiting_run.pk}", f"item:{item.pk}"}
        assert await subscribe(owner_socket, f"run:{waiting_run.pk}") == {"subscribed": [f"run:{waiting_run.pk}"], "refused": []}

        # The approver approves: the run moves on and the item is decided.
        await commit(item_transitions.vote, item_id=item.pk, user=approver, decision="approve")

        assert f"run:{waiting_run.pk}" in await hint(owner_socket)
        # The outsider's own lists follow their own workflows and inbox, of which this is neither.
        assert await outsider_socket.receive_nothing(timeout=1.0)
        await outsider_socket.disconnect()
        await owner_socket.disconnect()

    run_async(body)


def test_a_committed_step_reaches_the_run_page_and_the_runs_list_of_those_who_see_it(ops: Any, approver: Any) -> None:
    load_workflow(PUBLISH)
    run = transitions.start_run(workflow="pub", input={"topic": "owls"}, started_by=ops)
    draft = StepRun.objects.get(run=run, step_key="draft")

    async def body() -> None:
        socket = await socket_for(ops)
        await subscribe(socket, f"run:{run.pk}", "runs", "agents")
        began = time.monotonic()
        await commit(execute_step, draft.pk)
        messages = [await hint(socket)]
        while not await socket.receive_nothing(timeout=0.5):
            messages.append(await hint(socket))
        # Every part of the page that changed is named, in one message or two at most.
        assert set().union(*messages) == {f"run:{run.pk}", "runs", "agents"}
        assert len(messages) <= 2
        assert time.monotonic() - began < 3
        await socket.disconnect()

    run_async(body)


def test_a_new_item_reaches_the_approvers_inbox_and_count_but_not_the_outsiders(
    ops: Any, approver: Any, outsider: Any
) -> None:
    load_workflow(PUBLISH)

    async def body() -> None:
        approver_socket = await socket_for(approver)
        outsider_socket = await socket_for(outsider)
        await subscribe(approver_socket, "inbox", "nav")
        await subscribe(outsider_socket, "inbox", "nav")
        run = await commit(transitions.start_run, workflow="pub", input={"topic": "eels"}, started_by=ops)
        await commit(drive, run)
        assert set(await hint(approver_socket)) == {"inbox", "nav"}
        assert await outsider_socket.receive_nothing(timeout=1.0)
        await approver_socket.disconnect()
        await outsider_socket.disconnect()

    run_async(body)


def test_an_item_reassigned_away_tells_the_previous_assignees_inbox(waiting_run: Run, approver: Any, admin_user: Any) -> None:
    item = Item.objects.get(run=waiting_run)
    item_transitions.reassign(item_id=item.pk, user=admin_user, to_user=admin_user, note="on leave")
    groups = item_groups(Changes(items={item.pk}))
    assert {f"item.{item.pk}", f"inbox.u.{approver.pk}", f"inbox.u.{admin_user.pk}"} <= groups


# ---------------------------------------------------------------------------------------------
# How often, and how much


def test_a_run_that_changes_a_thousand_times_in_a_second_is_pushed_a_few_times(waiting_run: Run, ops: Any) -> None:
    async def body() -> tuple[list[list[str]], float]:
        socket = await socket_for(ops)
        await subscribe(socket, f"run:{waiting_run.pk}")
        layer = get_channel_layer()
        began = time.monotonic()
        for _ in range(1000):
            await layer.group_send(f"run.{waiting_run.pk}", {"type": "live.changed", "group": f"run.{waiting_run.pk}"})
        took = time.monotonic() - began
        received = []
        # (A receive that times out cancels the consumer: ask whether anything came first.)
        while not await socket.receive_nothing(timeout=1.0):
            received.append(await hint(socket))
        await socket.disconnect()
        return received, took

    received, took = run_async(body)
    # One message per coalescing window at most, plus the first and the layer's stragglers
    # (Redis delivers a little after the last send): a few, not a thousand, however long the
    # sends took on a busy machine (how long is not this test's business: the bench measures).
    assert 1 <= len(received) <= min(8, 3 + took / settings.BATON_LIVE_COALESCE_SECONDS), len(received)
    assert all(message == [f"run:{waiting_run.pk}"] for message in received)


def test_a_message_over_the_size_limit_closes_the_socket(ops: Any) -> None:
    async def body() -> Any:
        socket = await socket_for(ops)
        await socket.send_to(text_data=json.dumps({"subscribe": ["runs"], "padding": "x" * 9000}))
        return await socket.receive_output(timeout=5)

    assert run_async(body) == {"type": "websocket.close", "code": 1009}


@pytest.mark.parametrize(
    "message",
    [
        "not json",
        json.dumps(["runs"]),
        json.dumps({"subscribe": "runs"}),
        json.dumps({"subscribe": [f"run:{n}" for n in range(201)]}),
        json.dumps({"subscribe": ["x" * 65]}),
    ],
)
def test_a_message_that_is_not_a_subscription_closes_the_socket(ops: Any, message: str) -> None:
    async def body() -> Any:
        socket = await socket_for(ops)
        await socket.send_to(text_data=message)
        return await socket.receive_output(timeout=5)

    assert run_async(body) == {"type": "websocket.close", "code": 4400}


def test_a_client_that_subscribes_over_and_over_is_closed(ops: Any) -> None:
    async def body() -> Any:
        socket = await socket_for(ops)
        for _ in range(30):
            await subscribe(socket, "runs")
        await socket.send_to(text_data=json.dumps({"subscribe": ["runs"]}))
        return await socket.receive_output(timeout=5)

    assert run_async(body) == {"type": "websocket.close", "code": 4429}


def test_malformed_or_unknown_topics_are_refused_and_join_nothing(ops: Any) -> None:
    async def body() -> dict[str, Any]:
        socket = await socket_for(ops)
        reply = await subscribe(socket, "run:abc", "<script>", "admin", "run:", "runs:5", "run:12345678901234567890")
        await socket.disconnect()
        return reply

    reply = run_async(body)
    assert reply["subscribed"] == []
    assert len(reply["refused"]) == 6


# ---------------------------------------------------------------------------------------------
# What a push makes the page fetch


def test_agent_output_with_script_and_htmx_attributes_arrives_inert(ops_client: Client, ops: Any) -> None:
    load_workflow(
        """
agents:
  - {name: echo, kind: python, config: {callable: "tests.agents.basic:echo"}}
workflow:
  key: hostile
  name: Hostile
  owner: ops
  steps:
    - key: say
      agent: echo
      input: {text: "<script>window.pwned = 1</script><div hx-get=\\"/evil\\" hx-trigger=\\"load\\">x</div>"}
"""
    )
    run = drive(transitions.start_run(workflow="hostile", started_by=ops))
    part = ops_client.get(f"/runs/{run.pk}/", HTTP_HX_REQUEST="true").content.decode()
    assert "&lt;script&gt;window.pwned = 1&lt;/script&gt;" in part
    assert "<script>" not in part and 'hx-get="/evil"' not in part


# ---------------------------------------------------------------------------------------------
# The embedded tail's bookkeeping


class _Log:
    def __init__(self, rows: list[tuple[int, int]]) -> None:
        self.table = rows

    def as_event_log(self) -> live_changes.EventLog:
        return live_changes.EventLog(
            "fake",
            lambda: 0,
            lambda after, limit: [row for row in sorted(self.table) if row[0] > after][:limit],
            lambda ids: [row for row in self.table if row[0] in ids],
            lambda refs: Changes(runs=set(refs)),
        )


def test_the_tail_hears_of_a_row_that_commits_late_behind_a_higher_id_once() -> None:
    log = _Log([(1, 10), (3, 30)])  # id 2 is still uncommitted
    position = _Position(0)
    assert position.read(log.as_event_log(), now=0.0) == {10, 30}
    assert position.read(log.as_event_log(), now=0.1) == set()
    log.table.append((2, 20))
    assert position.read(log.as_event_log(), now=0.2) == {20}
    assert position.read(log.as_event_log(), now=0.3) == set()


def test_the_tail_stops_waiting_for_a_hole_that_never_fills() -> None:
    log = _Log([(1, 10), (5, 50)])
    position = _Position(0)
    position.read(log.as_event_log(), now=0.0)
    assert set(position.gaps) == {2, 3, 4}
    position.read(log.as_event_log(), now=60.0)
    assert position.gaps == {}
