"""What /healthz checks: the database answers, the broker answers, a ticker passed lately.

Each check is one cheap round trip with a short timeout, and says only *what* failed (the
exception's class), never a message that might carry a host, a user or a password from a URL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import connection, connections
from django.utils import timezone

from orchestration.models import TickerPass

# A health check must answer quickly even when Redis is unreachable (a dropped packet would
# otherwise hold the request until the kernel gives up).
BROKER_TIMEOUT_SECONDS = 1.0


@dataclass
class Check:
    ok: bool
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "detail": self.detail, **self.extra}


def _failure(exc: BaseException) -> str:
    return f"unreachable ({type(exc).__name__})"


def database() -> Check:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:
        return Check(False, _failure(exc), {"vendor": connection.vendor})
    return Check(True, "answers", {"vendor": connection.vendor})


def broker() -> Check:
    """The broker workers read their task messages from: Redis in the scale-out set-up, else
    django-q2's ORM broker (a table in the database named by Q_CLUSTER["orm"])."""
    url = settings.REDIS_URL
    if url:
        import redis

        client = redis.Redis.from_url(
            url, socket_connect_timeout=BROKER_TIMEOUT_SECONDS, socket_timeout=BROKER_TIMEOUT_SECONDS
        )
        try:
            client.ping()
        except Exception as exc:
            return Check(False, _failure(exc), {"kind": "redis"})
        finally:
            client.close()
        return Check(True, "answers", {"kind": "redis"})
    from django_q.models import OrmQ

    alias = str(settings.Q_CLUSTER.get("orm", "default"))
    try:
        list(OrmQ.objects.using(alias).values_list("pk", flat=True)[:1])
    except Exception as exc:
        connections[alias].close_if_unusable_or_obsolete()
        return Check(False, _failure(exc), {"kind": "orm"})
    return Check(True, "answers", {"kind": "orm"})


def ticker(now: datetime | None = None) -> Check:
    """The age of the newest whole pass of any host's ticker (orchestration/ticker.py records
    one at most every few seconds); failing when none is recorded or it is too old."""
    now = now or timezone.now()
    limit = settings.BATON_HEALTH_TICKER_SECONDS
    try:
        last = TickerPass.objects.order_by("-passed_at").values_list("passed_at", flat=True).first()
    except Exception as exc:
        return Check(False, _failure(exc))
    if last is None:
        return Check(False, "no pass recorded: is a worker (manage.py baton_worker) running?", {"last_pass_age_seconds": None})
    age = max((now - last).total_seconds(), 0.0)
    extra = {"last_pass_age_seconds": round(age, 1), "limit_seconds": limit}
    if age > limit:
        return Check(False, f"last pass {age:.0f} s ago (more than {limit:g} s)", extra)
    return Check(True, f"last pass {age:.1f} s ago", extra)


def report() -> dict[str, Any]:
    checks = {"database": database(), "broker": broker()}
    # The ticker's row is in the database: with the database away, say that once.
    checks["ticker"] = ticker() if checks["database"].ok else Check(False, "unknown: the database is unreachable")
    failing = [name for name, check in checks.items() if not check.ok]
    return {
        "status": "ok" if not failing else "failing",
        "failing": failing,
        "checks": {name: check.as_json() for name, check in checks.items()},
    }
