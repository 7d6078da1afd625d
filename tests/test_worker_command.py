"""The worker command stops cleanly however it is signalled."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from tests.support import WorkerCluster, wait_for

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
