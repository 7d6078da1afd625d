from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path, re_path

from approvals import api

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", api.urls()),
    re_path(r"^api/(?P<rest>.*)$", api.not_found),  # JSON, like the rest of the API
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("approvals/", include("approvals.urls")),
    path("", include("dashboard.urls")),
]
