from __future__ import annotations

from typing import Any

from django.urls import path

from dashboard.live.consumer import LiveConsumer

# Channels' URLRouter takes Django's path() with an ASGI application where a view would be.
websocket_urlpatterns: list[Any] = [
    path("ws/live/", LiveConsumer.as_asgi()),  # type: ignore[arg-type]
]
