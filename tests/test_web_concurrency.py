"""The web process lets only BATON_WEB_CONCURRENCY requests into Django at once; the rest wait."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from orchestration.config.concurrency import BoundedRequests


class HeldApplication:
    """An ASGI app whose calls stay inside until released, counting how many are in at once."""

    def __init__(self) -> None:
        self.inside = 0
        self.most = 0
        self.served = 0
        self.release = asyncio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.inside += 1
        self.most = max(self.most, self.inside)
        try:
            await self.release.wait()
        finally:
            self.inside -= 1
            self.served += 1


async def until(predicate: Any) -> None:
    # Yields to the loop until the other tasks have got where the test expects; no timing.
    for _ in range(1_000):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("the requests never got there")


def test_at_most_the_configured_number_of_requests_are_inside_django_at_once(settings: Any) -> None:
    settings.BATON_WEB_CONCURRENCY = 3

    async def body() -> HeldApplication:
        inner = HeldApplication()
        bounded = BoundedRequests(inner)
        requests = [asyncio.create_task(bounded({"type": "http"}, None, None)) for _ in range(20)]
        await until(lambda: inner.inside == 3)
        assert all(not request.done() for request in requests)
        inner.release.set()
        await asyncio.gather(*requests)
        return inner

    inner = asyncio.run(body())
    assert inner.most == 3
    assert inner.served == 20


@pytest.mark.parametrize("kind", ["websocket", "lifespan"])
def test_sockets_are_not_held_back_by_busy_requests(settings: Any, kind: str) -> None:
    settings.BATON_WEB_CONCURRENCY = 1

    async def body() -> int:
        inner = HeldApplication()
        bounded = BoundedRequests(inner)
        busy = asyncio.create_task(bounded({"type": "http"}, None, None))
        await until(lambda: inner.inside == 1)
        other = asyncio.create_task(bounded({"type": kind}, None, None))
        await until(lambda: inner.inside == 2)
        inner.release.set()
        await asyncio.gather(busy, other)
        return inner.most

    assert asyncio.run(body()) == 2
