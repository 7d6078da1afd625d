"""Load the demo: three logins, their groups, and the example workflows in orchestration/demo/.

Safe to run again (`make run` runs it every time): it creates what is missing and leaves every
workflow and agent that already exists as it is, so edits made in admin survive. Users are
updated rather than duplicated. To get the demo's own definitions back, start from an empty
database (`make clean`).

`--history` (which `make run` passes) also gives one workflow a rollout with a month of made-up
past runs (trigger "history", which the rollout pages and the overview call demo data), once:
when that workflow has no such runs yet. A history made on an earlier day gets the days since
(so the overview's last 24 hours are never empty on a later `make run`).
"""

from __future__ import annotations

import json
import random
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from orchestration import definitions
from orchestration.alerts import demo as alert_demo
from orchestration.demo_users import DEMO_USERS, ensure_demo_users
from orchestration.models import Agent, AgentVersion, Run, StepRun, Workflow
from orchestration.rollouts import history, metrics
from orchestration.rollouts import transitions as rollouts
from orchestration.rollouts.models import NoteKind, Rollout
from orchestration.spec import SpecError, find_cycle, load_text
from orchestration.status import RunStatus

DEMO_DIR = Path(__file__).resolve().parents[2] / "demo"


class Command(BaseCommand):
    help = "Creates the demo users and imports the demo workflows (idempotent)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--quiet", action="store_true", help="Print nothing unless something fails.")
        parser.add_argument(
            "--history",
            action="store_true",
            help=f"Also give {HISTORY_WORKFLOW} a rollout with {HISTORY_DAYS} days of made-up runs (once).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        quiet = options["quiet"]

        def say(line: str) -> None:
            if not quiet:
                self.stdout.write(line)

        files = read_demo_files(DEMO_DIR)
        # One transaction: a bad file leaves the database as it was, users included.
        with transaction.atomic():
            for line in ensure_demo_users():
                say(line)
            for path, document in files:
                try:
                    say(load_file(document))
                except SpecError as exc:
                    raise CommandError(f"{path.name}:\n" + "\n".join(exc.problems)) from None
            for line in alert_demo.ensure_demo_rules():
                say(line)
        if options["history"]:
            say(load_history())
        say("")
        say("Demo logins:")
        for username, password, role in DEMO_USERS:
            say(f"  {username:<10} {password:<15} {role}")


def read_demo_files(directory: Path) -> list[tuple[Path, dict[str, Any]]]:
    """The demo documents, sub-workflows before the workflows that call them."""
    paths = sorted(directory.glob("*.yaml"))
    if not paths:
        raise CommandError(f"no demo workflows found in {directory}")
    by_key: dict[str, tuple[Path, dict[str, Any]]] = {}
    agents: dict[str, tuple[Path, Any]] = {}
    for path in paths:
        try:
            document = load_text(path.read_text(), source=path.name)
        except SpecError as exc:
            raise CommandError("\n".join(exc.problems)) from None
        # Files may each define the agents they use, but one name must mean one agent:
        # otherwise the file imported last would silently win.
        for agent in document.get("agents") or []:
            name = agent.get("name") if isinstance(agent, dict) else None
            if not isinstance(name, str):
                continue  # validation reports it when the file is imported
            if name in agents and agents[name][1] != agent:
                raise CommandError(
                    f"agent '{name}' is defined differently in {agents[name][0].name} and {path.name}"
                )
            agents.setdefault(name, (path, agent))
        key = (document.get("workflow") or {}).get("key")
        if not isinstance(key, str):
            raise CommandError(f"{path.name}: every demo file defines one workflow with a `key`")
        if key in by_key:
            raise CommandError(f"workflow '{key}' is defined in both {by_key[key][0].name} and {path.name}")
        by_key[key] = (path, document)
    calls = {key: _children(document) & set(by_key) for key, (_, document) in by_key.items()}
    cycle = find_cycle(calls)
    if cycle:
        raise CommandError(f"demo workflows call each other in a cycle ({' -> '.join(cycle)})")
    ordered: list[str] = []

    def visit(key: str) -> None:
        if key in ordered:
            return
        for child in sorted(calls[key]):
            visit(child)
        ordered.append(key)

    for key in sorted(by_key):
        visit(key)
    return [by_key[key] for key in ordered]


def _children(document: dict[str, Any]) -> set[str]:
    steps = (document.get("workflow") or {}).get("steps") or []
    called: set[str] = set()
    for s in steps:
        if isinstance(s, dict) and isinstance(s.get("workflow"), str):
            # A workflow chosen at run time is one of its `workflows`.
            called |= set(s.get("workflows") or []) if "{{" in s["workflow"] else {s["workflow"]}
    return called


def load_file(document: dict[str, Any]) -> str:
    """Create the document's missing agents and workflow; keep what exists. Says what it did.

    A workflow that exists is not validated again: it may have been edited in admin into
    something the file would not say (another owner, a group renamed), and it is kept as it
    is, neither overwritten nor published over. Only the file's agents that are missing are
    checked and created.
    """
    key = (document.get("workflow") or {}).get("key")
    workflow = Workflow.objects.filter(key=key).first()
    if workflow is not None:
        raw = [a for a in document.get("agents") or [] if isinstance(a, dict)]
        notes = _load_agents({"agents": raw}) if raw else ""
        latest = workflow.latest_version
        return f"kept {workflow.key} ({f'v{latest.number}' if latest else 'draft'}){notes}"
    notes = _load_agents(document)
    # Only the workflow: its agents are now all in the database, created above or kept.
    _, version = definitions.import_document({"workflow": document["workflow"]}, note="load_demo")
    assert version is not None  # read_demo_files only passes documents with a workflow
    return f"published {version.workflow.key} v{version.number}{notes}"


def _load_agents(document: dict[str, Any]) -> str:
    """Create the document's agents that are missing (after validating the whole document);
    says which were created and which were kept though they differ from the file."""
    agents, _ = definitions.check_document(document)
    raw_agents = {a["name"]: a for a in document.get("agents") or [] if isinstance(a, dict)}
    rows = {row.name: row for row in Agent.objects.filter(name__in=[a["name"] for a in agents])}
    created = [a["name"] for a in agents if a["name"] not in rows]
    # An agent that differs from the file was edited here (or the file changed since): the
    # database wins, as it does for workflows. Saying so tells the operator why a demo change
    # did not arrive.
    kept = [
        a["name"]
        for a in agents
        if a["name"] in rows
        and definitions.agent_spec(rows[a["name"]]) != json.loads(json.dumps({**a, "retry": a["retry"] or {}}))
    ]
    if created:
        definitions.import_document({"agents": [raw_agents[name] for name in created]})
    return "".join(
        f"; {verb} agents {', '.join(names)}" for verb, names in (("created", created), ("kept", kept)) if names
    )


# ---------------------------------------------------------------------------------------------
# --history: a rollout with a month behind it

HISTORY_WORKFLOW = "approval-article-release"
HISTORY_DAYS = 30
HISTORY_AGENT = "release-drafter"
ROLLOUT_STARTED_DAYS_AGO = 25
# What failed runs of the demo failed of, on their last step (history writes no error text).
FAILURE_CAUSES = [
    "TimeoutError: the blog API did not answer within 30 s",
    "TimeoutError: the blog API did not answer within 30 s",
    "HTTPError 503: help centre unavailable (maintenance window)",
    "ValueError: title is longer than the blog's 120 characters",
]


def demo_outcomes(today: date) -> history.Outcomes:
    """history's realistic mix, worse in the last week (more failures, slower approvals), so
    the page has a drift to show and a gate that fails."""
    usual = history.realistic(approvals=True, manual=False)

    def plan(day: date, index: int, rng: random.Random) -> history.RunPlan:
        run = usual(day, index, rng)
        if (today - day).days < 7:
            if run.status == RunStatus.SUCCEEDED and rng.random() < 0.12:
                run.status = RunStatus.FAILED
            run.approval_wait *= 3
            run.duration *= 1.6
        return run

    return plan


def runs_per_day(day: date) -> int:
    # Weekdays busier than weekends, as for a team's announcements.
    return 4 if day.weekday() >= 5 else 9 + day.toordinal() % 4


def load_history() -> str:
    workflow = Workflow.objects.filter(key=HISTORY_WORKFLOW).first()
    if workflow is None:
        return f"no {HISTORY_WORKFLOW} workflow: no history"
    now = timezone.now()
    today = timezone.localdate(now)
    last = Run.objects.filter(workflow=workflow, trigger=history.TRIGGER).aggregate(last=Max("created_at"))["last"]
    if last is not None:
        return _top_up_history(workflow, days=(today - timezone.localdate(last)).days, now=now)
    ops = get_user_model().objects.get(username="ops")
    rollout = Rollout.objects.filter(workflow=workflow).first()
    if rollout is None:
        rollout = rollouts.start_rollout(
            workflow=workflow, owner=ops, actor=ops, started_on=today - timedelta(days=ROLLOUT_STARTED_DAYS_AGO)
        )
        # The brief's words have no transition of their own (admin edits them too).
        rollout.success_metric = "Announcements go out within a working day of the draft, with legal's approval on record."
        rollout.rollback_conditions = "More than one failed publication in a week, or legal rejects two drafts in a row."
        rollout.save(update_fields=["success_metric", "rollback_conditions", "updated_at"])
    _give_versions(HISTORY_AGENT, ops)
    report = history.make_history(
        workflow=workflow, days=HISTORY_DAYS, runs_per_day=runs_per_day, now=now, seed=10, outcomes=demo_outcomes(today)
    )
    _give_failures_causes(workflow)
    metrics.rollup(today - timedelta(days=HISTORY_DAYS - 1), today, now=now)
    # What the daily pass would have found: the gate's verdicts and the last week's drift.
    rollouts.check_rollout(rollout=rollout, now=now)
    first = rollout.windows.order_by("position").first()
    if first is not None and not first.done:
        rollouts.set_window_done(window=first, done=True, actor=ops)
    failed = list(Run.objects.filter(workflow=workflow, trigger=history.TRIGGER, status=RunStatus.FAILED).order_by("-pk")[:2])
    rollouts.add_note(
        rollout=rollout,
        kind=NoteKind.ISSUE,
        text="Publishing times out when the blog API is slow; the publisher needs a longer timeout.",
        actor=ops,
        runs=failed,
    )
    rollouts.add_note(
        rollout=rollout,
        kind=NoteKind.REVIEW,
        text="Legal's turnaround is fine on weekdays; drafts sent on Friday wait until Monday.",
        actor=ops,
    )
    return f"history: {report.runs} runs of {HISTORY_WORKFLOW} over {HISTORY_DAYS} days, rollout owned by ops"


def _top_up_history(workflow: Workflow, *, days: int, now: Any) -> str:
    """A history made days ago gets the days since (whole days, up to today), so the overview's
    last 24 hours and 7 days and the rollout's latest days are not empty on a later `make run`."""
    if days < 1:
        return f"kept the history of {HISTORY_WORKFLOW}"
    today = timezone.localdate(now)
    days = min(days, HISTORY_DAYS)
    report = history.make_history(
        workflow=workflow, days=days, runs_per_day=runs_per_day, now=now, seed=10 + today.toordinal(), outcomes=demo_outcomes(today)
    )
    _give_failures_causes(workflow)
    metrics.rollup(today - timedelta(days=days - 1), today, now=now)
    return f"kept the history of {HISTORY_WORKFLOW}, with {report.runs} more runs for the {days} day(s) since it was made"


def _give_versions(agent_name: str, actor: Any) -> None:
    """Two versions of the drafter splitting its traffic (a canary), unless it has some: the
    rollout page compares them."""
    agent = Agent.objects.filter(name=agent_name).first()
    if agent is None or agent.versions.exists():
        return
    # Created at weight 0 and given traffic through set_version_weights, so the weights'
    # history says who did (as importing a workflow file does).
    AgentVersion.objects.create(agent=agent, label="current", note="the prompt the pilot started with")
    AgentVersion.objects.create(agent=agent, label="concise", note="a shorter prompt, as a canary")
    definitions.set_version_weights(
        agent=agent, weights={"current": 80, "concise": 20}, actor=actor, reason="demo: a canary of the shorter prompt"
    )


def _give_failures_causes(workflow: Workflow) -> None:
    """An error on each generated failed run and its failing step, so the weekly review can
    group failures by cause."""
    rng = random.Random(10)
    # Only those without one yet: a top-up leaves the causes already given as they were.
    failed = list(Run.objects.filter(workflow=workflow, trigger=history.TRIGGER, status=RunStatus.FAILED, error=""))
    steps = {s.run_id: s for s in StepRun.objects.filter(run__in=failed, status="failed")}
    for run in failed:
        run.error = rng.choice(FAILURE_CAUSES)
        if run.pk in steps:
            steps[run.pk].error = run.error
    Run.objects.bulk_update(failed, ["error"], batch_size=1000)
    StepRun.objects.bulk_update(list(steps.values()), ["error"], batch_size=1000)
