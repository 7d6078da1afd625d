"""At phone width (390 × 844) every main page fits the screen: no sideways page scroll, the
navigation's links wrap onto their own rows and are big enough to tap, and the run graph keeps
its natural size inside a box that scrolls (issue 11)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command

from approvals.models import Item
from orchestration import transitions
from orchestration.management.commands.load_demo import HISTORY_WORKFLOW
from orchestration.models import Run
from tests.support import WebServer, drive, load_workflow

pytestmark = pytest.mark.browser

PHONE = {"width": 390, "height": 844}

# Wide on purpose: five steps side by side make a graph far wider than a phone.
WIDE = """
agents:
  - {name: writer, kind: python, config: {callable: "tests.agents.basic:echo"}}
workflow:
  key: launch
  name: Launch the spring catalogue everywhere at once
  owner: ops
  steps:
    - {key: draft_the_catalogue_copy, agent: writer, input: {headline: Spring}}
    - {key: translate_to_french, agent: writer, after: [draft_the_catalogue_copy]}
    - {key: translate_to_german, agent: writer, after: [draft_the_catalogue_copy]}
    - {key: translate_to_spanish, agent: writer, after: [draft_the_catalogue_copy]}
    - {key: translate_to_italian, agent: writer, after: [draft_the_catalogue_copy]}
    - key: marketing_sign_off
      after: [translate_to_french, translate_to_german, translate_to_spanish, translate_to_italian]
      approval:
        title: Publish the spring catalogue in four languages?
        approvers: {groups: [marketing]}
        deadline: 2h
    - {key: publish, agent: writer, after: [marketing_sign_off]}
"""


def phone_page(chromium: Any, web_server: Any, user: Any) -> Any:
    page = chromium.new_page(viewport=PHONE, is_mobile=True, has_touch=True, device_scale_factor=2)
    page.set_default_timeout(15_000)
    web_server.sign_in(page, user)
    return page


def page_width(page: Any) -> int:
    """How wide the page's content is: wider than the viewport means the page scrolls sideways."""
    return int(page.evaluate("Math.max(document.documentElement.scrollWidth, document.body.scrollWidth)"))


# The outermost elements that reach past the right edge: what to fix when a page is too wide.
OVERFLOWING = """() => {
  const limit = document.documentElement.clientWidth;
  const wide = [];
  for (const el of document.body.querySelectorAll("*")) {
    const box = el.getBoundingClientRect();
    if (box.right <= limit + 1 || box.width === 0) continue;
    let inside = false;  // already counted through an ancestor, or scrolled inside a box
    for (let up = el.parentElement; up && up !== document.body; up = up.parentElement) {
      const style = getComputedStyle(up);
      if (wide.includes(up) || ["auto", "scroll", "hidden"].includes(style.overflowX)) { inside = true; break; }
    }
    if (!inside) wide.push(el);
  }
  return wide.slice(0, 8).map(el => el.tagName.toLowerCase() + "." + [...el.classList].join(".") + (el.id ? "#" + el.id : "") + (el.getAttribute("aria-labelledby") ? "[" + el.getAttribute("aria-labelledby") + "]" : "") + " " + Math.round(el.getBoundingClientRect().right) + "px");
}"""


def assert_fits(page: Any, name: str) -> None:
    assert page_width(page) <= PHONE["width"], (
        f"the {name} page scrolls sideways at 390 px: {page.evaluate(OVERFLOWING)}"
    )


def test_the_main_pages_fit_a_phone_and_the_navigation_is_tappable(
    web_server: Any, transactional_db: Any, ops: Any, chromium: Any, screenshots: Path
) -> None:
    from playwright.sync_api import expect

    ops.groups.add(Group.objects.get_or_create(name="marketing")[0])
    load_workflow(WIDE)
    run = drive(transitions.start_run(workflow="launch", started_by=ops))
    item = Item.objects.get(run=run)
    page = phone_page(chromium, web_server, ops)

    pages = {
        "overview": "/",
        "runs": "/runs/",
        "run": f"/runs/{run.pk}/",
        "inbox": "/approvals/",
        "item": f"/approvals/{item.pk}/",
        "workflow": "/workflows/launch/",
        "workflows": "/workflows/",
        "agents": "/agents/",
        "rollouts": "/rollouts/",
        "decided": "/approvals/decided/",
        "404": "/runs/999999/",
    }
    for name, path in pages.items():
        page.goto(f"{web_server.url}{path}")
        expect(page.get_by_role("navigation", name="Main")).to_be_visible()
        page.screenshot(path=str(screenshots / f"phone-{name}.png"))
        assert_fits(page, name)
    # A run's row is a small card: what it waits for on a line of its own, under the name.
    page.goto(f"{web_server.url}/runs/")
    row = page.locator(f'tr[data-run="{run.pk}"]')
    name_box, status_box = row.locator(".c-workflow").bounding_box(), row.locator(".c-status").bounding_box()
    assert name_box is not None and status_box is not None
    assert status_box["y"] >= name_box["y"] + name_box["height"], "the status overlaps the workflow's name"
    row.screenshot(path=str(screenshots / "phone-runs-row.png"))
    # The inbox's tabs sit side by side in full, the current one too.
    page.goto(f"{web_server.url}/approvals/decided/")
    for tab in page.locator(".tabs__tab").all():
        box = tab.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
        assert box["height"] >= 40
    # The workflow page's recent runs say what the run waits for in words, as the runs list does.
    page.goto(f"{web_server.url}/workflows/launch/")
    waiting = page.locator(f'tr[data-run="{run.pk}"] [data-waiting]')
    expect(waiting).to_contain_text("approval by marketing")
    expect(waiting.get_by_role("link")).to_have_attribute("href", f"/approvals/{item.pk}/")
    page.close()


def test_every_navigation_link_is_in_view_big_enough_to_tap_and_works(
    web_server: Any, transactional_db: Any, ops: Any, chromium: Any
) -> None:
    from playwright.sync_api import expect

    ops.is_staff = True  # the longest navigation: Admin as well
    ops.save()
    page = phone_page(chromium, web_server, ops)
    page.goto(f"{web_server.url}/")
    nav = page.get_by_role("navigation", name="Main")
    names = ["Overview", "Runs", "Workflows", "Agents", "Rollouts", "Alerts", "Approvals", "Admin"]
    rows = set()
    for name in names:
        box = nav.get_by_role("link", name=name).bounding_box()
        assert box is not None, f"{name} is not shown"
        assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], f"{name} sits off the screen"
        assert box["height"] >= 40 and box["width"] >= 40, f"{name} is {box['width']}×{box['height']} px"
        rows.add(round(box["y"]))
    assert len(rows) == 2, f"the navigation takes {len(rows)} rows of links on a phone, not two"
    for name, heading in [("Workflows", "Workflows"), ("Approvals", "Approvals"), ("Runs", "Runs"), ("Overview", "Overview")]:
        nav.get_by_role("link", name=name).tap()
        expect(page.locator("h1")).to_have_text(heading)
        expect(nav.get_by_role("link", name=name)).to_have_attribute("aria-current", "page")
    page.close()


def test_a_graph_wider_than_the_phone_scrolls_inside_its_box(
    web_server: Any, transactional_db: Any, ops: Any, chromium: Any, screenshots: Path
) -> None:
    from playwright.sync_api import expect

    ops.groups.add(Group.objects.get_or_create(name="marketing")[0])
    load_workflow(WIDE)
    run = drive(transitions.start_run(workflow="launch", started_by=ops))
    page = phone_page(chromium, web_server, ops)
    page.goto(f"{web_server.url}/runs/{run.pk}/")

    box = page.locator(".graph-scroll").first
    expect(box).to_be_visible()
    box.scroll_into_view_if_needed()  # the graph may start below the fold on a phone
    first = page.locator('.node[data-step="draft_the_catalogue_copy"]')
    last = page.locator('.node[data-step="publish"]')
    expect(first).to_be_in_viewport()
    sizes = box.evaluate(
        "b => ({client: b.clientWidth, scroll: b.scrollWidth, right: b.getBoundingClientRect().right})"
    )
    assert sizes["scroll"] > sizes["client"], "the graph was shrunk or cut, not kept at its size"
    assert sizes["right"] <= PHONE["width"]
    box.screenshot(path=str(screenshots / "phone-graph-start.png"))

    # Swiped to its end, the last step shows and opens its row in the steps below.
    box.evaluate("b => { b.scrollLeft = b.scrollWidth; }")
    last.scroll_into_view_if_needed()
    last_box = last.bounding_box()
    assert last_box is not None and last_box["x"] + last_box["width"] <= PHONE["width"] + 1
    box.screenshot(path=str(screenshots / "phone-graph-end.png"))
    last.tap()
    expect(page).to_have_url(f"{web_server.url}/runs/{run.pk}/#step-publish")
    assert page_width(page) <= PHONE["width"]
    page.close()


def test_the_demo_rollout_and_its_runs_fit_a_phone(
    transactional_db: Any, chromium: Any, screenshots: Path
) -> None:
    from playwright.sync_api import expect

    # The demo's figures: charts, the gate table, the agents' versions side by side.
    call_command("load_demo", quiet=True, history=True)
    key = HISTORY_WORKFLOW
    run = Run.objects.filter(workflow__key=key).order_by("-pk").first()
    assert run is not None
    with WebServer() as server:
        page = phone_page(chromium, server, get_user_model().objects.get(username="ops"))
        for name, path in {
            "rollout": f"/rollouts/{key}/",
            "demo-runs": "/",
            "demo-run": f"/runs/{run.pk}/",
        }.items():
            page.goto(f"{server.url}{path}")
            expect(page.get_by_role("navigation", name="Main")).to_be_visible()
            page.screenshot(path=str(screenshots / f"phone-{name}.png"), full_page=True)
            assert_fits(page, name)
        page.close()


def test_the_sign_in_page_fits_a_phone(
    web_server: Any, transactional_db: Any, ops: Any, chromium: Any
) -> None:
    from playwright.sync_api import expect

    page = chromium.new_page(viewport=PHONE, is_mobile=True, has_touch=True, device_scale_factor=2)
    page.goto(f"{web_server.url}/login/")
    assert_fits(page, "sign-in")
    page.get_by_label("Username").fill("ops")
    page.get_by_label("Password").fill("ops-pass-1")
    page.get_by_role("button", name="Sign in").tap()
    expect(page.get_by_role("navigation", name="Main")).to_be_visible()
    page.close()
