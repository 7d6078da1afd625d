"""The approvals router's enumerations are the items' vocabulary, so the OpenAPI lists it."""

from __future__ import annotations

from typing import get_args

from approvals import api
from approvals.models import ItemKind, ItemStatus


def test_the_item_literals_are_the_models_choices() -> None:
    assert set(get_args(api.ItemKindName)) == set(ItemKind.values)
    assert set(get_args(api.ItemStatusName)) == set(ItemStatus.values)
    assert set(get_args(api.ItemStatusFilter)) == {*ItemStatus.values, "all"}
