"""The worker command stops cleanly however it is signalled, and keeps its cluster working."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from django.utils import timezone

from orchestration import transitions
from orchestration.models import Attempt, Run, RunEvent, StepRun
from orchestration.status import AttemptStatus, EventKind, RunStatus, StepStatus
from tests.support import WorkerCluster, load_workflow, naps_in_sequence, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.django_db(transaction=True)]


@pytest.mark.parametrize("whole_group", [False, True], ids=["main-process", "process-group"])
def test_the_worker_stops_on_sigterm(whole_group: bool) -> None:
    cluster = WorkerCluster(workers=2).start()
    assert cluster.process is not None
    started = time.monotonic()
    if whole_group:
        # What systemd and `timeout` do: every process of the group gets the signal at once.
        os.killpg(cluster.process.pid, signal.SIGTERM)
    else:
        cluster.process.send_signal(signal.SIGTERM)
    try:
        cluster.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        cluster.stop()
        pytest.fail(f"the worker did not exit within 20 s of SIGTERM\n{cluster.log()}")
    assert time.monotonic() - started < 20
    group = str(cluster.process.pid)

    def group_is_empty() -> bool:
        return not subprocess.run(["pgrep", "-g", group], capture_output=True, text=True).stdout.split()

    wait_for(group_is_empty, timeout=15, message="every worker process to exit")


# ---------------------------------------------------------------------------------------------
# Faults with real processes: a worker killed while idle, a graceful stop.

AGENTS = """
agents:
  - {name: whoami, kind: python, config: {callable: "tests.agents.durable:who_am_i"}}
  - {name: nap, kind: python, config: {callable: "tests.agents.durable:nap"}}
"""


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(_stat(int(entry.name))[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError):
                continue
    return found


def queue_workers(cluster: WorkerCluster) -> list[int]:
    """The django-q2 worker processes of a cluster: the sentinel forks its workers first, then
    its monitor and pusher, so they are its oldest children."""
    assert cluster.process is not None
    sentinels = _children(cluster.process.pid)
    assert len(sentinels) == 1, sentinels
    started = {}
    for pid in _children(sentinels[0]):
        try:
            started[pid] = int(_stat(pid)[19])
        except (OSError, IndexError):
            continue  # it has just exited
    return sorted(started, key=started.__getitem__)[: cluster.workers]


def queue_reader(cluster: WorkerCluster) -> int | None:
    """The idle worker that holds the task queue's read lock, blocked reading its pipe."""
    for pid in queue_workers(cluster):
        try:
            if "pipe" in Path(f"/proc/{pid}/wchan").read_text():
                return pid
        except OSError:
            continue
    return None


def finished(run: Run) -> Run | None:
    run.refresh_from_db()
    return run if run.is_final else None


def group_left(pgid: int) -> list[str]:
    return subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True, text=True).stdout.split()


# The killed worker had taken a message it never ran: re-sending that one is the point.
@pytest.mark.loses_messages
def test_it_restarts_its_cluster_when_a_worker_dies_holding_the_task_queue() -> None:
    load_workflow(AGENTS + "workflow: {key: after-kill, name: After kill, steps: [{key: a, agent: whoami}, {key: b, agent: whoami, after: [a]}]}")
    # No re-sends to hide behind: the run must move because the cluster works again.
    with WorkerCluster(workers=2, env={"BATON_STUCK_SECONDS": "1", "BATON_REQUEUE_AFTER_SECONDS": "600"}) as cluster:
        reader = wait_for(lambda: queue_reader(cluster), timeout=10, message="an idle worker reading the task queue")
        os.kill(reader, signal.SIGKILL)  # as the OOM killer would
        run = transitions.start_run(workflow="after-kill")
        run = wait_for(lambda: finished(run), timeout=30, message=f"the run to finish after the kill\n{cluster.log()}")
        assert "RESTARTING THE CLUSTER" in cluster.log()
        assert cluster.log().count("RESTARTING THE CLUSTER") == 1, cluster.log()
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert all(s.attempts == 1 for s in StepRun.objects.filter(run=run))


def test_on_sigterm_it_takes_no_new_step_finishes_the_one_in_hand_and_leaves_no_process() -> None:
    steps = naps_in_sequence(6)
    load_workflow(AGENTS + f"workflow: {{key: long-sequence, name: Long sequence, steps: [{steps}]}}")
    first = WorkerCluster(workers=1, env={"BATON_DRAIN_SECONDS": "15"}).start()
    assert first.process is not None
    run = transitions.start_run(workflow="long-sequence")
    wait_for(lambda: StepRun.objects.filter(run=run, step_key="s2", status=StepStatus.RUNNING).exists(), timeout=30, message="s2 to start")
    in_hand = Attempt.objects.get(step_run__run=run, step_run__step_key="s2")
    stopped_at = timezone.now()
    first.process.send_signal(signal.SIGTERM)
    started = time.monotonic()
    try:
        first.process.wait(timeout=20)
    finally:
        first.stop()
    # It finished s2 (about a second) instead of going on with the sequence or giving up.
    assert time.monotonic() - started < 8, first.log()
    wait_for(lambda: not group_left(first.process.pid), timeout=3, message=f"no process of the stopped worker\n{first.log()}")
    in_hand.refresh_from_db()
    assert in_hand.status == AttemptStatus.SUCCEEDED, first.log()
    assert not Attempt.objects.filter(step_run__run=run, worker=in_hand.worker, started_at__gt=stopped_at).exists(), (
        "the stopping worker started another step"
    )
    with WorkerCluster(workers=1) as second:
        run = wait_for(lambda: finished(run), timeout=60, message=f"another worker to finish the run\n{second.log()}")
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert all(s.attempts == 1 for s in StepRun.objects.filter(run=run))


def test_a_step_still_running_when_the_drain_ends_is_released_to_another_worker() -> None:
    load_workflow(AGENTS + "workflow: {key: too-long, name: Too long, steps: [{key: long, agent: nap, input: {seconds: 4}}]}")
    first = WorkerCluster(workers=1, env={"BATON_DRAIN_SECONDS": "1"}).start()
    assert first.process is not None
    run = transitions.start_run(workflow="too-long")
    wait_for(lambda: StepRun.objects.filter(run=run, status=StepStatus.RUNNING).exists(), timeout=30, message="the step to start")
    first.process.send_signal(signal.SIGTERM)
    started = time.monotonic()
    try:
        first.process.wait(timeout=20)
    finally:
        first.stop()
    assert time.monotonic() - started < 4, first.log()
    assert not group_left(first.process.pid), first.log()
    step = StepRun.objects.get(run=run)
    assert step.status == StepStatus.QUEUED, first.log()
    assert RunEvent.objects.filter(run=run, kind=EventKind.STEP_QUEUED, message__contains="released by").exists()
    with WorkerCluster(workers=1) as second:
        run = wait_for(lambda: finished(run), timeout=60, message=f"another worker to run it\n{second.log()}")
    assert run.status == RunStatus.SUCCEEDED, run.error
    step.refresh_from_db()
    assert step.attempts == 2
    assert not RunEvent.objects.filter(run=run, message__contains="probably killed").exists()


def test_it_stops_on_sigterm_even_when_no_worker_can_read_the_task_queue() -> None:
    # Restarting is turned off here: the stop itself must not wait for the stuck queue.
    cluster = WorkerCluster(workers=2, env={"BATON_STUCK_SECONDS": "600"}).start()
    assert cluster.process is not None
    try:
        reader = wait_for(lambda: queue_reader(cluster), timeout=10, message="an idle worker reading the task queue")
        os.kill(reader, signal.SIGKILL)
        sentinel = _children(cluster.process.pid)[0]
        # Two workers, the monitor and the pusher again: the sentinel reincarnated the dead one.
        wait_for(lambda: len(_children(sentinel)) == 4 and reader not in _children(sentinel), timeout=10, message="its reincarnation")
        cluster.process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code = cluster.process.wait(timeout=30)
    finally:
        cluster.stop()
    assert code == 0, cluster.log()
    assert time.monotonic() - started < 8, cluster.log()
    wait_for(lambda: not group_left(cluster.process.pid), timeout=3, message=f"no process left\n{cluster.log()}")
