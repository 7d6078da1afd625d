"""django-q2 task adapters: they take ids and call the worker runtime, nothing more.

The task names ("orchestration.tasks.execute_step", "...execute_steps") are in every message
already in a broker, so they stay as they are; what a worker does lives in
orchestration.runtime.
"""

from __future__ import annotations

from orchestration import runtime


def execute_step(step_run_id: int) -> None:
    """One queued step, and the next steps of its run this worker is given to continue with."""
    runtime.run_step(step_run_id)


def execute_steps(step_run_ids: list[int]) -> None:
    """A chunk of for_each items of one map step, run one after another."""
    runtime.run_items(step_run_ids)
