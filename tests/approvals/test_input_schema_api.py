"""The input schema's checks hold in the JSON API and the start_run command as on the form: a
refund of -5 is refused where the schema says `minimum: 0`, naming the field, and nothing starts."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from approvals.auth import create_api_token
from orchestration.models import Run
from orchestration.status import RunStatus
from tests.approvals.conftest import flow, start

pytestmark = pytest.mark.django_db

INPUTS = "  inputs:\n    refund: {type: number, required: true, minimum: 0}\n    email: {type: string, format: email}"


def bearer(user: Any) -> dict[str, str]:
    _, token = create_api_token(user=user, name="test")
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def refunded(people: dict[str, Any]) -> Run:
    flow("    - {key: a, agent: echo}", extra=INPUTS)
    run = start(by=people["ops"], input={"refund": 5})
    assert run.status == RunStatus.SUCCEEDED
    return run


def test_a_rerun_with_a_refund_below_the_minimum_is_422_naming_the_field(
    client: Client, people: dict[str, Any], refunded: Run
) -> None:
    response = client.post(
        f"/api/runs/{refunded.pk}/rerun",
        {"input": {"refund": -5, "email": "nobody"}},
        content_type="application/json",
        headers=bearer(people["ops"]),
    )
    assert response.status_code == 422
    detail = response.json()["detail"]
    # Every problem at once, in the schema's stored order (PostgreSQL's jsonb sorts the keys).
    assert set(detail.split("; ")) == {
        "input `refund`: -5 is less than the minimum 0",
        "input `email`: 'nobody' is not an email address",
    }
    assert response.json()["fields"] == {
        "input.refund": "-5 is less than the minimum 0",
        "input.email": "'nobody' is not an email address",
    }
    assert Run.objects.count() == 1


def test_a_rerun_with_input_that_fits_starts(client: Client, people: dict[str, Any], refunded: Run) -> None:
    response = client.post(
        f"/api/runs/{refunded.pk}/rerun",
        {"input": {"refund": 0}},
        content_type="application/json",
        headers=bearer(people["ops"]),
    )
    assert response.status_code == 200, response.json()
    assert Run.objects.get(pk=response.json()["id"]).input == {"refund": 0}


def test_the_start_run_command_refuses_it_too(refunded: Run) -> None:
    with pytest.raises(CommandError, match=r"input `refund`: -5 is less than the minimum 0"):
        call_command("start_run", "wf", "--input", '{"refund": -5}')
    assert Run.objects.count() == 1
