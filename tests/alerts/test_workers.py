"""With real worker processes: the ticker inside `baton_worker` fires the alert of a run that
failed on a worker, and a django-q2 worker (not the ticker) sends its webhook."""

from __future__ import annotations

from typing import Any

import pytest

from orchestration import transitions as core
from orchestration.alerts.models import Alert, Delivery, DeliveryStatus, RuleKind
from tests.alerts.conftest import flow, rule
from tests.servers import Reply, ScriptedServer
from tests.support import WorkerCluster, wait_for


@pytest.mark.cluster
@pytest.mark.django_db(transaction=True)
def test_a_run_failing_on_a_worker_fires_an_alert_whose_webhook_a_worker_sends(ops: Any) -> None:
    with ScriptedServer() as receiver:
        receiver.script("/hook", Reply(200, {"ok": True}))
        flow("    - {key: check, agent: picky, input: '{{ input }}'}")
        rule(RuleKind.RUN_FAILED, severity="critical", webhooks=f"{receiver.url}/hook")
        env = {"BATON_ALERT_SECONDS": "0.2", "BATON_HTTP_ALLOWED_HOSTS": "127.0.0.1", "BATON_BASE_URL": "http://baton.example"}
        with WorkerCluster(workers=1, env=env) as cluster:
            run = core.start_run(workflow="wf", input={"ok": False})
            [seen] = wait_for(lambda: receiver.seen("/hook"), timeout=60, message=f"the webhook\n{cluster.log()}")
    assert Alert.objects.get().run_id == run.pk
    assert seen.body["text"].startswith(f"[critical] Run {run.pk} of Flow wf failed\n")
    assert wait_for(lambda: Delivery.objects.get().status == DeliveryStatus.SENT, timeout=10)
