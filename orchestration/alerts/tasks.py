"""django-q2 task adapter: takes a delivery id and sends it, nothing more (see queue.py)."""

from __future__ import annotations

from orchestration.alerts import deliveries


def deliver(delivery_id: int) -> None:
    deliveries.send(delivery_id)
