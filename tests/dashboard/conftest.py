"""Workflows the dashboard tests start, drive and look at."""

from __future__ import annotations

from typing import Any

import pytest
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
def digest(ops: Any) -> WorkflowVersion:
    """Three steps, the middle one a for_each over `sections`; owned by ops."""
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
