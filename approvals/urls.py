from __future__ import annotations

from django.urls import path

from approvals import views

app_name = "approvals"

urlpatterns = [
    path("", views.inbox, name="inbox"),
    path("exceptions/", views.exceptions, name="exceptions"),
    path("decided/", views.decided, name="decided"),
    path("count/", views.nav_count, name="count"),
    path("<int:item_id>/", views.item_detail, name="item"),
    path("<int:item_id>/decide/", views.decide, name="decide"),
    path("<int:item_id>/submit/", views.submit, name="submit"),
    path("<int:item_id>/resolve/", views.resolve, name="resolve"),
    path("<int:item_id>/reassign/", views.reassign, name="reassign"),
]
