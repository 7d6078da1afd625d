"""The `llm` agent kind: an OpenAI-compatible chat-completions call through the `openai` SDK.

Works with OpenAI, Azure-style gateways, vLLM, Ollama, llama.cpp's server and LiteLLM's proxy.
The SDK's own retries are off: Baton's retry policy, circuit breaker and fallback decide.

config: base_url (default: the OPENAI_BASE_URL environment variable), model, api_key_env (the
name of the environment variable holding the key; default OPENAI_API_KEY), system, prompt (a
template over `input`), temperature, max_tokens, response (text | json), context_window,
prices ({prompt, completion} per 1,000 tokens), timeout.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from orchestration import outbound
from orchestration.agents.base import (
    AgentContext,
    AgentResult,
    PermanentError,
    StepTimeout,
    TransientError,
)
from orchestration.agents.http import retry_after_seconds, timeout_for
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
    key_env = config.get("api_key_env", "OPENAI_API_KEY")
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


def call(config: dict[str, Any], payload: Any, context: AgentContext) -> AgentResult:
    import openai

    missing = configured(config)
    if missing:
        raise PermanentError(f"the LLM agent is not configured: {missing}")
    url = base_url(config)
    assert url is not None
    try:
        outbound.resolve(url)  # the same allow-list as http agents: no way into the network
    except outbound.OutboundRefused as exc:
        raise PermanentError(f"request refused: {exc}") from None
    except outbound.OutboundUnavailable as exc:
        raise TransientError(str(exc)) from None
    messages = messages_for(config, payload)
    estimate = check_context_window(config, messages)
    key_env = config.get("api_key_env", "OPENAI_API_KEY")
    client = openai.OpenAI(
        base_url=url,
        api_key=os.environ.get(key_env, "") if key_env else "not-needed",
        max_retries=0,
        timeout=timeout_for(config, context),
    )
    options: dict[str, Any] = {}
    for name in ("temperature", "max_tokens"):
        if config.get(name) is not None:
            options[name] = config[name]
    started = time.monotonic()
    try:
        completion = client.chat.completions.create(
            model=config["model"],
            messages=messages,  # type: ignore[arg-type]
            extra_headers={"Idempotency-Key": context.idempotency_key},
            **options,
        )
    except openai.APITimeoutError:
        raise StepTimeout(f"the model at {url} did not answer in time") from None
    except openai.APIConnectionError as exc:
        raise TransientError(f"cannot reach the model at {url}: {exc.message}") from None
    except openai.APIStatusError as exc:
        detail = json.dumps(exc.body)[:500] if exc.body is not None else ""
        message = f"HTTP {exc.status_code} from the model at {url}: {exc.message}"
        if exc.status_code == 429:
            retry_after = retry_after_seconds(exc.response.headers.get("retry-after"))
            raise TransientError(message, retry_after=retry_after, detail=detail) from None
        if exc.status_code >= 500:
            raise TransientError(message, detail=detail) from None
        raise PermanentError(message) from None
    finally:
        client.close()
    latency_ms = round((time.monotonic() - started) * 1000, 1)
    text = completion.choices[0].message.content or "" if completion.choices else ""
    usage = completion.usage
    prompt_tokens = int(usage.prompt_tokens) if usage else estimate
    completion_tokens = int(usage.completion_tokens) if usage else estimate_tokens(text)
    figures = {
        "model": completion.model or config["model"],
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "latency_ms": latency_ms,
        "cost": cost(config, prompt_tokens, completion_tokens),
    }
    if config.get("response", "text") == "json":
        try:
            output: Any = json.loads(_strip_fences(text))
        except ValueError as exc:
            raise PermanentError(f"the model's answer is not valid JSON ({exc}): {text[:200]!r}") from None
    else:
        output = text
    return AgentResult(output=output, usage=figures)


def _strip_fences(text: str) -> str:
    # Many models wrap JSON in ```json fences even when asked not to.
    stripped = text.strip()
    if stripped.startswith("```"):
        stripped = stripped.split("\n", 1)[1] if "\n" in stripped else ""
        stripped = stripped.rsplit("```", 1)[0]
    return stripped
