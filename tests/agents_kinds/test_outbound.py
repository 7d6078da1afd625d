"""The outbound guard: agents must not be a way into the internal network.

Requests go to a real server on 127.0.0.1; each refusal also checks that nothing reached it.
Names other than localhost cannot be resolved to loopback without DNS, so the `dns` fixture
answers for chosen names (the stand-in for a DNS server; everything else resolves for real).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings as django_settings

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


def test_an_address_written_in_the_url_is_checked_without_a_lookup(server: ScriptedServer, settings: Any, dns: FakeDNS) -> None:
    settings.BATON_HTTP_ALLOWED_HOSTS = "*, 127.0.0.1, ::1"
    dns.answers["127.0.0.1"] = ["10.0.0.5"]  # a lookup would be refused: none is made
    assert outbound.resolve(f"{server.url}/hook").address == "127.0.0.1"
    assert asyncio.run(outbound.resolve_async(f"{server.url}/hook")).address == "127.0.0.1"
    assert outbound.resolve("http://[::1]:8080/x").address == "::1"
    # The address is checked as any resolved one is.
    assert "resolves to 169.254.169.254" in refused("http://169.254.169.254/latest/meta-data")
    assert dns.lookups == []


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



# ---------------------------------------------------------------------------------------------
# Ports


@pytest.mark.parametrize(
    ("entry", "host", "port", "allowed"),
    [
        ("api.example.com:8443", "api.example.com", 8443, True),
        ("api.example.com:8443", "api.example.com", 443, False),
        ("*.example.com:443", "deep.api.example.com", 443, True),
        ("*.example.com:443", "deep.api.example.com", 80, False),
        ("*:443", "anything.example.net", 443, True),
        ("*:443", "anything.example.net", 80, False),
        ("127.0.0.1:9000", "127.0.0.1", 9000, True),
        ("127.0.0.1:9000", "127.0.0.1", 9001, False),
        ("10.0.0.0/8:8080", "10.20.30.40", 8080, True),
        ("10.0.0.0/8:8080", "10.20.30.40", 8081, False),
        ("[::1]:9000", "::1", 9000, True),
        ("[::1]:9000", "::1", 9001, False),
        ("::1", "::1", 9001, True),
        ("[fd00::/8]:443", "fd12::5", 443, True),
    ],
)
def test_an_entry_with_a_port_allows_only_that_port(entry: str, host: str, port: int, allowed: bool) -> None:
    assert AllowList.parse(entry).allows_host(host, port) is allowed


@pytest.mark.parametrize("entry", ["api.example.com:http", "127.0.0.1:0", "127.0.0.1:70000", "[::1]9000", "[::1"])
def test_an_entry_with_a_bad_port_refuses_every_call_naming_the_entry(settings: Any, entry: str) -> None:
    settings.BATON_HTTP_ALLOWED_HOSTS = f"example.org, {entry}"
    message = refused("http://example.org/hook")
    assert message.startswith("BATON_HTTP_ALLOWED_HOSTS is wrong: entry ") and repr(entry) in message


def test_a_loopback_entry_with_a_port_reaches_that_port_only(server: ScriptedServer, settings: Any) -> None:
    settings.BATON_HTTP_ALLOWED_HOSTS = f"127.0.0.1:{port_of(server)}"
    assert outbound.request("POST", f"{server.url}/hook", json_body={}, timeout=2).status == 200
    with ScriptedServer() as other:
        other.script("/hook", Reply(200, {"ok": True}))
        message = refused(f"{other.url}/hook")
        assert other.requests == []
    assert message == (
        f"host '127.0.0.1' port {port_of(other)} is not on BATON_HTTP_ALLOWED_HOSTS "
        "(it lists '127.0.0.1' for other ports only)"
    )


def test_a_name_listed_with_a_port_still_needs_its_internal_address_listed(server: ScriptedServer, settings: Any) -> None:
    settings.BATON_HTTP_ALLOWED_HOSTS = f"localhost:{port_of(server)}"
    assert "resolves to" in refused(f"http://localhost:{port_of(server)}/hook")
    settings.BATON_HTTP_ALLOWED_HOSTS = f"localhost:{port_of(server)}, 127.0.0.1"
    assert outbound.request("POST", f"http://localhost:{port_of(server)}/hook", json_body={}, timeout=2).status == 200


def test_a_name_on_its_listed_port_is_refused_when_its_address_is_listed_for_another(
    server: ScriptedServer, settings: Any, dns: FakeDNS
) -> None:
    settings.BATON_HTTP_ALLOWED_HOSTS = "api.example.com, 127.0.0.1:1"
    dns.answers["api.example.com"] = ["127.0.0.1"]
    message = refused(f"http://api.example.com:{port_of(server)}/hook")
    assert message == (
        f"host 'api.example.com' port {port_of(server)} is not on BATON_HTTP_ALLOWED_HOSTS "
        "(127.0.0.1 is listed for other ports only)"
    )
    assert server.requests == []


@pytest.fixture
def service(server: ScriptedServer) -> int:
    """The scripted server's port, standing in for one of Baton's own services."""
    return port_of(server)


def test_a_loopback_entry_without_a_port_does_not_open_the_database_port(
    server: ScriptedServer, settings: Any, service: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Added to the dict in place: replacing DATABASES would disturb Django's connections.
    database = {"ENGINE": "django.db.backends.postgresql", "HOST": "127.0.0.1", "PORT": str(service)}
    monkeypatch.setitem(django_settings.DATABASES, "other", database)
    settings.BATON_HTTP_ALLOWED_HOSTS = "127.0.0.1"
    assert refused(f"{server.url}/hook") == (
        f"host '127.0.0.1' port {service} is refused: it is the port of Baton's database (DATABASES['other']); "
        f"list '127.0.0.1:{service}' in BATON_HTTP_ALLOWED_HOSTS to allow it"
    )
    assert server.requests == []


def test_a_postgresql_database_without_a_port_protects_5432(settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    database = {"ENGINE": "django.db.backends.postgresql", "HOST": "db.internal", "PORT": ""}
    monkeypatch.setattr(django_settings, "DATABASES", {"default": database})
    settings.REDIS_URL = None
    settings.BATON_BASE_URL = "http://127.0.0.1:8000"
    assert outbound.protected_ports() == {5432: "Baton's database (DATABASES['default'])", 8000: "Baton's own server (BATON_BASE_URL)"}


@pytest.mark.parametrize("allowed", ["127.0.0.1", "127.0.0.0/8", "localhost, 127.0.0.1"])
def test_a_loopback_entry_without_a_port_does_not_open_the_broker_port(
    server: ScriptedServer, settings: Any, service: int, allowed: str
) -> None:
    settings.REDIS_URL = f"redis://127.0.0.1:{service}/0"
    settings.BATON_HTTP_ALLOWED_HOSTS = allowed
    message = refused(f"http://localhost:{service}/hook" if "localhost" in allowed else f"{server.url}/hook")
    assert f"port {service} is refused: it is the port of Baton's broker (REDIS_URL)" in message
    assert server.requests == []


def test_a_private_network_entry_without_a_port_does_not_open_baton_s_own_server(
    server: ScriptedServer, settings: Any, service: int, dns: FakeDNS
) -> None:
    settings.BATON_BASE_URL = f"http://baton.internal:{service}"
    settings.BATON_HTTP_ALLOWED_HOSTS = "*.internal, 127.0.0.0/8"
    dns.answers["admin.internal"] = ["127.0.0.1"]
    message = refused(f"http://admin.internal:{service}/admin/")
    assert message == (
        f"host 'admin.internal' port {service} is refused: it is the port of Baton's own server (BATON_BASE_URL); "
        f"list '127.0.0.1:{service}' in BATON_HTTP_ALLOWED_HOSTS to allow it"
    )
    assert server.requests == []


def test_listing_the_address_with_the_port_opens_a_protected_port_on_purpose(
    server: ScriptedServer, settings: Any, service: int
) -> None:
    settings.REDIS_URL = f"redis://127.0.0.1:{service}/0"
    settings.BATON_HTTP_ALLOWED_HOSTS = f"127.0.0.1, 127.0.0.1:{service}"
    assert outbound.request("POST", f"{server.url}/hook", json_body={}, timeout=2).status == 200


def test_protected_ports_stay_reachable_on_public_addresses(settings: Any, dns: FakeDNS) -> None:
    # Baton's services are internal; a public API on 443 is not one of them even if the base
    # URL is https.
    settings.BATON_BASE_URL = "https://baton.example.com"
    settings.BATON_HTTP_ALLOWED_HOSTS = "api.example.com"
    dns.answers["api.example.com"] = ["93.184.215.14"]
    target = outbound.resolve("https://api.example.com/v1")
    assert (target.address, target.port) == ("93.184.215.14", 443)
