"""The `python` agent kind calls only what the deployment registered (BATON_PYTHON_AGENTS).

Checked three times: when a file is imported, when the admin saves an agent
(tests/orchestration/test_admin.py), and when the agent is called, for a row written some other
way or a registry that changed since.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from orchestration import transitions
from orchestration.models import Agent, Attempt, Run
from orchestration.spec import SpecError
from orchestration.status import ErrorClass, RunStatus
from tests.support import drive, load_workflow

pytestmark = pytest.mark.django_db

MARK = Path(__file__).with_name("unregistered-agent-ran.txt")


def leave_a_mark(payload: Any, context: Any) -> Any:
    """Not registered (this module is not on the tests' BATON_PYTHON_AGENTS): must never run."""
    MARK.write_text("ran")
    return {"ran": True}


def document(path: str) -> str:
    return json.dumps(
        {
            "agents": [{"name": "runner", "kind": "python", "config": {"callable": path}}],
            "workflow": {"key": "wf", "name": "wf", "steps": [{"key": "go", "agent": "runner", "input": {"x": 1}}]},
        }
    )


def import_problems(path: str) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load_workflow(document(path))
    assert not Agent.objects.filter(name="runner").exists()
    return caught.value.problems


def run_with_stored_agent(path: str) -> Run:
    """A workflow whose agent row was then changed behind the importer's back."""
    load_workflow(document("tests.agents.basic:echo"))
    Agent.objects.filter(name="runner").update(config={"callable": path})
    return drive(transitions.start_run(workflow="wf"))


@pytest.fixture(autouse=True)
def _no_mark() -> Any:
    MARK.unlink(missing_ok=True)
    yield
    assert not MARK.exists(), "an unregistered function ran"


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("cProfile:run", "'cProfile:run' is not a registered python agent (the deployment lists them in BATON_PYTHON_AGENTS)"),
        ("os:system", "'os:system' is not a registered python agent (the deployment lists them in BATON_PYTHON_AGENTS)"),
        (
            "tests.agents_kinds.test_python_agent:leave_a_mark",
            "'tests.agents_kinds.test_python_agent:leave_a_mark' is not a registered python agent "
            "(the deployment lists them in BATON_PYTHON_AGENTS)",
        ),
        (
            "tests.agents.basic:PermanentError",
            "'tests.agents.basic:PermanentError' is not defined in 'tests.agents.basic'; only functions defined there are registered",
        ),
        ("tests.agents.basic:_hidden", "'_hidden' is private; only public functions can be agents"),
        ("tests.agents.basic:missing", "'tests.agents.basic' has no function 'missing'"),
    ],
)
def test_importing_an_agent_with_an_unregistered_callable_is_refused_naming_the_field(path: str, problem: str) -> None:
    assert import_problems(path) == [f"agent 'runner': field `config.callable`: {problem}"]


@pytest.mark.parametrize("path", ["cProfile", "cProfile:run\n", "os.path:join:x", "", "tests.agents.basic:echo()"])
def test_a_callable_that_is_not_module_colon_function_is_refused(path: str) -> None:
    assert import_problems(path) == ["agent 'runner': field `config.callable` must be 'module:function'"]


def test_an_unlisted_module_is_not_even_imported_at_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.delitem(sys.modules, "antigravity", raising=False)
    import_problems("antigravity:fly")
    assert "antigravity" not in sys.modules, "importing runs the module's code"


def test_a_function_listed_by_itself_is_registered_without_its_module(settings: Any) -> None:
    settings.BATON_PYTHON_AGENTS = ["tests.agents.basic:upper"]
    load_workflow(document("tests.agents.basic:upper"))
    with pytest.raises(SpecError) as caught:
        load_workflow(document("tests.agents.basic:echo"))
    assert "'tests.agents.basic:echo' is not a registered python agent" in caught.value.problems[0]
    assert Agent.objects.get(name="runner").config == {"callable": "tests.agents.basic:upper"}


def test_a_stored_agent_with_an_unregistered_callable_fails_permanently_when_called() -> None:
    run = run_with_stored_agent("tests.agents_kinds.test_python_agent:leave_a_mark")
    assert run.status == RunStatus.FAILED
    [attempt] = Attempt.objects.filter(step_run__run=run)
    assert attempt.error_class == ErrorClass.PERMANENT
    assert (
        "PermanentError: cannot call 'tests.agents_kinds.test_python_agent:leave_a_mark': "
        "'tests.agents_kinds.test_python_agent:leave_a_mark' is not a registered python agent"
    ) in attempt.error


def test_cprofile_run_stored_behind_the_importer_s_back_does_not_run_its_input(tmp_path: Path) -> None:
    # The attack from the issue: cProfile.run(input, context) executes its input as code.
    target = tmp_path / "owned"
    code = f"open({str(target)!r}, 'w').write('owned')"
    spec = json.loads(document("tests.agents.basic:echo"))
    spec["workflow"]["steps"][0]["input"] = code
    load_workflow(json.dumps(spec))
    Agent.objects.filter(name="runner").update(config={"callable": "cProfile:run"})
    run = drive(transitions.start_run(workflow="wf"))
    assert run.status == RunStatus.FAILED and "is not a registered python agent" in run.error
    assert not target.exists()


def test_an_agent_unregistered_after_import_is_refused_at_call_time(settings: Any) -> None:
    load_workflow(document("tests.agents.basic:echo"))
    settings.BATON_PYTHON_AGENTS = ["orchestration.bench_agents:noop"]
    run = drive(transitions.start_run(workflow="wf"))
    assert run.status == RunStatus.FAILED
    assert "cannot call 'tests.agents.basic:echo': 'tests.agents.basic:echo' is not a registered python agent" in run.error


def test_a_registered_callable_runs() -> None:
    load_workflow(document("tests.agents.basic:echo"))
    run = drive(transitions.start_run(workflow="wf"))
    assert run.status == RunStatus.SUCCEEDED
    assert run.steps.get(step_key="go").output == {"x": 1}


def test_the_default_registry_holds_baton_s_own_agents_only() -> None:
    from orchestration.config import settings as defaults

    # The tests add their own modules (tests/conftest.py); the shipped default is the bench's agent.
    assert defaults.BATON_PYTHON_AGENTS[0] == "orchestration.bench_agents:noop"
    from orchestration.agents import registry

    assert registry.problem("orchestration.bench_agents:noop") is None
