from __future__ import annotations

from django.apps import AppConfig


class RolloutsConfig(AppConfig):
    name = "orchestration.rollouts"
    label = "rollouts"
    verbose_name = "Rollouts"

    def ready(self) -> None:
        # The ticker is in the core, which never imports this app: it calls what registers.
        from orchestration import ticker
        from orchestration.rollouts import daily

        ticker.register_sweep(daily.sweep)
