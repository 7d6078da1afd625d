"""Load the demo: three logins, their groups, and the example workflows in orchestration/demo/.

Safe to run again: users are updated rather than duplicated, and a workflow gets a new version
only when its file no longer matches the latest published version.
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
    """Import one demo document unless it matches what is published; says what it did."""
    agents, spec = definitions.check_document(document)
    assert spec is not None  # read_demo_files only passes documents with a workflow
    agent_notes = _agent_changes(agents)
    workflow = Workflow.objects.filter(key=spec["key"]).first()
    latest = workflow.latest_version if workflow else None
    # Compare as stored: the JSON round trip is what the version's spec went through.
    if latest is not None and latest.spec == json.loads(json.dumps(spec)):
        if agent_notes:
            definitions.import_document({"agents": document["agents"]})
        return f"unchanged {spec['key']} (v{latest.number}){agent_notes}"
    _, version = definitions.import_document(document, note="load_demo")
    assert version is not None
    return f"published {spec['key']} v{version.number}{agent_notes}"


def _agent_changes(agents: list[dict[str, Any]]) -> str:
    """A note such as `; created agents a, b; updated agents c`, or "" when all match their rows."""
    created: list[str] = []
    updated: list[str] = []
    for agent in agents:
        row = Agent.objects.filter(name=agent["name"]).first()
        if row is None:
            created.append(agent["name"])
        elif definitions.agent_spec(row) != json.loads(json.dumps({**agent, "retry": agent["retry"] or {}})):
            updated.append(agent["name"])
    notes = [
        f"{verb} agents {', '.join(names)}"
        for verb, names in (("created", created), ("updated", updated))
        if names
    ]
    return "".join(f"; {note}" for note in notes)
