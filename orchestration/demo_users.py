"""The demo logins and groups that `manage.py load_demo` creates.

The passwords are documented on purpose: they exist only so someone trying Baton locally can
sign in as each persona. Never run load_demo against a database that real people use.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission

# (username, password, who they are)
DEMO_USERS: list[tuple[str, str, str]] = [
    ("admin", "admin-demo", "superuser: edits workflows and agents in Django admin"),
    ("ops", "ops-demo", "operations lead: starts, watches and cancels the demo's runs"),
    ("approver", "approver-demo", "approver: decides in the approvals inbox, sees those runs"),
    ("finance", "finance-demo", "finance lead: owns the refund workflow and resolves its failed steps"),
]

DEMO_GROUPS: list[str] = ["operations", "legal", "editors", "support"]

# Which groups each demo user belongs to. Approval and manual steps are assigned to groups, and
# the demo files give `operations` operator rights on every workflow and the approvers' groups
# viewer rights on the workflows they decide in (orchestration/access.py is the rule).
DEMO_MEMBERSHIPS: dict[str, list[str]] = {
    "admin": [],
    "ops": ["operations"],
    "approver": ["legal", "editors", "support"],
    # Owns the refund workflow (which sees and operates its runs): a step that fails for good
    # becomes an exception item for its owner, and ops, who starts the refunds, may not resolve
    # exceptions of runs they started (the self-approval rule, approvals/access.py).
    "finance": [],
}


def ensure_demo_users() -> list[str]:
    """Create or update the demo users and groups; returns one line per change made.

    Running it again changes nothing unless someone altered a demo user in between, in which
    case the documented password, flags and memberships are put back.
    """
    changes: list[str] = []
    groups: dict[str, Group] = {}
    for name in DEMO_GROUPS:
        groups[name], created = Group.objects.get_or_create(name=name)
        if created:
            changes.append(f"created group {name}")
    # ops browses the admin read-only: view permission on every orchestration model (rollouts too).
    view_orchestration = list(
        Permission.objects.filter(content_type__app_label__in=["orchestration", "rollouts"], codename__startswith="view_")
    )
    User = get_user_model()
    for username, password, _ in DEMO_USERS:
        user, created = User.objects.get_or_create(
            username=username, defaults={"email": f"{username}@baton.example"}
        )
        changed: list[str] = []
        flags = {
            "is_active": True,
            "is_superuser": username == "admin",
            "is_staff": username in ("admin", "ops"),
        }
        for flag, value in flags.items():
            if getattr(user, flag) != value:
                setattr(user, flag, value)
                changed.append(flag)
        if not user.check_password(password):
            user.set_password(password)
            changed.append("password")
        if changed:
            user.save()
        missing = [
            groups[g] for g in DEMO_MEMBERSHIPS[username] if not user.groups.filter(pk=groups[g].pk).exists()
        ]
        if missing:
            user.groups.add(*missing)
            changed.append("groups")
        if username == "ops":
            held = set(user.user_permissions.values_list("pk", flat=True))
            lacking = [p for p in view_orchestration if p.pk not in held]
            if lacking:
                user.user_permissions.add(*lacking)
                changed.append("view permissions")
        if created:
            changes.append(f"created user {username}")
        elif changed:
            changes.append(f"updated user {username} ({', '.join(changed)})")
    return changes
