"""Read-only questions about a run's steps, asked by the engine and by the pages alike.

The bottom layer: it imports only the models and the row helpers and writes nothing, so
anything above (the engine, transitions, the dashboard's and the inbox's read models) may use it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

from django.db import connection

from orchestration import rows
from orchestration.models import Run, StepRun


def head_rows(run: Run, *, only: Sequence[str] = ()) -> list[StepRun]:
    """Every head row of the run (one per step and loop round; no for_each items), oldest round
    first; with `only`, just those columns (Django reads the others if they are touched).

    With `only` (the engine, on every hand-off) the statement is written out once and its
    rows made into models directly: building the ORM's query, and raw()'s rows, cost more
    than running it.
    """
    if not only:
        return list(StepRun.objects.filter(run=run, map_index__isnull=True).order_by("iteration", "id"))
    with connection.cursor() as cursor:
        cursor.execute(heads_sql(tuple(only)), [run.pk])
        return head_rows_from(cursor)


def head_rows_from(cursor: Any) -> list[StepRun]:
    """The head rows a cursor holds the result of heads_sql for (see head_rows)."""
    return rows.model_rows(StepRun, [column[0] for column in cursor.description], cursor.fetchall())


@lru_cache(maxsize=8)
def heads_sql(only: tuple[str, ...]) -> str:
    """The statement head_rows sends for `only` (one parameter: the run's id)."""
    quote = connection.ops.quote_name
    fields = {f.attname: f for f in StepRun._meta.concrete_fields}
    columns = ", ".join(quote(str(fields[name].column)) for name in dict.fromkeys(("id", *only)))
    table = quote(StepRun._meta.db_table)
    return (
        f"SELECT {columns} FROM {table} WHERE {quote('run_id')} = %s AND {quote('map_index')} IS NULL "
        f"ORDER BY {quote('iteration')}, {quote('id')}"
    )


def latest_heads(rows: Iterable[StepRun]) -> dict[str, StepRun]:
    """The latest round's head row of every step among `rows`, in any order.

    A loop sends a step back by adding a row with the next iteration; the older rows stay as
    history, so "the step's state" is its highest iteration's row. Compensations have keys of
    their own ("<key>.undo") and never shadow the step they undo.
    """
    latest: dict[str, StepRun] = {}
    for row in rows:
        current = latest.get(row.step_key)
        # (run, step_key, iteration) is unique among head rows: no ties to break.
        if current is None or row.iteration > current.iteration:
            latest[row.step_key] = row
    return latest
