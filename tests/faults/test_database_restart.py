"""A PostgreSQL restart under a working worker: nothing runs twice, the log says what happened.

The database here is a private server this module starts and restarts; the worker is a real
`baton_worker` on it, with the Redis broker of the PostgreSQL pass.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
from django.conf import settings
from django.db import connection

from tests.faults.postgres import PrivatePostgres, manage, postgres_bin
from tests.support import WorkerCluster, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.faults]

WORKFLOW = """
agents:
  - {name: nap, kind: python, config: {callable: "tests.agents.durable:nap"}}
workflow:
  key: outage
  name: Outage
  steps:
    - {key: long, agent: nap, input: {seconds: 6}}
    - {key: after, agent: nap, after: [long], input: {seconds: 0}}
"""


@pytest.fixture(scope="module")
def postgres() -> Iterator[PrivatePostgres]:
    if connection.vendor != "postgresql" or not os.environ.get("REDIS_URL"):
        pytest.skip("runs in the PostgreSQL + Redis pass")
    if postgres_bin() is None:
        pytest.skip("no PostgreSQL binaries on this machine")
    server = PrivatePostgres.in_temp_dir()
    try:
        server.start()
        server.migrate()
        workflow = server.directory / "outage.yaml"  # readable by us: we are root or its owner
        workflow.write_text(WORKFLOW)
        manage(server.url, "import_workflow", str(workflow))
        yield server
    finally:
        server.stop()


def final_status(postgres: PrivatePostgres, run_id: int) -> str | None:
    try:
        rows = postgres.query("SELECT status FROM orchestration_run WHERE id = %s", run_id)
    except Exception:
        return None  # the server is restarting
    status = str(rows[0][0])
    return status if status in {"succeeded", "failed", "cancelled"} else None


def test_a_step_longer_than_the_lease_runs_once_across_a_database_restart(postgres: PrivatePostgres) -> None:
    queue = f"{settings.QUEUE_NAME}-outage"
    env = {
        "DATABASE_URL": postgres.url,
        "BATON_QUEUE": queue,
        "BATON_HEARTBEAT_SECONDS": "0.3",
        "BATON_LEASE_SECONDS": "3",
        "BATON_REQUEUE_AFTER_SECONDS": "600",
    }
    with WorkerCluster(workers=1, env=env) as cluster:
        run_id = int(manage(postgres.url, "start_run", "outage", BATON_QUEUE=queue).strip())
        wait_for(
            lambda: postgres.query("SELECT 1 FROM orchestration_steprun WHERE run_id = %s AND step_key = 'long' AND status = 'running'", run_id),
            timeout=30,
            message=f"the long step to start\n{cluster.log()}",
        )
        time.sleep(0.5)  # a renewal or two first
        postgres.restart(down_for=0.5)  # about 1.5 s without a database: less than the lease
        status = wait_for(lambda: final_status(postgres, run_id), timeout=60, message=f"the run to finish\n{cluster.log()}")
        log = cluster.log()
    assert status == "succeeded", log
    [(attempts,)] = postgres.query("SELECT attempts FROM orchestration_steprun WHERE run_id = %s AND step_key = 'long'", run_id)
    assert attempts == 1, f"the step ran {attempts} times\n{log}"
    assert postgres.query("SELECT count(*) FROM orchestration_attempt a JOIN orchestration_steprun s ON s.id = a.step_run_id WHERE s.run_id = %s AND s.step_key = 'long'", run_id) == [(1,)]
    assert not postgres.query("SELECT message FROM orchestration_runevent WHERE run_id = %s AND message LIKE %s", run_id, "%probably killed%")
    # One line when the database goes and one when it is back, from the ticker and from the
    # heartbeat: not one per try.
    assert log.count("the database or broker is unavailable") == 1, log
    assert log.count("the database and broker are available again") == 1, log
    assert log.count("could not renew the lease") == 1, log
    assert log.count("lease renewals of steps") == 1, log
    assert len(log.splitlines()) < 25, log
