"""The live push across real processes: daphne web servers, baton_worker clusters, socket clients.

A socket here is a plain websocket client holding a signed-in session cookie, as a browser's
page does (the browser tests drive Chromium, but only in the SQLite pass). What it is told is
recorded with the time it arrived, by a thread that reads the socket, so a test can say a hint
came after a given change was committed and not only that some hint came.

- With Redis (BATON_LIVE_SOURCE == "publish"): two web processes A and B and two workers; a
  decision made through A reaches a socket on B, and so does a step a worker finishes.
- In both set-ups: a step a worker finishes reaches a socket on a web process (with the
  embedded default, through that process's tail of the event log).
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from http.cookies import SimpleCookie
from typing import Any

import pytest
from django.conf import settings
from django.utils import timezone
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from approvals.models import Item
from orchestration import transitions
from orchestration.models import Run, StepRun
from tests.support import WebServer, WorkerCluster, load_workflow, session_for, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.django_db(transaction=True)]

AGENTS = """
agents:
  - {name: echo, kind: python, config: {callable: "tests.agents.basic:echo"}}
  - {name: slow-upper, kind: python, config: {callable: "tests.browser.agents:slow_upper"}}
"""

# The last step takes a second, so the hint of its finishing cannot be mistaken for the hint
# of its start (the consumer coalesces over a quarter of a second).
NOTES = (
    AGENTS
    + """
workflow:
  key: notes
  name: Meeting notes
  owner: ops
  inputs: {topic: {type: string, required: true}}
  steps:
    - {key: write, agent: slow-upper, input: {text: "{{ input.topic }}", pause: 1}}
"""
)

CONTENT = (
    AGENTS
    + """
workflow:
  key: content
  name: Content pipeline
  owner: ops
  inputs: {topic: {type: string, required: true}}
  steps:
    - {key: draft, agent: echo, input: {headline: "{{ input.topic }} tonight"}}
    - key: legal_review
      after: [draft]
      approval: {title: "Publish '{{ input.topic }}'?", approvers: {users: [approver]}}
    - {key: publish, agent: slow-upper, after: [legal_review], input: {text: "{{ input.topic }}", pause: 1}}
"""
)

# No proxy from the environment between the tests and their own servers.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Session:
    """A signed-in person's cookies, used the way their browser would use them."""

    def __init__(self, user: Any) -> None:
        name, value = session_for(user)
        self.cookies = {name: value}

    def header(self) -> str:
        return "; ".join(f"{name}={value}" for name, value in self.cookies.items())

    def _open(self, request: urllib.request.Request) -> tuple[int, str]:
        request.add_header("Cookie", self.header())
        with _OPENER.open(request, timeout=20) as answer:
            for name, morsel in SimpleCookie("\n".join(answer.headers.get_all("Set-Cookie") or [])).items():
                self.cookies[name] = morsel.value
            return int(answer.status), answer.read().decode()

    def get(self, url: str, *, part: bool = False) -> str:
        """The page, or with `part` the partial htmx fetches when the push names it."""
        headers = {"HX-Request": "true"} if part else {}
        status, text = self._open(urllib.request.Request(url, headers=headers))
        assert status == 200, (url, status)
        return text

    def decide(self, server: WebServer, item_id: int, decision: str, comment: str = "") -> str:
        """Approve or reject from the item's page: a GET for the form's CSRF token, then its POST."""
        url = f"{server.url}/approvals/{item_id}/"
        found = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', self.get(url))
        assert found, "the item page has no decision form"
        body = urllib.parse.urlencode(
            {"csrfmiddlewaretoken": found.group(1), "decision": decision, "comment": comment, "place": "page"}
        ).encode()
        # Without htmx the view answers with a redirect to the item's page, which is followed.
        status, text = self._open(urllib.request.Request(f"{url}decide/", data=body, method="POST"))
        assert status == 200, status
        return text


class Listener:
    """A page's socket: subscribed to topics, recording each hint with the time it came."""

    def __init__(self, socket: ClientConnection, topics: list[str]) -> None:
        self.socket = socket
        socket.send(json.dumps({"subscribe": topics}))
        answer = json.loads(socket.recv(timeout=10))
        assert answer == {"subscribed": sorted(topics), "refused": []}, answer
        self.hints: list[tuple[datetime, set[str]]] = []
        self.thread = threading.Thread(target=self._listen, name="live-listener", daemon=True)
        self.thread.start()

    def _listen(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            for message in self.socket:
                changed = json.loads(message).get("changed")
                if changed is not None:
                    self.hints.append((timezone.now(), set(changed)))

    def heard(self, topic: str, *, after: datetime | None = None) -> bool:
        return any(topic in changed and (after is None or when > after) for when, changed in list(self.hints))


@contextlib.contextmanager
def listening(server: WebServer, session: Session, *topics: str) -> Iterator[Listener]:
    """A socket on `server` as `session`'s page opens one (same origin, session cookie)."""
    with connect(
        f"ws://127.0.0.1:{server.port}/ws/live/",
        origin=server.url,
        additional_headers={"Cookie": session.header()},
        proxy=None,
    ) as socket:
        listener = Listener(socket, list(topics))
        try:
            yield listener
        finally:
            socket.close()
            listener.thread.join(timeout=10)


def finished_at(run: Run, step_key: str) -> datetime:
    step = StepRun.objects.filter(run=run, step_key=step_key).order_by("-id").first()
    assert step is not None and step.finished_at is not None, f"{step_key} has not finished"
    return step.finished_at


def run_ends(run: Run, cluster: WorkerCluster) -> Run:
    def ended() -> bool:
        run.refresh_from_db()
        return run.is_final

    wait_for(ended, timeout=60, message=f"run {run.pk} to end\n{cluster.log()}")
    return run


def test_a_step_a_worker_finishes_reaches_a_socket_on_a_web_process(ops: Any) -> None:
    load_workflow(NOTES)
    # Started before any worker runs, so every change the socket hears of is a worker's.
    run = transitions.start_run(workflow="notes", input={"topic": "the offsite"}, started_by=ops)
    ops_session = Session(ops)
    with WebServer() as web, listening(web, ops_session, f"run:{run.pk}", "runs") as socket:
        with WorkerCluster(workers=2) as cluster:
            run = run_ends(run, cluster)
            done = finished_at(run, "write")
            # The hint of the step finishing, not only the one of it starting a second earlier.
            wait_for(lambda: socket.heard(f"run:{run.pk}", after=done), timeout=10, message="the step's hint")
            wait_for(lambda: socket.heard("runs", after=done), timeout=10, message="the runs list's hint")
        page = ops_session.get(f"{web.url}/runs/{run.pk}/", part=True)
    assert run.status == "succeeded"
    assert 'id="run-live" class="run-live" data-status="succeeded"' in page


def test_a_decision_made_through_web_process_a_reaches_a_socket_on_web_process_b(
    ops: Any, approver: Any
) -> None:
    if settings.BATON_LIVE_SOURCE != "publish":
        pytest.skip(
            "two web processes hear each other through Redis (REDIS_URL); the embedded set-up is one process"
        )
    load_workflow(CONTENT)
    run = transitions.start_run(workflow="content", input={"topic": "The northern lights"}, started_by=ops)
    ops_session, approver_session = Session(ops), Session(approver)
    with WebServer() as a, WebServer() as b, WorkerCluster(workers=2) as cluster:
        item = wait_for(lambda: Item.objects.filter(run=run).first(), timeout=30, message="the approval")
        with (
            listening(b, approver_session, f"item:{item.pk}", "nav") as inbox,
            listening(b, ops_session, f"run:{run.pk}") as run_page,
        ):
            approver_session.decide(a, item.pk, "approve", comment="Checked with legal.")
            item.refresh_from_db()
            decided = item.decided_at
            assert decided is not None and item.decided_by == approver

            # Heard after the decision was made: not a late hint of the item's creation.
            wait_for(
                lambda: inbox.heard(f"item:{item.pk}", after=decided),
                timeout=10,
                message="the item's hint on B",
            )
            wait_for(lambda: inbox.heard("nav", after=decided), timeout=10, message="the count's hint on B")
            part = approver_session.get(f"{b.url}/approvals/{item.pk}/", part=True)
            assert 'data-status="approved"' in part
            assert "by <strong>approver</strong>" in part

            # The run goes on in a worker; the step it finishes reaches B too.
            run = run_ends(run, cluster)
            done = finished_at(run, "publish")
            wait_for(
                lambda: run_page.heard(f"run:{run.pk}", after=done),
                timeout=10,
                message="the step's hint on B",
            )
        page = ops_session.get(f"{b.url}/runs/{run.pk}/", part=True)
    assert run.status == "succeeded"
    assert 'id="run-live" class="run-live" data-status="succeeded"' in page
