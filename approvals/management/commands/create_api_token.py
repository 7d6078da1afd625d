"""Create a personal API token: `manage.py create_api_token USERNAME [--name NAME] [--days N]`.

The token goes to stdout alone (TOKEN=$(manage.py create_api_token bob) works); it is shown
this once, since only its hash is stored. The explanation goes to stderr.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from approvals.auth import create_api_token

MAX_DAYS = 3650


class Command(BaseCommand):
    help = "Creates an API token for a user and prints it once."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="What the token is for, shown in the admin.")
        parser.add_argument(
            "--days", type=int, default=None, help="Expire the token after N days (default: never)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        user = get_user_model().objects.filter(username=options["username"]).first()
        if user is None:
            raise CommandError(f"no user named {options['username']!r}")
        if not user.is_active:
            raise CommandError(f"user {options['username']!r} is inactive; a token would not work")
        days = options["days"]
        if days is not None and not 1 <= days <= MAX_DAYS:
            raise CommandError(f"--days: must be between 1 and {MAX_DAYS}")
        if len(options["name"]) > 100:
            raise CommandError("--name: at most 100 characters")
        row, token = create_api_token(user=user, name=options["name"], days=days)
        self.stdout.write(token)
        until = f" It expires on {row.expires_at:%Y-%m-%d %H:%M} UTC." if row.expires_at else ""
        self.stderr.write(
            f"Created API token {row.prefix}… for {user.get_username()}.{until} It is shown only now; "
            "use it as `Authorization: Bearer <token>`."
        )
