"""Set-based writes of many rows, each with its own values, in one round trip.

Django's bulk_update builds a CASE WHEN per row and field: for a chunk of for_each items that
cost some 5 ms of Python per item, inside the transaction that holds the run's lock (so other
workers' records queued behind it). Here the statement is built once: on PostgreSQL the rows
travel as one JSON document joined with jsonb_to_recordset, on SQLite as one executemany
(which sqlite3 runs in C).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

from django.db import models, transaction


@lru_cache(maxsize=16)
def _fields(model: type[models.Model]) -> dict[str, Any]:
    """A model's concrete fields by attribute name (asked on every hand-off: built once)."""
    return {f.attname: f for f in model._meta.concrete_fields}


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def update_rows(
    model: type[models.Model],
    *,
    key: Sequence[str],
    rows: Sequence[Mapping[str, Any]],
    constant: Mapping[str, Any] | None = None,
    where: Mapping[str, Any] | None = None,
) -> None:
    """UPDATE the row of `model` named by each mapping's `key` fields with that mapping's other
    fields, plus `constant` (the same for every row), where `where` also holds.

    Every mapping names the same fields. Field names are attribute names (`step_run_id`).
    """
    if not rows:
        return
    constant, where = constant or {}, where or {}
    connection = transaction.get_connection()
    quote = connection.ops.quote_name
    fields = _fields(model)
    names = list(rows[0])
    varying = [name for name in names if name not in key]

    def column(name: str) -> str:
        return str(quote(fields[name].column))

    def prepared(name: str, value: Any) -> Any:
        return fields[name].get_db_prep_save(value, connection)

    table = quote(model._meta.db_table)
    constant_sql = [f"{column(name)} = %s" for name in constant]
    constant_params = [prepared(name, value) for name, value in constant.items()]
    where_params = [prepared(name, value) for name, value in where.items()]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            types = ", ".join(f"{column(name)} {fields[name].cast_db_type(connection)}" for name in names)
            sets = ", ".join([*(f"{column(name)} = x.{column(name)}" for name in varying), *constant_sql])
            matches = " AND ".join(
                [*(f"t.{column(name)} = x.{column(name)}" for name in key), *(f"t.{column(name)} = %s" for name in where)]
            )
            document = json.dumps([dict(row) for row in rows], default=_json_default)
            cursor.execute(
                f"UPDATE {table} AS t SET {sets} FROM jsonb_to_recordset(%s::jsonb) AS x({types}) WHERE {matches}",
                [*constant_params, document, *where_params],
            )
            return
        sets = ", ".join([*(f"{column(name)} = %s" for name in varying), *constant_sql])
        matches = " AND ".join(f"{column(name)} = %s" for name in [*key, *where])
        cursor.executemany(
            f"UPDATE {table} SET {sets} WHERE {matches}",
            [
                [
                    *(prepared(name, row[name]) for name in varying),
                    *constant_params,
                    *(prepared(name, row[name]) for name in key),
                    *where_params,
                ]
                for row in rows
            ],
        )


@lru_cache(maxsize=64)
def _update_sql(table: str, vendor: str, columns: tuple[str, ...], matches: tuple[str, ...]) -> str:
    sets = ", ".join(f"{column} = %s" for column in columns)
    where = " AND ".join(f"{column} = %s" for column in matches)
    return f"UPDATE {table} SET {sets} WHERE {where}"


def update_where(model: type[models.Model], *, where: Mapping[str, Any], values: Mapping[str, Any]) -> int:
    """`UPDATE model SET values WHERE where` (each an equality), returning the rows changed.

    What `Model.objects.filter(**where).update(**values)` does for plain values, without
    building the query anew each time: on the hand-off path that cost more than the
    statement itself. Compare-and-set callers pass the expected state in `where`.
    """
    connection = transaction.get_connection()
    quote = connection.ops.quote_name
    fields = _fields(model)
    sql = _update_sql(
        quote(model._meta.db_table),
        connection.vendor,
        tuple(quote(fields[name].column) for name in values),
        tuple(quote(fields[name].column) for name in where),
    )
    params = [fields[name].get_db_prep_save(value, connection) for name, value in values.items()]
    params += [fields[name].get_db_prep_save(value, connection) for name, value in where.items()]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return int(cursor.rowcount)


@lru_cache(maxsize=16)
def _insert_sql(model: type[models.Model], vendor: str) -> tuple[str, tuple[models.Field[Any, Any], ...], bool]:
    connection = transaction.get_connection()
    quote = connection.ops.quote_name
    fields = tuple(f for f in model._meta.concrete_fields if not f.primary_key)
    returning = bool(connection.features.can_return_columns_from_insert)
    pk = quote(str(model._meta.pk.column)) if model._meta.pk else ""
    sql = (
        f"INSERT INTO {quote(model._meta.db_table)} ({', '.join(quote(str(f.column)) for f in fields)}) "
        f"VALUES ({', '.join(['%s'] * len(fields))})" + (f" RETURNING {pk}" if returning else "")
    )
    return sql, fields, returning


def insert_row(obj: models.Model) -> None:
    """INSERT a new row (one whose pk is not set yet), as obj.save() would, and set its pk.

    No signals are sent (no model of ours has receivers) and no validation runs, exactly as
    with save(). For the one insert on the hand-off path, where building Django's query cost
    as much as the statement.
    """
    assert obj.pk is None, "insert_row inserts new rows only"
    connection = transaction.get_connection()
    sql, fields, returning = _insert_sql(type(obj), connection.vendor)
    params = [f.get_db_prep_save(f.pre_save(obj, True), connection) for f in fields]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        obj.pk = cursor.fetchone()[0] if returning else connection.ops.last_insert_id(cursor, obj._meta.db_table, "id")
    obj._state.adding = False
    obj._state.db = connection.alias
