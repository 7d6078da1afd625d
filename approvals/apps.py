from __future__ import annotations

from django.apps import AppConfig


class ApprovalsConfig(AppConfig):
    name = "approvals"
    verbose_name = "Approvals"

    def ready(self) -> None:
        # orchestration never imports this app: it calls whatever registered here.
        from approvals import alert_conditions, live
        from approvals import observability as approval_figures
        from approvals.handler import PeopleHandler
        from approvals.rollout_figures import figures, people
        from approvals.transitions import sweep_deadlines
        from approvals.waiting_words import open_items
        from dashboard import overview, waiting_words
        from orchestration import ticker, waiting
        from orchestration.alerts import conditions as alert_conditions_registry
        from orchestration.alerts.models import RuleKind
        from orchestration.observability import metrics as observability
        from orchestration.rollouts import history, metrics

        waiting.register(PeopleHandler())
        ticker.register_sweep(sweep_deadlines)
        live.register()
        # The runs list and the run page say who a waiting run waits on ("approval by legal").
        waiting_words.register(open_items)
        # Rollout metrics count approvals, manual tasks and exceptions; generated history
        # gets its inbox items written here.
        metrics.register_figures(figures)
        history.register_people(people)
        # Alert rules on overdue inbox items (orchestration/alerts never imports this app).
        alert_conditions_registry.register(RuleKind.APPROVAL_OVERDUE, alert_conditions.overdue)
        # The overview's overdue and decided items; /metrics' pending and overdue items.
        overview.register_people(approval_figures.overview_figures)
        observability.register_source(approval_figures.metric_families)
