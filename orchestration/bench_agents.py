"""What `manage.py bench` runs on the workers: a no-op agent and a no-op django-q2 task.

Both do as little as possible, so the bench measures Baton and django-q2, not the work.
"""

from __future__ import annotations

import os
import time
from typing import Any


def noop(payload: Any, context: Any) -> None:
    """The `bench-noop` agent: takes its input and returns nothing."""
    return None


def stamp(path: str) -> None:
    """A plain django-q2 task (no Baton tables): write the time it ran to `path`.

    The bench process runs on the same host, so it can subtract its own enqueue time. The
    rename makes the file appear complete or not at all.
    """
    ran_at = time.time()
    partial = f"{path}.part"
    with open(partial, "w") as handle:
        handle.write(repr(ran_at))
    os.replace(partial, path)
