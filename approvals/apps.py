from __future__ import annotations

from django.apps import AppConfig


class ApprovalsConfig(AppConfig):
    name = "approvals"
    verbose_name = "Approvals"

    def ready(self) -> None:
        # orchestration never imports this app: it calls whatever registered here.
        from approvals import live
        from approvals.handler import PeopleHandler
        from approvals.transitions import sweep_deadlines
        from orchestration import ticker, waiting

        waiting.register(PeopleHandler())
        ticker.register_sweep(sweep_deadlines)
        live.register()
