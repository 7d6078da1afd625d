"""schemathesis fuzzes every operation of /api/openapi.json in-process (the WSGI app, the test
database), with the token of a user who owns a published workflow with runs and an open item:
no answer may be a server error, and none may contradict the schema.

A bounded number of examples per operation keeps `make test` short on both back-ends.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from schemathesis.checks import content_type_conformance, not_a_server_error, response_schema_conformance

from approvals.auth import create_api_token
from tests.approvals.conftest import flow, start

EXAMPLES = 20

schema = schemathesis.openapi.from_wsgi("/api/openapi.json", get_wsgi_application())


@pytest.fixture
def keep_the_test_connection() -> Any:
    # Django's test client does the same: the WSGI handler would close the connection after
    # each request, and with it the test's transaction.
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@pytest.fixture
def owner_headers(people: dict[str, Any]) -> dict[str, str]:
    flow(
        "    - {key: a, agent: echo}\n    - {key: review, approval: {title: Ok, approvers: {users: [ops]}}, after: [a]}",
        key="wf",
        extra="  inputs: {topic: {type: string, default: x}}\n  triggers:\n    - event: order.placed",
    )
    start("wf", by=people["ops"])
    _, token = create_api_token(user=people["ops"], name="fuzz")
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.django_db
@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_operation_answers_a_server_error_or_off_schema(
    case: Any, owner_headers: dict[str, str], keep_the_test_connection: None
) -> None:
    case.call_and_validate(
        headers=owner_headers,
        checks=[not_a_server_error, response_schema_conformance, content_type_conformance],
    )
