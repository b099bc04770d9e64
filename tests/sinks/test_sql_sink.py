"""SQL sinks on real SQLite files and the real PostgreSQL server: same rows as the Arrow sink."""

from __future__ import annotations

import json
import logging

import numpy as np
import pyarrow as pa
import pytest
import sqlalchemy as sa
from testing_env import SPACES, TestingEnv
from tests_helpers import record_random

import relayrl_gym
from relayrl_gym.cli.main import main as cli
from relayrl_gym.errors import DatasetError, SinkError
from relayrl_gym.sinks.sql import SQLSink

pytest.importorskip("sqlalchemy")


def _record(sinks, env="CartPole-v1", actors=3, steps=200, seed=0, **kwargs):
    return record_random(sinks, env, actors, steps, seed, router_scale=0, **kwargs)


def _engine(url):
    return sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))


def test_cartpole_rows_equal_the_arrow_sinks(db_url, tmp_path):
    envs = _record([tmp_path / "arrow", db_url])
    arrow = relayrl_gym.load(envs.run_path)
    sql = relayrl_gym.load(f"{db_url}?run={envs.run_id}")
    assert len(sql) == len(arrow) > 500
    assert sql.table.schema.equals(arrow.table.schema, check_metadata=True)
    assert sql.table.equals(arrow.table)
    assert sql.summary() == arrow.summary()


@pytest.mark.parametrize("obs_name", list(SPACES), ids=list(SPACES))
def test_every_space_round_trips_exactly_through_sqlite_and_postgresql(obs_name, pg_url,
                                                                       tmp_path):
    obs_space, act_space = SPACES[obs_name], SPACES["dict" if obs_name != "dict" else "tuple"]
    sqlite = f"sqlite:///{tmp_path / 'runs.db'}"
    envs = _record([tmp_path / "arrow", sqlite, pg_url], actors=2, steps=12,
                   env=lambda: TestingEnv(obs_space, act_space, length=4, info=True))
    arrow = relayrl_gym.load(envs.run_path).table
    for url in (sqlite, pg_url):
        got = relayrl_gym.load(f"{url}?run={envs.run_id}")
        assert got.table.equals(arrow), url
        first = got.transitions()
        assert got.observation_space == obs_space and got.action_space == act_space
        if obs_name == "image":
            assert first.obs.dtype == np.uint8 and first.obs.shape[1:] == (8, 6, 3)


def test_episodes_table_holds_returns_lengths_and_actors(db_url, tmp_path):
    envs = _record(db_url, steps=300)
    ds = relayrl_gym.load(f"{db_url}?run={envs.run_id}")
    finished = [e for e in ds.episodes() if e.terminations[-1] or e.truncations[-1]]
    with _engine(db_url).connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT episode_id, actor_id, length, episode_return, finished FROM "
            "relayrl_episodes WHERE run_id = :run ORDER BY episode_id"),
            {"run": envs.run_id}).fetchall()
        per_version = conn.execute(sa.text(
            "SELECT model_version, count(*), avg(episode_return) FROM relayrl_episodes "
            "WHERE run_id = :run AND finished GROUP BY model_version"),
            {"run": envs.run_id}).fetchall()
        run = conn.execute(sa.text("SELECT status, rows, env_id, metadata FROM relayrl_runs "
                                   "WHERE run_id = :run"), {"run": envs.run_id}).one()
    done = {r.episode_id: r for r in rows if r.finished}
    assert len(done) == len(finished) and len(rows) == len(finished) + 3  # 3 still running
    for ep in finished:
        row = done[ep.episode_id]
        assert row.length == len(ep.rewards) and row.episode_return == pytest.approx(
            float(ep.rewards.sum())) and row.actor_id == ep.actor_id
    assert per_version[0][0] == -1 and per_version[0][1] == len(finished)
    assert run.status == "closed" and run.rows == len(ds) and run.env_id == "CartPole-v1"
    assert json.loads(run.metadata)["observation_space"]["type"] == "Box"


def test_quotes_unicode_and_sql_in_names_are_stored_as_data(db_url, tmp_path):
    run_id = "run'); DROP TABLE relayrl_runs; -- ü \"x\""

    def info_env():
        env = TestingEnv(SPACES["box"], length=3)
        env.step_fn = lambda e, a: (e._obs(), 1.0, False, False,
                                    {"key'\"; DELETE FROM relayrl_transitions; --": "ü' ✓"})
        return env

    _record([db_url], env=info_env, actors=2, steps=5, run_id=run_id)
    ds = relayrl_gym.load(_with_run(db_url, run_id))
    assert ds.run_id == run_id and len(ds) == 10
    info = json.loads(ds.table.column("info")[0].as_py())
    assert info == {"key'\"; DELETE FROM relayrl_transitions; --": "ü' ✓"}


def _with_run(url, run_id):
    from urllib.parse import quote

    return f"{url}?run={quote(run_id)}"


def test_credentials_never_reach_logs_errors_or_metadata(pg_url, caplog):
    secret_url = pg_url.replace("postgres@", "postgres:hunter2secret@", 1)
    caplog.set_level(logging.DEBUG)
    envs = _record(secret_url, steps=20)
    sink = SQLSink(secret_url)
    assert "hunter2secret" not in repr(sink)
    with _engine(pg_url).connect() as conn:
        meta = conn.execute(sa.text("SELECT metadata FROM relayrl_runs WHERE run_id = :r"),
                            {"r": envs.run_id}).scalar_one()
    assert "hunter2secret" not in meta
    bad = secret_url.rsplit("/", 1)[0] + "/no_such_database"
    with pytest.raises(SinkError) as raised:
        relayrl_gym.wrap("CartPole-v1", sink=bad, router_scale=0)
    assert "no_such_database" in str(raised.value) and "hunter2secret" not in str(raised.value)
    assert "hunter2secret" not in caplog.text


def test_unreachable_database_at_start_is_a_clear_error():
    with pytest.raises(SinkError, match=r"cannot start run .*database is running"):
        relayrl_gym.wrap("CartPole-v1", sink="postgresql://postgres@127.0.0.1:1/none",
                         router_scale=0)


def test_existing_run_and_newer_schema_are_refused(sqlite_url):
    envs = _record(sqlite_url, steps=3)
    with pytest.raises(SinkError, match="already exists"):
        relayrl_gym.wrap("CartPole-v1", sink=sqlite_url, run_id=envs.run_id, router_scale=0)
    with _engine(sqlite_url).begin() as conn:
        conn.execute(sa.text("UPDATE relayrl_schema SET value = '99' WHERE key = 'version'"))
    with pytest.raises(SinkError, match="schema version 99, newer than"):
        relayrl_gym.wrap("CartPole-v1", sink=sqlite_url, router_scale=0)


def test_load_and_inspect_with_several_runs(sqlite_url, capsys):
    first = _record(sqlite_url, steps=10)
    second = _record(sqlite_url, steps=10, seed=1)
    both = relayrl_gym.load(sqlite_url)  # every run of the database, as one dataset
    one = relayrl_gym.load(f"{sqlite_url}?run={second.run_id}")
    assert both.run_ids == [first.run_id, second.run_id] and len(both) == 2 * len(one) > 0
    assert set(both.table.column("run_id").to_pylist()) == set(both.run_ids)
    with pytest.raises(DatasetError, match="no run 'nope'"):
        relayrl_gym.load(f"{sqlite_url}?run=nope")
    assert cli(["inspect", sqlite_url]) == 0
    out = capsys.readouterr().out
    assert "2 runs" in out and first.run_id in out and second.run_id in out


def test_sql_tables_answer_the_queries_users_run(pg_url):
    envs = _record(pg_url, steps=100)
    with _engine(pg_url).connect() as conn:
        per_actor = conn.execute(sa.text(
            "SELECT actor_id, count(*), sum(reward) FROM relayrl_transitions WHERE run_id = :r "
            "GROUP BY actor_id"), {"r": envs.run_id}).fetchall()
        per_day = conn.execute(sa.text(
            "SELECT date_trunc('day', timestamp), count(*) FROM relayrl_transitions "
            "WHERE run_id = :r GROUP BY 1"), {"r": envs.run_id}).fetchall()
        indexes = {ix["name"] for ix in sa.inspect(conn).get_indexes("relayrl_episodes")}
    assert len(per_actor) == 3 and sum(r[1] for r in per_actor) == len(
        relayrl_gym.load(_with_run(pg_url, envs.run_id)))
    assert len(per_day) >= 1
    assert {"ix_relayrl_episodes_actor", "ix_relayrl_episodes_model_version"} <= indexes


def test_sqlite_uses_wal(sqlite_url):
    _record(sqlite_url, steps=2)
    path = sqlite_url[len("sqlite:///"):]
    import sqlite3

    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_batch_that_committed_before_the_connection_broke_is_not_written_twice(pg_url):
    sink = SQLSink(pg_url)
    envs = relayrl_gym.wrap("CartPole-v1", actors=2, sink=sink, router_scale=0, batch_rows=16)
    envs.reset(seed=0)
    for _ in range(20):
        envs.step(envs.action_space.sample())
    envs.flush()
    # As if the last COMMIT reached the server but its answer was lost: the writer retries.
    sink._uncertain, sink._seq, sink._rows = True, sink._seq - 1, sink._rows - _last_rows(sink)
    table_before = relayrl_gym.load(_with_run(pg_url, envs.run_id)).table
    for _ in range(20):
        envs.step(envs.action_space.sample())
    envs.close()
    table = relayrl_gym.load(_with_run(pg_url, envs.run_id)).table
    steps = list(zip(table["episode_id"].to_pylist(), table["step"].to_pylist()))
    assert len(steps) == len(set(steps)) and table.num_rows > table_before.num_rows


def _last_rows(sink):
    with sink.engine.connect() as conn:
        return conn.execute(sa.text("SELECT rows FROM relayrl_batches WHERE run_id = :r AND "
                                    "seq = :s"), {"r": sink.run_id, "s": sink._seq - 1}).scalar()


def test_mask_column_round_trips(sqlite_url, tmp_path):
    from relayrl_gym.core.transitions import TransitionBatch
    from relayrl_gym.recording.buffer import StepBlock
    from relayrl_gym.schema.infos import text_info_schema, with_text_info
    from relayrl_gym.schema.transitions import TransitionSchema

    schema = TransitionSchema.build(SPACES["box"], SPACES["discrete"], metadata={})
    block = StepBlock()
    block.append(TransitionBatch(np.array([0, 1]), np.array([0, 0]), np.array([0, 0]),
                                 np.zeros((2, 3), np.float32), np.array([2, 3]), np.ones(2),
                                 np.zeros((2, 3), np.float32), np.zeros(2, bool),
                                 np.zeros(2, bool), -1,
                                 masks={1: np.array([True, False, True, True, False])}),
                 1_700_000_000_000_000_000)
    batch = block.to_record_batches(schema, "masked", ["a", "b"], ["", ""])[0]
    sink = SQLSink(sqlite_url)
    sink.start("masked", schema.arrow)
    sink.write(batch)
    sink.close()
    got = relayrl_gym.load(_with_run(sqlite_url, "masked")).table
    assert got.column("mask").to_pylist() == [None, [True, False, True, True, False]]
    # Readers give each info as its JSON text (stored as numbers where it is numbers).
    readable = text_info_schema(batch.schema)
    assert got.equals(pa.Table.from_batches([with_text_info(batch, readable)]))


def test_nan_rewards_round_trip(db_url, tmp_path):
    def nan_env():
        env = TestingEnv(SPACES["box"], length=3)
        env.step_fn = lambda e, a: (e._obs(), float("nan"), False, False, {})
        return env

    envs = _record([tmp_path / "arrow", db_url], env=nan_env, actors=2, steps=4)
    arrow = relayrl_gym.load(envs.run_path).table
    sql = relayrl_gym.load(_with_run(db_url, envs.run_id)).table
    assert np.isnan(sql.column("reward").to_numpy()).all()  # NaN != NaN: compare the rest
    assert sql.drop_columns(["reward"]).equals(arrow.drop_columns(["reward"]))


def test_a_database_in_another_encoding_stores_unicode_names_exactly(pg_url):
    import psycopg

    host, _, _ = pg_url.rpartition("/")
    name = f"{pg_url.rpartition('/')[2]}_latin1"
    with psycopg.connect(f"{host}/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" ENCODING \'LATIN1\' LC_COLLATE \'C\' '
                      f"LC_CTYPE 'C' TEMPLATE template0")
    try:
        url = f"{host}/{name}"
        envs = _record(url, steps=5, run_id="rñ-ü")
        assert len(relayrl_gym.load(_with_run(url, envs.run_id))) == 15
    finally:
        with psycopg.connect(f"{host}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_passwords_in_the_query_or_a_mistyped_scheme_are_not_shown():
    from relayrl_gym.errors import ConfigError
    from relayrl_gym.sinks.base import open_sink

    sink = SQLSink("postgresql://u@127.0.0.1:1/db?password=s3cretpw&sslmode=disable")
    assert "s3cretpw" not in repr(sink) and "sslmode=disable" in repr(sink)
    with pytest.raises(SinkError) as raised:
        sink.start("run", _schema())
    assert "s3cretpw" not in str(raised.value)
    with pytest.raises(ConfigError, match="unknown sink URL scheme 'postgresq'") as raised:
        open_sink("postgresq://u:s3cretpw@host/db")
    assert "s3cretpw" not in str(raised.value)


def _schema():
    from relayrl_gym.schema.transitions import TransitionSchema

    return TransitionSchema.build(SPACES["box"], SPACES["discrete"], metadata={}).arrow
