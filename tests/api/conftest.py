"""The API's cast is the approvals one (tests/approvals/conftest.py): ops owns the workflows,
approver sits in legal (its viewers), outsider sees nothing."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from approvals.auth import create_api_token
from tests.approvals.conftest import flow, people  # noqa: F401  (people: a fixture)

STEPS = "    - {key: a, agent: echo, input: {topic: '{{ input.topic }}'}}"
EXTRA = """  inputs: {topic: {type: string, required: true}, count: {type: integer, default: 1}}
  access: {viewers: [legal]}
  triggers:
    - cron: "0 9 * * 1-5"
      input: {topic: digest}
    - webhook: {secret_env: CRM_WEBHOOK_SECRET}
      input: {topic: "{{ body.customer_id }}"}
    - event: order.placed
      input: {topic: "{{ event.payload.id }}"}"""


def bearer(user: Any, **options: Any) -> dict[str, str]:
    _, token = create_api_token(user=user, name="test", **options)
    return {"Authorization": f"Bearer {token}"}


def post(client: Client, path: str, body: Any, headers: dict[str, str]) -> Any:
    return client.post(path, body, content_type="application/json", headers=headers)


@pytest.fixture
def digest(people: dict[str, Any]) -> str:  # noqa: F811
    """ops's workflow `digest`, with inputs and one trigger of each kind; legal sees it."""
    flow(STEPS, key="digest", extra=EXTRA)
    return "digest"
