"""Log lines per attempt: what a python agent prints and logs during its call lands on that
attempt, bounded, redacted, never mixed with another call's, and shown escaped on the run page."""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import os
import sys
import threading
from typing import Any

import pytest
import time_machine
from django.utils import timezone

from orchestration import transitions
from orchestration.agents import AgentContext, invoke
from orchestration.agents import logs as agent_logs
from orchestration.models import Attempt, Run, StepRun
from orchestration.status import AttemptStatus, RunStatus
from tests.support import WorkerCluster, drive, load_workflow, wait_for

pytestmark = pytest.mark.django_db

HERE = "tests.engine.test_attempt_logs"
SECRET = "tok-5e1f-9a7c-d00d"
logger = logging.getLogger("tests.agents.talkative")


# --- the agents ---------------------------------------------------------------------------------


def talkative(payload: Any, context: Any) -> Any:
    print("reading the order")
    logger.info("order %s has %d lines", payload["order"], 3)
    logger.warning("line 2 is out of stock")
    sys.stderr.write("a note on stderr\n")
    print("no newline at the end", end="")
    return {"ok": True}


def fails_once_talking(payload: Any, context: Any) -> Any:
    print(f"attempt {context.attempt} starts")
    if context.attempt == 1:
        logger.error("the warehouse did not answer")
        raise ConnectionError("warehouse unreachable")
    return {"attempt": context.attempt}


def shouts(payload: Any, context: Any) -> Any:
    for number in range(int(payload["lines"])):
        print(f"line {number} " + "x" * int(payload.get("width", 0)))
    return {"printed": payload["lines"]}


def one_long_line(payload: Any, context: Any) -> Any:
    print("y" * int(payload["width"]))
    return None


def leaks(payload: Any, context: Any) -> Any:
    secret = os.environ["BATON_SECRET_LOGS_TOKEN"]
    print(f"calling with {secret}")
    logger.info("token is %s", secret)
    # One secret written in two pieces: the line is redacted once it is whole.
    sys.stdout.write(f"half {secret[:8]}")
    sys.stdout.write(f"{secret[8:]} done\n")
    # A line long enough to be cut, with the secret right where the cut falls.
    print("z" * 2040 + secret + "z" * 100)
    return {"ok": True}


def hostile(payload: Any, context: Any) -> Any:
    print("<script>alert('log')</script>")
    raise ValueError("<b>bold</b> failure")


def item_logger(payload: Any, context: Any) -> Any:
    print(f"item {payload}")
    return payload


def with_nul(payload: Any, context: Any) -> Any:
    print("before\x00after")
    return None


AGENTS = f"""
agents:
  - {{name: talkative, kind: python, config: {{callable: "{HERE}:talkative"}}}}
  - {{name: flaky-talker, kind: python, config: {{callable: "{HERE}:fails_once_talking"}}, retry: {{attempts: 2, backoff: 1s, jitter: false}}}}
  - {{name: shouts, kind: python, config: {{callable: "{HERE}:shouts"}}}}
  - {{name: long-line, kind: python, config: {{callable: "{HERE}:one_long_line"}}}}
  - {{name: leaks, kind: python, config: {{callable: "{HERE}:leaks"}}}}
  - {{name: hostile, kind: python, config: {{callable: "{HERE}:hostile"}}, retry: {{attempts: 1}}}}
  - {{name: items, kind: python, config: {{callable: "{HERE}:item_logger"}}}}
  - {{name: nul, kind: python, config: {{callable: "{HERE}:with_nul"}}}}
"""


@pytest.fixture(autouse=True)
def agents_here(settings: Any) -> None:
    settings.BATON_PYTHON_AGENTS = [*settings.BATON_PYTHON_AGENTS, HERE]


def flow(steps: str, *, owner: str = "") -> None:
    owned = f"  owner: {owner}\n" if owner else ""
    load_workflow(AGENTS + f"workflow:\n  key: wf\n  name: wf\n{owned}  steps:\n{steps}\n")


def attempts(run: Run, key: str) -> list[Attempt]:
    return list(
        Attempt.objects.filter(step_run__run=run, step_run__step_key=key).order_by(
            "step_run__map_index", "number"
        )
    )


def said(attempt: Attempt) -> list[tuple[str, str, str]]:
    return [(line["level"], line["source"], line["text"]) for line in attempt.log]


# --- capture ------------------------------------------------------------------------------------


def test_what_a_python_agent_prints_and_logs_lands_on_its_attempt_in_order() -> None:
    flow("    - {key: read, agent: talkative, input: {order: A-7}}")
    run = drive(transitions.start_run(workflow="wf"))
    assert run.status == RunStatus.SUCCEEDED
    [attempt] = attempts(run, "read")
    assert said(attempt) == [
        ("PRINT", "stdout", "reading the order"),
        ("INFO", "tests.agents.talkative", "order A-7 has 3 lines"),
        ("WARNING", "tests.agents.talkative", "line 2 is out of stock"),
        ("PRINT", "stderr", "a note on stderr"),
        ("PRINT", "stdout", "no newline at the end"),
    ]
    assert all(
        attempt.started_at <= timezone.datetime.fromisoformat(line["at"]) <= attempt.finished_at
        for line in attempt.log
    )


def test_printing_still_reaches_the_workers_own_output(capsys: pytest.CaptureFixture[str]) -> None:
    flow("    - {key: read, agent: talkative, input: {order: A-7}}")
    drive(transitions.start_run(workflow="wf"))
    captured = capsys.readouterr()
    assert "reading the order\n" in captured.out
    assert "a note on stderr\n" in captured.err


def test_each_attempt_keeps_its_own_lines_and_a_failed_one_keeps_them_beside_its_traceback() -> None:
    flow("    - {key: fetch, agent: flaky-talker}")
    with time_machine.travel(timezone.now(), tick=False) as clock:
        run = drive(transitions.start_run(workflow="wf"), clock=clock)
    assert run.status == RunStatus.SUCCEEDED
    first, second = attempts(run, "fetch")
    assert (
        first.status == AttemptStatus.FAILED and "ConnectionError: warehouse unreachable" in first.traceback
    )
    assert said(first) == [
        ("PRINT", "stdout", "attempt 1 starts"),
        ("ERROR", "tests.agents.talkative", "the warehouse did not answer"),
    ]
    assert said(second) == [("PRINT", "stdout", "attempt 2 starts")]


def test_a_step_the_worker_continues_with_keeps_its_own_lines_too() -> None:
    # The second step is claimed in the transaction that records the first
    # (record_success_and_take_next): each result still carries its own attempt's lines.
    flow(
        "    - {key: one, agent: items, input: first}\n    - {key: two, agent: items, after: [one], input: second}"
    )
    run = drive(transitions.start_run(workflow="wf"))
    assert run.status == RunStatus.SUCCEEDED
    assert [said(a) for a in attempts(run, "one") + attempts(run, "two")] == [
        [("PRINT", "stdout", "item first")],
        [("PRINT", "stdout", "item second")],
    ]


def test_every_item_of_a_map_keeps_its_own_lines() -> None:
    flow("    - {key: each, agent: items, for_each: '{{ [1, 2, 3] }}', input: '{{ item }}'}")
    run = drive(transitions.start_run(workflow="wf"))
    assert run.status == RunStatus.SUCCEEDED
    assert [said(a) for a in attempts(run, "each") if a.step_run.map_index is not None] == [
        [("PRINT", "stdout", "item 1")],
        [("PRINT", "stdout", "item 2")],
        [("PRINT", "stdout", "item 3")],
    ]


def context_for(step: str) -> AgentContext:
    return AgentContext(
        run_id=1,
        step_key=step,
        attempt=1,
        iteration=0,
        item=None,
        index=None,
        agent=step,
        idempotency_key=step,
    )


def test_two_agent_calls_in_two_threads_keep_their_own_lines(settings: Any) -> None:
    # The two calls take turns line by line, so every line of one is written between two of
    # the other's: a capture keyed on anything process-wide would mix them.
    turns = [threading.Semaphore(1), threading.Semaphore(0)]
    captured: dict[str, list[tuple[str, str, str]]] = {}

    def taking_turns(payload: Any, context: Any) -> Any:
        me, other = (0, 1) if context.step_key == "left" else (1, 0)
        for number in range(20):
            turns[me].acquire()
            print(f"{context.step_key} {number}")
            logger.info("%s logged %d", context.step_key, number)
            turns[other].release()
        return None

    def call(step: str) -> None:
        with agent_logs.capturing() as capture:
            taking_turns(None, context_for(step))
        captured[step] = [(line["level"], line["source"], line["text"]) for line in capture.lines()]

    threads = [threading.Thread(target=call, args=(step,)) for step in ("left", "right")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    for step in ("left", "right"):
        expected = []
        for number in range(20):
            expected += [
                ("PRINT", "stdout", f"{step} {number}"),
                ("INFO", logger.name, f"{step} logged {number}"),
            ]
        assert captured[step] == expected


def test_two_agent_calls_as_asyncio_tasks_keep_their_own_lines() -> None:
    async def agent_call(step: str) -> list[str]:
        with agent_logs.capturing() as capture:
            for number in range(10):
                print(f"{step} {number}")
                await asyncio.sleep(0)  # hands the loop to the other task between two lines
        return [line["text"] for line in capture.lines()]

    async def both() -> list[list[str]]:
        return list(await asyncio.gather(agent_call("a"), agent_call("b")))

    left, right = asyncio.run(both())
    assert left == [f"a {n}" for n in range(10)]
    assert right == [f"b {n}" for n in range(10)]


def test_a_real_agent_call_through_invoke_is_captured_only_in_its_own_context(settings: Any) -> None:
    outside: list[str] = []
    with agent_logs.capturing() as capture:
        invoke("python", {"callable": f"{HERE}:item_logger"}, "inside", context_for("inside"))
        # A thread started without the call's context is another context: not captured.
        thread = threading.Thread(target=lambda: outside.append(str(agent_logs._current.get())))
        thread.start()
        thread.join()
    print("after the call")
    assert [line["text"] for line in capture.lines()] == ["item inside"]
    assert outside == ["None"]


@pytest.mark.cluster
@pytest.mark.django_db(transaction=True)
def test_a_real_worker_records_the_lines_and_its_own_log_still_shows_prints_and_warnings(
    settings: Any,
) -> None:
    flow(
        "    - {key: read, agent: talkative, input: {order: A-7}}\n    - {key: also, agent: talkative, input: {order: B-2}}"
    )
    with WorkerCluster(
        workers=2, env={"BATON_PYTHON_AGENTS": ",".join(settings.BATON_PYTHON_AGENTS)}
    ) as cluster:
        run = transitions.start_run(workflow="wf")
        wait_for(
            lambda: Run.objects.get(pk=run.pk).is_final,
            timeout=30,
            message=f"the run to finish\n{cluster.log()}",
        )
        log = cluster.log()
    assert Run.objects.get(pk=run.pk).status == RunStatus.SUCCEEDED, log
    for key, order in (("read", "A-7"), ("also", "B-2")):
        [attempt] = attempts(run, key)
        assert [text for _, _, text in said(attempt)] == [
            "reading the order",
            f"order {order} has 3 lines",
            "line 2 is out of stock",
            "a note on stderr",
            "no newline at the end",
        ]
    # The worker's own output is as it was: what agents print, their warnings (logging's last
    # resort, their logger having no handler), and Baton's own lines.
    assert "reading the order" in log and "a note on stderr" in log
    assert "line 2 is out of stock" in log and "order A-7 has 3 lines" not in log
    assert "baton worker ready" in log


def test_a_thread_the_agent_runs_in_a_copy_of_its_context_is_captured_with_it() -> None:
    def worker() -> None:
        logger.info("from the agent's own thread")

    with agent_logs.capturing() as capture:
        thread = threading.Thread(target=contextvars.copy_context().run, args=(worker,))
        thread.start()
        thread.join()
    assert [line["text"] for line in capture.lines()] == ["from the agent's own thread"]


# --- bounds -------------------------------------------------------------------------------------


def test_lines_past_the_limit_are_counted_not_kept_and_a_last_line_says_how_many(settings: Any) -> None:
    settings.BATON_ATTEMPT_LOG_LINES = 5
    flow("    - {key: loud, agent: shouts, input: {lines: 12}}")
    run = drive(transitions.start_run(workflow="wf"))
    [attempt] = attempts(run, "loud")
    assert [text for _, _, text in said(attempt)[:5]] == [f"line {n} " for n in range(5)]
    level, source, text = said(attempt)[5]
    assert (level, source) == ("CUT", "baton")
    assert text == "7 more lines (51 bytes) dropped: an attempt keeps at most 5 lines and 32,768 bytes"
    assert len(attempt.log) == 6 and attempt.log_count == 5 and attempt.log_cut


def test_an_attempt_keeps_at_most_its_bytes(settings: Any) -> None:
    settings.BATON_ATTEMPT_LOG_BYTES = 1024
    flow(
        "    - {key: loud, agent: shouts, input: {lines: 30, width: 93}}"
    )  # 100 bytes a line, 101 from line 10
    run = drive(transitions.start_run(workflow="wf"))
    [attempt] = attempts(run, "loud")
    kept = [line for line in attempt.log if line["level"] != "CUT"]
    assert len(kept) == 10
    assert sum(len(line["text"].encode()) for line in kept) <= 1024
    assert attempt.log[-1]["text"].startswith("20 more lines (2,020 bytes) dropped")


def test_a_line_longer_than_the_line_limit_is_cut_and_says_so(settings: Any) -> None:
    flow("    - {key: wide, agent: long-line, input: {width: 5000}}")
    run = drive(transitions.start_run(workflow="wf"))
    [attempt] = attempts(run, "wide")
    [line] = attempt.log
    assert line["text"] == "y" * 2048 + " … [line cut: 2,952 more bytes]"


def test_a_nul_in_a_printed_line_is_stored_as_text_not_refused_by_the_database() -> None:
    flow("    - {key: odd, agent: nul}")
    run = drive(transitions.start_run(workflow="wf"))
    assert run.status == RunStatus.SUCCEEDED
    [attempt] = attempts(run, "odd")
    assert said(attempt) == [("PRINT", "stdout", "before\\x00after")]


# --- secrets ------------------------------------------------------------------------------------


def test_a_secret_is_redacted_in_every_line_before_it_is_cut_or_stored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BATON_SECRET_LOGS_TOKEN", SECRET)
    flow("    - {key: call, agent: leaks}")
    run = drive(transitions.start_run(workflow="wf"))
    assert run.status == RunStatus.SUCCEEDED
    [attempt] = attempts(run, "call")
    stored = json.dumps(attempt.log)
    assert SECRET[:6] not in stored, "not even the part of a secret before a cut"
    texts = [line["text"] for line in attempt.log]
    assert texts[:3] == ["calling with [redacted]", "token is [redacted]", "half [redacted] done"]
    # Cut inside the replacement, never inside the secret.
    assert texts[3] == "z" * 2040 + "[redacte … [line cut: 102 more bytes]"


# --- the page -----------------------------------------------------------------------------------


def opened_step(client: Any, run: Any, key: str) -> str:
    """What the run page shows when the reader opens the step `key`."""
    step = StepRun.objects.get(run=run, step_key=key)
    return client.get(f"/runs/{run.pk}/rows/{step.pk}/", headers={"HX-Request": "true"}).content.decode()


def test_an_opened_step_shows_the_lines_folded_with_their_count_and_escaped(client: Any, ops: Any) -> None:
    flow("    - {key: bad, agent: hostile}", owner="ops")
    run = drive(transitions.start_run(workflow="wf", started_by=ops))
    assert run.status == RunStatus.FAILED
    client.force_login(ops)
    page = opened_step(client, run, "bad")
    assert "1 log line</summary>" in page
    assert "&lt;script&gt;alert(&#x27;log&#x27;)&lt;/script&gt;" in page
    assert "<script>alert(" not in page
    assert '<span class="log-line__level">print</span>' in page


def test_a_cut_log_says_so_on_the_page(client: Any, ops: Any, settings: Any) -> None:
    settings.BATON_ATTEMPT_LOG_LINES = 3
    flow("    - {key: loud, agent: shouts, input: {lines: 9}}", owner="ops")
    run = drive(transitions.start_run(workflow="wf", started_by=ops))
    client.force_login(ops)
    page = opened_step(client, run, "loud")
    assert '3 log lines <span class="tag tag--cut">cut</span></summary>' in page
    assert "✂ cut" in page and "6 more lines (42 bytes) dropped" in page


def test_a_lost_attempt_has_no_lines() -> None:
    flow("    - {key: read, agent: talkative, input: {order: A-7}}")
    run = transitions.start_run(workflow="wf")
    step = StepRun.objects.get(run=run, step_key="read")
    claim = transitions.claim_step(step_run_id=step.pk, worker="doomed:1")
    assert claim is not None
    assert transitions.expire_lease(
        step_run_id=step.pk, token=claim.token, attempt=claim.attempt, run_id=run.pk
    )
    [attempt] = attempts(run, "read")
    assert attempt.status == AttemptStatus.FAILED and attempt.log == [] and attempt.log_count == 0


def test_the_admin_shows_an_attempts_lines_read_only_and_escaped(client: Any, admin_user: Any) -> None:
    flow("    - {key: bad, agent: hostile}")
    run = drive(transitions.start_run(workflow="wf"))
    [attempt] = attempts(run, "bad")
    client.force_login(admin_user)
    page = client.get(f"/admin/orchestration/attempt/{attempt.pk}/change/").content.decode()
    assert "Log lines" in page
    assert "PRINT stdout: &lt;script&gt;alert(&#x27;log&#x27;)&lt;/script&gt;" in page
    assert "<script>alert(" not in page
