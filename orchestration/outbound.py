"""Outbound HTTP for agents, closed to the internal network by default.

An agent must not be a way into the internal network: the host must be on
BATON_HTTP_ALLOWED_HOSTS, every address it resolves to must be public unless that address (or
its network) is listed, the connection goes to the address that was checked (no second DNS
lookup an attacker could answer differently), and redirects are never followed.

An entry may carry a port (`host:port`, `[::1]:port`, `*.suffix:port`, `10.0.0.0/8:port`): it
then allows that port only. An internal address listed without a port still refuses the ports
of Baton's own database, broker and web server (see protected_ports).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, urlsplit

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
class Entry:
    """One allow-list entry: `*`, a name, a `*.suffix` or a network, for one port or any."""

    kind: str  # "any", "name", "suffix" or "network"
    value: str
    network: IPNetwork | None
    port: int | None

    def matches_port(self, port: int | None) -> bool:
        return self.port is None or port is None or self.port == port


def _split_port(entry: str) -> tuple[str, int | None]:
    """`host:port`, `[v6]:port`, `*.suffix:port`, `net/len:port`; a bare IPv6 address has no port."""
    if entry.startswith("["):
        inner, bracket, rest = entry[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"entry {entry!r}: write an IPv6 address with a port as [address]:port")
        return inner, _port(entry, rest[1:]) if rest else None
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        return host, _port(entry, port)
    return entry, None


def _port(entry: str, text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"entry {entry!r}: {text!r} is not a TCP port")
    return int(text)


@dataclass(frozen=True)
class AllowList:
    entries: tuple[Entry, ...]

    @classmethod
    def parse(cls, raw: str | list[str]) -> AllowList:
        items = raw.split(",") if isinstance(raw, str) else raw
        entries: list[Entry] = []
        for item in (e.strip().lower() for e in items):
            if not item:
                continue
            host, port = _split_port(item)
            if host == "*":
                entries.append(Entry("any", host, None, port))
            elif host.startswith("*."):
                entries.append(Entry("suffix", host[1:], None, port))
            else:
                try:
                    entries.append(Entry("network", host, ipaddress.ip_network(host, strict=False), port))
                except ValueError:
                    entries.append(Entry("name", host, None, port))
        return cls(tuple(entries))

    def _host_entries(self, host: str) -> list[Entry]:
        host = host.lower()
        try:
            address: IPAddress | None = ipaddress.ip_address(host)
        except ValueError:
            address = None
        return [
            e
            for e in self.entries
            if e.kind == "any"
            or (e.kind == "name" and host == e.value)
            or (e.kind == "suffix" and host.endswith(e.value))
            or (e.network is not None and address is not None and address in e.network)
        ]

    def allows_host(self, host: str, port: int | None = None) -> bool:
        """Whether the URL's host (and port, when given) is listed at all."""
        return any(e.matches_port(port) for e in self._host_entries(host))

    def address_entries(self, address: IPAddress, port: int | None = None) -> list[Entry]:
        """The network entries that list `address` (for `port`, when given)."""
        return [e for e in self.entries if e.network is not None and address in e.network and e.matches_port(port)]

    def listed_address(self, address: IPAddress, port: int | None = None) -> bool:
        return bool(self.address_entries(address, port))


def allow_list() -> AllowList:
    # Read at call time, not import time, so tests can change it (settings take it from the
    # workers' environment).
    try:
        return AllowList.parse(getattr(settings, "BATON_HTTP_ALLOWED_HOSTS", ""))
    except ValueError as exc:
        raise OutboundRefused(f"BATON_HTTP_ALLOWED_HOSTS is wrong: {exc}") from None


DEFAULT_PORTS = {"postgresql": 5432, "postgis": 5432, "mysql": 3306, "oracle": 1521}


def protected_ports() -> dict[int, str]:
    """Ports of Baton's own services, refused on internal addresses unless listed with the port.

    Listing `127.0.0.1` for a local model server must not also open the database, the broker
    and Baton's own admin on the same machine to whoever writes an agent's URL.
    """
    ports: dict[int, str] = {}
    for alias, database in settings.DATABASES.items():
        vendor = str(database.get("ENGINE", "")).rsplit(".", 1)[-1]
        port = database.get("PORT") or DEFAULT_PORTS.get(vendor)
        if port and str(port).isdigit():
            ports[int(port)] = f"Baton's database (DATABASES[{alias!r}])"
    redis_url = getattr(settings, "REDIS_URL", None)
    if redis_url:
        ports[_url_port(redis_url, 6379)] = "Baton's broker (REDIS_URL)"
    base_url = getattr(settings, "BATON_BASE_URL", "")
    if base_url:
        ports[_url_port(base_url, 443 if base_url.startswith("https:") else 80)] = "Baton's own server (BATON_BASE_URL)"
    return ports


def _url_port(url: str, default: int) -> int:
    try:
        return urlsplit(url).port or default
    except ValueError:
        return default


def is_public(address: IPAddress) -> bool:
    return address.is_global and not address.is_multicast


def resolve(url: str) -> Target:
    parts, host, port, allowed = _check_url(url)
    addresses = _literal(host)
    if addresses is None:
        try:
            addresses = [str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]
        except socket.gaierror as exc:
            raise OutboundUnavailable(f"cannot resolve {host!r}: {exc.strerror}") from None
    return _checked_target(parts, host, port, allowed, addresses)


async def resolve_async(url: str) -> Target:
    """resolve() for an event loop: the same checks, the DNS lookup in the loop's resolver thread."""
    parts, host, port, allowed = _check_url(url)
    addresses = _literal(host)
    if addresses is None:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise OutboundUnavailable(f"cannot resolve {host!r}: {exc.strerror}") from None
        addresses = [str(info[4][0]) for info in infos]
    return _checked_target(parts, host, port, allowed, addresses)


def _literal(host: str) -> list[str] | None:
    """An IP address written in the URL is the address to check: no lookup (on an event loop a
    lookup is a hop to the resolver's threads, which 100 calls at once queue for)."""
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        return None


def _check_url(url: str) -> tuple[SplitResult, str, int, AllowList]:
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
    if not allowed.allows_host(host, port):
        if allowed.allows_host(host):
            raise OutboundRefused(
                f"host {host!r} port {port} is not on BATON_HTTP_ALLOWED_HOSTS (it lists {host!r} for other ports only)"
            )
        raise OutboundRefused(f"host {host!r} is not on BATON_HTTP_ALLOWED_HOSTS")
    return parts, host, port, allowed


def _checked_target(parts: SplitResult, host: str, port: int, allowed: AllowList, resolved: list[str]) -> Target:
    addresses = [ipaddress.ip_address(address) for address in resolved]
    protected = protected_ports()
    for address in addresses:
        # Every address must pass, not just the first: a name that resolves to one public and
        # one internal address must not be a way in on the next lookup.
        if is_public(address):
            continue
        entries = allowed.address_entries(address, port)
        if not entries:
            if allowed.listed_address(address):
                raise OutboundRefused(
                    f"host {host!r} port {port} is not on BATON_HTTP_ALLOWED_HOSTS "
                    f"({address} is listed for other ports only)"
                )
            raise OutboundRefused(
                f"host {host!r} resolves to {address}, a private, loopback or link-local address; "
                "list that address in BATON_HTTP_ALLOWED_HOSTS to allow it"
            )
        if port in protected and all(e.port is None for e in entries):
            shown = f"[{address}]" if address.version == 6 else str(address)
            raise OutboundRefused(
                f"host {host!r} port {port} is refused: it is the port of {protected[port]}; "
                f"list '{shown}:{port}' in BATON_HTTP_ALLOWED_HOSTS to allow it"
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
    pool = _sync_pools.get(target)
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
            timeout=pool_timeout,
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
    if len(data) > MAX_RESPONSE_BYTES:
        raise OutboundTooLarge(
            f"the answer from {target.host} is larger than {MAX_RESPONSE_BYTES // (1024 * 1024)} MiB"
        )
    return Response(raw.status, {k.lower(): v for k, v in raw.headers.items()}, data)


# ---------------------------------------------------------------------------------------------
# Connection pools: one per checked target, reused across requests
#
# A pool is keyed by (scheme, host, port, address): the address resolve() checked for that
# host. A connection is only ever opened by a pool, so every new connection goes to an address
# that passed the checks of the request that needed it; a kept-alive one is reused only by a
# later request whose own resolve() named the same address. A name that starts resolving
# elsewhere gets a new pool (and the new address's checks), never the old connections.

# How many connections one target's pool keeps or opens at once (settings read late).
DEFAULT_POOL_CONNECTIONS = 100
# How many targets keep a pool; the least recently used one is closed beyond that.
MAX_POOLS = 64
KEEPALIVE_SECONDS = 30.0


def pool_connections() -> int:
    return int(getattr(settings, "BATON_OUTBOUND_POOL_CONNECTIONS", DEFAULT_POOL_CONNECTIONS))


def _pool_key(target: Target) -> tuple[str, str, int, str]:
    return (target.scheme, target.host, target.port, target.address)


class _SyncPools:
    """urllib3 pools by target, for the calls made from threads (synchronous agents)."""

    def __init__(self) -> None:
        self.pools: OrderedDict[tuple[str, str, int, str], urllib3.HTTPConnectionPool] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, target: Target) -> urllib3.HTTPConnectionPool:
        key = _pool_key(target)
        with self.lock:
            pool = self.pools.get(key)
            if pool is not None:
                self.pools.move_to_end(key)
                return pool
            size = pool_connections()
            if target.scheme == "https":
                # Connect to the checked address but verify the certificate for the host name.
                pool = urllib3.HTTPSConnectionPool(
                    target.address,
                    target.port,
                    maxsize=size,
                    retries=False,
                    server_hostname=target.host,
                    assert_hostname=target.host,
                    cert_reqs="CERT_REQUIRED",
                )
            else:
                pool = urllib3.HTTPConnectionPool(target.address, target.port, maxsize=size, retries=False)
            self.pools[key] = pool
            while len(self.pools) > MAX_POOLS:
                _, old = self.pools.popitem(last=False)
                old.close()
            return pool

    def clear(self) -> None:
        with self.lock:
            for pool in self.pools.values():
                pool.close()
            self.pools.clear()


_sync_pools = _SyncPools()


class _AsyncPools:
    """httpx2 clients by target for one event loop (a client's connections belong to its loop)."""

    def __init__(self) -> None:
        self.clients: OrderedDict[tuple[str, str, int, str], Any] = OrderedDict()

    def get(self, target: Target) -> Any:
        import httpx2

        key = _pool_key(target)
        client = self.clients.get(key)
        if client is not None:
            self.clients.move_to_end(key)
            return client
        size = pool_connections()
        client = httpx2.AsyncClient(
            transport=httpx2.AsyncHTTPTransport(
                limits=httpx2.Limits(
                    max_connections=size, max_keepalive_connections=size, keepalive_expiry=KEEPALIVE_SECONDS
                ),
                retries=0,
            ),
            follow_redirects=False,
            # No proxy or netrc from the environment: the connection goes to the checked address.
            trust_env=False,
        )
        self.clients[key] = client
        while len(self.clients) > MAX_POOLS:
            _, old = self.clients.popitem(last=False)
            asyncio.get_running_loop().create_task(old.aclose())
        return client

    async def close(self) -> None:
        clients, self.clients = list(self.clients.values()), OrderedDict()
        for client in clients:
            await client.aclose()


_async_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _AsyncPools] = weakref.WeakKeyDictionary()


def async_pools() -> _AsyncPools:
    loop = asyncio.get_running_loop()
    pools = _async_pools.get(loop)
    if pools is None:
        pools = _async_pools[loop] = _AsyncPools()
    return pools


async def async_pools_close() -> None:
    """Close this loop's pools (a worker process's slots, as they stop)."""
    pools = _async_pools.pop(asyncio.get_running_loop(), None)
    if pools is not None:
        await pools.close()


async def request_async(
    method: str,
    url: str,
    *,
    json_body: Any = None,
    content: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> Response:
    """request() on an event loop, through the loop's pool for the checked target.

    The timeouts here bound each phase (connect, each read); the caller bounds the whole call
    (a server that trickles a byte a second never trips a read timeout).
    """
    import httpx2

    target = await resolve_async(url)
    body = content
    sent_headers = {"Accept": "application/json"}
    if json_body is not None:
        body = json.dumps(json_body).encode("utf-8")
        sent_headers["Content-Type"] = "application/json"
    sent_headers = _merge_headers(sent_headers, headers or {})
    sent_headers["Host"] = target.host_header
    address = f"[{target.address}]" if ":" in target.address else target.address
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    client = async_pools().get(target)
    limits = httpx2.Timeout(timeout, connect=min(timeout, 10.0))
    try:
        async with client.stream(
            method.upper(),
            f"{target.scheme}://{address}:{target.port}{target.path}",
            content=body,
            headers=sent_headers,
            timeout=limits,
            extensions=extensions,
        ) as raw:
            data = bytearray()
            async for chunk in raw.aiter_bytes():
                data += chunk
                if len(data) > MAX_RESPONSE_BYTES:
                    raise OutboundTooLarge(
                        f"the answer from {target.host} is larger than {MAX_RESPONSE_BYTES // (1024 * 1024)} MiB"
                    )
            status, received = raw.status_code, raw.headers
    except httpx2.ConnectTimeout:
        raise OutboundTimeout(f"{target.host} did not answer within {timeout:g}s") from None
    except httpx2.ConnectError as exc:
        raise OutboundUnavailable(f"cannot reach {target.host}: {_async_reason(exc)}") from None
    except httpx2.TimeoutException:
        raise OutboundTimeout(f"{target.host} did not answer within {timeout:g}s") from None
    except httpx2.HTTPError as exc:
        raise OutboundUnavailable(f"cannot reach {target.host}: {type(exc).__name__}") from None
    return Response(status, {k.lower(): v for k, v in received.items()}, bytes(data))


def _async_reason(exc: Exception) -> str:
    # "[Errno 111] Connect call failed ('127.0.0.1', 1)" -> what the sync client says.
    text = str(exc)
    if "Errno 111" in text or "refused" in text.lower() or "Connect call failed" in text:
        return "Connection refused"
    return text.rsplit(": ", 1)[-1] or type(exc).__name__


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
