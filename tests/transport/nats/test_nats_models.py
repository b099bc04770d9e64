"""Models over NATS JetStream: a learner's NatsModelPublisher and actors' NatsModelSources, with
real ONNX ModelModules, against the system NATS server (buckets unique to each test, deleted
after) or a private one where a test restarts it or needs its own users."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from nats_servers import NatsServer, free_port

from relayrl_gym.errors import ConfigError, TransportError
from relayrl_gym.models.nats_source import NatsModelSource
from relayrl_gym.models.runner import PolicyRunner
from relayrl_gym.policies import ModelModule
from relayrl_gym.transport.nats.models import (
    CURRENT_KEY,
    NatsModelPublisher,
    model_buckets,
    object_name,
)
from relayrl_gym.transport.nats.options import NatsTarget, parse_nats_url

SYSTEM_NATS = "nats://127.0.0.1:4222"


def wait_until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def nats_run(servers: str, work: Callable[[object], object], **options: object) -> object:
    """Runs ``await work(js)`` on a connection of its own (what a test does behind the parts'
    backs: putting garbage in a bucket, deleting the buckets)."""
    import nats

    async def main() -> object:
        nc = await nats.connect(servers, connect_timeout=2, max_reconnect_attempts=0,
                                **options)
        try:
            return await work(nc.jetstream())  # type: ignore[operator]
        finally:
            await nc.close()

    return asyncio.run(main())


@pytest.fixture
def target() -> Iterator[NatsTarget]:
    """A stream name of its own on the system server; its model buckets deleted after."""
    try:
        nats_run(SYSTEM_NATS, lambda js: js.account_info())
    except Exception as err:
        pytest.fail(f"the system NATS server with JetStream ({SYSTEM_NATS}) is down: "
                    f"{type(err).__name__}: {err}; start it (.ci/run starts services)")
    stream = f"t{uuid.uuid4().hex[:12]}"
    yield parse_nats_url(f"{SYSTEM_NATS}/{stream}")
    objects, current = model_buckets(stream)

    async def delete(js):
        for name in (f"OBJ_{objects}", f"KV_{current}"):
            with contextlib.suppress(Exception):  # never created
                await js.delete_stream(name)

    nats_run(SYSTEM_NATS, delete)


class Updates:
    """An ``update`` callback that loads each folder as a ModelModule (the folder is gone once
    it returns) and records the versions; ``refuse`` names versions to refuse."""

    def __init__(self, refuse: tuple[int, ...] = ()) -> None:
        self.versions: list[int] = []
        self.paths: list[str] = []
        self.refuse = refuse

    def __call__(self, path: str) -> int:
        module = ModelModule.load_from_path(path)
        if module.version in self.refuse:
            raise ValueError(f"version {module.version} does not fit")
        self.paths.append(path)
        self.versions.append(module.version)
        return module.version


@pytest.fixture
def updates() -> Updates:
    return Updates()


@pytest.fixture
def parts(target):
    """Makes publishers and sources on ``target``, all closed after the test."""
    made: list = []

    def publisher(**kw) -> NatsModelPublisher:
        made.append(NatsModelPublisher(kw.pop("target", target), **kw))
        return made[-1]

    def source(update, **kw) -> NatsModelSource:
        made.append(NatsModelSource(kw.pop("target", target), update, **kw))
        return made[-1]

    yield publisher, source
    for part in reversed(made):
        part.close()


def test_a_source_started_first_gets_every_version_in_order(parts, updates, cartpole_policy):
    new_publisher, new_source = parts
    source = new_source(updates)  # before the buckets exist: it keeps looking
    time.sleep(0.3)
    publisher = new_publisher()
    assert publisher.publish(cartpole_policy(0)) == 1
    wait_until(lambda: source.version == 1, "version 1")
    assert publisher.publish(cartpole_policy(1)) == 2
    wait_until(lambda: source.version == 2, "version 2")
    assert updates.versions == [1, 2]
    assert (source.received, source.refused, source.rejected) == (2, 0, 0)
    assert publisher.version == 2
    assert len(set(updates.paths)) == 2  # a folder of its own each time


def test_a_late_joiner_gets_the_current_version_at_once(parts, updates, cartpole_policy):
    new_publisher, new_source = parts
    publisher = new_publisher()
    publisher.publish(cartpole_policy(0))
    publisher.publish(cartpole_policy(1))
    started = time.monotonic()
    source = new_source(updates)
    wait_until(lambda: source.version == 2, "the current version")
    assert time.monotonic() - started < 5
    time.sleep(0.3)
    assert updates.versions == [2]  # never the old one
    assert source.received == 1


def test_versions_only_go_up_across_learners(parts, updates, cartpole_policy, tmp_path):
    new_publisher, new_source = parts
    first = new_publisher()
    assert first.publish(cartpole_policy(0, version=5)) == 5
    assert first.publish(cartpole_policy(1, version=2)) == 6  # lower: current + 1
    cartpole_policy(2, version=0).save(tmp_path / "saved")
    restarted = new_publisher()  # a restarted learner reads where the last one stopped
    assert restarted.version == 0
    assert restarted.publish(tmp_path / "saved") == 7  # a path to a ModelModule works too
    source = new_source(updates)
    wait_until(lambda: source.version == 7, "version 7")
    assert updates.versions == [7]


def test_only_the_current_and_the_previous_versions_stay_in_the_bucket(target, parts,
                                                                       cartpole_policy):
    new_publisher, _ = parts
    publisher = new_publisher()
    for seed in range(4):
        publisher.publish(cartpole_policy(seed))

    async def names(js):
        store = await js.object_store(model_buckets(target.stream).objects)
        return sorted(info.name for info in await store.list(ignore_deletes=True))

    assert nats_run(SYSTEM_NATS, names) == [object_name(v, f) for v in (3, 4)
                                            for f in ("metadata.json", "model.onnx")]


def test_a_refused_model_is_counted_and_the_next_one_still_comes(parts, cartpole_policy):
    new_publisher, new_source = parts
    updates = Updates(refuse=(1,))
    source = new_source(updates)
    publisher = new_publisher()
    publisher.publish(cartpole_policy(0))
    wait_until(lambda: source.refused == 1, "the refusal")
    assert source.version == -1
    publisher.publish(cartpole_policy(1))
    wait_until(lambda: source.version == 2, "version 2")
    time.sleep(0.3)  # the refused one is not tried again
    assert (source.received, source.refused, source.rejected) == (1, 1, 0)
    assert updates.versions == [2]


@pytest.mark.parametrize("garbage", [
    b"{not json", b"[1, 2]", b'{"version": -1, "files": ["metadata.json"], "sizes": [1]}',
    b'{"version": 9, "files": [], "sizes": []}',
    b'{"version": 9, "files": ["metadata.json"], "sizes": [1, 2]}',
], ids=["not-json", "not-an-object", "negative-version", "no-files", "sizes-mismatch"])
def test_a_malformed_current_value_is_rejected(target, parts, updates, cartpole_policy,
                                               garbage):
    new_publisher, new_source = parts
    publisher = new_publisher()
    source = new_source(updates)
    publisher.publish(cartpole_policy(0))
    wait_until(lambda: source.version == 1, "version 1")

    async def put(js):
        kv = await js.key_value(model_buckets(target.stream).current)
        await kv.put(CURRENT_KEY, garbage)

    nats_run(SYSTEM_NATS, put)
    wait_until(lambda: source.rejected == 1, "the rejection")
    assert source.version == 1  # the running model stays
    assert publisher.publish(cartpole_policy(1)) == 2  # the learner publishes over it
    wait_until(lambda: source.version == 2, "version 2")
    assert (source.received, source.refused, source.rejected) == (2, 0, 1)


@pytest.mark.parametrize(("files", "max_bytes"), [
    ({"metadata.json": b"{}", "..evil": b"x"}, None),
    ({"model.onnx": b"x" * 10}, None),
    ({"metadata.json": b"{}", "model.onnx": b"x" * 500}, 100),
], ids=["bad-file-name", "no-metadata", "too-large"])
def test_malformed_model_files_are_rejected(target, parts, updates, files, max_bytes):
    """The files of a version pass the ZMQ channel's checks (plain names, metadata.json among
    them, the size limit) before anything is written or swapped."""
    _, new_source = parts
    objects, current = model_buckets(target.stream)
    kw = {} if max_bytes is None else {"max_bytes": max_bytes}
    source = new_source(updates, **kw)

    async def publish_by_hand(js):
        store = await js.create_object_store(objects)
        kv = await js.create_key_value(bucket=current)
        for name, data in files.items():
            await store.put(object_name(9, name), data)
        await kv.put(CURRENT_KEY, json.dumps({"version": 9, "files": list(files),
                                              "sizes": [len(d) for d in files.values()]}
                                             ).encode())

    nats_run(SYSTEM_NATS, publish_by_hand)
    wait_until(lambda: source.rejected == 1, "the rejection")
    assert (source.version, source.received, updates.versions) == (-1, 0, [])


def test_close_leaves_no_thread_and_is_idempotent(parts, updates):
    new_publisher, new_source = parts
    source = new_source(updates, name="relayrl-test-models")
    publisher = new_publisher()
    wait_until(lambda: any(t.name == "relayrl-test-models-link" for t in threading.enumerate()),
               "the link thread")
    started = time.monotonic()
    source.close()
    source.close()
    publisher.close()
    publisher.close()
    assert time.monotonic() - started < 5
    assert not [t.name for t in threading.enumerate() if t.name.startswith("relayrl")]


def test_a_policy_runner_follows_published_models(parts, cartpole_policy):
    """End to end: the runner's ``update`` is the source's callback; a model for another
    action space is refused by the runner and the old one keeps acting."""
    torch = pytest.importorskip("torch")
    import gymnasium as gym

    new_publisher, new_source = parts
    runner = PolicyRunner(cartpole_policy(0))
    assert runner.version == 0
    source = new_source(runner.update)
    publisher = new_publisher()
    publisher.publish(cartpole_policy(1))
    wait_until(lambda: runner.version == 1, "the runner to run version 1")
    obs = np.zeros((3, 4), np.float32)
    actions, _ = runner.model.step(obs)
    assert actions.shape == (3,)

    env = gym.make("CartPole-v1")
    wrong = ModelModule.from_torch(torch.nn.Linear(4, 3), env.observation_space,
                                   gym.spaces.Discrete(3), format="onnx")
    assert publisher.publish(wrong) == 2
    wait_until(lambda: source.refused == 1, "the runner to refuse the wrong model")
    assert runner.version == 1
    publisher.publish(cartpole_policy(2))
    wait_until(lambda: runner.version == 3, "the runner to run version 3")
    assert source.version == 3
    assert runner.model.step(obs)[0].shape == (3,)


def test_the_source_watches_again_after_the_server_restarts(nats_server, updates,
                                                            cartpole_policy):
    target = parse_nats_url(f"{nats_server.url}/restarts")
    publisher = NatsModelPublisher(target, timeout=15)
    source = NatsModelSource(target, updates)
    try:
        publisher.publish(cartpole_policy(0))
        wait_until(lambda: source.version == 1, "version 1")
        nats_server.restart()
        assert publisher.publish(cartpole_policy(1)) == 2  # the buckets survived
        wait_until(lambda: source.version == 2, "version 2 after the restart", timeout=30)
        assert updates.versions == [1, 2]
    finally:
        source.close()
        publisher.close()


def test_a_user_without_rights_on_the_buckets_gets_a_clear_error(tmp_path, cartpole_policy):
    auth = ('accounts { APP { jetstream: enabled, users: [{user: actor, password: pw, '
            'permissions: {publish: {deny: ["$JS.API.STREAM.CREATE.>", "$KV.>", "$O.>"]}}}] } }')
    with NatsServer(tmp_path, auth=auth) as server:
        host = server.url.removeprefix("nats://")
        publisher = NatsModelPublisher(parse_nats_url(f"nats://actor:pw@{host}/denied"),
                                       timeout=10)
        try:
            with pytest.raises(TransportError, match="lacks publish rights on the model "
                                                     "buckets 'denied_models' and"):
                publisher.publish(cartpole_policy(0))
        finally:
            publisher.close()


def test_publishing_without_a_server_says_it_is_not_reachable(cartpole_policy):
    publisher = NatsModelPublisher(parse_nats_url(f"nats://127.0.0.1:{free_port()}/down"),
                                   timeout=0.5)
    try:
        with pytest.raises(TransportError, match="cannot publish a model: NATS at "
                                                 r"nats://127\.0\.0\.1:\d+/down is not reachable"):
            publisher.publish(cartpole_policy(0))
    finally:
        publisher.close()


def test_bad_arguments_are_config_errors(target):
    publisher = NatsModelPublisher(target, timeout=1)
    try:
        with pytest.raises(ConfigError, match="publish takes a ModelModule or a path to one"):
            publisher.publish(42)
    finally:
        publisher.close()
    with pytest.raises(ConfigError, match="`timeout` must be > 0 seconds, got 0"):
        NatsModelPublisher(target, timeout=0)
    with pytest.raises(ConfigError, match="`max_bytes` must be > 0, got 0"):
        NatsModelSource(target, lambda path: 0, max_bytes=0)
