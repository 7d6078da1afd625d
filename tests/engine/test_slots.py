"""Network-bound agents run concurrently in each worker process's slots, keeping every guarantee
a step has: one success per step, leases, cancel, timeouts, circuits and max_concurrency."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest

from orchestration import transitions
from orchestration.models import AgentHealth, Attempt, CircuitState, Run, StepRun
from orchestration.status import AttemptStatus, ErrorClass, RunStatus, StepStatus
from tests.servers import FakeOpenAI, HoldingServer
from tests.support import WorkerCluster, load_workflow, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.django_db(transaction=True)]

ALLOWED = {"BATON_HTTP_ALLOWED_HOSTS": "127.0.0.1"}


def http_map(url: str, items: int, *, key: str = "fan", agent: str = "remote", extra: str = "", step: str = "") -> None:
    load_workflow(
        f"""
agents:
  - name: {agent}
    kind: http
    config: {{url: "{url}", timeout: 60s}}
    retry: {{attempts: 3, backoff: 100ms, jitter: false}}
{extra}
workflow:
  key: {key}
  name: {key}
  steps:
    - {{key: calls, agent: {agent}, for_each: "range({items}) | list", input: {{n: "{{{{ item }}}}", run: {key}}}{step}}}
"""
    )


def finished(run: Run) -> Run | None:
    run.refresh_from_db()
    return run if run.is_final else None


def items_of(run: Run) -> Any:
    return StepRun.objects.filter(run=run, map_index__isnull=False)


def successes_per_item(run: Run) -> dict[int, int]:
    counts: dict[int, int] = {}
    for index, status in Attempt.objects.filter(step_run__run=run, step_run__map_index__isnull=False).values_list(
        "step_run__map_index", "status"
    ):
        counts[index] = counts.get(index, 0) + (status == AttemptStatus.SUCCEEDED)
    return counts


def test_two_hundred_calls_are_in_flight_across_two_processes_and_each_succeeds_once() -> None:
    with HoldingServer(delay=1.0) as server:
        http_map(server.url, 200)
        load_workflow(
            f"""
agents:
  - {{name: single, kind: http, config: {{url: "{server.url}"}}}}
workflow: {{key: one, name: one, steps: [{{key: call, agent: single, input: {{one: true}}}}]}}
"""
        )
        with WorkerCluster(workers=2, env=ALLOWED) as cluster:
            started = time.monotonic()
            run = transitions.start_run(workflow="fan")
            singles = [transitions.start_run(workflow="one") for _ in range(10)]
            wait_for(lambda: finished(run), timeout=60, message=f"the map to finish\n{cluster.log()}")
            took = time.monotonic() - started
            for single in singles:
                wait_for(lambda single=single: finished(single), timeout=30, message=f"run {single.pk}\n{cluster.log()}")
            workers = set(Attempt.objects.filter(step_run__run=run).values_list("worker", flat=True))
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert all(single.status == RunStatus.SUCCEEDED for single in singles)
    assert successes_per_item(run) == dict.fromkeys(range(200), 1)
    # One process holds at most 100 calls: more than that at once took both of them.
    assert server.max_in_flight > 100, server.max_in_flight
    assert len(workers) == 2
    assert len(set(server.keys)) == 210, "every call once, each with its own idempotency key"
    assert took < 20, f"200 one-second calls took {took:.1f} s"
    output = StepRun.objects.get(run=run, map_index__isnull=True).output
    assert [o["input"]["n"] for o in output] == list(range(200))
    # The calls reused their connections: far fewer than one per call.
    assert server.connections <= 210


# A worker killed while it reads the cluster's task queue gets its cluster restarted, and the
# messages the old cluster held are sent again (baton_worker): lost on purpose.
@pytest.mark.loses_messages
def test_a_process_killed_with_calls_in_flight_loses_nothing_and_no_step_succeeds_twice() -> None:
    with HoldingServer(delay=2.0) as server:
        http_map(server.url, 100)
        with WorkerCluster(workers=2, env=ALLOWED) as cluster:
            run = transitions.start_run(workflow="fan")
            wait_for(lambda: server.in_flight >= 80, timeout=30, message=f"calls in flight\n{cluster.log()}")
            running = Attempt.objects.filter(status=AttemptStatus.RUNNING)
            labels = set(running.values_list("worker", flat=True))
            victim = max(labels, key=lambda label: running.filter(worker=label).count())
            in_hand = Attempt.objects.filter(status=AttemptStatus.RUNNING, worker=victim).count()
            os.kill(int(victim.rsplit(":", 1)[1]), signal.SIGKILL)
            wait_for(lambda: finished(run), timeout=60, message=f"the map to finish\n{cluster.log()}")
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert in_hand >= 20
    assert successes_per_item(run) == dict.fromkeys(range(100), 1)
    lost = Attempt.objects.filter(step_run__run=run, worker=victim, error_class=ErrorClass.LOST)
    assert lost.count() == in_hand, "every attempt in the killed process is recorded as lost"
    assert not Attempt.objects.filter(step_run__run=run, worker=victim, status=AttemptStatus.SUCCEEDED).filter(
        pk__in=lost.values("pk")
    ).exists()
    again = Attempt.objects.filter(step_run__in=lost.values("step_run"), status=AttemptStatus.SUCCEEDED).exclude(worker=victim)
    assert again.count() == in_hand, "each lost step got a new attempt in another process"


def test_a_cancel_stops_a_hundred_calls_in_flight_within_a_second_and_records_them_cancelled() -> None:
    with HoldingServer(delay=60.0) as server:
        http_map(server.url, 100)
        with WorkerCluster(workers=2, env=ALLOWED) as cluster:
            run = transitions.start_run(workflow="fan")
            wait_for(lambda: server.in_flight == 100, timeout=30, message=f"100 calls in flight\n{cluster.log()}")
            transitions.cancel_run(run_id=run.pk)
            cancelled = time.monotonic()
            wait_for(lambda: server.in_flight == 0, timeout=5, interval=0.01, message="the calls to stop")
            stopped = time.monotonic() - cancelled
    assert stopped < 1.0, f"the calls stopped {stopped:.2f} s after the cancel"
    assert server.abandoned == 100
    assert server.answered == 0
    attempts = Attempt.objects.filter(step_run__run=run, step_run__map_index__isnull=False)
    assert attempts.count() == 100
    assert set(attempts.values_list("status", "error_class")) == {(AttemptStatus.FAILED, ErrorClass.CANCELLED)}
    assert set(items_of(run).values_list("status", flat=True)) == {StepStatus.CANCELLED}


def test_max_concurrency_holds_across_processes_with_slots() -> None:
    with HoldingServer(delay=0.2) as server:
        http_map(server.url, 30, extra="    max_concurrency: 3")
        with WorkerCluster(workers=2, env=ALLOWED) as cluster:
            run = transitions.start_run(workflow="fan")
            wait_for(lambda: finished(run), timeout=60, message=f"the map to finish\n{cluster.log()}")
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert server.max_in_flight <= 3
    assert server.max_in_flight == 3, "the limit is used, not just respected"
    assert successes_per_item(run) == dict.fromkeys(range(30), 1)


def test_an_open_circuit_stops_new_calls_while_the_calls_in_flight_finish() -> None:
    def answer(body: Any) -> tuple[int, Any, float]:
        if body["run"] == "failing":
            return 500, {"error": "down"}, 0.0
        return 200, {"ok": True}, 3.0

    with HoldingServer(answer=answer) as server:
        circuit = "    circuit: {failures: 3, window: 1m, cooldown: 5m}"
        http_map(server.url, 20, key="slow", extra=circuit)
        http_map(server.url, 5, key="failing", extra=circuit)
        http_map(server.url, 5, key="later", extra=circuit)
        with WorkerCluster(workers=2, env=ALLOWED) as cluster:
            slow = transitions.start_run(workflow="slow")
            wait_for(lambda: server.in_flight == 20, timeout=30, message=f"the slow calls in flight\n{cluster.log()}")
            transitions.start_run(workflow="failing")
            wait_for(
                lambda: AgentHealth.objects.filter(agent__name="remote", circuit_state=CircuitState.OPEN).exists(),
                timeout=30,
                message=f"the circuit to open\n{cluster.log()}",
            )
            later = transitions.start_run(workflow="later")
            wait_for(lambda: finished(slow), timeout=30, message=f"the slow calls to finish\n{cluster.log()}")
            wait_for(
                lambda: items_of(later).filter(error_class=ErrorClass.CIRCUIT_OPEN).count() == 5,
                timeout=30,
                message=f"the later items to be refused\n{cluster.log()}",
            )
    assert slow.status == RunStatus.SUCCEEDED, slow.error
    assert successes_per_item(slow) == dict.fromkeys(range(20), 1)
    assert not [b for b in server.bodies if b["run"] == "later"], "no call was made while the circuit is open"
    assert not Attempt.objects.filter(step_run__run=later).exists()


def test_a_call_past_its_timeout_is_stopped_even_when_the_server_trickles_bytes() -> None:
    with HoldingServer(trickle=0.1) as server:
        http_map(server.url, 3, step=", timeout: 1s, retry: {attempts: 1}")
        with WorkerCluster(workers=1, env=ALLOWED) as cluster:
            run = transitions.start_run(workflow="fan")
            wait_for(lambda: finished(run), timeout=30, message=f"the map to fail\n{cluster.log()}")
            wait_for(lambda: server.abandoned == 3, timeout=5, message="the server to see the clients go")
    assert run.status == RunStatus.FAILED
    attempts = list(Attempt.objects.filter(step_run__run=run, error_class=ErrorClass.TIMEOUT))
    assert attempts, list(Attempt.objects.filter(step_run__run=run).values_list("error_class", "error"))
    for attempt in attempts:
        assert attempt.finished_at is not None
        took = (attempt.finished_at - attempt.started_at).total_seconds()
        assert 0.9 <= took < 3, f"the attempt took {took:.1f} s"
        assert "ran past its timeout of 1s" in attempt.error


def test_llm_steps_run_concurrently_and_record_their_tokens_and_cost() -> None:
    with FakeOpenAI() as model:
        from tests.servers import Reply, completion

        model.script(FakeOpenAI.PATH, Reply(200, completion("done", prompt_tokens=10, completion_tokens=4), delay=1.0))
        load_workflow(
            f"""
agents:
  - name: writer
    kind: llm
    config: {{base_url: "{model.base_url}", model: fake-model, api_key_env: "", prices: {{prompt: 1.0, completion: 2.0}}}}
workflow:
  key: write
  name: write
  steps:
    - {{key: drafts, agent: writer, for_each: "range(60) | list", input: {{n: "{{{{ item }}}}"}}}}
"""
        )
        with WorkerCluster(workers=2, env=ALLOWED) as cluster:
            started = time.monotonic()
            run = transitions.start_run(workflow="write")
            wait_for(lambda: finished(run), timeout=60, message=f"the drafts\n{cluster.log()}")
            took = time.monotonic() - started
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert model.max_in_flight > 30
    assert took < 15
    assert successes_per_item(run) == dict.fromkeys(range(60), 1)
    # Each success recorded its own tokens and cost (a machine busy enough to let a lease run
    # out may add a lost attempt, which has none).
    attempts = Attempt.objects.filter(step_run__run=run, step_run__map_index__isnull=False, status=AttemptStatus.SUCCEEDED)
    assert set(attempts.values_list("total_tokens", "cost")) == {(14, 0.018)}
    assert all(any("14 tokens" in line["text"] for line in a.log) for a in attempts)


def most_at_once(outputs: list[dict[str, Any]]) -> int:
    """The most calls of one process that overlapped in time."""
    best = 0
    for pid in {o["pid"] for o in outputs}:
        mine = [o for o in outputs if o["pid"] == pid]
        for o in mine:
            best = max(best, sum(1 for other in mine if other["began"] <= o["began"] < other["ended"]))
    return best


def test_async_python_agents_run_side_by_side_and_plain_ones_one_at_a_time() -> None:
    load_workflow(
        """
agents:
  - {name: napper, kind: python, config: {callable: "tests.agents.basic:nap_async"}}
  - {name: sleeper, kind: python, config: {callable: "tests.agents.basic:nap_sync"}}
workflow:
  key: naps
  name: naps
  steps:
    - {key: async_naps, agent: napper, for_each: "range(40) | list", input: {n: "{{ item }}", seconds: 1}}
    - {key: plain_naps, agent: sleeper, for_each: "range(6) | list", input: {n: "{{ item }}", seconds: 0.3}}
"""
    )
    with WorkerCluster(workers=1) as cluster:
        run = transitions.start_run(workflow="naps")
        wait_for(lambda: finished(run), timeout=60, message=f"the naps\n{cluster.log()}")
    assert run.status == RunStatus.SUCCEEDED, run.error
    heads = {h.step_key: h.output for h in StepRun.objects.filter(run=run, map_index__isnull=True)}
    assert most_at_once(heads["async_naps"]) == 40
    assert most_at_once(heads["plain_naps"]) == 1
    attempt = Attempt.objects.get(step_run__run=run, step_run__step_key="async_naps", step_run__map_index=7)
    assert [line["text"] for line in attempt.log] == ["napping for item 7"]
