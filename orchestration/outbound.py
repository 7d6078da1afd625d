"""Outbound HTTP for agents, closed to the internal network by default.

An agent must not be a way into the internal network: the host must be on
BATON_HTTP_ALLOWED_HOSTS, every address it resolves to must be public unless that address (or
its network) is listed, the connection goes to the address that was checked (no second DNS
lookup an attacker could answer differently), and redirects are never followed.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import urllib3
from django.conf import settings

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class OutboundRefused(Exception):
    """The request was not sent: the URL or the address it resolves to is not allowed."""


class OutboundTimeout(Exception):
    """The server did not answer within the timeout."""


class OutboundUnavailable(Exception):
    """The connection failed (refused, reset, DNS failure...)."""


class OutboundTooLarge(Exception):
    """The answer is larger than MAX_RESPONSE_BYTES; reading it all could exhaust a worker's memory."""


MAX_RESPONSE_BYTES = 10 * 1024 * 1024


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    address: str
    path: str

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 literal
        return host if self.port == default else f"{host}:{self.port}"


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))

    def excerpt(self, limit: int = 500) -> str:
        text = self.body.decode("utf-8", errors="replace").strip()
        return text if len(text) <= limit else text[:limit] + "…"


@dataclass(frozen=True)
class AllowList:
    hostnames: frozenset[str]
    suffixes: tuple[str, ...]
    networks: tuple[IPNetwork, ...]
    any_public: bool

    @classmethod
    def parse(cls, raw: str | list[str]) -> AllowList:
        entries = raw.split(",") if isinstance(raw, str) else raw
        hostnames: set[str] = set()
        suffixes: list[str] = []
        networks: list[IPNetwork] = []
        any_public = False
        for entry in (e.strip().lower() for e in entries):
            if not entry:
                continue
            if entry == "*":
                any_public = True
            elif entry.startswith("*."):
                suffixes.append(entry[1:])
            else:
                try:
                    networks.append(ipaddress.ip_network(entry, strict=False))
                except ValueError:
                    hostnames.add(entry)
        return cls(frozenset(hostnames), tuple(suffixes), tuple(networks), any_public)

    def listed_address(self, address: IPAddress) -> bool:
        return any(address in network for network in self.networks)

    def allows_host(self, host: str) -> bool:
        host = host.lower()
        if self.any_public or host in self.hostnames or host.endswith(self.suffixes):
            return True
        try:
            return self.listed_address(ipaddress.ip_address(host))
        except ValueError:
            return False


def allow_list() -> AllowList:
    # Read at call time, not import time, so tests can change it (settings take it from the
    # workers' environment).
    return AllowList.parse(getattr(settings, "BATON_HTTP_ALLOWED_HOSTS", ""))


def is_public(address: IPAddress) -> bool:
    return address.is_global and not address.is_multicast


def resolve(url: str) -> Target:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise OutboundRefused(f"only http and https URLs are allowed, not {parts.scheme or 'no scheme'!r}")
    host = parts.hostname
    if not host:
        raise OutboundRefused(f"the URL {url!r} has no host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise OutboundRefused(f"the URL {url!r} has a bad port") from None
    allowed = allow_list()
    if not allowed.allows_host(host):
        raise OutboundRefused(f"host {host!r} is not on BATON_HTTP_ALLOWED_HOSTS")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OutboundUnavailable(f"cannot resolve {host!r}: {exc.strerror}") from None
    addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    for address in addresses:
        # Every address must pass, not just the first: a name that resolves to one public and
        # one internal address must not be a way in on the next lookup.
        if not is_public(address) and not allowed.listed_address(address):
            raise OutboundRefused(
                f"host {host!r} resolves to {address}, a private, loopback or link-local address; "
                "list that address in BATON_HTTP_ALLOWED_HOSTS to allow it"
            )
    path = parts.path or "/"
    if parts.query:
        path += f"?{parts.query}"
    return Target(parts.scheme, host, port, str(addresses[0]), path)


def request(
    method: str,
    url: str,
    *,
    json_body: Any = None,
    content: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> Response:
    """Send one request to the checked address; `json_body` is encoded, `content` sent as is."""
    target = resolve(url)
    body = content
    sent_headers = {"Accept": "application/json"}
    if json_body is not None:
        body = json.dumps(json_body).encode("utf-8")
        sent_headers["Content-Type"] = "application/json"
    sent_headers = _merge_headers(sent_headers, headers or {})
    # Always the host that was checked: a configured Host header could otherwise reach another
    # virtual host on an allowed address.
    sent_headers["Host"] = target.host_header
    pool_timeout = urllib3.Timeout(connect=min(timeout, 10.0), read=timeout)
    pool: urllib3.HTTPConnectionPool
    if target.scheme == "https":
        # Connect to the checked address but verify the certificate for the host name.
        pool = urllib3.HTTPSConnectionPool(
            target.address,
            target.port,
            timeout=pool_timeout,
            retries=False,
            server_hostname=target.host,
            assert_hostname=target.host,
            cert_reqs="CERT_REQUIRED",
        )
    else:
        pool = urllib3.HTTPConnectionPool(target.address, target.port, timeout=pool_timeout, retries=False)
    try:
        raw = pool.urlopen(
            method.upper(),
            target.path,
            body=body,
            headers=sent_headers,
            redirect=False,
            retries=False,
            assert_same_host=False,
            preload_content=False,
        )
        try:
            data = raw.read(MAX_RESPONSE_BYTES + 1)
        finally:
            raw.release_conn()
    except urllib3.exceptions.NewConnectionError as exc:
        # Caught first: urllib3 makes it a ConnectTimeoutError, but a refused connection is
        # not a slow server and should not read as one.
        raise OutboundUnavailable(f"cannot reach {target.host}: {_reason(exc)}") from None
    except (urllib3.exceptions.ReadTimeoutError, urllib3.exceptions.ConnectTimeoutError):
        raise OutboundTimeout(f"{target.host} did not answer within {timeout:g}s") from None
    except urllib3.exceptions.HTTPError as exc:
        raise OutboundUnavailable(f"cannot reach {target.host}: {type(exc).__name__}") from None
    finally:
        pool.close()
    if len(data) > MAX_RESPONSE_BYTES:
        raise OutboundTooLarge(
            f"the answer from {target.host} is larger than {MAX_RESPONSE_BYTES // (1024 * 1024)} MiB"
        )
    return Response(raw.status, {k.lower(): v for k, v in raw.headers.items()}, data)


def _reason(exc: urllib3.exceptions.NewConnectionError) -> str:
    # "Failed to establish a new connection: [Errno 111] Connection refused" -> the last part.
    return str(exc).rsplit(": ", 1)[-1] or type(exc).__name__


def _merge_headers(base: dict[str, str], extra: dict[str, str]) -> dict[str, str]:
    """Header names are case-insensitive: a caller's `accept` replaces our `Accept`."""
    merged = {name.lower(): (name, value) for name, value in base.items()}
    for name, value in extra.items():
        if name.lower() != "host":
            merged[name.lower()] = (name, value)
    return dict(merged.values())
