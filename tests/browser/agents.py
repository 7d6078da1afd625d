"""Python agents for the browser tests: slow enough that a person could watch them work."""

from __future__ import annotations

import time
from typing import Any


def slow_upper(payload: Any, context: Any) -> Any:
    # Long enough that the run page is open while the step runs, so the test sees the page
    # change by itself rather than load an already finished run.
    time.sleep(float(payload.get("pause", 1.5)))
    return str(payload.get("text", "")).upper()
