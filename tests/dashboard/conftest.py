"""Workflows the dashboard tests start, drive and look at, and the people who look.

Personas (orchestration/access.py is the rule they exercise):
- ops, the owner of `digest` (and a member of `operations`, its operator group);
- operator, in `operations`: starts and cancels digest runs without owning the workflow;
- viewer, in `auditors`, digest's viewer group: sees its runs, changes nothing;
- outsider (tests/conftest.py), in no group: sees nothing of it.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.test import Client

from orchestration.models import WorkflowVersion
from tests.support import load_workflow

AGENTS = """
agents:
  - {name: echo, kind: python, config: {callable: "tests.agents.basic:echo"}}
  - {name: upper, kind: python, config: {callable: "tests.agents.basic:upper"}}
  - {name: refuse, kind: python, config: {callable: "tests.agents.basic:refuse"}}
  - {name: editor, kind: python, config: {callable: "tests.agents.basic:editor"}}
  - {name: storyteller, kind: simulated, config: {output: "a story about {{ input.topic }}"}}
"""

DIGEST = (
    AGENTS
    + """
workflow:
  key: digest
  name: Daily digest
  description: Researches a topic, summarises each section and publishes the digest.
  owner: ops
  access: {operators: [operations], viewers: [auditors]}
  inputs:
    topic: {type: string, required: true, description: What the digest is about}
    count: {type: integer, default: 3}
    sections: {type: list, default: [news, weather]}
    draft: {type: boolean, default: false}
    tone: {type: string, enum: [plain, cheerful], default: plain}
  steps:
    - {key: research, agent: echo, input: {topic: "{{ input.topic }}"}}
    - {key: summarise, agent: upper, after: [research], for_each: "{{ input.sections }}", input: {text: "{{ item }}"}}
    - {key: publish, agent: echo, after: [summarise], input: {topic: "{{ steps.research.output.topic }}", parts: "{{ steps.summarise.output }}"}}
"""
)


@pytest.fixture
def auditors(db: Any) -> Group:
    return Group.objects.get_or_create(name="auditors")[0]


@pytest.fixture
def operator(ops: Any) -> Any:
    """In `operations` (the group ops's fixture creates), not an owner of anything."""
    user = get_user_model().objects.create_user("operator", "operator@example.com", "operator-pass-1")
    user.groups.add(Group.objects.get(name="operations"))
    return user


@pytest.fixture
def viewer(auditors: Group) -> Any:
    user = get_user_model().objects.create_user("viewer", "viewer@example.com", "viewer-pass-1")
    user.groups.add(auditors)
    return user


@pytest.fixture
def digest(ops: Any, auditors: Group) -> WorkflowVersion:
    """Three steps, the middle one a for_each over `sections`; owned by ops, operated by
    `operations`, watched by `auditors`."""
    version = load_workflow(DIGEST)
    assert version is not None
    return version


@pytest.fixture
def ops_client(client: Client, ops: Any) -> Client:
    client.force_login(ops)
    return client


@pytest.fixture
def no_llm_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """No language model configured, as on a fresh checkout."""
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
