"""The demo's alert rules (`manage.py load_demo`): one of each kind, telling `ops` by email.

Created when missing (by name), kept as they are otherwise, like the demo's workflows: what
someone changed in the admin stays changed.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model

from orchestration.alerts.models import AlertRule, RuleKind, Severity

DEMO_RULES: list[dict[str, Any]] = [
    {"name": "A run failed", "kind": RuleKind.RUN_FAILED, "severity": Severity.CRITICAL},
    {"name": "A run takes over an hour", "kind": RuleKind.RUN_DURATION, "threshold_seconds": 3600},
    {
        "name": "Over 20 % of a workflow's runs fail",
        "kind": RuleKind.FAILURE_RATE,
        "failure_percent": 20,
        "window_seconds": 3600,
        "min_count": 5,
    },
    {"name": "An approval is overdue", "kind": RuleKind.APPROVAL_OVERDUE},
    {"name": "A circuit opened", "kind": RuleKind.CIRCUIT_OPEN},
    {"name": "A schedule did not start its run", "kind": RuleKind.SCHEDULE_MISSED, "severity": Severity.CRITICAL},
    {"name": "A rollout drifts", "kind": RuleKind.ROLLOUT_DRIFT, "severity": Severity.INFO},
]


def ensure_demo_rules(recipient: str = "ops") -> list[str]:
    ops = get_user_model().objects.filter(username=recipient).first()
    created, kept = [], []
    for fields in DEMO_RULES:
        rule, made = AlertRule.objects.get_or_create(name=fields["name"], defaults=fields)
        if made:
            rule.full_clean()
            if ops is not None:
                rule.users.add(ops)
            created.append(rule.name)
        else:
            kept.append(rule.name)
    lines = []
    if created:
        lines.append(f"created alert rules: {', '.join(created)}")
    if kept:
        lines.append(f"kept alert rules: {', '.join(kept)}")
    return lines
