"""Personas and shared fixtures. Tests read as sentences about these people."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group


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
    from orchestration.engine import _spec

    _spec.cache_clear()
    yield
    _spec.cache_clear()


@pytest.fixture(autouse=True)
def _fast_passwords(settings: Any) -> None:
    # Hashing with the production hasher costs ~0.3 s per user; tests create many.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _forget_cached_agents() -> Any:
    # Workers keep agents for a moment; tests recreate them under the same names.
    from orchestration.guards import forget_agents

    forget_agents()
    yield
    forget_agents()
