from __future__ import annotations

from django.urls import path

from dashboard import views

app_name = "dashboard"

urlpatterns = [
    path("", views.runs, name="runs"),
    path("workflows/", views.workflows, name="workflows"),
    path("workflows/<slug:key>/start/", views.start_run, name="start"),
    path("agents/", views.agents, name="agents"),
    path("runs/<int:run_id>/", views.run_detail, name="run"),
    path("runs/<int:run_id>/cancel/", views.cancel_run, name="cancel"),
]
