"""SQL sink throughput: recorded CartPole batches into SQLite and PostgreSQL vs the raw drivers.

Targets (DESIGN.md and the SQL issue): >= 100k transitions/s into each database through the
sink, and >= 0.8x the raw driver's bulk path moving the same rows. The anchor gets the rows
already converted to the Python tuples the driver takes (untimed) and inserts them into the
same table with the same transaction per batch: psycopg 3 binary ``COPY ... write_row`` for
PostgreSQL, ``sqlite3.executemany`` for SQLite. The sink's time includes everything it does:
converting Arrow batches, the transitions, the episodes it closes, its batch log and counters.

Run: python benchmarks/sql_throughput.py [--rows 200000] [--rounds 5]
     [--pg postgresql://postgres@127.0.0.1:5432]
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleave, recorded_table

from relayrl_gym.schema.transitions import TransitionSchema
from relayrl_gym.sinks.sql import SQLSink, engine_from_url
from relayrl_gym.sinks.sql_tables import ensure_schema

COLUMNS = ("run_id", "row_index", "actor_id", "agent_id", "env_index", "episode_id", "step",
           "obs", "action", "reward", "next_obs", "terminated", "truncated", "model_version",
           "timestamp", "mask", "data", "info")
PG_TYPES = ["text", "int8", "text", "text", "int4", "int8", "int8", "bytea", "bytea", "float8",
            "bytea", "bool", "bool", "int8", "timestamptz", "bytea", "text", "text"]


def recorded_batches(rows: int, workdir: Path) -> tuple[pa.Schema, list[pa.RecordBatch]]:
    """Real CartPole transitions, as the writer hands them to sinks (8192-row batches)."""
    table = recorded_table(rows, workdir)
    return table.schema, table.to_batches(max_chunksize=8192)


def through_sink(url: str, schema: pa.Schema, batches: list[pa.RecordBatch]) -> float:
    sink = SQLSink(url)
    sink.start(f"bench-{uuid.uuid4().hex[:8]}", schema)
    started = time.perf_counter()
    for batch in batches:
        sink.write(batch)
    sink.close()
    return sum(b.num_rows for b in batches) / (time.perf_counter() - started)


def driver_rows(url: str, schema: pa.Schema, batches: list[pa.RecordBatch]) -> list[list[tuple]]:
    """The same rows as the tuples each driver takes (built with the sink's own conversion,
    outside the timed part)."""
    sink = SQLSink(url)
    sink.run_id = "raw"
    sink._schema = TransitionSchema.from_arrow(schema)
    out = []
    for batch in batches:
        out.append(list(zip(*sink._row_values(sink._columns(batch)))))
        sink._rows += batch.num_rows
    sink.engine.dispose()
    return out


def raw_postgresql(dsn: str, rows: list[list[tuple]]) -> float:
    import psycopg

    quoted = ", ".join(f'"{c}"' for c in COLUMNS)
    run = f"raw-{uuid.uuid4().hex[:8]}"
    total = sum(len(b) for b in rows)
    with psycopg.connect(dsn) as conn:
        started = time.perf_counter()
        for batch in rows:
            with conn.transaction(), conn.cursor() as cur, cur.copy(
                    f"COPY relayrl_transitions ({quoted}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(PG_TYPES)
                for row in batch:
                    copy.write_row((run, *row[1:]))
        return total / (time.perf_counter() - started)


def raw_sqlite(path: str, rows: list[list[tuple]]) -> float:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    run = f"raw-{uuid.uuid4().hex[:8]}"
    sql = (f"INSERT INTO relayrl_transitions ({', '.join(repr(c) for c in COLUMNS)}) "
           f"VALUES ({', '.join('?' * len(COLUMNS))})")
    total = sum(len(b) for b in rows)
    started = time.perf_counter()
    for batch in rows:
        conn.executemany(sql, [(run, *row[1:]) for row in batch])
        conn.commit()
    rate = total / (time.perf_counter() - started)
    conn.close()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432")
    args = parser.parse_args()
    import psycopg

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        schema, batches = recorded_batches(args.rows, work / "arrow")
        rows = sum(b.num_rows for b in batches)
        db = f"relayrl_bench_{uuid.uuid4().hex[:8]}"
        admin = psycopg.connect(f"{args.pg}/postgres", autocommit=True)
        admin.execute(f'CREATE DATABASE "{db}"')
        try:
            pg_url = f"{args.pg}/{db}"
            sqlite_url = f"sqlite:///{work / 'sink.db'}"
            raw_path = str(work / "raw.db")
            for url in (pg_url, sqlite_url, f"sqlite:///{raw_path}"):
                ensure_schema(engine_from_url(url))
            pg_rows = driver_rows(pg_url, schema, batches)
            lite_rows = driver_rows(sqlite_url, schema, batches)
            rates = interleave({
                "sink postgresql": lambda: through_sink(pg_url, schema, batches),
                "raw psycopg COPY": lambda: raw_postgresql(pg_url, pg_rows),
                "sink sqlite": lambda: through_sink(sqlite_url, schema, batches),
                "raw sqlite3 executemany": lambda: raw_sqlite(raw_path, lite_rows),
            }, args.rounds)
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            admin.close()
    print(f"{rows} CartPole transitions per round, median of {args.rounds} interleaved rounds")
    for name, rate in rates.items():
        print(f"  {name:26s} {rate:12,.0f} transitions/s")
    pg_ratio = rates["sink postgresql"] / rates["raw psycopg COPY"]
    print(f"PostgreSQL: sink / raw COPY        = {pg_ratio:.2f}x  (target >= 0.8x, and >= 100k/s)")
    print(f"SQLite:     sink / raw executemany = "
          f"{rates['sink sqlite'] / rates['raw sqlite3 executemany']:.2f}x  (target >= 0.8x, "
          "and >= 100k/s)")


if __name__ == "__main__":
    main()
