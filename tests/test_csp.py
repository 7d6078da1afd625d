"""The Content-Security-Policy header, and the templates that must keep passing it.

tests/browser/test_csp.py renders the pages in Chromium and listens for violations; these are
the cheap checks that run on every pass.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

ROOT = Path(__file__).resolve().parent.parent
# What the policy refuses: inline <script> and <style>, style="" and on…="" attributes, and
# javascript: URLs. <script src=…> and data-only <script type="application/json"> are fine.
INLINE = re.compile(
    r"<script(?![^>]*\bsrc=)(?![^>]*type=\"application/json\")[^>]*>"
    r"|<style\b|\sstyle=|\son[a-z]+=|\shx-on[:-]|javascript:",
    re.IGNORECASE,
)


def test_every_page_carries_the_policy(client: Client) -> None:
    response = client.get(reverse("login"))
    assert response.status_code == 200
    policy = response.headers["Content-Security-Policy"]
    for directive in ("default-src 'self'", "script-src 'self'", "style-src 'self'", "object-src 'none'", "frame-ancestors 'none'"):
        assert directive in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy


def test_redirects_and_error_pages_carry_it_too(client: Client, ops: Any) -> None:
    assert "Content-Security-Policy" in client.get(reverse("dashboard:runs")).headers  # to the login page
    client.force_login(ops)
    missing = client.get("/runs/999999/")
    assert missing.status_code == 404
    assert "Content-Security-Policy" in missing.headers


def test_the_policy_is_a_setting(client: Client, settings: Any) -> None:
    settings.BATON_CSP = "default-src 'none'"
    assert client.get(reverse("login")).headers["Content-Security-Policy"] == "default-src 'none'"
    settings.BATON_CSP = ""
    assert "Content-Security-Policy" not in client.get(reverse("login")).headers


def test_debug_error_pages_are_left_without_it(client: Client, settings: Any, ops: Any) -> None:
    # Django's technical 404/500 pages are inline script and style.
    settings.DEBUG = True
    client.force_login(ops)
    assert "Content-Security-Policy" not in client.get("/runs/999999/").headers
    assert "Content-Security-Policy" in client.get(reverse("dashboard:runs")).headers


@pytest.mark.parametrize("path", sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "templates").rglob("*.html")))
def test_no_template_has_inline_script_or_style(path: str) -> None:
    text = (ROOT / path).read_text()
    found = [m.group(0).strip() for m in INLINE.finditer(text)]
    assert found == [], f"{path}: {found} (move it into static/, or pass sizes as data- attributes)"


@pytest.mark.parametrize("path", sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "templates").rglob("*.html")))
def test_no_template_comment_spans_lines(path: str) -> None:
    # Django's {# #} ends at the line's end: a second line would be printed on the page.
    broken = [n for n, line in enumerate((ROOT / path).read_text().splitlines(), 1) if "{#" in line and "#}" not in line]
    assert broken == [], f"{path}: lines {broken} open a {{# comment they do not close"
