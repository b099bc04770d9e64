"""The SQL schema of recorded runs (SQLAlchemy Core), its version, and its creation/migration.

Tables (schema version 1):

``relayrl_schema``
    ``key``/``value`` pairs; ``version`` is the schema version of the database.
``relayrl_runs``
    One row per run: ``run_id``, ``created``, ``env_id``, ``relayrl_gym_version``, ``metadata``
    (the run description as JSON: spaces, env spec, config), ``arrow_schema`` (the Arrow schema
    of the rows, so a run reads back without the code that wrote it), ``status`` ("running" or
    "closed"), ``rows`` and ``batches`` written so far, ``closed``.
``relayrl_episodes``
    One row per episode, written when it ends (and at close for unfinished ones): ``run_id``,
    ``episode_id``, ``actor_id``, ``agent_id``, ``env_index``, ``model_version`` (of its last
    step), ``length``, ``episode_return``, ``terminated``, ``truncated``, ``finished``,
    ``started``, ``ended``.
``relayrl_transitions``
    One row per transition, the columns of the Arrow schema plus ``row_index`` (its position in the
    run). ``obs``, ``action`` and ``next_obs`` hold each row's leaves as raw bytes (see
    `relayrl_gym.schema.row_bytes`); ``mask`` the bool mask bytes; ``data`` and ``info`` JSON.
    ``timestamp`` is ``timestamptz`` on PostgreSQL and integer nanoseconds (UTC) on SQLite.
``relayrl_batches``
    ``(run_id, seq)`` of every batch written, in the batch's own transaction: a batch retried
    after a connection loss that had in fact committed is recognised and not written twice.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    select,
    text,
)
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError

from relayrl_gym.errors import SinkError

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

__all__ = ["SCHEMA_VERSION", "batches", "ensure_schema", "episodes", "metadata", "runs",
           "transitions"]

log = logging.getLogger(__name__)

#: Version of the tables below; bump it and add a migration when they change.
SCHEMA_VERSION = 1

_TIMESTAMP = DateTime(timezone=True).with_variant(BigInteger, "sqlite")
_RUN_ID = String(255)
_FLOAT = Float(precision=53)

metadata = MetaData()

schema_info = Table(
    "relayrl_schema", metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

runs = Table(
    "relayrl_runs", metadata,
    Column("run_id", _RUN_ID, primary_key=True),
    Column("created", _TIMESTAMP, nullable=False),
    Column("env_id", Text),
    Column("relayrl_gym_version", String(32), nullable=False),
    Column("metadata", Text, nullable=False),
    Column("arrow_schema", LargeBinary, nullable=False),
    Column("status", String(16), nullable=False),
    Column("rows", BigInteger, nullable=False),
    Column("batches", BigInteger, nullable=False),
    Column("closed", _TIMESTAMP),
)

episodes = Table(
    "relayrl_episodes", metadata,
    Column("run_id", _RUN_ID, primary_key=True),
    Column("episode_id", BigInteger, primary_key=True),
    Column("actor_id", String(36), nullable=False),
    Column("agent_id", Text, nullable=False),
    Column("env_index", Integer, nullable=False),
    Column("model_version", BigInteger, nullable=False),
    Column("length", BigInteger, nullable=False),
    Column("episode_return", _FLOAT),  # NULL on SQLite stands for NaN
    Column("terminated", Boolean, nullable=False),
    Column("truncated", Boolean, nullable=False),
    Column("finished", Boolean, nullable=False),
    Column("started", _TIMESTAMP, nullable=False),
    Column("ended", _TIMESTAMP, nullable=False),
    Index("ix_relayrl_episodes_actor", "run_id", "actor_id"),
    Index("ix_relayrl_episodes_model_version", "run_id", "model_version"),
)

transitions = Table(
    "relayrl_transitions", metadata,
    Column("run_id", _RUN_ID, primary_key=True),
    Column("row_index", BigInteger, primary_key=True),
    Column("actor_id", String(36), nullable=False),
    Column("agent_id", Text, nullable=False),
    Column("env_index", Integer, nullable=False),
    Column("episode_id", BigInteger, nullable=False),
    Column("step", BigInteger, nullable=False),
    Column("obs", LargeBinary, nullable=False),
    Column("action", LargeBinary, nullable=False),
    Column("reward", _FLOAT),  # NULL on SQLite stands for NaN (sqlite3 stores NaN so)
    Column("next_obs", LargeBinary, nullable=False),
    Column("terminated", Boolean, nullable=False),
    Column("truncated", Boolean, nullable=False),
    Column("model_version", BigInteger, nullable=False),
    Column("timestamp", _TIMESTAMP, nullable=False),
    Column("mask", LargeBinary),
    Column("data", Text),
    Column("info", Text),
    Index("ix_relayrl_transitions_episode", "run_id", "episode_id"),
)

batches = Table(
    "relayrl_batches", metadata,
    Column("run_id", _RUN_ID, primary_key=True),
    Column("seq", BigInteger, primary_key=True),
    Column("rows", BigInteger, nullable=False),
)


def _create(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        # Two processes creating the tables at once: the second waits for the first.
        conn.execute(text("SELECT pg_advisory_xact_lock(7776001)"))
    metadata.create_all(conn, checkfirst=True)
    found = conn.execute(select(schema_info.c.value).where(schema_info.c.key == "version"))
    version = found.scalar_one_or_none()
    if version is None:
        conn.execute(schema_info.insert().values(key="version", value=json.dumps(SCHEMA_VERSION)))
    elif int(json.loads(version)) > SCHEMA_VERSION:
        raise SinkError(f"the database holds relayrl-gym schema version {version}, newer than "
                        f"this relayrl-gym supports ({SCHEMA_VERSION}); upgrade relayrl-gym")
    # Older versions would be migrated here, one step at a time, in this transaction.


def ensure_schema(engine: Engine, attempts: int = 5) -> None:
    """Creates the tables (or checks their version) in one transaction; safe to run from
    several processes at once. Errors other than that race are SQLAlchemy's, for the caller
    to translate."""
    for attempt in range(attempts):
        try:
            with engine.begin() as conn:
                _create(conn)
            return
        except (DBAPIError, SQLAlchemyError) as err:
            # SQLite has no advisory lock: another process may create a table between our
            # check and our CREATE. That fails once; the next attempt finds the tables.
            raced = isinstance(err, IntegrityError) or "already exists" in str(err)
            if not raced or attempt == attempts - 1:
                raise
            log.info("creating the relayrl-gym tables raced another writer; retrying")
            time.sleep(0.1 * (attempt + 1))
