"""The `http` agent kind: POST the step input as JSON, the JSON answer is the output.

config: url, method (POST), headers (values may contain ${ENV_NAME}, a variable allowed by
BATON_AGENT_SECRETS: the secret is read from the environment at call time and never stored,
shown or logged; whatever a server echoes back is redacted), timeout (duration, default 30s).
Connection errors, timeouts, 429 (honouring Retry-After) and 5xx are transient; any other 4xx,
a redirect, or a body that is not JSON is permanent.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from orchestration import outbound
from orchestration.agents import logs as agent_logs
from orchestration.agents import secrets as agent_secrets
from orchestration.agents.base import (
    AgentContext,
    AgentResult,
    PermanentError,
    StepTimeout,
    TransientError,
)
from orchestration.durations import parse_duration

DEFAULT_TIMEOUT = 30.0


def secret_headers(headers: dict[str, Any]) -> tuple[dict[str, str], list[str]]:
    """Fill ${NAME} references from the environment; errors name the variable, never a value.

    Returns the headers to send and the secret values used, so that whatever the remote
    server echoes back (some put the rejected token in their error body) can be redacted
    before it is stored as an error, an event or a log line.
    """
    resolved: dict[str, str] = {}
    used: list[str] = []
    for name, value in headers.items():
        text = str(value)

        def substitute(match: re.Match[str], header: str = name) -> str:
            variable = match.group(1)
            if not agent_secrets.allowed(variable):
                raise PermanentError(f"header {header!r}: {agent_secrets.refusal(variable)}")
            found = os.environ.get(variable)
            if found is None:
                raise PermanentError(
                    f"header {header!r} needs environment variable {variable}, which is not set"
                )
            if len(found) >= agent_secrets.MIN_SECRET_LENGTH:
                used.append(found)
            return found

        resolved[name] = agent_secrets.REFERENCE.sub(substitute, text)
    return resolved, used


def redact(text: str, secrets: list[str]) -> str:
    return agent_secrets.redact_text(text, secrets)


def loggable_url(url: str) -> str:
    """The URL for a log line: the query's names without their values (a token is often passed
    as `?key=...`), and no user or password."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(an unreadable URL)"
    query = "&".join(f"{name}=…" for name, _ in parse_qsl(parts.query, keep_blank_values=True))
    return urlunsplit((parts.scheme, f"{host}{port}", parts.path, query, ""))


def summary(method: str, url: str, result: str, started: float, size: int | None = None) -> str:
    """One request as a log line: method, URL, what came of it, bytes, milliseconds."""
    took = f"{(time.monotonic() - started) * 1000:.0f} ms"
    sent = f", {size:,} bytes" if size is not None else ""
    return f"{method.upper()} {loggable_url(url)} → {result}{sent}, {took}"


def retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def timeout_for(config: dict[str, Any], context: AgentContext) -> float:
    configured = parse_duration(config["timeout"]) if config.get("timeout") is not None else DEFAULT_TIMEOUT
    if context.timeout is not None:
        return min(configured, context.timeout)
    return configured


def call(config: dict[str, Any], payload: Any, context: AgentContext) -> AgentResult:
    headers, secrets = secret_headers(config.get("headers") or {})
    with _redacting(secrets) as redacted:
        redacted.result = _call(config, payload, context, headers)
    return redacted.result


async def call_async(config: dict[str, Any], payload: Any, context: AgentContext) -> AgentResult:
    """call() on an event loop (a worker's slots): the same request, checks and answers.

    The caller bounds the whole call by the step's timeout; the client's own timeouts bound
    each connect and read."""
    headers, secrets = secret_headers(config.get("headers") or {})
    with _redacting(secrets) as redacted:
        method, url, timeout = _request_of(config, context, headers)
        started = time.monotonic()
        try:
            response = await outbound.request_async(method, url, json_body=payload, headers=headers, timeout=timeout)
        except Exception as exc:
            raise _failure(exc, method, url, started) from None
        redacted.result = _interpret(response, method, url, started)
    return redacted.result


class _Redacted:
    result: AgentResult


@contextmanager
def _redacting(secrets: list[str]) -> Iterator[_Redacted]:
    """What a call raises or returns, with the secret values it sent replaced."""
    holder = _Redacted()
    try:
        yield holder
    except (PermanentError, TransientError) as exc:
        message = redact(str(exc), secrets)
        detail = redact(getattr(exc, "detail", ""), secrets)
        if message == str(exc) and detail == getattr(exc, "detail", ""):
            raise
        if isinstance(exc, TransientError):
            raise type(exc)(message, retry_after=exc.retry_after, detail=detail) from None
        raise PermanentError(message) from None
    # A service may echo the token back in a successful answer too (an "echo" endpoint, a
    # debug field): the output is stored and shown, so the secret must not be in it.
    holder.result.output = agent_secrets.redact(holder.result.output, secrets)


def _request_of(config: dict[str, Any], context: AgentContext, headers: dict[str, str]) -> tuple[str, str, float]:
    headers["Idempotency-Key"] = context.idempotency_key
    return str(config.get("method", "POST")), config["url"], timeout_for(config, context)


def _call(config: dict[str, Any], payload: Any, context: AgentContext, headers: dict[str, str]) -> AgentResult:
    method, url, timeout = _request_of(config, context, headers)
    started = time.monotonic()
    try:
        response = outbound.request(method, url, json_body=payload, headers=headers, timeout=timeout)
    except Exception as exc:
        raise _failure(exc, method, url, started) from None
    return _interpret(response, method, url, started)


def _failure(exc: Exception, method: str, url: str, started: float) -> Exception:
    """What a request that got no answer counts as, with its log line; others pass as they are."""
    if isinstance(exc, outbound.OutboundRefused):
        agent_logs.note("http", summary(method, url, "refused", started), level="WARNING")
        return PermanentError(f"request refused: {exc}")
    if isinstance(exc, outbound.OutboundTooLarge):
        agent_logs.note("http", summary(method, url, "answer too large", started), level="WARNING")
        return PermanentError(str(exc))
    if isinstance(exc, outbound.OutboundTimeout):
        agent_logs.note("http", summary(method, url, "no answer in time", started), level="WARNING")
        return StepTimeout(str(exc))
    if isinstance(exc, outbound.OutboundUnavailable):
        agent_logs.note("http", summary(method, url, "unreachable", started), level="WARNING")
        return TransientError(str(exc))
    return exc


def _interpret(response: outbound.Response, method: str, url: str, started: float) -> AgentResult:
    latency_ms = round((time.monotonic() - started) * 1000, 1)
    status = response.status
    # The status and size only: bodies and headers may carry what the service was sent.
    agent_logs.note(
        "http", summary(method, url, f"HTTP {status}", started, len(response.body)), level="INFO" if status < 400 else "WARNING"
    )
    if status == 429:
        raise TransientError(
            f"HTTP 429 Too Many Requests from {url}",
            retry_after=retry_after_seconds(response.headers.get("retry-after")),
            detail=response.excerpt(),
        )
    if status >= 500:
        raise TransientError(f"HTTP {status} from {url}", detail=response.excerpt())
    if 300 <= status < 400:
        location = response.headers.get("location", "?")
        raise PermanentError(f"HTTP {status} redirect to {location} refused: redirects are not followed")
    if status >= 400:
        raise PermanentError(f"HTTP {status} from {url}: {response.excerpt(200)}")
    try:
        output = response.json() if response.body.strip() else None
    except ValueError:
        raise PermanentError(f"the response from {url} is not JSON: {response.excerpt(200)}") from None
    return AgentResult(output=output, usage={"latency_ms": latency_ms, "http_status": status})
