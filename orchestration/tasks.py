"""django-q2 task adapters: they take ids and call the worker runtime, nothing more.

The task names ("orchestration.tasks.execute_step", "...execute_steps") are in every message
already in a broker, so they stay as they are; what a worker does lives in
orchestration.runtime, and in a worker process's slots (orchestration.slots) for agents that
wait on the network.
"""

from __future__ import annotations

from orchestration import slots


def execute_step(step_run_id: int) -> None:
    """One queued step, and the next steps of its run this worker is given to continue with."""
    slots.run_step(step_run_id)


def execute_steps(step_run_ids: list[int]) -> None:
    """A chunk of for_each items of one map step: in slots, or one after another."""
    slots.run_items(step_run_ids)
