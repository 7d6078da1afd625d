"""Agent versions in the engine: a run picks one version of an agent by weight at its first
attempt and keeps it for every later one; the version's config reaches the agent; attempts
record the version they ran and their usage as numbers."""

from __future__ import annotations

import random
import threading
from collections import Counter
from typing import Any

import pytest
import time_machine
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from orchestration import definitions, runtime, transitions, version_choice
from orchestration.models import Agent, AgentVersion, AgentVersionChoice, Attempt, Run, StepRun
from orchestration.spec import SpecError
from orchestration.specs import VersionOption, forget_agents
from orchestration.status import ErrorClass, RunStatus, StepStatus
from tests.servers import Reply, ScriptedServer
from tests.support import drive, load_workflow

pytestmark = pytest.mark.django_db

AGENTS = """
agents:
  - {name: echo, kind: python, config: {callable: "tests.agents.basic:echo"}}
  - {name: priced, kind: python, config: {callable: "tests.agents.basic:priced"}}
  - {name: flaky, kind: python, config: {callable: "tests.agents.basic:flaky"}, retry: {attempts: 3, backoff: 1s, jitter: false}}
"""


def flow(steps: str, *, key: str = "wf", agents: str = AGENTS, extra: str = "") -> None:
    load_workflow(agents + f"workflow:\n  key: {key}\n  name: {key}\n{extra}  steps:\n{steps}\n")


def head(run: Run, key: str) -> StepRun:
    return StepRun.objects.get(run=run, step_key=key, map_index__isnull=True)


def versions(agent: str, **weights: int) -> dict[str, AgentVersion]:
    found = Agent.objects.get(name=agent)
    made = {label: AgentVersion.objects.create(agent=found, label=label, weight=w) for label, w in weights.items()}
    forget_agents()  # what workers would see within AGENT_CACHE_SECONDS
    return made


@pytest.fixture
def seeded() -> Any:
    previous = version_choice.set_rng(random.Random(10))
    yield
    version_choice.set_rng(previous)


def versions_used(run: Run) -> set[int | None]:
    return set(Attempt.objects.filter(step_run__run=run).values_list("agent_version_id", flat=True))


# --- the pick --------------------------------------------------------------------------------


def test_a_weighted_pick_gives_each_version_its_share_of_ten_thousand_picks() -> None:
    options = [VersionOption(1, "stable", 80, {}), VersionOption(2, "canary", 20, {})]
    rng = random.Random(2026)
    picks = Counter(version_choice.pick(options, rng).label for _ in range(10_000))
    # The canary's share has a standard deviation of sqrt(0.2 * 0.8 / 10,000) = 0.004: ±0.02
    # is five of them, so a fair pick fails this about once in two million tries.
    assert abs(picks["canary"] / 10_000 - 0.20) < 0.02


def test_a_version_of_weight_zero_is_never_picked() -> None:
    options = [VersionOption(1, "off", 0, {}), VersionOption(2, "a", 1, {}), VersionOption(3, "b", 3, {})]
    rng = random.Random(7)
    picks = Counter(version_choice.pick(options, rng).label for _ in range(10_000))
    assert picks["off"] == 0 and picks["a"] > 0 and picks["b"] > 0


# --- at claim time ---------------------------------------------------------------------------


def test_an_agent_whose_versions_all_weigh_zero_runs_with_its_own_config_and_no_version() -> None:
    flow("    - {key: a, agent: echo, input: 1}")
    versions("echo", stable=0, canary=0)
    run = transitions.start_run(workflow="wf")
    claim = transitions.claim_step(step_run_id=head(run, "a").pk, worker="w1")
    assert claim is not None and claim.agent_version_id is None and claim.version_config == {}
    assert versions_used(run) == {None}
    assert not AgentVersionChoice.objects.exists()


def test_a_claim_records_the_version_on_the_attempt_and_hands_its_config_to_the_worker() -> None:
    flow("    - {key: a, agent: echo, input: 1}")
    made = versions("echo", canary=1)
    AgentVersion.objects.filter(pk=made["canary"].pk).update(config={"callable": "tests.agents.basic:upper"})
    forget_agents()
    run = transitions.start_run(workflow="wf")
    claim = transitions.claim_step(step_run_id=head(run, "a").pk, worker="w1")
    assert claim is not None and claim.agent_version_id == made["canary"].pk
    assert claim.version_config == {"callable": "tests.agents.basic:upper"}
    assert versions_used(run) == {made["canary"].pk}
    assert AgentVersionChoice.objects.get(run=run, agent_name="echo").version_id == made["canary"].pk


def test_retries_of_a_run_keep_its_version_even_after_the_weights_shift(seeded: Any) -> None:
    flow("    - {key: a, agent: flaky, input: {succeed_on: 3}}")
    made = versions("flaky", stable=50, canary=50)
    with time_machine.travel(timezone.now(), tick=False) as clock:
        run = transitions.start_run(workflow="wf")
        claim = transitions.claim_step(step_run_id=head(run, "a").pk, worker="w1")
        assert claim is not None and claim.agent_version_id is not None
        first = AgentVersion.objects.get(pk=claim.agent_version_id)
        other = next(v for v in made.values() if v.pk != first.pk)
        transitions.record_failure(claim=claim, error_class=ErrorClass.TRANSIENT, message="outage")
        # Every new run would now pick the other version; this one is sticky.
        definitions.set_version_weights(agent=first.agent, weights={first.label: 0, other.label: 100})
        forget_agents()
        run = drive(run, clock=clock)
    assert run.status == RunStatus.SUCCEEDED
    assert Attempt.objects.filter(step_run__run=run).count() == 3
    assert versions_used(run) == {first.pk}


def test_every_step_and_map_item_of_a_run_uses_one_version_and_runs_share_the_traffic(seeded: Any) -> None:
    flow(
        "    - {key: a, agent: echo, input: 1}\n"
        "    - {key: b, agent: echo, after: [a], input: 2}\n"
        "    - {key: c, agent: echo, after: [a], input: 3}\n"
        "    - {key: m, agent: echo, after: [b, c], for_each: input.items}",
        extra="  inputs: {items: {type: list, default: [1, 2, 3, 4, 5, 6, 7, 8]}}\n",
    )
    versions("echo", stable=50, canary=50)
    used = Counter()
    for _ in range(12):
        run = drive(transitions.start_run(workflow="wf"))
        assert run.status == RunStatus.SUCCEEDED
        (version,) = versions_used(run)
        assert version is not None
        used[version] += 1
    assert len(used) == 2, "both versions got runs"
    assert AgentVersionChoice.objects.count() == 12, "one choice per run"


def test_a_fallback_to_an_agent_the_run_already_used_runs_the_same_version(seeded: Any) -> None:
    agents = AGENTS + '  - {name: refuse, kind: python, config: {callable: "tests.agents.basic:refuse"}, fallback: echo}\n'
    flow("    - {key: a, agent: echo, input: 1}\n    - {key: b, agent: refuse, after: [a], input: 2}", agents=agents)
    versions("echo", stable=50, canary=50)
    for _ in range(6):
        run = drive(transitions.start_run(workflow="wf"))
        assert run.status == RunStatus.SUCCEEDED and head(run, "b").agent_name == "echo"
        by_agent = set(Attempt.objects.filter(step_run__run=run).values_list("agent_name", "agent_version_id"))
        (version,) = {v for name, v in by_agent if name == "echo"}
        assert version is not None and ("refuse", None) in by_agent, "the primary has no versions"


def test_a_chunk_of_map_items_makes_one_choice_for_its_run() -> None:
    flow("    - {key: m, agent: echo, for_each: input.items}", extra="  inputs: {items: {type: list, default: [1, 2, 3, 4, 5, 6]}}\n")
    made = versions("echo", canary=1)
    run = transitions.start_run(workflow="wf")
    items = list(StepRun.objects.filter(run=run, map_index__isnull=False).values_list("pk", flat=True))
    assert len(items) == 6
    with CaptureQueriesContext(connection) as queries:
        claims = transitions.claim_steps(step_run_ids=items, worker="w1")
    assert len(claims) == 6 and {c.agent_version_id for c in claims} == {made["canary"].pk}
    choice_queries = [q["sql"] for q in queries.captured_queries if "agentversionchoice" in q["sql"]]
    # Read what is stored, insert the pick, read it back: once for the whole chunk.
    assert len(choice_queries) == 3


def test_claiming_a_step_of_an_agent_without_versions_costs_no_extra_query() -> None:
    flow("    - {key: a, agent: echo, input: 1}\n    - {key: b, agent: priced, input: {}}")
    versions("priced", canary=1)  # another agent's versions must not cost this one anything
    warm = transitions.start_run(workflow="wf")
    transitions.claim_step(step_run_id=head(warm, "a").pk, worker="w0")  # the caches are filled
    run = transitions.start_run(workflow="wf")
    step = head(run, "a")
    with CaptureQueriesContext(connection) as queries:
        assert transitions.claim_step(step_run_id=step.pk, worker="w1") is not None
    # As before agent versions existed: savepoint, claim, read back, attempt, event, release.
    assert len(queries) == 6, [q["sql"][:60] for q in queries.captured_queries]
    assert not [q for q in queries.captured_queries if "agentversion" in q["sql"]]


def test_handing_on_to_the_next_step_of_an_agent_without_versions_asks_nothing_about_versions() -> None:
    flow("    - {key: a, agent: echo, input: 1}\n    - {key: b, agent: echo, after: [a], input: 2}")
    versions("priced", canary=1)
    run = transitions.start_run(workflow="wf")
    claim = transitions.claim_step(step_run_id=head(run, "a").pk, worker="w1")
    assert claim is not None
    with CaptureQueriesContext(connection) as queries:
        taken = transitions.record_success_and_take_next(claim=claim, output=1, worker="w1")
    assert taken is not None and taken.agent_version_id is None
    assert not [q for q in queries.captured_queries if "agentversion" in q["sql"]]


def test_the_next_step_a_worker_takes_itself_runs_the_runs_version() -> None:
    flow("    - {key: a, agent: echo, input: 1}\n    - {key: b, agent: echo, after: [a], input: 2}")
    made = versions("echo", canary=1)
    run = transitions.start_run(workflow="wf")
    claim = transitions.claim_step(step_run_id=head(run, "a").pk, worker="w1")
    assert claim is not None
    taken = transitions.record_success_and_take_next(claim=claim, output=1, worker="w1")
    assert taken is not None and taken.step_key == "b"
    assert taken.agent_version_id == made["canary"].pk
    assert versions_used(run) == {made["canary"].pk}


@pytest.mark.django_db(transaction=True)
def test_two_workers_claiming_parallel_steps_of_one_run_at_once_end_with_one_version(monkeypatch: Any) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("a race of two connections: SQLite serialises writers")
    flow("    - {key: a, agent: echo, input: 1}\n    - {key: b, agent: echo, input: 2}")
    made = versions("echo", stable=50, canary=50)
    run = transitions.start_run(workflow="wf")
    steps = {"stable": head(run, "a").pk, "canary": head(run, "b").pk}
    # Both claims look for a stored choice, find none, and only then pick: each picks its own
    # version (by the thread's name), so only the insert's conflict can make them agree.
    both_looked = threading.Barrier(2, timeout=10)

    def pick(options: Any, rng: Any = None) -> VersionOption:
        both_looked.wait()
        return next(o for o in options if o.label == threading.current_thread().name)

    claims: dict[str, Any] = {}
    errors: list[BaseException] = []

    def claim(label: str) -> None:
        try:
            claims[label] = transitions.claim_step(step_run_id=steps[label], worker=f"w-{label}")
        except BaseException as exc:  # reported by the test, not lost in the thread
            errors.append(exc)
        finally:
            connections.close_all()

    monkeypatch.setattr(version_choice, "pick", pick)
    threads = [threading.Thread(target=claim, args=(label,), name=label) for label in steps]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    assert claims["stable"] is not None and claims["canary"] is not None
    assert claims["stable"].agent_version_id == claims["canary"].agent_version_id
    assert versions_used(run) == {claims["stable"].agent_version_id}
    assert claims["stable"].agent_version_id in {v.pk for v in made.values()}
    assert AgentVersionChoice.objects.filter(run=run).count() == 1


# --- the version's config reaches the agent --------------------------------------------------


def test_each_run_calls_only_its_versions_server_and_its_retries_stay_there(settings: Any, seeded: Any) -> None:
    settings.BATON_HTTP_ALLOWED_HOSTS = "127.0.0.1"
    with ScriptedServer() as own, ScriptedServer() as stable, ScriptedServer() as canary:
        for server in (own, stable, canary):
            server.script("/call", Reply(200, {"ok": True}))
        agents = AGENTS + f"""  - name: caller
    kind: http
    config: {{url: "{own.url}/call"}}
    retry: {{attempts: 2, backoff: 1s, jitter: false}}
"""
        flow("    - {key: call, agent: caller, input: {n: '{{ input.n }}'}}", agents=agents, extra="  inputs: {n: {type: integer}}\n")
        made = versions("caller", stable=50, canary=50)
        for label, server in (("stable", stable), ("canary", canary)):
            AgentVersion.objects.filter(pk=made[label].pk).update(config={"url": f"{server.url}/call"})
        forget_agents()
        runs = [drive(transitions.start_run(workflow="wf", input={"n": n})) for n in range(10)]
        assert all(run.status == RunStatus.SUCCEEDED for run in runs)
        by_version = {label: {r.input["n"] for r in runs if versions_used(r) == {made[label].pk}} for label in made}
        assert by_version["stable"] and by_version["canary"]
        assert {int(seen.body["n"]) for seen in stable.seen("/call")} == by_version["stable"]
        assert {int(seen.body["n"]) for seen in canary.seen("/call")} == by_version["canary"]
        assert own.seen("/call") == [], "no run called the agent's own URL"

        # A 503 then a 200 from the canary; between the two attempts all traffic moves to stable.
        definitions.set_version_weights(agent=Agent.objects.get(name="caller"), weights={"stable": 0, "canary": 1})
        forget_agents()
        canary.script("/call", Reply(503, {"error": "busy"}), Reply(200, {"ok": True}))
        with time_machine.travel(timezone.now(), tick=False) as clock:
            run = transitions.start_run(workflow="wf", input={"n": 99})
            claim = transitions.claim_step(step_run_id=head(run, "call").pk, worker="w1")
            assert claim is not None
            outcome = runtime._run_agent(Agent.objects.get(name="caller"), claim, threading.Event())
            assert outcome.result is None and "503" in outcome.message
            transitions.record_failure(claim=claim, error_class=outcome.error_class, message=outcome.message)
            definitions.set_version_weights(agent=Agent.objects.get(name="caller"), weights={"stable": 1, "canary": 0})
            forget_agents()
            run = drive(run, clock=clock)
        assert run.status == RunStatus.SUCCEEDED
        assert [int(s.body["n"]) for s in canary.seen("/call")].count(99) == 2, "both attempts went to the canary"
        assert 99 not in {int(s.body["n"]) for s in stable.seen("/call")}
        assert versions_used(run) == {made["canary"].pk}


# --- usage as numbers ------------------------------------------------------------------------


def test_an_attempt_stores_its_usage_as_numbers_and_nonsense_as_zero() -> None:
    flow(
        "    - {key: good, agent: priced, input: {usage: {prompt_tokens: 30, completion_tokens: 12, cost: 0.25}}}\n"
        "    - {key: total, agent: priced, input: {usage: {total_tokens: 50, prompt_tokens: 1}}}\n"
        "    - {key: silly, agent: priced, input: {usage: {prompt_tokens: 'lots', cost: 'n/a'}}}\n"
        "    - {key: items, agent: priced, for_each: '[1, 2]', input: {usage: {prompt_tokens: 2, completion_tokens: 1, cost: 0.5}}}"
    )
    run = drive(transitions.start_run(workflow="wf"))
    assert run.status == RunStatus.SUCCEEDED

    def numbers(key: str) -> list[tuple[int, float]]:
        rows = Attempt.objects.filter(step_run__run=run, step_run__step_key=key).order_by("step_run_id")
        return list(rows.values_list("total_tokens", "cost"))

    assert numbers("good") == [(42, 0.25)]
    assert numbers("total") == [(50, 0.0)]
    assert numbers("silly") == [(0, 0.0)]
    assert numbers("items") == [(3, 0.5), (3, 0.5)]


def test_a_failed_attempt_stores_the_usage_it_reported_as_numbers() -> None:
    flow("    - {key: a, agent: flaky, input: {succeed_on: 2}}")
    run = transitions.start_run(workflow="wf")
    claim = transitions.claim_step(step_run_id=head(run, "a").pk, worker="w1")
    assert claim is not None
    transitions.record_failure(
        claim=claim, error_class=ErrorClass.TRANSIENT, message="billed anyway", usage={"total_tokens": 7, "cost": 0.01}
    )
    attempt = Attempt.objects.get(step_run__run=run)
    assert (attempt.total_tokens, attempt.cost, attempt.status) == (7, 0.01, "failed")
    assert head(run, "a").status == StepStatus.RETRYING


# --- the workflow file -----------------------------------------------------------------------

VERSIONED = """
agents:
  - name: writer
    kind: python
    config: {callable: "tests.agents.basic:echo"}
    versions:
      - {label: stable, weight: 90, note: the current prompt}
      - {label: canary, weight: 10, config: {callable: "tests.agents.basic:upper"}}
workflow:
  key: wf
  name: wf
  steps:
    - {key: a, agent: writer, input: {text: hi}}
"""
VERSIONS_BLOCK = VERSIONED[VERSIONED.index("    versions:") : VERSIONED.index("workflow:")]


def test_a_file_with_agent_versions_round_trips_through_import_and_export() -> None:
    load_workflow(VERSIONED)
    agent = Agent.objects.get(name="writer")
    assert {v.label: (v.weight, v.config, v.note) for v in agent.versions.all()} == {
        "stable": (90, {}, "the current prompt"),
        "canary": (10, {"callable": "tests.agents.basic:upper"}, ""),
    }
    assert agent.version_events.get().reason == "imported from a workflow file"
    exported = definitions.export_document("wf")
    assert "versions:" in exported
    load_workflow(exported)
    again = Agent.objects.get(name="writer")
    assert definitions.agent_spec(again) == definitions.agent_spec(agent)
    assert again.version_events.count() == 1, "importing the same weights again changes nothing"


def test_importing_a_file_without_a_used_version_keeps_it_with_no_traffic() -> None:
    load_workflow(VERSIONED)
    run = drive(transitions.start_run(workflow="wf"))
    used = AgentVersion.objects.get(pk=AgentVersionChoice.objects.get(run=run).version_id)
    unused = AgentVersion.objects.exclude(pk=used.pk).get()
    load_workflow(VERSIONED.replace(VERSIONS_BLOCK, ""))
    assert list(AgentVersion.objects.values_list("label", "weight")) == [(used.label, 0)]
    assert not AgentVersion.objects.filter(pk=unused.pk).exists()


@pytest.mark.parametrize(
    ("versions_text", "problem"),
    [
        ("[{label: 'no spaces'}]", "version 'no spaces': field `label` may hold only"),
        ("[{label: a}, {label: a}]", "version 'a': defined twice"),
        ("[{label: a, weight: 10001}]", "version 'a': field `weight` must be a whole number from 0 to 10000"),
        ("[{label: a, weight: -1}]", "version 'a': field `weight` must be a whole number from 0 to 10000"),
        ("[{label: a, config: {callable: 'os:system'}}]", "version 'a': field `config.callable`"),
        ("[{label: a, colour: red}]", "version 'a': unknown field `colour`"),
        ("{label: a}", "field `versions` must be a list"),
    ],
)
def test_a_file_with_bad_versions_is_refused_naming_the_version_and_the_field(versions_text: str, problem: str) -> None:
    text = f"""
agents:
  - name: writer
    kind: python
    config: {{callable: "tests.agents.basic:echo"}}
    versions: {versions_text}
"""
    with pytest.raises(SpecError) as refused:
        load_workflow(text)
    assert any(problem in line for line in refused.value.problems), refused.value.problems
    assert not Agent.objects.filter(name="writer").exists()


def test_an_http_versions_config_may_not_read_a_secret_an_agent_may_not() -> None:
    text = """
agents:
  - name: caller
    kind: http
    config: {url: "http://127.0.0.1:9/x"}
    versions:
      - {label: leaky, weight: 1, config: {headers: {Authorization: "${DATABASE_URL}"}}}
"""
    with pytest.raises(SpecError) as refused:
        load_workflow(text)
    assert any("version 'leaky'" in line and "DATABASE_URL" in line for line in refused.value.problems)
