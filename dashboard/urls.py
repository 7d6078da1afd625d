from __future__ import annotations

from django.urls import path

from dashboard import rollouts, try_draft, views

app_name = "dashboard"

urlpatterns = [
    path("", views.overview_page, name="overview"),
    path("runs/", views.runs, name="runs"),
    path("workflows/", views.workflows, name="workflows"),
    path("workflows/<slug:key>/", views.workflow_detail, name="workflow"),
    path("workflows/<slug:key>/start/", views.start_run, name="start"),
    path("workflows/<slug:key>/roll-back/", views.roll_back, name="workflow_roll_back"),
    path("workflows/<slug:key>/triggers/pause/", views.pause_triggers, name="workflow_pause_triggers"),
    path("workflows/<slug:key>/try/", try_draft.try_draft, name="workflow_try_draft"),
    path("agents/", views.agents, name="agents"),
    path("runs/<int:run_id>/", views.run_detail, name="run"),
    path("runs/<int:run_id>/cancel/", views.cancel_run, name="cancel"),
    path("runs/<int:run_id>/events/", views.run_events, name="run_events"),
    path("runs/<int:run_id>/steps/<str:key>/items/", views.step_items, name="step_items"),
    path("runs/<int:run_id>/rows/<int:step_id>/", views.step_detail, name="step_detail"),
    path("runs/<int:run_id>/retry/", views.retry_run, name="retry"),
    path("runs/<int:run_id>/rerun/", views.rerun_run, name="rerun"),
    path("runs/bulk/", views.bulk_runs, name="runs_bulk"),
    path("rollouts/", rollouts.index, name="rollouts"),
    path("rollouts/<slug:key>/", rollouts.detail, name="rollout"),
    path("rollouts/<slug:key>/start/", rollouts.start, name="rollout_start"),
    path("rollouts/<slug:key>/promote/", rollouts.promote, name="rollout_promote"),
    path("rollouts/<slug:key>/pause/", rollouts.pause, name="rollout_pause"),
    path("rollouts/<slug:key>/resume/", rollouts.resume, name="rollout_resume"),
    path("rollouts/<slug:key>/roll-back/", rollouts.roll_back, name="rollout_roll_back"),
    path("rollouts/<slug:key>/restart/", rollouts.restart, name="rollout_restart"),
    path("rollouts/<slug:key>/criteria/<int:criterion_id>/", rollouts.criterion, name="rollout_criterion"),
    path("rollouts/<slug:key>/windows/<int:window_id>/", rollouts.window_done, name="rollout_window"),
    path("rollouts/<slug:key>/checklist/<int:item_id>/", rollouts.checklist_done, name="rollout_checklist"),
    path("rollouts/<slug:key>/notes/", rollouts.add_note, name="rollout_note"),
    path("rollouts/<slug:key>/notes/<int:note_id>/resolve/", rollouts.resolve_issue, name="rollout_resolve"),
    path("rollouts/<slug:key>/weights/<slug:agent>/", rollouts.weights, name="rollout_weights"),
    path("rollouts/<slug:key>/review/", rollouts.review, name="rollout_review"),
    path("rollouts/<slug:key>/metrics.csv", rollouts.metrics_csv, name="rollout_csv"),
]
