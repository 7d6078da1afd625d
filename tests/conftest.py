"""Personas and shared fixtures. Tests read as sentences about these people."""

from __future__ import annotations

import os
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

# The python agents the tests may call, and the variables their agents may read, on top of the
# defaults. Set in the environment as well as in settings, so that the worker processes, servers
# and commands the tests start (which read their settings from the environment) agree.
TEST_PYTHON_AGENTS = [
    "tests.agents.basic",
    "tests.agents.counting",
    "tests.agents.durable",
    "tests.approvals.conftest",
    "tests.approvals.test_gate_retry",
    "tests.approvals.test_views_item",
    "tests.browser.agents",
]
TEST_AGENT_SECRETS = ["KEYLESS_TOKEN"]


def pytest_configure(config: Any) -> None:
    for name, extra in (("BATON_PYTHON_AGENTS", TEST_PYTHON_AGENTS), ("BATON_AGENT_SECRETS", TEST_AGENT_SECRETS)):
        entries = [*getattr(settings, name), *extra]
        os.environ[name] = ",".join(entries)
        setattr(settings, name, entries)


@pytest.fixture
def admin_user(db: Any) -> Any:
    return get_user_model().objects.create_superuser("admin", "admin@example.com", "admin-pass-1")


@pytest.fixture
def ops(db: Any) -> Any:
    """An operations lead: starts and watches runs."""
    user = get_user_model().objects.create_user("ops", "ops@example.com", "ops-pass-1")
    user.groups.add(Group.objects.get_or_create(name="operations")[0])
    return user


@pytest.fixture
def approver(db: Any) -> Any:
    return get_user_model().objects.create_user("approver", "approver@example.com", "approver-pass-1")


@pytest.fixture
def outsider(db: Any) -> Any:
    return get_user_model().objects.create_user("outsider", "outsider@example.com", "outsider-pass-1")


@pytest.fixture(autouse=True)
def _forget_cached_specs() -> Any:
    # The engine caches immutable version specs by id; test databases reuse ids.
    from orchestration.specs import forget_specs

    forget_specs()
    yield
    forget_specs()


@pytest.fixture(autouse=True)
def _fast_passwords(settings: Any) -> None:
    # Hashing with the production hasher costs ~0.3 s per user; tests create many.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _forget_cached_agents() -> Any:
    # Workers keep agents for a moment; tests recreate them under the same names.
    from orchestration.specs import forget_agents

    forget_agents()
    yield
    forget_agents()


@pytest.fixture(autouse=True)
def _no_message_needs_resending(request: pytest.FixtureRequest) -> Any:
    """No fault-free run may need the ticker's lost-message sweep: a re-send there means a
    step sat queued with no message on its way (the bug of a step after a sub-workflow).
    Tests that lose messages on purpose (purge the broker, kill workers) say so with
    @pytest.mark.loses_messages."""
    uses_db = request.node.get_closest_marker("django_db") is not None or "_django_db_helper" in request.fixturenames
    if not uses_db or request.node.get_closest_marker("loses_messages") is not None:
        yield
        return
    # Set up the database first, so this check runs before its rollback or flush.
    request.getfixturevalue("_django_db_helper")
    yield
    from orchestration.models import RunEvent
    from orchestration.status import EventKind

    resent = list(
        RunEvent.objects.filter(kind=EventKind.MESSAGE_RESENT).values_list("run_id", "step_run__step_key")[:5]
    )
    if resent:
        pytest.fail(
            "the ticker had to re-send task messages (run, step): "
            f"{resent}; a fault-free run must never need the lost-message sweep "
            "(mark a test that loses messages on purpose with @pytest.mark.loses_messages)"
        )
