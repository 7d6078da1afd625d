"""The management commands: import, export, start and cancel, as an operator types them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.core.management import CommandError, call_command

from orchestration import transitions
from orchestration.models import Agent, Run, Workflow, WorkflowVersion
from orchestration.spec import load_text
from orchestration.status import RunStatus
from tests.servers import Reply, ScriptedServer
from tests.support import ROOT, WorkerCluster, drive, load_workflow

pytestmark = pytest.mark.django_db

PIPELINE = """
agents:
  - {name: echo, kind: python, config: {callable: "tests.agents.basic:echo"}}
  - name: writer
    kind: simulated
    description: Writes a draft.
    config: {output: {text: "a draft about {{ input.research.topic }}"}}
    timeout: 2m
    retry: {attempts: 2, backoff: 500ms}
workflow:
  key: pipeline
  name: Pipeline
  inputs:
    topic: {type: string, required: true}
    words: {type: integer, default: 800}
  steps:
    - {key: research, agent: echo, input: {topic: "{{ input.topic }}", words: "{{ input.words }}"}}
    - {key: write, agent: writer, after: [research], timeout: 30s}
    - key: fan
      agent: echo
      after: [research]
      for_each: "{{ [1, 2, 3] }}"
      concurrency: 2
      input: {n: "{{ item }}"}
  output: {text: "{{ steps.write.output.text }}", fanned: "{{ steps.fan.output }}"}
"""


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def run_command(*args: Any) -> tuple[str, str]:
    out, err = _Buffer(), _Buffer()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


class _Buffer:
    def __init__(self) -> None:
        self.parts: list[str] = []

    def write(self, text: str) -> None:
        self.parts.append(text)

    def flush(self) -> None:
        pass

    def getvalue(self) -> str:
        return "".join(self.parts)


def counts() -> tuple[int, int, int]:
    return Workflow.objects.count(), Agent.objects.count(), WorkflowVersion.objects.count()


def failing_import(*files: str) -> tuple[str, str]:
    err = _Buffer()
    with pytest.raises(CommandError) as raised:
        call_command("import_workflow", *files, stdout=_Buffer(), stderr=err)
    return err.getvalue(), str(raised.value)


# --- import_workflow ---------------------------------------------------------------------------


def test_importing_a_file_publishes_its_workflow_and_names_its_agents(tmp_path: Path) -> None:
    out, _ = run_command("import_workflow", write(tmp_path, "pipeline.yaml", PIPELINE))
    assert out == "imported pipeline as version 1 (agents: echo, writer)\n"
    out, _ = run_command("import_workflow", write(tmp_path, "pipeline.yaml", PIPELINE))
    assert out == "pipeline unchanged: still version 1 (agents: echo, writer)\n"
    out, _ = run_command("import_workflow", write(tmp_path, "pipeline.yaml", PIPELINE.replace("Pipeline", "Pipeline v2")))
    assert out == "imported pipeline as version 2 (agents: echo, writer)\n"
    assert Agent.objects.get(name="writer").timeout_seconds == 120


def test_checking_a_good_file_says_ok_and_saves_nothing(tmp_path: Path) -> None:
    path = write(tmp_path, "pipeline.yaml", PIPELINE)
    out, _ = run_command("import_workflow", "--check", path)
    assert out == f"{path}: OK\n"
    assert counts() == (0, 0, 0)


def test_checking_sees_agents_defined_by_an_earlier_file(tmp_path: Path) -> None:
    agents, _, workflow = PIPELINE.partition("workflow:")
    first = write(tmp_path, "agents.yaml", agents)
    second = write(tmp_path, "workflow.yaml", "workflow:" + workflow)
    out, _ = run_command("import_workflow", "--check", first, second)
    assert out == f"{first}: OK\n{second}: OK\n"
    assert counts() == (0, 0, 0)


def test_a_file_with_an_unknown_agent_names_the_step_and_field_and_saves_nothing(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.yaml", PIPELINE.replace("agent: writer", "agent: ghost-writer"))
    err, message = failing_import(path)
    assert f"{path}: workflow 'pipeline', step 'write': field `agent`: unknown agent 'ghost-writer'" in err
    assert message == "1 of 1 file(s) have problems; nothing was imported."
    assert counts() == (0, 0, 0)


def test_a_file_whose_steps_form_a_cycle_says_so_and_saves_nothing(tmp_path: Path) -> None:
    bad = PIPELINE.replace("{key: research, agent: echo,", "{key: research, agent: echo, after: [write],")
    err, _ = failing_import(write(tmp_path, "cycle.yaml", bad))
    assert (
        "workflow 'pipeline': steps form a cycle (research -> write -> research); use `loop` to go back"
        in err
    )
    assert counts() == (0, 0, 0)


def test_a_file_with_a_bad_template_names_the_step_and_field_and_saves_nothing(tmp_path: Path) -> None:
    bad = PIPELINE.replace('"{{ input.topic }}"', '"{{ input.topic }"')
    err, _ = failing_import(write(tmp_path, "template.yaml", bad))
    assert "step 'research': field `input` does not compile" in err
    assert counts() == (0, 0, 0)


def test_every_problem_in_a_file_is_printed_on_its_own_line(tmp_path: Path) -> None:
    bad = PIPELINE.replace("agent: writer", "agent: ghost").replace(
        "after: [research], timeout", "after: [reserch], timeout"
    )
    path = write(tmp_path, "two.yaml", bad)
    err, _ = failing_import(path)
    assert err.splitlines() == [
        f"{path}: workflow 'pipeline', step 'write': field `agent`: unknown agent 'ghost'",
        f"{path}: workflow 'pipeline', step 'write': field `after` names missing step 'reserch'",
    ]


def test_one_bad_file_among_several_means_none_is_imported(tmp_path: Path) -> None:
    good = write(tmp_path, "good.yaml", PIPELINE)
    bad = write(
        tmp_path,
        "bad.yaml",
        PIPELINE.replace("key: pipeline", "key: other").replace("agent: echo", "agent: nobody", 1),
    )
    err, message = failing_import(good, bad)
    assert f"{bad}: workflow 'other', step 'research': field `agent`: unknown agent 'nobody'" in err
    assert message == "1 of 2 file(s) have problems; nothing was imported."
    assert counts() == (0, 0, 0)


def test_a_file_that_is_not_yaml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "broken.yaml", "workflow:\n  key: [unclosed\n")
    err, _ = failing_import(path)
    assert err.startswith(f"{path}, line ")
    assert "not valid YAML or JSON" in err


def test_a_missing_file_is_reported_and_nothing_is_imported(tmp_path: Path) -> None:
    good = write(tmp_path, "good.yaml", PIPELINE)
    err, _ = failing_import(good, str(tmp_path / "missing.yaml"))
    assert f"{tmp_path / 'missing.yaml'}: cannot read the file" in err
    assert counts() == (0, 0, 0)


# --- export_workflow ---------------------------------------------------------------------------


def test_exporting_and_importing_again_gives_an_identical_spec(tmp_path: Path) -> None:
    load_workflow(PIPELINE)
    exported, _ = run_command("export_workflow", "pipeline")
    run_command("import_workflow", write(tmp_path, "exported.yaml", exported))
    exported_again, _ = run_command("export_workflow", "pipeline")
    assert exported_again == exported
    assert WorkflowVersion.objects.filter(workflow__key="pipeline").count() == 1, "same spec, no new version"


def test_exporting_as_json_gives_the_same_document_as_yaml() -> None:
    load_workflow(PIPELINE)
    as_yaml, _ = run_command("export_workflow", "pipeline")
    as_json, _ = run_command("export_workflow", "pipeline", "--json")
    assert json.loads(as_json) == load_text(as_yaml)
    assert [a["name"] for a in json.loads(as_json)["agents"]] == ["echo", "writer"]


def test_exporting_an_unknown_workflow_names_it() -> None:
    with pytest.raises(CommandError, match="workflow 'nope' does not exist"):
        run_command("export_workflow", "nope")


# --- start_run ---------------------------------------------------------------------------------


def test_starting_a_run_prints_its_id() -> None:
    load_workflow(PIPELINE)
    out, _ = run_command("start_run", "pipeline", "--input", '{"topic": "tides"}')
    run = Run.objects.get()
    assert out == f"{run.pk}\n"
    assert run.trigger == "command"
    assert run.input == {"topic": "tides", "words": 800}


def test_starting_a_run_with_bad_input_names_the_field_and_starts_nothing() -> None:
    load_workflow(PIPELINE)
    with pytest.raises(CommandError) as raised:
        run_command("start_run", "pipeline", "--input", '{"topic": 5, "colour": "red"}')
    assert (
        str(raised.value)
        == "input `colour`: not an input of this workflow; input `topic`: expected string, got int"
    )
    assert not Run.objects.exists()


def test_starting_a_run_without_a_required_input_says_which() -> None:
    load_workflow(PIPELINE)
    with pytest.raises(CommandError, match="input `topic`: required"):
        run_command("start_run", "pipeline")


def test_starting_a_run_with_input_that_is_not_json_says_so() -> None:
    load_workflow(PIPELINE)
    with pytest.raises(CommandError, match="--input is not valid JSON"):
        run_command("start_run", "pipeline", "--input", "{topic: tides}")


def test_starting_a_run_with_input_nested_100000_deep_says_so_in_one_line() -> None:
    load_workflow(PIPELINE)
    with pytest.raises(CommandError, match="--input: nested more than 32 levels deep"):
        run_command("start_run", "pipeline", "--input", '{"topic": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert not Run.objects.exists()


def test_starting_a_run_of_an_unknown_workflow_names_it() -> None:
    with pytest.raises(CommandError, match="workflow 'nope' does not exist"):
        run_command("start_run", "nope")


def test_waiting_for_a_run_that_no_worker_picks_up_times_out_with_exit_code_2() -> None:
    load_workflow(PIPELINE)
    out = _Buffer()
    with pytest.raises(SystemExit) as exited:
        call_command(
            "start_run", "pipeline", "--input", '{"topic": "tides"}', "--wait", "--timeout", "0.2", stdout=out
        )
    assert exited.value.code == 2
    summary = json.loads(out.getvalue())
    assert summary["status"] == "running"
    assert summary["steps"] == {"research": {"status": "queued", "output": None, "attempts": 0}}


# --- cancel_run --------------------------------------------------------------------------------


def test_cancelling_a_running_run_says_so() -> None:
    load_workflow(PIPELINE)
    run = transitions.start_run(workflow="pipeline", input={"topic": "tides"})
    out, _ = run_command("cancel_run", str(run.pk))
    assert out == f"cancelled run {run.pk}\n"
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED
    assert run.error == "cancelled from the command line"


def test_cancelling_a_finished_run_is_an_error() -> None:
    load_workflow(PIPELINE)
    run = drive(transitions.start_run(workflow="pipeline", input={"topic": "tides"}))
    assert run.status == RunStatus.SUCCEEDED
    with pytest.raises(CommandError, match=f"run {run.pk} already succeeded"):
        run_command("cancel_run", str(run.pk))


def test_cancelling_an_unknown_run_is_an_error() -> None:
    with pytest.raises(CommandError, match="run 999 does not exist"):
        run_command("cancel_run", "999")


# --- start_run --wait against real workers -----------------------------------------------------


def wait_for_pipeline_run(cluster: WorkerCluster) -> subprocess.CompletedProcess[str]:
    """`start_run pipeline --wait` in its own process, against the cluster's database."""
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "start_run", "pipeline", "--input", '{"topic": "tides"}', "--wait", "--timeout", "60"],
        env=cluster.env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )


@pytest.mark.cluster
@pytest.mark.django_db(transaction=True)
def test_waiting_for_a_run_prints_its_result_and_exits_0_when_it_succeeds() -> None:
    load_workflow(PIPELINE)
    with WorkerCluster(workers=2) as cluster:
        done = wait_for_pipeline_run(cluster)
    assert done.returncode == 0, done.stderr + cluster.log()
    summary = json.loads(done.stdout)
    assert summary["status"] == "succeeded"
    assert summary["output"] == {"text": "a draft about tides", "fanned": [{"n": 1}, {"n": 2}, {"n": 3}]}
    assert summary["steps"]["write"] == {
        "status": "succeeded",
        "output": {"text": "a draft about tides"},
        "attempts": 1,
    }
    assert summary["steps"]["fan"] == {
        "status": "succeeded",
        "output": [{"n": 1}, {"n": 2}, {"n": 3}],
        "attempts": 3,
    }


@pytest.mark.cluster
@pytest.mark.django_db(transaction=True)
def test_waiting_for_a_run_that_fails_prints_the_error_and_exits_1() -> None:
    load_workflow(
        PIPELINE.replace(
            "  - {name: echo,",
            '  - {name: refuse, kind: python, config: {callable: "tests.agents.basic:refuse"}}\n  - {name: echo,',
        ).replace("{key: research, agent: echo,", "{key: research, agent: refuse,")
    )
    with WorkerCluster(workers=1) as cluster:
        done = wait_for_pipeline_run(cluster)
    assert done.returncode == 1, done.stderr + cluster.log()
    summary = json.loads(done.stdout)
    assert summary["status"] == "failed"
    assert (
        summary["error"]
        == "Step 'research' (agent refuse) failed: PermanentError: the input is not acceptable"
    )
    assert summary["steps"]["research"]["status"] == "failed"


# --- docs/workflow-format.md: its examples are real ---------------------------------------------

DOC = (ROOT / "docs" / "workflow-format.md").read_text()


def doc_blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", DOC, flags=re.MULTILINE | re.DOTALL)


def doc_files(tmp_path: Path) -> dict[str, str]:
    """The complete files in the reference (blocks starting `# file: NAME`), written to disk."""
    files = {}
    for block in doc_blocks("yaml"):
        first, _, _ = block.partition("\n")
        if first.startswith("# file: "):
            files[first.removeprefix("# file: ")] = write(tmp_path, first.removeprefix("# file: "), block)
    return files


# One per feature that needs a whole file to show: the basics, an http agent with a secret header
# and a fallback, an llm agent, a circuit breaker with max_concurrency, compensation.
COMPLETE_EXAMPLES = [
    "content-pipeline.yaml",
    "customer-lookup.yaml",
    "ticket-triage.yaml",
    "support-desk.yaml",
    "quarterly-plan.yaml",
    "image-captions.yaml",
    "order-fulfilment.yaml",
]


def good_doc_files(tmp_path: Path) -> dict[str, str]:
    return {name: path for name, path in doc_files(tmp_path).items() if not name.startswith("bad")}


def test_every_yaml_block_in_the_format_reference_is_valid_yaml() -> None:
    blocks = doc_blocks("yaml")
    assert len(blocks) >= 5
    for block in blocks:
        yaml.safe_load(block)


def test_the_format_reference_has_every_complete_example() -> None:
    names = [
        block.partition("\n")[0].removeprefix("# file: ")
        for block in doc_blocks("yaml")
        if block.startswith("# file: ") and not block.startswith("# file: bad")
    ]
    assert names == COMPLETE_EXAMPLES


def test_the_complete_examples_in_the_format_reference_validate(tmp_path: Path) -> None:
    good = list(good_doc_files(tmp_path).values())
    out, _ = run_command("import_workflow", "--check", *good)
    assert out.splitlines() == [f"{path}: OK" for path in good]


def test_each_complete_example_in_the_format_reference_validates_on_its_own(tmp_path: Path) -> None:
    for path in good_doc_files(tmp_path).values():
        out, _ = run_command("import_workflow", "--check", path)
        assert out == f"{path}: OK\n"


def test_the_complete_examples_in_the_format_reference_export_as_they_were_imported(tmp_path: Path) -> None:
    for name, path in good_doc_files(tmp_path).items():
        key = load_text(Path(path).read_text())["workflow"]["key"]
        run_command("import_workflow", path)
        exported, _ = run_command("export_workflow", key)
        out, _ = run_command("import_workflow", write(tmp_path, f"exported-{name}", exported))
        assert out.startswith(f"{key} unchanged: still version 1"), out


def test_a_secret_header_in_the_format_reference_is_stored_and_exported_as_its_variable(tmp_path: Path) -> None:
    run_command("import_workflow", good_doc_files(tmp_path)["customer-lookup.yaml"])
    assert Agent.objects.get(name="crm").config["headers"]["Authorization"] == "Bearer ${BATON_SECRET_CRM_TOKEN}"
    exported, _ = run_command("export_workflow", "customer-lookup")
    assert "Bearer ${BATON_SECRET_CRM_TOKEN}" in exported


def test_the_bad_example_in_the_format_reference_prints_exactly_the_documented_problems(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    err, _ = failing_import("bad.yaml")
    transcript = next(b for b in doc_blocks("text") if "import_workflow --check bad.yaml" in b)
    documented = [line for line in transcript.splitlines() if line.startswith("bad.yaml: ")]
    assert err.splitlines() == documented


def test_the_bad_example_in_the_format_reference_has_as_many_mistakes_as_it_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    err, _ = failing_import("bad.yaml")
    count = {10: "ten", 11: "eleven", 12: "twelve", 13: "thirteen"}[len(err.splitlines())]
    prose = " ".join(DOC.split())
    assert f"This file has {count} mistakes" in prose
    assert f"and all {count} are reported at once" in prose


def test_the_content_pipeline_in_the_format_reference_gives_the_documented_output(tmp_path: Path) -> None:
    text = Path(doc_files(tmp_path)["content-pipeline.yaml"]).read_text()
    # The same file without the simulated waits and random failures, to keep the test fast.
    text = re.sub(r"delay: .*", "delay: 0", text).replace("failure_rate: 0.1", "failure_rate: 0")
    load_workflow(text)
    run = drive(transitions.start_run(workflow="content-pipeline", input={"topic": "tide pools"}))
    documented = json.loads(next(b for b in doc_blocks("json") if "tide-pools" in b))
    assert run.status == RunStatus.SUCCEEDED
    assert run.output == documented


def test_the_order_fulfilment_saga_in_the_format_reference_ends_with_the_documented_error(tmp_path: Path) -> None:
    text = Path(doc_files(tmp_path)["order-fulfilment.yaml"]).read_text()
    # No waits, and a courier that always fails, so the run must undo what it did.
    text = re.sub(r"delay: [^,}]+", "delay: 0", text)
    text = text.replace("failure_rate: 0.3", "failure_rate: 1").replace("backoff: 1s", "backoff: 0")
    load_workflow(text)
    run = drive(transitions.start_run(workflow="order-fulfilment", input={"order": "A-17", "amount": 42.5}))
    documented = next(b for b in doc_blocks("text") if "Compensations:" in b).strip()
    assert run.status == RunStatus.FAILED
    assert run.error == documented
    undone = list(run.steps.filter(step_key__endswith=".undo").order_by("finished_at"))
    assert [(s.step_key, s.input) for s in undone] == [
        ("charge.undo", {"charge_id": "ch-A-17", "amount": 42.5}),
        ("reserve.undo", {"reservation": "R-A-17"}),
    ]


def test_the_customer_lookup_in_the_format_reference_falls_back_to_the_replica(
    tmp_path: Path, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = Path(doc_files(tmp_path)["customer-lookup.yaml"]).read_text()
    monkeypatch.setenv("BATON_SECRET_CRM_TOKEN", "crm-secret")
    monkeypatch.setenv("BATON_SECRET_CRM_REPLICA_TOKEN", "replica-secret")
    settings.BATON_HTTP_ALLOWED_HOSTS = "127.0.0.1"
    with ScriptedServer() as server:
        # The same file pointed at a local server, without the waits between tries.
        text = text.replace("https://crm.example.com", f"{server.url}/crm")
        text = text.replace("https://crm-replica.example.com", f"{server.url}/replica")
        load_workflow(text.replace("backoff: 1s", "backoff: 0"))
        server.script("/crm/api/v2/lookup", Reply(503, {"error": "down for maintenance"}))
        server.script("/replica/api/v2/lookup", Reply(200, {"name": "Ada Lovelace", "plan": "pro"}))
        run = drive(transitions.start_run(workflow="customer-lookup", input={"email": "ada@example.com"}))
        crm, replica = server.seen("/crm/api/v2/lookup"), server.seen("/replica/api/v2/lookup")
    assert run.status == RunStatus.SUCCEEDED
    assert run.output == {"customer": {"name": "Ada Lovelace", "plan": "pro"}}
    assert len(crm) == 3 and len(replica) == 1
    assert {r.headers["authorization"] for r in crm} == {"Bearer crm-secret"}
    assert replica[0].headers["authorization"] == "Bearer replica-secret"
    assert {r.headers["idempotency-key"] for r in crm + replica} == {f"baton-{run.pk}-lookup-1--"}
    assert crm[0].body == {"email": "ada@example.com"}
    step = run.steps.get(step_key="lookup")
    assert (step.agent_name, step.fallback_from) == ("crm-replica", "crm")


# --- import_workflow within limits ---------------------------------------------------------------


def _laughs() -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 9)}]" for n in range(1, 10)]
    return "\n".join(lines) + "\nworkflow: {key: laughs, name: x, steps: *a9}\n"


def test_checking_a_billion_laughs_file_is_refused_at_once(tmp_path: Path) -> None:
    # It ran past 120 s at 5.5 GB.
    path = write(tmp_path, "laughs.yaml", _laughs())
    started = time.monotonic()
    err, _ = failing_import("--check", path)
    assert time.monotonic() - started < 5
    assert err.strip() == f"{path}: holds more than 100,000 values once its aliases (*name) are expanded"


def test_checking_a_file_nested_100000_deep_prints_one_clear_line(tmp_path: Path) -> None:
    path = write(tmp_path, "deep.yaml", "workflow: " + "[" * 100_000)
    err, _ = failing_import("--check", path)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "nested more than 64 levels deep" in err


def test_a_file_over_the_size_limit_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = write(tmp_path, "big.yaml", "# padding\n" * 100_001)
    err, _ = failing_import("--check", path)
    assert err.strip() == f"{path}: the file is 1,000,010 bytes; at most 1,000,000 are accepted"


def test_checking_a_file_with_a_huge_constant_template_is_quick(tmp_path: Path) -> None:
    # Jinja folded `'x' * 10**9` while compiling: 16 s and a MemoryError at --check.
    text = PIPELINE.replace('"{{ input.topic }}"', "\"{{ 'x' * 10**9 }}\"")
    path = write(tmp_path, "big-constant.yaml", text)
    started = time.monotonic()
    out, _ = run_command("import_workflow", "--check", path)
    assert time.monotonic() - started < 5
    assert out.strip() == f"{path}: OK"
