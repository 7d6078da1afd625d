"""Which environment variables agents may read, and keeping their values out of what is stored.

An http agent's header may say `${NAME}` and an llm agent's `api_key_env` names a variable; the
worker fills in the value when it calls. Left open, whoever edits an agent could send any
variable of the workers (`${BATON_SECRET_KEY}`, `${DATABASE_URL}`) to a server that echoes it
back. So a variable may be read only when its name is on BATON_AGENT_SECRETS (names or
shell-style patterns, default `BATON_SECRET_*` and `OPENAI_API_KEY`), and never the variables
that configure Baton itself, whatever the patterns say.

The values of those variables are replaced by `[redacted]` in everything recorded about an
attempt (output, usage, error, traceback) and in log lines, because a remote service may echo a
token back in a successful answer as well as in an error.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable
from fnmatch import fnmatchcase
from typing import Any

from django.conf import settings

SETTING = "BATON_AGENT_SECRETS"
REDACTED = "[redacted]"
REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# Baton's own secrets: no pattern opens them (BATON_SECRET_* would otherwise match the first).
NEVER = frozenset({"BATON_SECRET_KEY", "DATABASE_URL", "REDIS_URL"})
DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"
# Shorter values are no secret worth the name; hiding them would garble ordinary text.
MIN_SECRET_LENGTH = 4


def patterns() -> list[str]:
    raw = getattr(settings, SETTING, [])
    items = raw.split(",") if isinstance(raw, str) else raw
    return [item.strip() for item in items if item.strip()]


def allowed(name: str) -> bool:
    return name not in NEVER and any(fnmatchcase(name, pattern) for pattern in patterns())


def refusal(name: str) -> str:
    return f"environment variable {name} may not be read by agents (it is not on {SETTING})"


def references(kind: str, config: Any) -> list[tuple[str, str]]:
    """(field, variable) for every environment variable the agent's config reads."""
    if not isinstance(config, dict):
        return []
    found: list[tuple[str, str]] = []
    if kind == "http":
        headers = config.get("headers")
        if isinstance(headers, dict):
            for header, value in headers.items():
                found.extend((f"config.headers.{header}", name) for name in REFERENCE.findall(str(value)))
    elif kind == "llm":
        name = config.get("api_key_env", DEFAULT_API_KEY_ENV)
        if isinstance(name, str) and name:
            found.append(("config.api_key_env", name))
    return found


def problems(kind: str, config: Any) -> list[str]:
    """What is wrong with the variables the config reads, each naming the field."""
    found = [f"field `{where}`: {refusal(name)}" for where, name in references(kind, config) if not allowed(name)]
    if kind == "llm" and isinstance(config, dict) and not isinstance(config.get("api_key_env", ""), str):
        found.append("field `config.api_key_env` must be the name of an environment variable (or \"\")")
    return found


def availability(kind: str, config: Any) -> list[tuple[str, str]]:
    """(variable, whether it is defined on this server); never a value."""
    seen: dict[str, str] = {}
    for _, name in references(kind, config):
        if not allowed(name):
            # Whether such a variable exists is none of the editor's business.
            seen[name] = f"not allowed (not on {SETTING})"
        else:
            seen[name] = "defined on this server" if os.environ.get(name) else "not defined on this server"
    return list(seen.items())


def values() -> list[str]:
    """The values of every variable an agent may read, and Django's key, as set here."""
    found = {
        value
        for name, value in os.environ.items()
        if len(value) >= MIN_SECRET_LENGTH and (name == "BATON_SECRET_KEY" or allowed(name))
    }
    return sorted(found, key=len, reverse=True)


def _forms(secrets: Iterable[str]) -> list[str]:
    # A secret also appears escaped in a traceback (repr) or in JSON text.
    forms: set[str] = set()
    for secret in secrets:
        forms.update({secret, repr(secret)[1:-1], json.dumps(secret)[1:-1]})
    # Longest first, so a secret that contains another is hidden whole.
    return sorted((f for f in forms if len(f) >= MIN_SECRET_LENGTH), key=len, reverse=True)


def redact_text(text: str, secrets: Iterable[str]) -> str:
    for form in _forms(secrets):
        text = text.replace(form, REDACTED)
    return text


def redact(value: Any, secrets: Iterable[str]) -> Any:
    """`value` (JSON data) with every secret in its strings, keys and numbers redacted."""
    forms = _forms(secrets)
    if not forms:
        return value
    return _redact(value, forms)


def _redact(value: Any, forms: list[str]) -> Any:
    if isinstance(value, str):
        for form in forms:
            value = value.replace(form, REDACTED)
        return value
    if isinstance(value, dict):
        return {_redact(key, forms): _redact(item, forms) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_redact(item, forms) for item in value]
    if isinstance(value, int | float) and not isinstance(value, bool) and str(value) in forms:
        return REDACTED  # a numeric secret (a PIN) echoed back as a number
    return value


class RedactSecrets(logging.Filter):
    """A logging filter: secret values never reach a log line, from Baton, django-q2 or an agent."""

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = values()
        if not secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:
            return True  # a malformed record: the handler reports it as a logging error
        cleaned = redact_text(message, secrets)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text, secrets)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info, secrets)
        return True
