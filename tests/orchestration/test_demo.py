"""The demo: `manage.py load_demo` and the example workflows it publishes, run end to end."""

from __future__ import annotations

import json
import shutil
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import authenticate, get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError

from orchestration import access, definitions, transitions
from orchestration.demo_users import DEMO_USERS
from orchestration.management.commands import load_demo
from orchestration.models import Agent, Attempt, Run, StepRun, Workflow, WorkflowVersion
from orchestration.status import RunStatus, StepStatus
from tests.servers import FakeOpenAI, Reply, completion
from tests.support import drive

pytestmark = pytest.mark.django_db

DEMO_WORKFLOWS = [
    "content-pipeline",
    "customer-onboarding",
    "competitive-analysis",
    "daily-operations-report",
    "document-processing",
    "meeting-notes",
    "support-routing",
    "quarterly-metrics",
    "quarterly-narrative",
    "quarterly-review",
    "research-question",
    "research-follow-ups",
]
# These wait for people; tests/approvals/test_demo_workflows.py runs them with decisions.
PEOPLE_WORKFLOWS = ["approval-article-release", "approval-refund", "approval-address-correction"]
# Every demo input has a default, so each workflow starts with no input at all.
REQUIRED_INPUTS: dict[str, dict[str, Any]] = {}


def load(**options: Any) -> str:
    out = StringIO()
    call_command("load_demo", stdout=out, **options)
    return out.getvalue()


@pytest.fixture(autouse=True)
def fast_passwords(settings: Any) -> None:
    # load_demo hashes three passwords; the production hasher takes most of a second each.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def no_llm_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """No language model configured, as on a fresh checkout: llm agents hand over to fallbacks."""
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


@pytest.fixture
def demo(no_llm_server: None) -> None:
    """The demo loaded, with simulated agents made instant and reliable so runs are fast."""
    load(quiet=True)
    for agent in Agent.objects.filter(kind="simulated"):
        agent.config = {**agent.config, "delay": 0, "failure_rate": 0}
        agent.save(update_fields=["config"])


def run_demo(key: str) -> Run:
    run = drive(transitions.start_run(workflow=key, input=REQUIRED_INPUTS.get(key, {})))
    assert run.status == RunStatus.SUCCEEDED, run.error
    return run


def statuses(run: Run) -> dict[str, str]:
    return {
        row.step_key: row.status
        for row in StepRun.objects.filter(run=run, map_index__isnull=True).order_by("iteration", "id")
    }


# --- load_demo ---------------------------------------------------------------------------------


def test_it_creates_the_demo_users_with_their_documented_passwords() -> None:
    load(quiet=True)
    for username, password, _ in DEMO_USERS:
        assert authenticate(username=username, password=password) is not None, username
    admin = get_user_model().objects.get(username="admin")
    ops = get_user_model().objects.get(username="ops")
    approver = get_user_model().objects.get(username="approver")
    assert admin.is_superuser and admin.is_staff
    assert ops.is_staff and not ops.is_superuser
    assert ops.has_perm("orchestration.view_run") and ops.has_perm("orchestration.view_workflow")
    assert not ops.has_perm("orchestration.change_workflow")
    assert not approver.is_staff
    finance = get_user_model().objects.get(username="finance")
    assert not finance.is_staff and Workflow.objects.get(key="approval-refund").owner == finance
    assert set(ops.groups.values_list("name", flat=True)) == {"operations"}
    assert set(approver.groups.values_list("name", flat=True)) == {"legal", "editors", "support"}


def test_it_publishes_every_demo_workflow() -> None:
    load(quiet=True)
    assert set(Workflow.objects.values_list("key", flat=True)) == set(DEMO_WORKFLOWS + PEOPLE_WORKFLOWS)
    for workflow in Workflow.objects.all():
        assert workflow.latest_version is not None, workflow.key
        assert workflow.owner is not None and workflow.owner.username in ("ops", "admin", "finance")
        assert workflow.description


def test_ops_operates_every_demo_workflow_and_the_approver_sees_the_ones_they_decide_in() -> None:
    load(quiet=True)
    users = {u.username: u for u in get_user_model().objects.all()}
    everything = set(DEMO_WORKFLOWS + PEOPLE_WORKFLOWS)
    assert set(access.operable_workflows(users["ops"]).values_list("key", flat=True)) == everything
    assert set(access.operable_workflows(users["admin"]).values_list("key", flat=True)) == everything
    assert set(access.visible_workflows(users["approver"]).values_list("key", flat=True)) == set(PEOPLE_WORKFLOWS)
    assert not access.operable_workflows(users["approver"]).exists()
    # The quarterly review's worker runs are the ops team's too, through the run that calls them.
    run = transitions.start_run(workflow="quarterly-review", started_by=users["ops"])
    assert access.can_operate_run(users["ops"], run)
    assert not access.can_view_run(users["approver"], run)


def test_every_simulated_demo_agent_has_a_short_delay_and_a_low_failure_rate() -> None:
    load(quiet=True)
    for agent in Agent.objects.filter(kind="simulated"):
        low, high = agent.config["delay"]
        assert low.endswith("s") and high.endswith("s"), agent.name
        assert 0 <= agent.config["failure_rate"] <= 0.1, agent.name
        assert agent.retry["attempts"] >= 3, agent.name
        assert "output" in agent.config, agent.name


def test_every_other_demo_agent_is_an_llm_agent_with_a_simulated_fallback() -> None:
    # The demo must work without a model server: whatever is not simulated has a stand-in.
    load(quiet=True)
    others = Agent.objects.exclude(kind="simulated")
    assert list(others.values_list("name", "kind")) == [("meeting-summariser", "llm")]
    for agent in others:
        assert Agent.objects.get(name=agent.fallback).kind == "simulated", agent.name
        assert "base_url" not in agent.config, "the demo reads OPENAI_BASE_URL"
        assert agent.config["api_key_env"] == "OPENAI_API_KEY"
        assert agent.config["prices"] and agent.config["context_window"]
        assert agent.circuit and agent.max_concurrency


def test_running_it_twice_publishes_nothing_new_and_duplicates_no_one() -> None:
    load(quiet=True)
    versions = WorkflowVersion.objects.count()
    users = get_user_model().objects.count()
    second = load()
    assert WorkflowVersion.objects.count() == versions
    assert get_user_model().objects.count() == users
    assert "published" not in second
    assert "kept content-pipeline (v1)" in second


def test_running_it_again_keeps_a_workflow_and_an_agent_edited_in_admin() -> None:
    load(quiet=True)
    workflow = Workflow.objects.get(key="content-pipeline")
    workflow.name = "Our blog pipeline"
    workflow.save(update_fields=["name"])
    workflow.draft_steps.filter(key="publish").update(when="{{ false }}")
    Agent.objects.filter(name="editor").update(description="Our own editor", config={"delay": 0, "output": {}})
    versions = list(WorkflowVersion.objects.order_by("pk").values_list("pk", flat=True))

    out = load()

    workflow.refresh_from_db()
    assert workflow.name == "Our blog pipeline"
    assert workflow.draft_steps.get(key="publish").when == "{{ false }}"
    editor = Agent.objects.get(name="editor")
    assert (editor.description, editor.config) == ("Our own editor", {"delay": 0, "output": {}})
    assert list(WorkflowVersion.objects.order_by("pk").values_list("pk", flat=True)) == versions
    assert "published" not in out
    assert "kept content-pipeline (v1); kept agents editor" in out


def test_running_it_again_keeps_a_version_published_from_an_edited_draft() -> None:
    load(quiet=True)
    workflow = Workflow.objects.get(key="content-pipeline")
    workflow.description = "Edited in admin and published."
    workflow.save(update_fields=["description"])
    definitions.publish_draft(workflow)

    out = load()

    assert "kept content-pipeline (v2)" in out
    assert workflow.versions.count() == 2
    assert workflow.latest_version.spec["description"] == "Edited in admin and published."


def test_running_it_again_puts_back_a_workflow_and_an_agent_someone_deleted() -> None:
    load(quiet=True)
    Workflow.objects.filter(key="support-routing").delete()
    Agent.objects.filter(name="ticket-router").delete()

    out = load()

    assert "published support-routing v1; created agents ticket-router" in out
    assert out.count("published") == 1
    assert Workflow.objects.get(key="support-routing").latest_version is not None


def test_it_puts_back_a_demo_password_someone_changed() -> None:
    load(quiet=True)
    ops = get_user_model().objects.get(username="ops")
    ops.set_password("something-else")
    ops.save()
    assert "updated user ops (password)" in load()
    assert authenticate(username="ops", password="ops-demo") is not None


def test_a_changed_demo_file_does_not_overwrite_what_is_in_the_database(
    tmp_path: Path, monkeypatch: Any
) -> None:
    load(quiet=True)
    for path in load_demo.DEMO_DIR.glob("*.yaml"):
        shutil.copy(path, tmp_path / path.name)
    changed = tmp_path / "support-routing.yaml"
    changed.write_text(changed.read_text().replace("name: Support ticket routing", "name: Ticket routing"))
    monkeypatch.setattr(load_demo, "DEMO_DIR", tmp_path)
    out = load()
    assert "kept support-routing (v1)" in out
    assert "published" not in out
    assert Workflow.objects.get(key="support-routing").latest_version.spec["name"] == "Support ticket routing"


def test_it_imports_sub_workflows_before_the_workflows_that_call_them() -> None:
    keys = [document["workflow"]["key"] for _, document in load_demo.read_demo_files(load_demo.DEMO_DIR)]
    assert keys.index("quarterly-metrics") < keys.index("quarterly-review")
    assert keys.index("quarterly-narrative") < keys.index("quarterly-review")


def test_it_refuses_one_agent_name_defined_two_ways(tmp_path: Path) -> None:
    for path in load_demo.DEMO_DIR.glob("*.yaml"):
        shutil.copy(path, tmp_path / path.name)
    other = tmp_path / "support-routing.yaml"
    other.write_text(other.read_text().replace("name: ticket-router", "name: editor"))
    with pytest.raises(CommandError, match="agent 'editor' is defined differently"):
        load_demo.read_demo_files(tmp_path)


def test_it_prints_the_demo_logins_unless_quiet() -> None:
    out = load()
    for username, password, _ in DEMO_USERS:
        assert username in out and password in out
    assert load(quiet=True) == ""


# --- the demo workflows, run ---------------------------------------------------------------------


@pytest.mark.parametrize("key", DEMO_WORKFLOWS)
def test_every_demo_workflow_succeeds_with_its_defaults(demo: None, key: str) -> None:
    run = run_demo(key)
    assert run.output


def test_the_content_pipeline_editor_sends_the_first_draft_back_once(demo: None) -> None:
    run = run_demo("content-pipeline")
    edits = StepRun.objects.filter(run=run, step_key="edit").order_by("iteration")
    assert [(e.iteration, e.output["approved"]) for e in edits] == [(1, False), (2, True)]
    second_draft = StepRun.objects.get(run=run, step_key="write", iteration=2)
    assert second_draft.input["feedback"] == edits[0].output["notes"]
    assert run.output["editing_rounds"] == 2
    assert run.output["url"] == "https://blog.example.com/posts/ai-agent-orchestration-for-small-teams"


def test_the_competitive_analysis_has_one_report_per_competitor(demo: None) -> None:
    run = run_demo("competitive-analysis")
    assert [r["competitor"] for r in run.output["competitors"]] == ["Acme", "Globex", "Initech"]
    assert sorted(run.output["ranking_by_threat"]) == ["Acme", "Globex", "Initech"]


def test_the_competitive_analysis_takes_any_list_of_competitors(demo: None) -> None:
    run = drive(
        transitions.start_run(workflow="competitive-analysis", input={"competitors": ["Umbrella", "Hooli"]})
    )
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert [r["competitor"] for r in run.output["competitors"]] == ["Umbrella", "Hooli"]


def test_the_customer_onboarding_briefs_the_account_manager_after_all_three_parallel_steps(
    demo: None,
) -> None:
    run = run_demo("customer-onboarding")
    notify = StepRun.objects.get(run=run, step_key="notify_account_manager")
    for key in ("welcome_email", "crm_record", "analytics_setup"):
        assert StepRun.objects.get(run=run, step_key=key).finished_at <= notify.started_at
    assert notify.input["to"] == "Marcus Lee"
    assert run.output["account_manager"] == "Marcus Lee"


def test_the_support_routing_skips_the_queues_it_did_not_choose(demo: None) -> None:
    run = run_demo("support-routing")
    assert run.output["queue"] == "billing"
    assert statuses(run) == {
        "route": StepStatus.SUCCEEDED,
        "dispatch": StepStatus.SUCCEEDED,
        "billing": StepStatus.SUCCEEDED,
        "technical": StepStatus.SKIPPED,
        "general": StepStatus.SKIPPED,
        "reply": StepStatus.SUCCEEDED,
    }


@pytest.mark.parametrize(
    ("subject", "queue"),
    [("API returns 500 error on export", "technical"), ("How do I add a teammate?", "general")],
)
def test_the_support_routing_sends_other_tickets_to_their_queue(demo: None, subject: str, queue: str) -> None:
    run = drive(
        transitions.start_run(workflow="support-routing", input={"subject": subject, "body": subject})
    )
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.output["queue"] == queue
    assert run.output["handled_by"] == queue
    assert [k for k, s in statuses(run).items() if s == StepStatus.SKIPPED] == sorted(
        {"billing", "technical", "general"} - {queue}, key=["billing", "technical", "general"].index
    )


@pytest.mark.parametrize(
    ("document", "branch"),
    [
        ("Globex_Invoice_INV-20417.pdf", "invoice"),
        ("Initech_Service_Agreement.pdf", "contract"),
        ("Acme_Team_Photo.pdf", "other"),
    ],
)
def test_the_document_processing_takes_one_branch_and_archives_after_it(
    demo: None, document: str, branch: str
) -> None:
    run = drive(transitions.start_run(workflow="document-processing", input={"document": document}))
    assert run.status == RunStatus.SUCCEEDED, run.error
    seen = statuses(run)
    assert {k for k in ("invoice", "contract", "other") if seen[k] == StepStatus.SUCCEEDED} == {branch}
    assert seen["archive"] == StepStatus.SUCCEEDED
    assert run.output["handled_as"] == branch


def test_the_daily_report_synthesises_all_four_data_pulls(demo: None) -> None:
    run = run_demo("daily-operations-report")
    synthesis = StepRun.objects.get(run=run, step_key="synthesis")
    assert set(synthesis.input) == {"day", "sales", "support", "marketing", "engineering"}
    assert run.output["sent_to"] == ["leadership@example.com", "ops-leads@example.com"]


def test_the_quarterly_review_delegates_to_two_worker_runs(demo: None) -> None:
    run = run_demo("quarterly-review")
    children = Run.objects.filter(parent_step__parent__run=run)
    assert {c.workflow.key for c in children} == {"quarterly-metrics", "quarterly-narrative"}
    assert all(c.status == RunStatus.SUCCEEDED for c in children)
    assert len(run.output["scorecard"]) == 5
    assert run.output["title"] == "Q1 2025 Business Review"


def test_the_quarterly_review_plans_four_tasks_for_three_workers_and_redoes_only_the_one_sent_back(
    demo: None,
) -> None:
    run = run_demo("quarterly-review")
    calls = {
        name: Attempt.objects.filter(step_run__run=run, agent_name=name).count()
        for name in ("accounting-worker", "crm-worker", "product-worker", "review-checker")
    }
    # Round 1: revenue and margin (accounting), csat (CRM), launches (product); the reviewer
    # sends csat back, and only csat runs again.
    assert calls == {"accounting-worker": 2, "crm-worker": 2, "product-worker": 1, "review-checker": 2}
    first = StepRun.objects.filter(run=run, step_key="work", iteration=1, map_index__isnull=False).order_by("map_index")
    assert [row.agent_name for row in first] == ["accounting-worker", "accounting-worker", "crm-worker", "product-worker"]
    assert [part["revision"] for part in run.output["parts"]] == [1, 1, 2, 1]
    assert "pull it again for Q1 2025" in run.output["parts"][2]["addressed"]
    assert run.output["review_rounds"] == 2


def test_the_research_follows_up_only_the_question_the_reviewer_names(demo: None) -> None:
    run = run_demo("research-follow-ups")
    children = Run.objects.filter(parent_step__parent__run=run).order_by("id")
    assert [c.input["question"].split()[1] for c in children] == ["large", "do", "buys", "do"]
    assert children.last().input["follow_up"] == "list prices from three vendors, not one"  # type: ignore[union-attr]
    assert run.output["follow_up_rounds"] == 1
    assert "Looked again" in run.output["sections"][1] and "Looked again" not in run.output["sections"][0]


def test_the_customer_onboarding_ends_as_failed_for_a_customer_without_payment_details(demo: None) -> None:
    run = drive(transitions.start_run(workflow="customer-onboarding", input={"payment_method": "none"}))
    assert run.status == RunStatus.FAILED
    assert run.error == "customer failed validation: missing payment details"
    assert not StepRun.objects.filter(run=run, step_key="account_setup").exists()


def test_the_meeting_notes_are_summarised_by_the_labelled_stand_in_without_a_model(demo: None) -> None:
    run = run_demo("meeting-notes")
    summarise = StepRun.objects.get(run=run, step_key="summarise")
    assert summarise.status == StepStatus.SUCCEEDED
    assert summarise.agent_name == "meeting-summariser-standin"
    assert summarise.fallback_from == "meeting-summariser"
    assert run.output["stand_in"] is True
    assert run.output["summary"].startswith("[Stand-in - no language model answered]")
    assert "Lena will run the flag rollout at 10% and report the drop-off numbers on Friday." in summarise.output["notes"]
    assert run.output["tasks"] == []
    assert run.output["recap"] == "[stand-in] Recap: Weekly product sync"


def test_with_a_model_configured_the_meeting_notes_file_one_task_per_action_item(
    demo: None, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.BATON_HTTP_ALLOWED_HOSTS = "127.0.0.1"
    answer = {
        "summary": "Ship the shorter setup flow behind a flag; SSO moves into this quarter.",
        "decisions": ["SSO moves into this quarter"],
        "action_items": [
            {"owner": "Tom Okafor", "task": "Write the SSO technical plan", "due": "2025-04-11"},
            {"owner": "Lena Fischer", "task": "Run the flag rollout at 10%", "due": None},
        ],
        "open_questions": ["Do we charge for SSO?"],
    }
    with FakeOpenAI() as server:
        server.script(FakeOpenAI.PATH, Reply(200, completion(json.dumps(answer), prompt_tokens=420, completion_tokens=96)))
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-demo")
        run = run_demo("meeting-notes")
        [request] = server.seen(FakeOpenAI.PATH)
    summarise = StepRun.objects.get(run=run, step_key="summarise")
    assert (summarise.agent_name, summarise.fallback_from) == ("meeting-summariser", "")
    assert request.body["model"] == "gpt-4o-mini"
    assert request.headers["authorization"] == "Bearer sk-demo"
    assert "Tom will write the SSO technical plan by 2025-04-11." in request.body["messages"][-1]["content"]
    assert [(t["assignee"], t["title"]) for t in run.output["tasks"]] == [
        ("Tom Okafor", "Write the SSO technical plan"),
        ("Lena Fischer", "Run the flag rollout at 10%"),
    ]
    assert run.output["stand_in"] is False
    assert run.output["recap"] == "Recap: Weekly product sync"
