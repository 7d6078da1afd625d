"""A firing alert is counted where people and machines look: the overview's tile (for those who
may see it) and /metrics' baton_alerts_firing (every alert)."""

from __future__ import annotations

import re
from typing import Any

from django.test import Client

from orchestration.alerts.models import RuleKind
from orchestration.status import RunStatus
from tests.alerts.conftest import evaluate, flow, rule, start

PICKY = "    - {key: check, agent: picky, input: '{{ input }}'}"


def alerts_tile(client: Client) -> str:
    page = client.get("/").content.decode()
    found = re.search(r'data-tile="alerts">(.*?)</li>', page, re.S)
    assert found, "the overview has no alerts tile"
    return found.group(1)


def test_a_firing_alert_shows_on_the_overview_of_whoever_sees_it_and_in_the_metrics(
    client: Client, ops: Any, outsider: Any, settings: Any
) -> None:
    flow(PICKY)
    rule(RuleKind.RUN_FAILED, severity="critical")
    assert start(input={"ok": False}).status == RunStatus.FAILED
    evaluate()

    client.force_login(ops)
    tile = alerts_tile(client)
    assert ">1<" in tile and "firing now" in tile and 'href="/alerts/"' in tile
    client.force_login(outsider)
    assert ">0<" in alerts_tile(client) and "none firing" in alerts_tile(client)

    settings.BATON_METRICS_TOKEN = "scrape-token-1234567890"
    scraped = client.get("/metrics", headers={"Authorization": "Bearer scrape-token-1234567890"}).content.decode()
    assert re.search(r"^baton_alerts_firing 1\.0$", scraped, re.M)
