"""The HTTP status of each refusal a decision can meet, for the inbox views and the API alike.

approvals.transitions refuses with its own exceptions; this table turns them into status
codes once, so a page and an API client told "no" for the same reason get the same code
(the inbox and the API used to write the mapping out five times between them).
"""

from __future__ import annotations

from approvals.transitions import AlreadyDecided, InvalidInput, NotAllowed
from orchestration.transitions import InvalidTransition

# Most specific first: the first class an exception is an instance of gives its status.
STATUSES: tuple[tuple[type[Exception], int], ...] = (
    (NotAllowed, 403),  # this person may not act on this item
    (AlreadyDecided, 409),  # someone decided first, or the item expired or was cancelled
    (InvalidTransition, 409),  # the run or step moved on meanwhile
    (InvalidInput, 422),  # what was sent is wrong; its errors name the fields
)

# What a view or endpoint catches around a decision.
REFUSALS: tuple[type[Exception], ...] = tuple(cls for cls, _ in STATUSES)


def status_for(exc: Exception) -> int:
    """The status code for a refusal in REFUSALS; anything else is a bug, answered 500."""
    for cls, status in STATUSES:
        if isinstance(exc, cls):
            return status
    return 500
