"""Which functions `python` agents may call: the deployment decides, not the agent's editor.

Whoever may edit an agent (in the admin, or by importing a file) would otherwise run any
function on the workers as the workers' user: `cProfile:run` with a line of code as its input
is enough. So a python agent's `config.callable` must be on BATON_PYTHON_AGENTS, whose entries
are either `module:function` (that function) or `module` (every public function defined in that
module, not ones it imports from elsewhere). It is checked when a file is imported, when the
admin saves an agent, and again when the agent is called.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable
from typing import Any

from django.conf import settings

SETTING = "BATON_PYTHON_AGENTS"
# A dotted module path, a colon, a function name: nothing else reaches importlib.
CALLABLE = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")
NOT_A_PATH = "must be 'module:function'"


def entries() -> list[str]:
    # Read at call time, not import time, so tests can change it (settings take it from the
    # environment, which is how it reaches the worker processes).
    raw = getattr(settings, SETTING, [])
    items = raw.split(",") if isinstance(raw, str) else raw
    return [item.strip() for item in items if item.strip()]


def problem(path: Any) -> str | None:
    """None when `path` may be called; otherwise what is wrong, to follow "field `config.callable`: "."""
    if not isinstance(path, str) or not CALLABLE.fullmatch(path):
        return NOT_A_PATH
    module_name, _, name = path.partition(":")
    listed = entries()
    if path not in listed and module_name not in listed:
        return f"{path!r} is not a registered python agent (the deployment lists them in {SETTING})"
    if name.startswith("_"):
        return f"{name!r} is private; only public functions can be agents"
    # Importing runs the module's code, so it happens only once the module is known to be listed.
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        return f"cannot import {module_name!r} ({exc})"
    except Exception as exc:  # a listed module that is broken: say so rather than crash the caller
        return f"cannot import {module_name!r} ({type(exc).__name__}: {exc})"
    function = getattr(module, name, None)
    if not callable(function):
        return f"{module_name!r} has no function {name!r}"
    if path not in listed and getattr(function, "__module__", None) != module_name:
        # `from subprocess import run` in a listed module must not make `run` an agent.
        return f"{path!r} is not defined in {module_name!r}; only functions defined there are registered"
    return None


def load(path: str) -> Callable[..., Any]:
    """The function for `path`; ValueError saying why when it is not allowed or not there."""
    reason = problem(path)
    if reason is not None:
        raise ValueError(reason)
    module_name, _, name = path.partition(":")
    function: Callable[..., Any] = getattr(importlib.import_module(module_name), name)
    return function


def choices() -> list[str]:
    """Every callable the registry allows, for the admin's choice list (sorted)."""
    found: set[str] = set()
    for entry in entries():
        if ":" in entry:
            if problem(entry) is None:
                found.add(entry)
            continue
        try:
            module = importlib.import_module(entry)
        except Exception:
            continue  # a listed module that is missing or broken offers nothing to choose
        for name, value in vars(module).items():
            if inspect.isfunction(value) and not name.startswith("_") and value.__module__ == entry:
                found.add(f"{entry}:{name}")
    return sorted(found)
