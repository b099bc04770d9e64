"""Reads a run back from a SQL sink's tables as the same Arrow rows the Arrow sink writes."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa

from relayrl_gym.errors import DatasetError
from relayrl_gym.schema.codecs import numpy_to_arrow
from relayrl_gym.schema.infos import text_info_schema
from relayrl_gym.schema.row_bytes import decode_rows, row_size
from relayrl_gym.schema.transitions import MASK_TYPE, TransitionSchema
from relayrl_gym.sinks.sql import engine_from_url, error_reason, split_run_query

__all__ = ["list_sql_runs", "read_sql_run", "sql_run_schema"]

_TIMESTAMP_NS = pa.timestamp("ns", tz="UTC")


def list_sql_runs(url: str) -> list[str]:
    """The run ids in a database, oldest first."""
    from sqlalchemy import inspect, select
    from sqlalchemy.exc import SQLAlchemyError

    from relayrl_gym.sinks.sql_tables import runs

    engine = engine_from_url(split_run_query(url)[0])
    try:
        if not inspect(engine).has_table(runs.name):
            return []
        with engine.connect() as conn:
            found = conn.execute(select(runs.c.run_id).order_by(runs.c.created, runs.c.run_id))
            return [r[0] for r in found]
    except (SQLAlchemyError, ValueError) as err:
        raise DatasetError(f"cannot list the runs in the database: {error_reason(err)}") from err
    finally:
        engine.dispose()


def sql_run_schema(url: str, run_id: str) -> pa.Schema:
    """The Arrow schema a run was recorded with (``url``: the database, without ``?run=``)."""
    from sqlalchemy import select
    from sqlalchemy.exc import SQLAlchemyError

    from relayrl_gym.sinks.sql_tables import runs

    engine = engine_from_url(url)
    try:
        with engine.connect() as conn:
            run = conn.execute(select(runs.c.arrow_schema).where(runs.c.run_id == run_id)).first()
    except SQLAlchemyError as err:
        raise DatasetError(f"cannot read run {run_id!r}: {error_reason(err)}") from err
    finally:
        engine.dispose()
    if run is None:
        raise DatasetError(f"no run {run_id!r} in the database; relayrl-gym inspect <url> "
                           "lists the runs it holds")
    return pa.ipc.read_schema(pa.py_buffer(run[0]))


def read_sql_run(url: str, run_id: str, arrow_schema: pa.Schema) -> pa.Table:
    """All rows of run ``run_id`` (recorded with ``arrow_schema``, see `sql_run_schema`) in
    the order they were recorded, infos as JSON text; ``url``: the database."""
    from sqlalchemy import select
    from sqlalchemy.exc import SQLAlchemyError

    from relayrl_gym.sinks.sql_tables import transitions

    engine = engine_from_url(url)
    try:
        with engine.connect() as conn:
            columns = [transitions.c[f.name] for f in arrow_schema]
            result = conn.execute(select(*columns).where(transitions.c.run_id == run_id)
                                  .order_by(transitions.c.row_index))
            rows = result.fetchall()
    except SQLAlchemyError as err:
        raise DatasetError(f"cannot read run {run_id!r}: {error_reason(err)}") from err
    finally:
        engine.dispose()
    schema = TransitionSchema.from_arrow(arrow_schema)
    readable = text_info_schema(arrow_schema)  # the database holds each info's JSON text
    values = list(zip(*rows)) if rows else [() for _ in readable]
    arrays = [_column(field, list(col), schema) for field, col in zip(readable, values)]
    return pa.Table.from_arrays(arrays, schema=readable)


def _column(field: pa.Field, values: list[Any], schema: TransitionSchema) -> pa.Array:
    n = len(values)
    name = field.name
    if name in ("obs", "next_obs", "action"):
        codec = schema.action if name == "action" else schema.obs
        width = row_size(codec)
        data = np.frombuffer(b"".join(values), np.uint8).reshape(n, width)
        return codec.to_arrow(decode_rows(codec, data), n)
    if name == "timestamp":
        if values and not isinstance(values[0], int):  # datetimes (PostgreSQL)
            return pa.array(values, pa.timestamp("us", tz="UTC")).cast(_TIMESTAMP_NS)
        return numpy_to_arrow(np.asarray(values, np.int64), _TIMESTAMP_NS)
    if name == "mask":
        return pa.array([None if v is None else np.frombuffer(v, np.bool_).tolist()
                         for v in values], MASK_TYPE)
    if name == "data":
        if pa.types.is_null(field.type):
            return pa.nulls(n)
        return pa.array([None if v is None else json.loads(v) for v in values], field.type)
    if pa.types.is_floating(field.type):  # SQLite returns a stored NaN as NULL
        return numpy_to_arrow(np.array([np.nan if v is None else v for v in values],
                                       np.float64), field.type)
    if pa.types.is_boolean(field.type):
        return pa.array(np.asarray(values, np.bool_) if n else [], pa.bool_())
    return pa.array(values, field.type)
