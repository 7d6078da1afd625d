"""The outbound guard: agents must not be a way into the internal network.

Requests go to a real server on 127.0.0.1; each refusal also checks that nothing reached it.
Names other than localhost cannot be resolved to loopback without DNS, so the `dns` fixture
answers for chosen names (the stand-in for a DNS server; everything else resolves for real).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from orchestration import outbound
from orchestration.outbound import AllowList, OutboundRefused
from tests.servers import Reply, ScriptedServer


class FakeDNS:
    def __init__(self, real: Any):
        self.real = real
        self.answers: dict[str, list[str]] = {}
        self.lookups: list[str] = []

    def __call__(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name not in self.answers:
            return self.real(host, port, *args, **kwargs)
        self.lookups.append(name)
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
            for a in self.answers[name]
        ]


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> FakeDNS:
    fake = FakeDNS(socket.getaddrinfo)
    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return fake


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as running:
        running.script("/hook", Reply(200, {"ok": True}))
        yield running


def port_of(server: ScriptedServer) -> int:
    return int(server.httpd.server_address[1])


def refused(url: str) -> str:
    with pytest.raises(OutboundRefused) as caught:
        outbound.request("POST", url, json_body={"x": 1}, timeout=2)
    return str(caught.value)


def test_with_an_empty_allow_list_nothing_is_allowed(server: ScriptedServer, settings: Any) -> None:
    settings.BATON_HTTP_ALLOWED_HOSTS = ""
    assert "host '127.0.0.1' is not on BATON_HTTP_ALLOWED_HOSTS" in refused(f"{server.url}/hook")
    assert server.requests == []


def test_listing_localhost_by_name_does_not_open_loopback(server: ScriptedServer, settings: Any) -> None:
    settings.BATON_HTTP_ALLOWED_HOSTS = "localhost"
    message = refused(f"http://localhost:{port_of(server)}/hook")
    assert "host 'localhost' resolves to" in message and "loopback" in message
    assert "list that address in BATON_HTTP_ALLOWED_HOSTS" in message
    assert server.requests == []


def test_a_star_does_not_open_the_cloud_metadata_address(settings: Any) -> None:
    settings.BATON_HTTP_ALLOWED_HOSTS = "*"
    message = refused("http://169.254.169.254/latest/meta-data")
    assert "resolves to 169.254.169.254, a private, loopback or link-local address" in message


def test_a_star_does_not_open_loopback_either(server: ScriptedServer, settings: Any) -> None:
    settings.BATON_HTTP_ALLOWED_HOSTS = "*"
    assert "resolves to 127.0.0.1" in refused(f"{server.url}/hook")
    assert server.requests == []


@pytest.mark.parametrize("allowed", ["127.0.0.1", "127.0.0.0/8", "example.org, 127.0.0.1"])
def test_listing_the_address_or_its_network_allows_the_local_server(server: ScriptedServer, settings: Any, allowed: str) -> None:
    settings.BATON_HTTP_ALLOWED_HOSTS = allowed
    response = outbound.request("POST", f"{server.url}/hook", json_body={"x": 1}, timeout=2)
    assert response.status == 200 and response.json() == {"ok": True}
    [request] = server.seen("/hook")
    assert request.body == {"x": 1}


def test_the_allow_list_is_read_at_call_time(server: ScriptedServer, settings: Any) -> None:
    settings.BATON_HTTP_ALLOWED_HOSTS = "127.0.0.1"
    assert outbound.request("GET", f"{server.url}/hook", timeout=2).status == 200
    settings.BATON_HTTP_ALLOWED_HOSTS = ""
    refused(f"{server.url}/hook")
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("api.example.com", True),
        ("deep.api.example.com", True),
        ("API.Example.COM", True),
        ("example.com", False),
        ("evilexample.com", False),
        ("api.example.com.evil.net", False),
    ],
)
def test_a_wildcard_entry_matches_subdomains_only(host: str, allowed: bool) -> None:
    assert AllowList.parse("*.example.com").allows_host(host) is allowed


def test_a_wildcard_listed_host_is_reached_at_the_address_that_was_checked(server: ScriptedServer, settings: Any, dns: FakeDNS) -> None:
    settings.BATON_HTTP_ALLOWED_HOSTS = "*.example.com, 127.0.0.1"
    dns.answers["api.example.com"] = ["127.0.0.1"]
    response = outbound.request("POST", f"http://api.example.com:{port_of(server)}/hook", json_body={}, timeout=2)
    assert response.status == 200
    [request] = server.seen("/hook")
    assert request.headers["host"] == f"api.example.com:{port_of(server)}"
    assert dns.lookups == ["api.example.com"], "one lookup: no second answer can redirect the connection"


def test_a_wildcard_listed_host_that_resolves_to_loopback_is_refused(server: ScriptedServer, settings: Any, dns: FakeDNS) -> None:
    settings.BATON_HTTP_ALLOWED_HOSTS = "*.example.com"
    dns.answers["api.example.com"] = ["127.0.0.1"]
    assert "resolves to 127.0.0.1" in refused(f"http://api.example.com:{port_of(server)}/hook")
    assert server.requests == []


def test_a_name_with_one_public_and_one_internal_address_is_refused(server: ScriptedServer, settings: Any, dns: FakeDNS) -> None:
    settings.BATON_HTTP_ALLOWED_HOSTS = "*.example.com"
    dns.answers["api.example.com"] = ["93.184.215.14", "10.0.0.5"]
    assert "resolves to 10.0.0.5" in refused(f"http://api.example.com:{port_of(server)}/hook")


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/x", "gopher://127.0.0.1:70/_x", "127.0.0.1/hook"])
def test_only_http_and_https_urls_are_allowed(server: ScriptedServer, settings: Any, url: str) -> None:
    settings.BATON_HTTP_ALLOWED_HOSTS = "*, 127.0.0.1"
    assert "only http and https URLs are allowed" in refused(url)
    assert server.requests == []


def test_a_configured_host_header_cannot_pick_another_virtual_host(server: ScriptedServer, settings: Any) -> None:
    settings.BATON_HTTP_ALLOWED_HOSTS = "127.0.0.1"
    outbound.request("POST", f"{server.url}/hook", json_body={}, headers={"host": "admin.internal"}, timeout=2)
    [request] = server.seen("/hook")
    assert request.headers["host"] == f"127.0.0.1:{port_of(server)}"


def test_redirects_are_returned_not_followed(server: ScriptedServer, settings: Any) -> None:
    settings.BATON_HTTP_ALLOWED_HOSTS = "127.0.0.1"
    server.script("/hook", Reply(302, {}, headers={"Location": f"{server.url}/internal"}))
    response = outbound.request("GET", f"{server.url}/hook", timeout=2)
    assert response.status == 302 and response.headers["location"] == f"{server.url}/internal"
    assert server.seen("/internal") == []

