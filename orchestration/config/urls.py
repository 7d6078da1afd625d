from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path, re_path

from approvals import api
from orchestration.observability.views import healthz, metrics_view
from orchestration.triggers.views import webhook

urlpatterns = [
    path("admin/", admin.site.urls),
    path("metrics", metrics_view, name="metrics"),
    path("healthz", healthz, name="healthz"),
    path("api/", api.urls()),
    re_path(r"^api/(?P<rest>.*)$", api.not_found),  # JSON, like the rest of the API
    re_path(r"^hooks/(?P<key>[-a-zA-Z0-9_]{1,100})/?$", webhook, name="webhook"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("approvals/", include("approvals.urls")),
    path("", include("dashboard.urls")),
]
