"""django-q2 task adapters: thin, take an id, survive being delivered twice."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import traceback
from typing import Any

from django.conf import settings
from django.db import connection

from orchestration import transitions
from orchestration.agents import AgentContext, PermanentError, idempotency_key, invoke
from orchestration.models import Agent
from orchestration.status import ErrorClass

logger = logging.getLogger("baton.tasks")


def worker_label() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Heartbeat:
    """Renews a step's lease while its agent runs, from a background thread.

    When the worker process dies the renewals stop, the lease runs out, and the ticker gives
    the step to another worker.
    """

    def __init__(self, step_run_id: int, token: str):
        self.step_run_id = step_run_id
        self.token = token
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True, name=f"heartbeat-{step_run_id}")

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join()

    def _beat(self) -> None:
        used_db = False
        try:
            while not self.stopped.wait(settings.BATON_HEARTBEAT_SECONDS):
                used_db = True
                if not transitions.renew_lease(step_run_id=self.step_run_id, token=self.token):
                    return  # cancelled, or the lease was already taken over
        except Exception:
            logger.exception("heartbeat for step %s failed", self.step_run_id)
        finally:
            if used_db:
                connection.close()


def execute_step(step_run_id: int) -> None:
    # django-q2's worker closes stale database connections around every task.
    claim = transitions.claim_step(step_run_id=step_run_id, worker=worker_label())
    if claim is None:
        return  # a duplicate message, or the step was cancelled meanwhile
    agent = Agent.objects.filter(name=claim.agent_name).first()
    if agent is None:
        transitions.record_failure(
            claim=claim, error_class=ErrorClass.PERMANENT, message=f"agent '{claim.agent_name}' no longer exists"
        )
        return
    context = AgentContext(
        run_id=claim.run_id,
        step_key=claim.step_key,
        attempt=claim.attempt,
        iteration=claim.iteration,
        item=claim.item,
        index=claim.map_index,
        agent=agent.name,
        idempotency_key=idempotency_key(claim.run_id, claim.step_key, claim.iteration, claim.map_index),
    )
    with Heartbeat(claim.step_run_id, claim.token):
        try:
            result = invoke(agent.kind, agent.config, claim.input, context)
            output = _json_safe(result.output)
        except PermanentError as exc:
            transitions.record_failure(
                claim=claim, error_class=ErrorClass.PERMANENT, message=_one_line(exc), traceback=traceback.format_exc()
            )
            return
        except Exception as exc:
            transitions.record_failure(
                claim=claim, error_class=ErrorClass.TRANSIENT, message=_one_line(exc), traceback=traceback.format_exc()
            )
            return
    transitions.record_success(claim=claim, output=output, usage=result.usage)


def _json_safe(value: Any) -> Any:
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as exc:
        raise PermanentError(f"the agent's output is not JSON-serialisable: {exc}") from None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
