"""SQL sinks: SQLite (embedded) and PostgreSQL (shared runs), any SQLAlchemy database as well."""

from __future__ import annotations

import datetime as _dt
import json
import logging
import time
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import parse_qsl, urlencode

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from relayrl_gym.errors import ConfigError, SinkError, missing_extra
from relayrl_gym.schema.codecs import arrow_to_numpy
from relayrl_gym.schema.infos import infos_to_text
from relayrl_gym.schema.row_bytes import check_fixed_size, encode_rows
from relayrl_gym.schema.transitions import METADATA_KEY, TransitionSchema
from relayrl_gym.sinks.base import Sink, redact_url
from relayrl_gym.sinks.pg_copy import CopyColumn, copy_payload

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

__all__ = ["SQLSink", "engine_from_url", "error_reason", "split_run_query"]

log = logging.getLogger(__name__)

_DRIVERS = {"postgresql": "postgresql+psycopg", "postgres": "postgresql+psycopg"}
_TRANSITION_COLUMNS = ("run_id", "row_index", "actor_id", "agent_id", "env_index", "episode_id",
                       "step", "obs", "action", "reward", "next_obs", "terminated", "truncated",
                       "model_version", "timestamp", "mask", "data", "info")


def split_run_query(url: str) -> tuple[str, str | None]:
    """Removes ``?run=<run_id>`` from a database URL: ``(url without it, run_id or None)``.

    >>> split_run_query("sqlite:////tmp/runs.db?run=CartPole-1")
    ('sqlite:////tmp/runs.db', 'CartPole-1')
    """
    base, sep, query = url.partition("?")
    pairs = parse_qsl(query, keep_blank_values=True) if sep else []
    run = next((v for k, v in pairs if k == "run"), None)
    rest = urlencode([(k, v) for k, v in pairs if k != "run"])
    return (f"{base}?{rest}" if rest else base), run


def engine_from_url(url: str, connect_timeout: float = 5.0) -> Engine:
    """A SQLAlchemy engine for a sink URL: ``postgresql://`` uses psycopg 3; SQLite gets WAL."""
    try:
        import sqlalchemy
        from sqlalchemy import event
    except ImportError as err:
        raise missing_extra("sqlalchemy", "sql") from err
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigError(f"`sink` {url!r} is not a database URL; use e.g. sqlite:///runs.db or "
                          "postgresql://user@host/db")
    url = f"{_DRIVERS.get(scheme, scheme)}://{rest}"
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("postgresql+psycopg"):
        try:
            import psycopg  # noqa: F401
        except ImportError as err:
            raise missing_extra("psycopg", "sql") from err
        # Binary COPY sends text as UTF-8: the connection must say so, whatever the
        # database's own encoding.
        kwargs["connect_args"] = {"connect_timeout": max(1, int(connect_timeout)),
                                  "client_encoding": "UTF8"}
    elif url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 30.0}  # wait for another process's write lock
    try:
        engine = sqlalchemy.create_engine(url, **kwargs)
    except (ImportError, sqlalchemy.exc.ArgumentError) as err:
        raise ConfigError(f"cannot use database URL {_safe(url)!r}: {err}") from err
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _wal(dbapi_conn: Any, _: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA synchronous=NORMAL")
            # WAL is a property of the file: set once, by whichever process comes first.
            # Switching needs a moment alone with the file, which another writer may hold.
            for attempt in range(50):
                if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
                    break
                try:
                    cursor.execute("PRAGMA journal_mode=WAL")
                except Exception:
                    if attempt == 49:
                        raise
                    time.sleep(0.1)
            cursor.close()

    return engine


def _safe(url: Any) -> str:
    return redact_url(str(url.render_as_string(hide_password=True))
                      if hasattr(url, "render_as_string") else str(url))


class _Episode(NamedTuple):
    actor_id: str
    agent_id: str
    env_index: int
    model_version: int
    length: int
    total: float
    terminated: bool
    truncated: bool
    started: int
    ended: int


class SQLSink(Sink):
    """Writes runs to a SQL database: transitions, episodes and the run's description.

    Each batch is one transaction (rows, the episodes it ends, the batch's sequence number and
    the run's counters), so a batch is either wholly in the database or not at all, and one that
    committed just before a connection was lost is not written again when retried. PostgreSQL
    gets binary ``COPY`` (psycopg 3), SQLite ``executemany`` in WAL mode, other SQLAlchemy
    databases a bulk ``INSERT``. The tables are described in `relayrl_gym.sinks.sql_tables`;
    read a run back with ``relayrl_gym.load("sqlite:///runs.db?run=<run_id>")``.

    >>> import tempfile, pathlib
    >>> sink = SQLSink(f"sqlite:///{pathlib.Path(tempfile.mkdtemp(), 'runs.db')}")
    >>> sink.dialect
    'sqlite'
    """

    def __init__(self, url: str, *, connect_timeout: float = 5.0) -> None:
        """Creates the sink; nothing connects before `start`.

        Args:
            url: ``sqlite:///FILE``, ``postgresql://user@host/db`` (psycopg 3) or any
                SQLAlchemy URL. Credentials in it never reach logs or recorded metadata.
            connect_timeout: seconds to wait for a database connection before a write fails
                (and is retried later).
        """
        self.url = url
        self.engine = engine_from_url(url, connect_timeout)
        self.dialect = self.engine.dialect.name
        self.run_id: str | None = None
        self._schema: TransitionSchema | None = None
        self._rows = 0
        self._seq = 0
        self._open: dict[int, _Episode] = {}
        self._uncertain = False  # the last write failed: it may have committed anyway
        self._closed = False

    @classmethod
    def from_url(cls, url: str) -> SQLSink:
        return cls(url)

    def __repr__(self) -> str:
        return f"SQLSink({_safe(self.engine.url)!r})"

    # -- Sink API ---------------------------------------------------------------------------
    def start(self, run_id: str, schema: pa.Schema) -> None:
        from sqlalchemy.exc import IntegrityError, SQLAlchemyError

        from relayrl_gym.sinks.sql_tables import ensure_schema, runs

        self.run_id = run_id
        self._schema = TransitionSchema.from_arrow(schema)
        check_fixed_size(self._schema.obs)  # refused here, not at the first write
        check_fixed_size(self._schema.action)
        meta = json.loads((schema.metadata or {}).get(METADATA_KEY, b"{}"))
        try:
            ensure_schema(self.engine)
            with self.engine.begin() as conn:
                conn.execute(runs.insert().values(
                    run_id=run_id, created=self._time(time.time_ns()), env_id=meta.get("env_id"),
                    relayrl_gym_version=str(meta.get("relayrl_gym_version", "")),
                    metadata=json.dumps(meta), arrow_schema=schema.serialize().to_pybytes(),
                    status="running", rows=0, batches=0))
        except IntegrityError as err:
            raise SinkError(f"run {run_id!r} already exists in {self!r}; choose another "
                            "run_id") from err
        except SQLAlchemyError as err:
            raise SinkError(f"cannot start run {run_id!r} in {self!r}: {error_reason(err)}. Check "
                            "that the database is running and the URL is right") from err

    def write(self, batch: pa.RecordBatch) -> None:
        if self._schema is None or self._closed:
            raise SinkError("SQLSink.write() called before start() or after close()")
        try:
            with self.engine.begin() as conn:
                if self._uncertain and self._committed(conn, self._seq):
                    log.info("batch %d of run %s had committed before the connection was "
                             "lost; not writing it again", self._seq, self.run_id)
                    _, still_open = self._episodes(batch, self._columns(batch))
                else:
                    still_open = self._write_batch(conn, batch)
        except Exception as err:  # SQLAlchemy's, and the raw driver's from COPY/executemany
            self._uncertain = True
            self.engine.dispose()  # drop pooled connections to a server that went away
            raise SinkError(f"writing {batch.num_rows} rows to {self!r} failed: "
                            f"{error_reason(err)}") from err
        self._uncertain = False
        self._rows += batch.num_rows
        self._seq += 1
        self._open = still_open

    def close(self) -> None:
        """Records the episodes still running as unfinished and marks the run closed."""
        if self._closed or self._schema is None:
            self._closed = True
            self.engine.dispose()
            return
        from sqlalchemy.exc import SQLAlchemyError

        from relayrl_gym.sinks.sql_tables import episodes, runs

        try:
            with self.engine.begin() as conn:
                if self._open:
                    conn.execute(episodes.insert(), [self._episode_row(eid, ep, finished=False)
                                                     for eid, ep in self._open.items()])
                conn.execute(runs.update().where(runs.c.run_id == self.run_id).values(
                    status="closed", closed=self._time(time.time_ns())))
        except SQLAlchemyError as err:
            raise SinkError(f"closing run {self.run_id!r} in {self!r} failed: {error_reason(err)} "
                            "(its transitions are written; its unfinished episodes are not "
                            "listed in relayrl_episodes)") from err
        finally:
            self._closed = True
            self.engine.dispose()

    # -- internals -------------------------------------------------------------------------
    def _time(self, ns: int) -> Any:
        if self.dialect == "sqlite":
            return int(ns)
        return _dt.datetime.fromtimestamp(ns // 1000 / 1e6, _dt.timezone.utc)

    def _committed(self, conn: Connection, seq: int) -> bool:
        from sqlalchemy import select

        from relayrl_gym.sinks.sql_tables import batches

        found = conn.execute(select(batches.c.seq).where(
            batches.c.run_id == self.run_id, batches.c.seq == seq))
        return found.first() is not None

    def _write_batch(self, conn: Connection, batch: pa.RecordBatch) -> dict[int, _Episode]:
        from relayrl_gym.sinks.sql_tables import batches, episodes, runs

        cols = self._columns(batch)
        if batch.num_rows:
            if self.dialect == "postgresql":
                self._copy_postgresql(batch, cols, conn)
            elif self.dialect == "sqlite":
                self._executemany_sqlite(cols, conn)
            else:
                self._insert_generic(cols, conn)
        closed, still_open = self._episodes(batch, cols)
        if len(closed["episode_id"]) and self.dialect == "postgresql":
            self._copy_episodes(conn, closed)
        elif len(closed["episode_id"]):
            conn.execute(episodes.insert(), self._episode_dicts(closed))
        conn.execute(batches.insert().values(run_id=self.run_id, seq=self._seq,
                                             rows=batch.num_rows))
        conn.execute(runs.update().where(runs.c.run_id == self.run_id).values(
            rows=self._rows + batch.num_rows, batches=self._seq + 1))
        return still_open

    def _columns(self, batch: pa.RecordBatch) -> dict[str, Any]:
        """Column values as numpy arrays / lists, shared by every dialect's fast path."""
        assert self._schema is not None
        n = batch.num_rows
        cols: dict[str, Any] = {
            "row_index": np.arange(self._rows, self._rows + n, dtype=np.int64),
            "env_index": arrow_to_numpy(batch.column("env_index")),
            "episode_id": arrow_to_numpy(batch.column("episode_id")),
            "step": arrow_to_numpy(batch.column("step")),
            "reward": arrow_to_numpy(batch.column("reward")),
            "terminated": arrow_to_numpy(batch.column("terminated")),
            "truncated": arrow_to_numpy(batch.column("truncated")),
            "model_version": arrow_to_numpy(batch.column("model_version")),
            "timestamp": arrow_to_numpy(batch.column("timestamp")),
            "obs": encode_rows(self._schema.obs, batch.column("obs")),
            "action": encode_rows(self._schema.action, batch.column("action")),
            "next_obs": encode_rows(self._schema.obs, batch.column("next_obs")),
        }
        for name in ("actor_id", "agent_id"):
            encoded = pc.dictionary_encode(batch.column(name))
            cols[name] = (encoded.dictionary.to_pylist(), arrow_to_numpy(encoded.indices))
        cols["mask"] = _nullable(batch.column("mask"),
                                 lambda v: np.asarray(v, np.bool_).tobytes())
        cols["data"] = _nullable(batch.column("data"), lambda v: json.dumps(v))
        cols["info"] = infos_to_text(batch.column("info")).to_pylist()
        return cols

    def _copy_postgresql(self, batch: pa.RecordBatch, cols: dict[str, Any],
                         conn: Connection) -> None:
        n = batch.num_rows
        assert self.run_id is not None
        run = self.run_id.encode()

        def strings(name: str) -> CopyColumn:
            return _string_column(name, *cols[name])

        def nullable(name: str, values: list[Any]) -> CopyColumn:
            if batch.column(name).null_count == n:
                return CopyColumn(name, "null", None)
            return CopyColumn(name, "var", [None if v is None else
                                            (v if isinstance(v, bytes) else v.encode())
                                            for v in values])

        columns = [
            _constant_column("run_id", run, n),
            CopyColumn("row_index", "int8", cols["row_index"]),
            strings("actor_id"),
            strings("agent_id"),
            CopyColumn("env_index", "int4", cols["env_index"]),
            CopyColumn("episode_id", "int8", cols["episode_id"]),
            CopyColumn("step", "int8", cols["step"]),
            CopyColumn("obs", "bytes", cols["obs"]),
            CopyColumn("action", "bytes", cols["action"]),
            CopyColumn("reward", "float8", cols["reward"]),
            CopyColumn("next_obs", "bytes", cols["next_obs"]),
            CopyColumn("terminated", "bool", cols["terminated"]),
            CopyColumn("truncated", "bool", cols["truncated"]),
            CopyColumn("model_version", "int8", cols["model_version"]),
            CopyColumn("timestamp", "timestamptz_ns", cols["timestamp"]),
            nullable("mask", cols["mask"]),
            nullable("data", cols["data"]),
            nullable("info", cols["info"]),
        ]
        names, payload = copy_payload(columns, n)
        _copy(conn, "relayrl_transitions", names, payload)

    def _row_values(self, cols: dict[str, Any]) -> list[list[Any]]:
        n = len(cols["row_index"])

        def strings(name: str) -> list[str]:
            words, idx = cols[name]
            return np.array(words, dtype=object)[idx].tolist()

        def as_bytes(rows: np.ndarray) -> list[bytes]:
            return rows.view(f"V{rows.shape[1]}").ravel().tolist()

        by_name = {
            "run_id": [self.run_id] * n,
            "actor_id": strings("actor_id"),
            "agent_id": strings("agent_id"),
            "obs": as_bytes(cols["obs"]),
            "action": as_bytes(cols["action"]),
            "next_obs": as_bytes(cols["next_obs"]),
            "mask": cols["mask"], "data": cols["data"], "info": cols["info"],
        }
        for name in ("row_index", "env_index", "episode_id", "step", "reward", "terminated",
                     "truncated", "model_version", "timestamp"):
            by_name[name] = cols[name].tolist()
        if self.dialect != "sqlite":
            by_name["timestamp"] = [self._time(t) for t in by_name["timestamp"]]
        return [by_name[name] for name in _TRANSITION_COLUMNS]

    def _executemany_sqlite(self, cols: dict[str, Any], conn: Connection) -> None:
        values = self._row_values(cols)
        marks = ", ".join("?" * len(_TRANSITION_COLUMNS))
        quoted = ", ".join(f'"{name}"' for name in _TRANSITION_COLUMNS)
        raw = conn.connection.driver_connection
        assert raw is not None
        raw.executemany(f"INSERT INTO relayrl_transitions ({quoted}) VALUES ({marks})",
                        zip(*values))

    def _insert_generic(self, cols: dict[str, Any], conn: Connection) -> None:
        from relayrl_gym.sinks.sql_tables import transitions

        values = self._row_values(cols)
        conn.execute(transitions.insert(),
                     [dict(zip(_TRANSITION_COLUMNS, row)) for row in zip(*values)])

    def _episodes(self, batch: pa.RecordBatch, cols: dict[str, Any]
                  ) -> tuple[dict[str, Any], dict[int, _Episode]]:
        """Columns of the episodes this batch ends, and the episodes still running after it
        (``cols``: the batch's columns from `_columns`)."""
        still_open = dict(self._open)
        ids, first, inverse = np.unique(cols["episode_id"], return_index=True,
                                        return_inverse=True)
        k = len(ids)
        totals = np.bincount(inverse, weights=cols["reward"], minlength=k)
        lengths = np.bincount(inverse, minlength=k).astype(np.int64)
        last = np.zeros(k, np.int64)
        np.maximum.at(last, inverse, np.arange(batch.num_rows))
        started, ended = cols["timestamp"][first].copy(), cols["timestamp"][last]
        done = (cols["terminated"] | cols["truncated"])[last]
        for j in np.flatnonzero(np.isin(ids, list(still_open))).tolist():
            prev = still_open.pop(int(ids[j]))  # continues from an earlier batch
            totals[j] += prev.total
            lengths[j] += prev.length
            started[j] = prev.started
        per_episode: dict[str, Any] = {
            "episode_id": ids, "env_index": cols["env_index"][first],
            "model_version": cols["model_version"][last], "length": lengths,
            "episode_return": totals, "terminated": cols["terminated"][last],
            "truncated": cols["truncated"][last], "started": started, "ended": ended,
            "actor_id": (cols["actor_id"][0], cols["actor_id"][1][first]),
            "agent_id": (cols["agent_id"][0], cols["agent_id"][1][first])}
        for j in np.flatnonzero(~done).tolist():
            still_open[int(ids[j])] = self._episode_at(per_episode, j)
        closed = {name: ((v[0], v[1][done]) if isinstance(v, tuple) else v[done])
                  for name, v in per_episode.items()}
        return closed, still_open

    @staticmethod
    def _episode_at(per_episode: dict[str, Any], j: int) -> _Episode:
        words, idx = per_episode["actor_id"]
        agents, agent_idx = per_episode["agent_id"]
        return _Episode(
            actor_id=words[idx[j]], agent_id=agents[agent_idx[j]],
            env_index=int(per_episode["env_index"][j]),
            model_version=int(per_episode["model_version"][j]),
            length=int(per_episode["length"][j]), total=float(per_episode["episode_return"][j]),
            terminated=bool(per_episode["terminated"][j]),
            truncated=bool(per_episode["truncated"][j]), started=int(per_episode["started"][j]),
            ended=int(per_episode["ended"][j]))

    def _copy_episodes(self, conn: Connection, closed: dict[str, Any]) -> None:
        from relayrl_gym.sinks.sql_tables import episodes

        n = len(closed["episode_id"])
        assert self.run_id is not None
        run = self.run_id.encode()
        columns = [
            _constant_column("run_id", run, n),
            CopyColumn("episode_id", "int8", closed["episode_id"]),
            _string_column("actor_id", *closed["actor_id"]),
            _string_column("agent_id", *closed["agent_id"]),
            CopyColumn("env_index", "int4", closed["env_index"]),
            CopyColumn("model_version", "int8", closed["model_version"]),
            CopyColumn("length", "int8", closed["length"]),
            CopyColumn("episode_return", "float8", closed["episode_return"]),
            CopyColumn("terminated", "bool", closed["terminated"]),
            CopyColumn("truncated", "bool", closed["truncated"]),
            CopyColumn("finished", "bool", np.ones(n, np.bool_)),
            CopyColumn("started", "timestamptz_ns", closed["started"]),
            CopyColumn("ended", "timestamptz_ns", closed["ended"]),
        ]
        names, payload = copy_payload(columns, n)
        _copy(conn, episodes.name, names, payload)

    def _episode_dicts(self, closed: dict[str, Any]) -> list[dict[str, Any]]:
        return [self._episode_row(int(closed["episode_id"][j]), self._episode_at(closed, j),
                                  finished=True) for j in range(len(closed["episode_id"]))]

    def _episode_row(self, episode_id: int, ep: _Episode, finished: bool) -> dict[str, Any]:
        return {"run_id": self.run_id, "episode_id": episode_id, "actor_id": ep.actor_id,
                "agent_id": ep.agent_id, "env_index": ep.env_index,
                "model_version": ep.model_version, "length": ep.length,
                "episode_return": ep.total, "terminated": ep.terminated,
                "truncated": ep.truncated, "finished": finished,
                "started": self._time(ep.started), "ended": self._time(ep.ended)}


def _copy(conn: Connection, table: str, names: list[str], payload: bytes) -> None:
    """Sends a binary COPY payload (see `relayrl_gym.sinks.pg_copy`) in the open transaction."""
    quoted = ", ".join(f'"{name}"' for name in names)
    raw = conn.connection.driver_connection
    assert raw is not None
    with raw.cursor() as cur, cur.copy(
            f"COPY {table} ({quoted}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.write(payload)


def _constant_column(name: str, value: bytes, rows: int) -> Any:
    return CopyColumn(name, "bytes", np.broadcast_to(np.frombuffer(value, np.uint8),
                                                     (rows, len(value))))


def _string_column(name: str, words: list[str], idx: np.ndarray) -> Any:
    """A dictionary-encoded string column as a COPY column: one numpy gather when every word
    has the same length (actor UUIDs, a single agent name), else per-row bytes."""
    encoded = [w.encode() for w in words]
    width = len(encoded[0]) if encoded else 0
    if all(len(w) == width for w in encoded):
        table = np.frombuffer(b"".join(encoded), np.uint8).reshape(len(encoded), width)
        return CopyColumn(name, "bytes", table[idx])
    return CopyColumn(name, "var", np.array(encoded, dtype=object)[idx].tolist())


def _nullable(column: pa.Array, convert: Any) -> list[Any]:
    if column.null_count == len(column):
        return [None] * len(column)
    return [None if v is None else convert(v) for v in column.to_pylist()]


def error_reason(err: BaseException) -> str:
    """The driver's message without the SQL statement and parameters SQLAlchemy appends."""
    orig = getattr(err, "orig", None)
    text = str(orig if orig is not None else err)
    return text.strip().splitlines()[0] if text.strip() else type(err).__name__
