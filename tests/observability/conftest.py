"""The dashboard's workflows and personas serve here too (digest: owned by ops)."""

from __future__ import annotations

from tests.dashboard.conftest import auditors, digest, ops_client

__all__ = ["auditors", "digest", "ops_client"]
