"""Cancel a run that is still going, and the sub-workflow runs below it."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from orchestration import transitions


class Command(BaseCommand):
    help = "Cancels a running run: its unfinished steps and child runs are cancelled too."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("run_id", type=int, metavar="ID", help="The run's id.")
        parser.add_argument("--reason", default="", help="Recorded on the run and its event.")

    def handle(self, *args: Any, run_id: int, reason: str, **options: Any) -> None:
        try:
            run = transitions.cancel_run(run_id=run_id, reason=reason or "cancelled from the command line")
        except LookupError as exc:
            raise CommandError(str(exc)) from None
        except transitions.InvalidTransition as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"cancelled run {run.pk}")
