"""Load the demo: three logins, their groups, and the example workflows in orchestration/demo/.

Safe to run again (`make run` runs it every time): it creates what is missing and leaves every
workflow and agent that already exists as it is, so edits made in admin survive. Users are
updated rather than duplicated. To get the demo's own definitions back, start from an empty
database (`make clean`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from orchestration import definitions
from orchestration.demo_users import DEMO_USERS, ensure_demo_users
from orchestration.models import Agent, Workflow
from orchestration.spec import SpecError, find_cycle, load_text

DEMO_DIR = Path(__file__).resolve().parents[2] / "demo"


class Command(BaseCommand):
    help = "Creates the demo users and imports the demo workflows (idempotent)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--quiet", action="store_true", help="Print nothing unless something fails.")

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
    return {s["workflow"] for s in steps if isinstance(s, dict) and isinstance(s.get("workflow"), str)}


def load_file(document: dict[str, Any]) -> str:
    """Create the document's missing agents and workflow; keep what exists. Says what it did."""
    agents, spec = definitions.check_document(document)
    assert spec is not None  # read_demo_files only passes documents with a workflow
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
    notes = "".join(
        f"; {verb} agents {', '.join(names)}" for verb, names in (("created", created), ("kept", kept)) if names
    )
    workflow = Workflow.objects.filter(key=spec["key"]).first()
    if workflow is not None:
        latest = workflow.latest_version
        return f"kept {spec['key']} ({f'v{latest.number}' if latest else 'draft'}){notes}"
    # Only the workflow: its agents are now all in the database, created above or kept.
    _, version = definitions.import_document({"workflow": document["workflow"]}, note="load_demo")
    assert version is not None
    return f"published {spec['key']} v{version.number}{notes}"
