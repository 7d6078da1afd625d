from __future__ import annotations

from django.apps import AppConfig


class DashboardConfig(AppConfig):
    name = "dashboard"

    def ready(self) -> None:
        # orchestration never imports this app: its one after-commit function calls the hook.
        from dashboard.live.publish import after_commit
        from orchestration import transitions

        transitions.register_after_commit(after_commit)
