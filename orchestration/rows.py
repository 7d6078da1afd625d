"""Set-based writes of many rows, each with its own values, in one round trip.

Django's bulk_update builds a CASE WHEN per row and field: for a chunk of for_each items that
cost some 5 ms of Python per item, inside the transaction that holds the run's lock (so other
workers' records queued behind it). Here the statement is built once: on PostgreSQL the rows
travel as one JSON document joined with jsonb_to_recordset, on SQLite as one executemany
(which sqlite3 runs in C).

The hand-off's own statements are written out here too, built once per shape: an UPDATE by
equalities (alone, or as part of a larger statement), a row's INSERT, a row and a child row
pointing at it in one INSERT on PostgreSQL, and many rows of one model in one INSERT.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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


def update_statement(
    model: type[models.Model], *, where: Mapping[str, Any], values: Mapping[str, Any]
) -> tuple[str, list[Any]]:
    """`UPDATE model SET values WHERE where` (each an equality) and its parameters, for a
    caller that sends it as part of a larger statement; the SQL is built once per shape."""
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
    return sql, params


def update_where(model: type[models.Model], *, where: Mapping[str, Any], values: Mapping[str, Any]) -> int:
    """`UPDATE model SET values WHERE where` (each an equality), returning the rows changed.

    What `Model.objects.filter(**where).update(**values)` does for plain values, without
    building the query anew each time: on the hand-off path that cost more than the
    statement itself. Compare-and-set callers pass the expected state in `where`.
    """
    sql, params = update_statement(model, where=where, values=values)
    with transaction.get_connection().cursor() as cursor:
        cursor.execute(sql, params)
        return int(cursor.rowcount)


@lru_cache(maxsize=16)
def _insert_sql(
    model: type[models.Model], vendor: str, read_back: tuple[str, ...] = ()
) -> tuple[str, tuple[models.Field[Any, Any], ...], bool]:
    connection = transaction.get_connection()
    quote = connection.ops.quote_name
    fields = tuple(f for f in model._meta.concrete_fields if not f.primary_key)
    returning = bool(connection.features.can_return_columns_from_insert)
    assert returning or not read_back, "reading columns back needs INSERT ... RETURNING"
    pk = quote(str(model._meta.pk.column)) if model._meta.pk else ""
    columns = [pk, *(quote(str(_fields(model)[name].column)) for name in read_back)]
    sql = (
        f"INSERT INTO {quote(model._meta.db_table)} ({', '.join(quote(str(f.column)) for f in fields)}) "
        f"VALUES ({', '.join(['%s'] * len(fields))})" + (f" RETURNING {', '.join(columns)}" if returning else "")
    )
    return sql, fields, returning


def _set_read_back(obj: models.Model, read_back: Sequence[str], values: Sequence[Any]) -> None:
    """Give `obj` the values the database stored for these fields, as a read of the row would
    (a JSON value comes back with JSON's types, and jsonb's key order)."""
    connection = transaction.get_connection()
    fields = _fields(type(obj))
    for name, value in zip(read_back, values, strict=True):
        field = fields[name]
        from_db = getattr(field, "from_db_value", None)
        setattr(obj, name, from_db(value, None, connection) if from_db else value)


def insert_row(obj: models.Model, *, read_back: tuple[str, ...] = ()) -> None:
    """INSERT a new row (one whose pk is not set yet), as obj.save() would, and set its pk;
    with `read_back`, also set those fields to what the database stored.

    No signals are sent (no model of ours has receivers) and no validation runs, exactly as
    with save(). For the inserts on the hand-off path, where building Django's query cost
    as much as the statement.
    """
    assert obj.pk is None, "insert_row inserts new rows only"
    connection = transaction.get_connection()
    sql, fields, returning = _insert_sql(type(obj), connection.vendor, read_back)
    params = [f.get_db_prep_save(f.pre_save(obj, True), connection) for f in fields]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        if returning:
            pk, *values = cursor.fetchone()
            obj.pk = pk
            _set_read_back(obj, read_back, values)
        else:
            obj.pk = connection.ops.last_insert_id(cursor, obj._meta.db_table, "id")
    obj._state.adding = False
    obj._state.db = connection.alias


@lru_cache(maxsize=16)
def _insert_pair_sql(
    model: type[models.Model], child_model: type[models.Model], link: str, vendor: str, read_back: tuple[str, ...]
) -> tuple[str, tuple[models.Field[Any, Any], ...], tuple[models.Field[Any, Any], ...]]:
    connection = transaction.get_connection()
    quote = connection.ops.quote_name
    parent_sql, fields, _ = _insert_sql(model, vendor, read_back)
    linked = child_model._meta.get_field(link)
    assert isinstance(linked, models.ForeignKey)
    others = tuple(f for f in child_model._meta.concrete_fields if not f.primary_key and f is not linked)
    assert model._meta.pk is not None and child_model._meta.pk is not None
    parent_pk, child_pk = quote(str(model._meta.pk.column)), quote(str(child_model._meta.pk.column))
    # Cast each value: in INSERT ... SELECT a bare literal is text (or an untyped NULL),
    # which PostgreSQL does not assign to a timestamp or an integer column.
    values = ", ".join(f"%s::{f.cast_db_type(connection)}" for f in others)
    read = "".join(f", parent.{quote(str(_fields(model)[name].column))}" for name in read_back)
    sql = (
        f"WITH parent AS ({parent_sql}), "
        f"child AS (INSERT INTO {quote(child_model._meta.db_table)} "
        f"({', '.join(quote(str(f.column)) for f in (linked, *others))}) "
        f"SELECT parent.{parent_pk}, {values} FROM parent RETURNING {child_pk}) "
        f"SELECT parent.{parent_pk}, child.{child_pk}{read} FROM parent, child"
    )
    return sql, fields, others


def insert_rows(obj: models.Model, child: models.Model, *, link: str, read_back: tuple[str, ...] = ()) -> None:
    """INSERT a new row and a new row of another model that points at it (`child.<link>`), as
    insert_row(obj) then insert_row(child) would, and set both pks (and obj's `read_back`).

    On PostgreSQL both rows go in one statement (the child's INSERT selects from the
    parent's, in a WITH): one round trip instead of two, for the step a worker continues with
    and its attempt. SQLite, in process, has no round trip to save (nor INSERT in a WITH).
    """
    connection = transaction.get_connection()
    if connection.vendor != "postgresql":
        insert_row(obj, read_back=read_back)
        setattr(child, link, obj)
        insert_row(child)
        return
    assert obj.pk is None and child.pk is None, "insert_rows inserts new rows only"
    sql, fields, others = _insert_pair_sql(type(obj), type(child), link, connection.vendor, read_back)
    params = [f.get_db_prep_save(f.pre_save(obj, True), connection) for f in fields]
    params += [f.get_db_prep_save(f.pre_save(child, True), connection) for f in others]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        obj.pk, child.pk, *values = cursor.fetchone()
    _set_read_back(obj, read_back, values)
    for row in (obj, child):
        row._state.adding = False
        row._state.db = connection.alias
    setattr(child, link, obj)


@lru_cache(maxsize=64)
def _insert_many_sql(model: type[models.Model], vendor: str, count: int) -> str:
    sql, fields, _ = _insert_sql(model, vendor)
    head, _, returning = sql.partition(" VALUES ")
    row = f"({', '.join(['%s'] * len(fields))})"
    returning = returning.removeprefix(row)
    return f"{head} VALUES {', '.join([row] * count)}{returning}"


def insert_many(objs: Sequence[models.Model]) -> None:
    """INSERT new rows of one model in one statement and set their pks, as bulk_create(objs)
    does, but with the statement built once per number of rows.

    For the events every change writes just before commit: building bulk_create's query
    (on PostgreSQL an UNNEST of one array per column) cost about as much as running it.
    The caller keeps each call within the database's parameter limit (limits.BATCH_SIZE).
    """
    if not objs:
        return
    connection = transaction.get_connection()
    model = type(objs[0])
    sql, fields, returning = _insert_sql(model, connection.vendor)
    if not returning:
        model._default_manager.bulk_create(objs)
        return
    params = []
    for obj in objs:
        assert type(obj) is model and obj.pk is None, "insert_many inserts new rows of one model"
        # As bulk_create: a related row saved after it was assigned gives its pk now, and one
        # never saved is refused rather than stored as NULL.
        # (Django's own check, which bulk_create and save() call; django-stubs leave it out.)
        obj._prepare_related_fields_for_save(operation_name="insert_many")  # type: ignore[attr-defined]
        params += [f.get_db_prep_save(f.pre_save(obj, True), connection) for f in fields]
    with connection.cursor() as cursor:
        cursor.execute(_insert_many_sql(model, connection.vendor, len(objs)), params)
        # Rows come back in the order of VALUES, as bulk_create relies on too.
        for obj, (pk, *_) in zip(objs, cursor.fetchall(), strict=True):
            obj.pk = pk
            obj._state.adding = False
            obj._state.db = connection.alias


@dataclass(frozen=True)
class _Reader:
    # The attnames of the columns that are fields, a set: Model.from_db asks of each of the
    # model's fields whether it is among them, for every row; asked of a tuple, that was half
    # the time of building a 1,000-step run's head rows.
    fields: frozenset[str]
    field_columns: tuple[int, ...]  # where the fields' values are in a row, in the model's field order
    extras: tuple[tuple[str, int], ...]  # other columns (aliases): name, where
    converters: tuple[tuple[int, Any, Any], ...]  # where, converter, its expression


@lru_cache(maxsize=32)
def _reader(model: type[models.Model], columns: tuple[str, ...], vendor: str) -> _Reader:
    connection = transaction.get_connection()
    by_column = {f.column: f for f in model._meta.concrete_fields}
    order = {f.attname: position for position, f in enumerate(model._meta.concrete_fields)}
    selected, extras, converters = [], [], []
    for index, column in enumerate(columns):
        field = by_column.get(column)
        if field is None:
            extras.append((column, index))
            continue
        selected.append((order[field.attname], field.attname, index))
        # What the ORM's compiler applies to a selected column: the backend's converters
        # (SQLite's text to datetime) and the field's own (JSON text to its value).
        col = field.get_col(model._meta.db_table)
        for converter in [*connection.ops.get_db_converters(col), *col.get_db_converters(connection)]:
            converters.append((index, converter, col))
    # Model.from_db takes the values in the model's field order, whatever the SELECT's.
    selected.sort()
    return _Reader(
        frozenset(name for _, name, _ in selected), tuple(i for _, _, i in selected), tuple(extras), tuple(converters)
    )


def model_rows(model: type[models.Model], columns: Sequence[str], values: Sequence[Sequence[Any]]) -> list[Any]:
    """Instances of `model` from rows a cursor returned, as raw() builds them: each value goes
    through the converters the ORM would apply (a JSON text becomes its value), the fields
    not selected are deferred (read from the database if touched), and a column that is no
    field of the model (an alias) becomes a plain attribute.

    For the hand-off, whose run and heads arrive with other results in one round trip, and
    whose heads raw() took three times as long to build as to read.
    """
    connection = transaction.get_connection()
    reader = _reader(model, tuple(columns), connection.vendor)
    found = []
    for row in values:
        converted = list(row)
        for index, converter, expression in reader.converters:
            converted[index] = converter(converted[index], expression, connection)
        obj = model.from_db(connection.alias, reader.fields, [converted[i] for i in reader.field_columns])
        for name, index in reader.extras:
            setattr(obj, name, converted[index])
        found.append(obj)
    return found
