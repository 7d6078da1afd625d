from __future__ import annotations

from django.apps import AppConfig


class TriggersConfig(AppConfig):
    name = "orchestration.triggers"
    label = "triggers"
    verbose_name = "Triggers"

    def ready(self) -> None:
        # The ticker is in the core, which never imports this app: it calls what registers.
        from orchestration import definitions, ticker
        from orchestration.triggers import transitions

        ticker.register_sweep(transitions.sweep)
        definitions.register_on_publish(transitions.sync_version)
