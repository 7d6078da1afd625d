"""/api/docs is Swagger UI from django-ninja's bundled files, under our Content-Security-Policy."""

from __future__ import annotations

import re

import pytest
from django.contrib.staticfiles import finders
from django.test import Client

pytestmark = pytest.mark.django_db


def test_the_docs_page_loads_the_bundled_swagger_ui_and_no_inline_script(client: Client) -> None:
    response = client.get("/api/docs")
    assert response.status_code == 200
    page = response.content.decode()
    scripts = re.findall(r"<script\b[^>]*>", page)
    assert all("src=" in s or 'type="application/json"' in s for s in scripts), scripts
    assert "/static/ninja/swagger-ui-bundle.js" in page and "/static/ninja/swagger-ui-init.js" in page
    assert "cdn" not in page.lower() and "https://" not in page
    policy = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy


def test_the_files_it_loads_are_served_from_our_static_files() -> None:
    for name in ("ninja/swagger-ui-bundle.js", "ninja/swagger-ui-init.js", "ninja/swagger-ui.css"):
        assert finders.find(name), name


def test_the_openapi_description_stays_at_its_address_and_lists_the_enumerations(client: Client) -> None:
    schema = client.get("/api/openapi.json").json()
    assert "/api/workflows/{key}/runs" in schema["paths"]
    statuses = schema["components"]["schemas"]["RunOut"]["properties"]["status"]
    assert set(statuses["enum"]) == {"running", "compensating", "succeeded", "failed", "cancelled"}
