"""Outbound connections are reused: a bounded pool per checked host and address, sync and async,
with every request checked again before it may use one."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from orchestration import outbound
from orchestration.outbound import OutboundRefused
from tests.agents_kinds.test_outbound import FakeDNS, dns  # noqa: F401 (a fixture)
from tests.servers import HoldingServer


@pytest.fixture
def server() -> Iterator[HoldingServer]:
    outbound._sync_pools.clear()
    with HoldingServer(delay=0.0) as running:
        yield running
    outbound._sync_pools.clear()


def test_requests_to_one_host_reuse_one_connection(server: HoldingServer, settings: Any) -> None:
    settings.BATON_HTTP_ALLOWED_HOSTS = "127.0.0.1"
    for n in range(5):
        assert outbound.request("POST", server.url, json_body={"n": n}, timeout=2).status == 200
    assert server.answered == 5
    assert server.connections == 1


def test_requests_on_an_event_loop_reuse_one_connection(server: HoldingServer, settings: Any) -> None:
    settings.BATON_HTTP_ALLOWED_HOSTS = "127.0.0.1"

    async def calls() -> list[int]:
        try:
            return [(await outbound.request_async("POST", server.url, json_body={"n": n}, timeout=2)).status for n in range(5)]
        finally:
            await outbound.async_pools_close()

    assert asyncio.run(calls()) == [200] * 5
    assert server.connections == 1


def test_a_pooled_connection_is_not_used_once_the_host_is_no_longer_allowed(server: HoldingServer, settings: Any) -> None:
    settings.BATON_HTTP_ALLOWED_HOSTS = "127.0.0.1"
    assert outbound.request("POST", server.url, json_body={}, timeout=2).status == 200
    settings.BATON_HTTP_ALLOWED_HOSTS = "api.example.com"
    with pytest.raises(OutboundRefused):
        outbound.request("POST", server.url, json_body={}, timeout=2)

    async def call() -> None:
        try:
            await outbound.request_async("POST", server.url, json_body={}, timeout=2)
        finally:
            await outbound.async_pools_close()

    with pytest.raises(OutboundRefused):
        asyncio.run(call())
    assert server.answered == 1


def test_a_name_that_resolves_to_an_unlisted_address_is_refused_though_a_pool_exists(
    server: HoldingServer, settings: Any, dns: FakeDNS  # noqa: F811
) -> None:
    port = server.httpd.server_address[1]
    settings.BATON_HTTP_ALLOWED_HOSTS = "api.example.com, 127.0.0.1"
    dns.answers["api.example.com"] = ["127.0.0.1"]
    url = f"http://api.example.com:{port}/work"
    assert outbound.request("POST", url, json_body={}, timeout=2).status == 200
    # The next answer points inside the network: the checks run again, the old pool is not asked.
    dns.answers["api.example.com"] = ["10.0.0.5"]
    with pytest.raises(OutboundRefused, match="10.0.0.5"):
        outbound.request("POST", url, json_body={}, timeout=2)
    assert server.answered == 1


def test_pools_are_bounded_and_the_least_recently_used_is_closed(settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    settings.BATON_HTTP_ALLOWED_HOSTS = "127.0.0.1"
    outbound._sync_pools.clear()
    monkeypatch.setattr(outbound, "MAX_POOLS", 2)
    with HoldingServer(delay=0.0) as a, HoldingServer(delay=0.0) as b, HoldingServer(delay=0.0) as c:
        for running in (a, b, c):
            assert outbound.request("POST", running.url, json_body={}, timeout=2).status == 200
        ports = {key[2] for key in outbound._sync_pools.pools}
        assert ports == {b.httpd.server_address[1], c.httpd.server_address[1]}
    outbound._sync_pools.clear()
