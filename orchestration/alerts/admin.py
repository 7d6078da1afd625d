"""Alerts in Django admin.

Rules are configuration and are edited here, by superusers only (a rule chooses whom Baton
emails and which URLs it calls, and sees across workflows). `AlertRule.clean` names the field
of every bad value; what an alert says is Baton's own text, never a template the rule holds.

Alerts, their events and deliveries are history: read-only, except the "acknowledge" action,
which goes through orchestration/alerts/transitions.py like the pages. Staff who are not
superusers see only the alerts orchestration/alerts/reads.py lets them see; a delivery that
failed shows its reason on the alert's change page.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from orchestration.admin import ReadOnlyAdmin, ReadOnlyInline, SuperusersOnly
from orchestration.alerts import reads, transitions
from orchestration.alerts.models import Alert, AlertEvent, AlertRule, Delivery


class AlertRuleForm(forms.ModelForm[AlertRule]):
    class Meta:
        model = AlertRule
        fields = (
            "name", "kind", "severity", "enabled", "workflow", "agent", "threshold_seconds",
            "failure_percent", "window_seconds", "min_count", "users", "groups", "webhooks",
        )
        widgets = {"webhooks": forms.Textarea(attrs={"rows": 3, "cols": 80})}


@admin.register(AlertRule)
class AlertRuleAdmin(SuperusersOnly[AlertRule]):
    form = AlertRuleForm
    list_display = ("name", "kind", "severity", "enabled", "workflow", "agent", "updated_at")
    list_filter = ("kind", "severity", "enabled")
    list_select_related = ("workflow", "agent")
    search_fields = ("name",)
    filter_horizontal = ("users", "groups")
    fieldsets = (
        (None, {"fields": ("name", "kind", "severity", "enabled")}),
        ("What it watches", {"fields": ("workflow", "agent", "threshold_seconds", "failure_percent", "window_seconds", "min_count")}),
        ("Whom to tell", {"fields": ("users", "groups", "webhooks")}),
    )


class EventInline(ReadOnlyInline[AlertEvent, Alert]):
    model = AlertEvent
    fields = ("created_at", "kind", "actor", "note")
    readonly_fields = fields
    show_change_link = False


class DeliveryInline(ReadOnlyInline[Delivery, Alert]):
    model = Delivery
    fields = ("about", "channel", "shown_target", "status", "attempts", "next_attempt_at", "last_error", "sent_at")
    readonly_fields = fields
    show_change_link = False


@admin.register(Alert)
class AlertAdmin(ReadOnlyAdmin[Alert]):
    list_display = ("fired_at", "severity", "status", "title", "rule", "failed_deliveries", "acknowledged_by")
    list_filter = ("status", "severity", "rule__kind")
    list_select_related = ("rule", "acknowledged_by")
    search_fields = ("title", "subject")
    actions = ("acknowledge",)
    inlines = (DeliveryInline, EventInline)
    readonly_fields = (
        "rule",
        "subject",
        "severity",
        "status",
        "title",
        "detail",
        "workflow",
        "run",
        "agent",
        "link",
        "fired_at",
        "acknowledged_at",
        "acknowledged_by",
        "acknowledge_note",
        "resolved_at",
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[Alert]:
        visible = reads.visible(request.user).values("pk")
        return super().get_queryset(request).filter(pk__in=visible).prefetch_related("deliveries")

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.is_active and request.user.is_staff)

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self.has_view_permission(request)

    def get_actions(self, request: HttpRequest) -> Any:
        # The read-only admin drops actions that need change rights; acknowledging needs
        # none of Django's permissions (transitions ask orchestration/alerts/reads.py).
        actions = super().get_actions(request)
        actions["acknowledge"] = self.get_action("acknowledge")
        return actions

    @admin.display(description="failed deliveries")
    def failed_deliveries(self, alert: Alert) -> int:
        return sum(1 for delivery in alert.deliveries.all() if delivery.failing)

    @admin.action(description="Acknowledge the selected alerts")
    def acknowledge(self, request: HttpRequest, queryset: QuerySet[Alert]) -> None:
        done, refused = 0, []
        for alert in queryset:
            try:
                transitions.acknowledge(alert_id=alert.pk, user=request.user, note="acknowledged in the admin")
                done += 1
            except transitions.AlertRefused as exc:
                refused.append(f"{alert.title}: {exc.message}")
        self.message_user(request, f"{done} alert(s) acknowledged.", messages.SUCCESS)
        for text in refused[:10]:
            self.message_user(request, text, messages.WARNING)
