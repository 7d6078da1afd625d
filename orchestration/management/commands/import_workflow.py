"""Import workflow files (YAML or JSON): agents are created or updated, the workflow's draft is
replaced and published as its next version.

Several files are imported in order in one transaction, so a later file may use agents or
sub-workflows from an earlier one, and one bad file means nothing at all is imported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from orchestration import definitions
from orchestration.models import WorkflowVersion
from orchestration.spec import MAX_FILE_BYTES, SpecError, load_text


class Command(BaseCommand):
    help = "Imports workflow files and publishes each workflow as a new version (all or nothing)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("files", nargs="+", metavar="FILE", help="YAML or JSON workflow files.")
        parser.add_argument(
            "--check", action="store_true", help="Validate the files against the database; save nothing."
        )

    def handle(self, *args: Any, files: list[str], check: bool, **options: Any) -> None:
        failed = 0
        lines: list[str] = []
        # --check runs the very same import and rolls it back, so it checks exactly what an
        # import would do, including one file using an agent defined by the file before it.
        with transaction.atomic():
            for name in files:
                try:
                    lines.append(self._import(name, check=check))
                except SpecError as exc:
                    failed += 1
                    for problem in exc.problems:
                        # YAML syntax errors already start with the file name and line.
                        prefixed = problem if problem.startswith(name) else f"{name}: {problem}"
                        self.stderr.write(prefixed)
            if failed or check:
                transaction.set_rollback(True)
        if failed:
            raise CommandError(f"{failed} of {len(files)} file(s) have problems; nothing was imported.")
        for line in lines:
            self.stdout.write(line)

    def _import(self, name: str, *, check: bool) -> str:
        try:
            size = Path(name).stat().st_size
            if size > MAX_FILE_BYTES:
                # Refused before reading, let alone parsing, it.
                raise SpecError([f"the file is {size:,} bytes; at most {MAX_FILE_BYTES:,} are accepted"])
            text = Path(name).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SpecError([f"cannot read the file ({exc})"]) from None
        document = load_text(text, source=name)
        key = (document.get("workflow") or {}).get("key") if isinstance(document.get("workflow"), dict) else None
        before = WorkflowVersion.objects.filter(workflow__key=key).order_by("-number").values_list("pk", flat=True).first()
        agents, version = definitions.import_document(document, note=f"imported from {Path(name).name}")
        if check:
            return f"{name}: OK"
        names = ", ".join(agent.name for agent in agents)
        if version is None:
            return f"imported agents: {names}"
        suffix = f" (agents: {names})" if names else ""
        if version.pk == before:
            return f"{version.workflow.key} unchanged: still version {version.number}{suffix}"
        return f"imported {version.workflow.key} as version {version.number}{suffix}"
