"""`manage.py serve`: one command runs daphne and the worker, and stops both together."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from orchestration import transitions
from orchestration.management.commands.serve import child_environment, demo_logins, url_for
from orchestration.models import StepRun
from orchestration.status import StepStatus
from tests.support import ROOT, database_url, load_workflow, naps_in_sequence, session_for, wait_for


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def group_members(pgid: int) -> list[int]:
    out = subprocess.run(["ps", "-e", "-o", "pid=,pgid="], capture_output=True, text=True).stdout
    return [int(pid) for pid, group in (line.split() for line in out.splitlines()) if int(group) == pgid]


class Serve:
    """`manage.py serve` in a subprocess on the test database, with its output in a file."""

    def __init__(self, tmp_path: Path, **extra_env: str) -> None:
        self.port = free_port()
        self.log_path = tmp_path / "serve.log"
        env = dict(os.environ)
        env.pop("BATON_BASE_URL", None)
        env.update(extra_env)
        env.update(
            {
                "DATABASE_URL": database_url(),
                "BATON_QUEUE": settings.QUEUE_NAME,
                "BATON_WORKERS": "1",
                "PYTHONUNBUFFERED": "1",
            }
        )
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(ROOT / "manage.py"), "serve", "--port", str(self.port)],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        # Both halves up: a worker signalled while still importing Django dies at once instead
        # of stopping cleanly, which is fine in life but would make these tests flaky.
        wait_for(lambda: "Baton is running at" in self.log(), timeout=60, message="daphne to start")
        wait_for(lambda: "baton worker ready" in self.log(), timeout=60, message="the worker to start")
        match = re.search(r"daphne \(pid (\d+)\) and baton_worker \(pid (\d+)\)", self.log())
        assert match, self.log()
        self.daphne_pid, self.worker_pid = int(match[1]), int(match[2])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait(self) -> int:
        return self.process.wait(timeout=40)

    def children_left(self) -> list[int]:
        return group_members(self.daphne_pid) + group_members(self.worker_pid)

    def close(self) -> None:
        # Only if a test failed half-way: nothing it started may outlive it.
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        for pgid in (self.daphne_pid, self.worker_pid):
            for _ in group_members(pgid):
                os.killpg(pgid, signal.SIGKILL)
                break


@pytest.fixture
def serve(transactional_db: Any, tmp_path: Path) -> Any:
    # transactional_db: the children connect to the test database, so the schema must be
    # committed where another process can see it.
    server = Serve(tmp_path)
    yield server
    server.close()


@pytest.mark.cluster
def test_it_serves_pages_and_stops_both_processes_on_sigterm(serve: Serve) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{serve.port}/admin/login/", timeout=10) as response:
        assert response.status == 200

    serve.process.send_signal(signal.SIGTERM)

    assert serve.wait() == 0, serve.log()
    assert "Baton stopped." in serve.log()
    assert serve.children_left() == []


@pytest.mark.cluster
def test_it_stops_the_worker_and_fails_when_daphne_dies(serve: Serve) -> None:
    os.kill(serve.daphne_pid, signal.SIGKILL)

    assert serve.wait() != 0
    assert "daphne exited" in serve.log()
    # The worker got a clean stop, not a kill.
    assert "baton worker stopped" in serve.log()
    deadline = time.monotonic() + 5
    while serve.children_left() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert serve.children_left() == []


NAPS = f"""
agents:
  - {{name: nap, kind: python, config: {{callable: "tests.agents.durable:nap"}}}}
workflow:
  key: naps
  name: Naps
  owner: ops
  steps: [{naps_in_sequence(1, seconds=1.5)}]
"""

APPROVAL = """
agents:
  - {name: echo, kind: python, config: {callable: "tests.agents.basic:echo"}}
workflow:
  key: mailed
  name: Mailed approval
  steps:
    - {key: draft, agent: echo}
    - {key: sign_off, after: [draft], approval: {title: Sign it off, approvers: {users: [approver]}}}
"""


@pytest.mark.cluster
def test_the_worker_mails_links_to_the_port_it_serves_on(
    transactional_db: Any, tmp_path: Path, approver: Any
) -> None:
    load_workflow(APPROVAL)
    server = Serve(tmp_path, BATON_EMAIL_BACKEND="django.core.mail.backends.console.EmailBackend")
    try:
        transitions.start_run(workflow="mailed")
        # The console backend prints the email into the worker's output, which is serve's log.
        wait_for(lambda: "approver@example.com" in server.log(), timeout=30, message="the approval email")
        log = server.log()
        assert f"http://127.0.0.1:{server.port}/approvals/" in log, log
        assert "127.0.0.1:8000" not in log
    finally:
        server.close()


@pytest.mark.cluster
def test_a_page_of_the_server_hears_of_a_step_its_worker_finished(serve: Serve, ops: Any) -> None:
    """What `make run` gives: daphne holds the page's socket, the worker changes the run, and the
    socket hears of it (through the event log in the embedded set-up, through Redis otherwise)."""
    import json

    from websockets.sync.client import connect

    load_workflow(NAPS)
    run = transitions.start_run(workflow="naps", started_by=ops)
    # Subscribed only once the worker is inside the step: every change after it is the worker's.
    wait_for(
        lambda: StepRun.objects.filter(run=run, step_key="s1", status=StepStatus.RUNNING).exists(),
        timeout=30,
        message="the worker to start the step",
    )
    cookie = "=".join(session_for(ops))
    origin = f"http://127.0.0.1:{serve.port}"
    with connect(f"ws://127.0.0.1:{serve.port}/ws/live/", origin=origin, additional_headers={"Cookie": cookie}) as socket:
        socket.send(json.dumps({"subscribe": [f"run:{run.pk}"]}))
        assert json.loads(socket.recv(timeout=10)) == {"subscribed": [f"run:{run.pk}"], "refused": []}
        assert json.loads(socket.recv(timeout=30)) == {"changed": [f"run:{run.pk}"]}
    assert StepRun.objects.get(run=run, step_key="s1").status == StepStatus.SUCCEEDED


def test_its_processes_get_a_base_url_for_the_address_it_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BATON_BASE_URL", raising=False)
    assert child_environment("127.0.0.1", 8101)["BATON_BASE_URL"] == "http://127.0.0.1:8101"
    assert child_environment("0.0.0.0", 8080)["BATON_BASE_URL"] == "http://127.0.0.1:8080"
    assert child_environment("::1", 8000)["BATON_BASE_URL"] == "http://[::1]:8000"


def test_a_base_url_set_in_the_environment_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATON_BASE_URL", "https://baton.example.com")
    assert child_environment("127.0.0.1", 8101)["BATON_BASE_URL"] == "https://baton.example.com"


def test_it_refuses_a_port_that_is_already_taken() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(CommandError, match="already listens"):
            call_command("serve", port=port)


def test_it_prints_a_loopback_url_for_wildcard_binds() -> None:
    assert url_for("127.0.0.1", 8000) == "http://127.0.0.1:8000/"
    assert url_for("0.0.0.0", 8080) == "http://127.0.0.1:8080/"
    assert url_for("::", 8000) == "http://[::1]:8000/"


def test_it_reads_the_demo_logins_from_the_demo_module() -> None:
    logins = demo_logins()

    assert logins is not None
    assert {name for name, _, _ in logins} >= {"admin", "ops", "approver"}


@pytest.mark.cluster
def test_sigterm_stops_a_busy_worker_and_daphne_as_cleanly_as_ctrl_c(serve: Serve) -> None:
    steps = naps_in_sequence(8)
    load_workflow(
        'agents: [{name: nap, kind: python, config: {callable: "tests.agents.durable:nap"}}]\n'
        f"workflow: {{key: busy, name: Busy, steps: [{steps}]}}"
    )
    run = transitions.start_run(workflow="busy")
    wait_for(lambda: StepRun.objects.filter(run=run, status=StepStatus.RUNNING).exists(), timeout=30, message="a step to start")

    serve.process.send_signal(signal.SIGTERM)  # what systemd and docker send
    started = time.monotonic()

    assert serve.wait() == 0, serve.log()
    # The worker finished the step in hand and went no further: no kill, no giving up.
    assert time.monotonic() - started < 8, serve.log()
    assert "did not stop in time" not in serve.log()
    assert "exiting anyway" not in serve.log()
    assert "baton worker stopped" in serve.log()
    assert "Baton stopped." in serve.log()
    assert serve.children_left() == []
