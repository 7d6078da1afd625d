"""Which page parts a user may follow, and the channel layer groups each one listens to.

A page marks each live part with topics (`data-live="run:12"`); its socket asks for them, and
each is granted only if the user may open what it names as a page: the same access rules the
views use, asked here when the socket subscribes. A topic the user may not see is refused and
joins nothing, so no hint about it ever reaches that socket.

Topic kinds: `run:<id>`; `overview`, `runs`, `workflows`, `agents` (every workflow the user sees); and
those other apps register (approvals: `item:<id>`, `inbox`, `nav`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from dashboard.live.changes import ALL_WORKFLOWS
from orchestration import access

# A socket follows a page's parts, not the whole product: more than this is refused.
MAX_TOPICS = 200
# A user who sees more workflows than this follows the lists through polling instead; a group
# per workflow is a subscription per workflow in every web process.
MAX_WORKFLOW_GROUPS = 1_000
TOPIC = re.compile(r"^([a-z]+)(?::([0-9]{1,18}))?$")

Resolver = Callable[[Any, int | None], set[str] | None]
# kind → resolver(user, id or None): the groups, or None when the user may not follow it.
RESOLVERS: dict[str, Resolver] = {}


def register(kind: str, resolver: Resolver) -> None:
    RESOLVERS[kind] = resolver


def resolve(user: Any, topics: list[str]) -> tuple[dict[str, set[str]], list[str]]:
    """Groups per granted topic, and the topics refused (unknown, malformed or not allowed)."""
    granted: dict[str, set[str]] = {}
    refused: list[str] = []
    if not (user.is_authenticated and user.is_active):
        return granted, list(topics)
    for topic in topics:
        match = TOPIC.match(topic)
        resolver = RESOLVERS.get(match.group(1)) if match else None
        groups = None
        if match and resolver is not None:
            groups = resolver(user, int(match.group(2)) if match.group(2) else None)
        if groups is None:
            refused.append(topic)
        else:
            granted[topic] = groups
    return granted, refused


def _run(user: Any, run_id: int | None) -> set[str] | None:
    if run_id is None or not access.visible_among(user, [run_id]):
        return None
    return {f"run.{run_id}"}


def _workflows(user: Any, _: int | None) -> set[str] | None:
    if user.is_superuser:
        return {ALL_WORKFLOWS}
    ids = list(access.visible_workflows(user).order_by("pk").values_list("pk", flat=True)[: MAX_WORKFLOW_GROUPS + 1])
    if len(ids) > MAX_WORKFLOW_GROUPS:
        return None
    return {f"wf.{pk}" for pk in ids}


register("run", _run)
for _kind in ("overview", "runs", "workflows", "agents"):
    register(_kind, lambda user, pk: None if pk is not None else _workflows(user, pk))
