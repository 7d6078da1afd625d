"""Print a workflow's latest published version, with the agents it uses, as a workflow file."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from orchestration import definitions
from orchestration.models import Workflow
from orchestration.spec import SpecError


class Command(BaseCommand):
    help = "Prints the latest published version of a workflow as YAML (or JSON), ready to import."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("key", help="The workflow's key.")
        parser.add_argument("--json", action="store_true", help="Print JSON instead of YAML.")

    def handle(self, *args: Any, key: str, json: bool, **options: Any) -> None:
        try:
            text = definitions.export_document(key, as_json=json)
        except Workflow.DoesNotExist:
            raise CommandError(f"workflow '{key}' does not exist") from None
        except SpecError as exc:
            raise CommandError("; ".join(exc.problems)) from None
        self.stdout.write(text, ending="")
