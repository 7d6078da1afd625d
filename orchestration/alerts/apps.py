from __future__ import annotations

from django.apps import AppConfig


class AlertsConfig(AppConfig):
    name = "orchestration.alerts"
    label = "alerts"
    verbose_name = "Alerts"

    def ready(self) -> None:
        # The ticker is in the core, which never imports this app: it calls what registers.
        from orchestration import ticker
        from orchestration.alerts import sweep

        ticker.register_sweep(sweep.sweep)
