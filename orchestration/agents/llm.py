"""The `llm` agent kind: an OpenAI-compatible chat-completions call through the `openai` SDK.

Works with OpenAI, Azure-style gateways, vLLM, Ollama, llama.cpp's server and LiteLLM's proxy.
The SDK's own retries are off: Baton's retry policy, circuit breaker and fallback decide.
The SDK's HTTP requests go through `outbound` (see OutboundTransport), so a model endpoint is
held to the same allow-list, pinned address and no-redirect rule as an http agent.

config: base_url (default: the OPENAI_BASE_URL environment variable), model, api_key_env (the
name of the environment variable holding the key, allowed by BATON_AGENT_SECRETS; default
OPENAI_API_KEY), system, prompt (a
template over `input`), temperature, max_tokens, response (text | json), context_window,
prices ({prompt, completion} per 1,000 tokens), timeout.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any

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
from orchestration.agents.http import loggable_url, retry_after_seconds, timeout_for
from orchestration.templating import TemplateError, render

# Without the model's tokenizer at hand, ~4 characters per token is the usual estimate for
# English; it is used only to refuse prompts that clearly cannot fit.
CHARS_PER_TOKEN = 4


def estimate_tokens(text: str) -> int:
    return max(1, (len(text) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN)


def base_url(config: dict[str, Any]) -> str | None:
    return config.get("base_url") or os.environ.get("OPENAI_BASE_URL") or None


def configured(config: dict[str, Any]) -> str | None:
    """None when the agent can be called, otherwise what is missing, for the UI."""
    if not base_url(config):
        return "no base_url and OPENAI_BASE_URL is not set"
    key_env = config.get("api_key_env", agent_secrets.DEFAULT_API_KEY_ENV)
    if key_env and not agent_secrets.allowed(key_env):
        # Checked before whether it is set: that a variable exists is not for the editor to learn.
        return agent_secrets.refusal(key_env)
    if key_env and not os.environ.get(key_env):
        return f"environment variable {key_env} is not set"
    return None


def messages_for(config: dict[str, Any], payload: Any) -> list[dict[str, str]]:
    variables = {"input": payload}
    try:
        prompt = render(config.get("prompt", "{{ input }}"), variables)
        system = render(config.get("system", ""), variables)
    except TemplateError as exc:
        raise PermanentError(f"the prompt template fails: {exc}") from None
    if not isinstance(prompt, str):
        prompt = json.dumps(prompt)
    messages = []
    if system:
        messages.append({"role": "system", "content": str(system)})
    messages.append({"role": "user", "content": prompt})
    return messages


def check_context_window(config: dict[str, Any], messages: list[dict[str, str]]) -> int:
    estimate = sum(estimate_tokens(m["content"]) for m in messages)
    window = config.get("context_window")
    if window:
        reserved = int(config.get("max_tokens") or 0)
        over = estimate + reserved - int(window)
        if over > 0:
            reserve = f" plus {reserved} reserved for the answer" if reserved else ""
            raise PermanentError(
                f"the prompt is about {estimate} tokens{reserve}, {over} more than the "
                f"context window of {window}; shorten the input or raise context_window"
            )
    return estimate


def cost(config: dict[str, Any], prompt_tokens: int, completion_tokens: int) -> float:
    prices = config.get("prices") or {}
    total = prompt_tokens / 1000 * float(prices.get("prompt", 0)) + completion_tokens / 1000 * float(
        prices.get("completion", 0)
    )
    return round(total, 6)


# urllib3 has already undone any content encoding; these would make httpx undo it again.
_DROPPED_ANSWER_HEADERS = {"content-encoding", "content-length", "transfer-encoding", "connection"}
_DROPPED_REQUEST_HEADERS = ("host", "accept-encoding", "content-length")


def _outgoing(request: Any, timeout: float) -> tuple[dict[str, str], float]:
    """The headers the SDK's request sends on through `outbound` and its read timeout."""
    read_timeout = (request.extensions.get("timeout") or {}).get("read") or timeout
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROPPED_REQUEST_HEADERS}
    return headers, read_timeout


def _sdk_response(httpx2: Any, request: Any, response: outbound.Response) -> Any:
    kept = {k: v for k, v in response.headers.items() if k not in _DROPPED_ANSWER_HEADERS}
    return httpx2.Response(response.status, headers=kept, content=response.body, request=request)


def _sdk_error(httpx2: Any, request: Any, exc: Exception) -> Exception:
    """outbound's timeout and unavailability as the httpx errors the SDK retries and reports;
    a refusal (OutboundRefused) is not translated, so `call` can tell it from a network failure."""
    kind = httpx2.ReadTimeout if isinstance(exc, outbound.OutboundTimeout) else httpx2.ConnectError
    return kind(str(exc), request=request)  # type: ignore[no-any-return]


def http_client(timeout: float) -> Any:
    """An httpx client for the SDK whose requests go through `outbound.request`.

    Left to itself the SDK resolves the host again (a second DNS answer could point inside
    the network) and follows redirects (a 307 to 169.254.169.254 would be obeyed). A refusal
    is raised as OutboundRefused, which the SDK does not wrap, so `call` can tell it from a
    network failure. Imported late, like the SDK, so other agent kinds work without it.
    """
    import httpx2

    class OutboundTransport(httpx2.BaseTransport):
        def handle_request(self, request: httpx2.Request) -> httpx2.Response:
            headers, read_timeout = _outgoing(request, timeout)
            try:
                response = outbound.request(
                    request.method, str(request.url), content=request.read() or None, headers=headers, timeout=read_timeout
                )
            except (outbound.OutboundTimeout, outbound.OutboundUnavailable) as exc:
                raise _sdk_error(httpx2, request, exc) from None
            return _sdk_response(httpx2, request, response)  # type: ignore[no-any-return]

    return httpx2.Client(transport=OutboundTransport(), follow_redirects=False, timeout=timeout)


def async_http_client(timeout: float) -> Any:
    """http_client() for the SDK's AsyncOpenAI: its requests go through `outbound.request_async`,
    so they share the worker loop's pool for the checked address and its checks."""
    import httpx2

    class AsyncOutboundTransport(httpx2.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
            headers, read_timeout = _outgoing(request, timeout)
            try:
                response = await outbound.request_async(
                    request.method, str(request.url), content=await request.aread() or None, headers=headers, timeout=read_timeout
                )
            except (outbound.OutboundTimeout, outbound.OutboundUnavailable) as exc:
                raise _sdk_error(httpx2, request, exc) from None
            return _sdk_response(httpx2, request, response)  # type: ignore[no-any-return]

    return httpx2.AsyncClient(transport=AsyncOutboundTransport(), follow_redirects=False, timeout=timeout)


@dataclass
class _Call:
    """What one call needs, worked out the same way for the sync and the async client."""

    url: str
    messages: list[dict[str, str]]
    estimate: int
    key_env: str
    api_key: str
    timeout: float
    options: dict[str, Any]
    started: float = 0.0

    def note(self, config: dict[str, Any], result: str, level: str = "WARNING") -> None:
        # Model, what came of the call, tokens, time: never the prompt, the answer or a header.
        took = f"{(time.monotonic() - self.started) * 1000:.0f} ms"
        agent_logs.note("llm", f"model {config['model']} at {loggable_url(self.url)} → {result}, {took}", level=level)


def _prepare(config: dict[str, Any], payload: Any, context: AgentContext) -> _Call:
    missing = configured(config)
    if missing:
        raise PermanentError(f"the LLM agent is not configured: {missing}")
    url = base_url(config)
    assert url is not None
    messages = messages_for(config, payload)
    estimate = check_context_window(config, messages)
    key_env = config.get("api_key_env", agent_secrets.DEFAULT_API_KEY_ENV)
    api_key = os.environ.get(key_env, "") if key_env else "not-needed"
    options: dict[str, Any] = {}
    for name in ("temperature", "max_tokens"):
        if config.get(name) is not None:
            options[name] = config[name]
    return _Call(url, messages, estimate, key_env or "", api_key, timeout_for(config, context), options)


def _checked(url: str) -> None:
    try:
        outbound.resolve(url)  # the same allow-list as http agents: no way into the network
    except outbound.OutboundRefused as exc:
        raise PermanentError(f"request refused: {exc}") from None
    except outbound.OutboundUnavailable as exc:
        raise TransientError(str(exc)) from None


def call(config: dict[str, Any], payload: Any, context: AgentContext) -> AgentResult:
    import openai

    call = _prepare(config, payload, context)
    _checked(call.url)
    client = openai.OpenAI(
        base_url=call.url,
        api_key=call.api_key,
        max_retries=0,
        timeout=call.timeout,
        http_client=http_client(call.timeout),
    )
    call.started = time.monotonic()
    try:
        completion = client.chat.completions.create(
            model=config["model"],
            messages=call.messages,  # type: ignore[arg-type]
            extra_headers={"Idempotency-Key": context.idempotency_key},
            **call.options,
        )
    except Exception as exc:
        raise _failure(exc, config, call) from None
    finally:
        client.close()
    return _result(completion, config, call)


async def call_async(config: dict[str, Any], payload: Any, context: AgentContext) -> AgentResult:
    """call() on an event loop (a worker's slots), through the SDK's AsyncOpenAI."""
    import openai

    call = _prepare(config, payload, context)
    await _checked_async(call.url)
    client = openai.AsyncOpenAI(
        base_url=call.url,
        api_key=call.api_key,
        max_retries=0,
        timeout=call.timeout,
        http_client=async_http_client(call.timeout),
    )
    call.started = time.monotonic()
    try:
        completion = await client.chat.completions.create(
            model=config["model"],
            messages=call.messages,  # type: ignore[arg-type]
            extra_headers={"Idempotency-Key": context.idempotency_key},
            **call.options,
        )
    except Exception as exc:
        raise _failure(exc, config, call) from None
    finally:
        await client.close()
    return _result(completion, config, call)


async def _checked_async(url: str) -> None:
    try:
        await outbound.resolve_async(url)
    except outbound.OutboundRefused as exc:
        raise PermanentError(f"request refused: {exc}") from None
    except outbound.OutboundUnavailable as exc:
        raise TransientError(str(exc)) from None


def _failure(exc: Exception, config: dict[str, Any], call: _Call) -> Exception:
    """What an SDK error counts as (with its log line); anything else passes as it is."""
    import openai

    url = call.url
    if isinstance(exc, outbound.OutboundRefused):
        call.note(config, "refused")
        return PermanentError(f"request refused: {exc}")
    if isinstance(exc, outbound.OutboundTooLarge):
        call.note(config, "answer too large")
        return PermanentError(str(exc))
    if isinstance(exc, openai.APITimeoutError):
        call.note(config, "no answer in time")
        return StepTimeout(f"the model at {url} did not answer in time")
    if isinstance(exc, openai.APIConnectionError):
        call.note(config, "unreachable")
        # The cause is outbound's own message ("cannot reach HOST: Connection refused").
        return TransientError(str(exc.__cause__ or f"cannot reach the model at {url}"))
    if isinstance(exc, openai.APIStatusError):
        call.note(config, f"HTTP {exc.status_code}")
        # Some providers echo the rejected key in their error body.
        secret = call.api_key if call.key_env else ""
        detail = _redact(json.dumps(exc.body)[:500], secret) if exc.body is not None else ""
        message = _redact(f"HTTP {exc.status_code} from the model at {url}: {exc.message}", secret)
        if 300 <= exc.status_code < 400:
            location = exc.response.headers.get("location", "?")
            return PermanentError(
                f"HTTP {exc.status_code} redirect from the model at {url} to {location} refused: "
                "redirects are not followed"
            )
        if exc.status_code == 429:
            retry_after = retry_after_seconds(exc.response.headers.get("retry-after"))
            return TransientError(message, retry_after=retry_after, detail=detail)
        if exc.status_code >= 500:
            return TransientError(message, detail=detail)
        return PermanentError(message)
    return exc


def _result(completion: Any, config: dict[str, Any], call: _Call) -> AgentResult:
    latency_ms = round((time.monotonic() - call.started) * 1000, 1)
    text = completion.choices[0].message.content or "" if completion.choices else ""
    usage = completion.usage
    prompt_tokens = int(usage.prompt_tokens) if usage else call.estimate
    completion_tokens = int(usage.completion_tokens) if usage else estimate_tokens(text)
    figures = {
        "model": completion.model or config["model"],
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "latency_ms": latency_ms,
        "cost": cost(config, prompt_tokens, completion_tokens),
    }
    call.note(
        config,
        f"HTTP 200, {prompt_tokens + completion_tokens:,} tokens ({prompt_tokens:,} prompt + "
        f"{completion_tokens:,} completion)",
        level="INFO",
    )
    if config.get("response", "text") == "json":
        try:
            output: Any = json.loads(_strip_fences(text))
        except ValueError as exc:
            raise PermanentError(f"the model's answer is not valid JSON ({exc}): {text[:200]!r}") from None
    else:
        output = text
    if call.key_env:  # a model (or a proxy in front of it) may repeat the key in its answer
        output = agent_secrets.redact(output, [call.api_key])
    return AgentResult(output=output, usage=figures)


def _redact(text: str, secret: str) -> str:
    return text.replace(secret, "[redacted]") if secret else text


def _strip_fences(text: str) -> str:
    # Many models wrap JSON in ```json fences even when asked not to.
    stripped = text.strip()
    if stripped.startswith("```"):
        stripped = stripped.split("\n", 1)[1] if "\n" in stripped else ""
        stripped = stripped.rsplit("```", 1)[0]
    return stripped
