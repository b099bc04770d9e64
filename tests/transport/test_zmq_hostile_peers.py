"""Peers that send what no relayrl-gym sender would: the collector and the model publisher
refuse it, count it, and go on serving."""

from __future__ import annotations

from zmq_helpers import RawClient, record_batches

import relayrl_gym
from relayrl_gym.schema.infos import text_info_schema
from relayrl_gym.transport import TrainingServer
from relayrl_gym.transport.protocol import Kind, encode


def test_a_deeply_nested_header_is_refused_on_both_channels(tmp_path, cartpole_policy):
    schema, _ = record_batches(tmp_path)
    nested = b"[" * 3000  # under the header size limit, deeper than the JSON parser goes
    with TrainingServer(bind="tcp://127.0.0.1:*", sink=tmp_path / "collected",
                        models="tcp://127.0.0.1:*") as server:
        data, models = RawClient(server.endpoint), RawClient(server.models_endpoint)
        try:
            data.send(nested, b"")
            assert data.reply().kind is Kind.REJECT
            models.send(nested)
            version = server.publish_model(cartpole_policy(3))
            models.send(encode(Kind.HELLO, have=-1))
            assert models.reply().fields["version"] == version
            data.send(encode(Kind.START, run="r", sender="s", seq=-1),
                      schema.serialize().to_pybytes())
            assert data.reply().kind is Kind.STARTED
        finally:
            data.close()
            models.close()
        assert server.collector.alive
        assert server.stats["rejected"] == 1 and server.stats["model_rejected"] == 1


def test_a_name_with_a_line_break_is_refused(tmp_path):
    schema, _ = record_batches(tmp_path)
    with TrainingServer(bind="tcp://127.0.0.1:*", sink=tmp_path / "collected") as server:
        client = RawClient(server.endpoint)
        try:
            client.send(encode(Kind.START, run="run\n", sender="s", seq=-1),
                        schema.serialize().to_pybytes())
            reply = client.reply()
        finally:
            client.close()
    assert reply.kind is Kind.REJECT and "'run'" in reply.fields["reason"]
    assert not (tmp_path / "collected").exists()


def test_a_run_id_reused_with_another_schema_is_refused(tmp_path):
    schema, batches = record_batches(tmp_path)
    other, _ = record_batches(tmp_path, env_id="Pendulum-v1")
    with TrainingServer(bind="tcp://127.0.0.1:*", sink=tmp_path / "collected") as server:
        first, second = RawClient(server.endpoint), RawClient(server.endpoint)
        try:
            first.send(encode(Kind.START, run="r", sender="a", seq=-1),
                       schema.serialize().to_pybytes())
            assert first.reply().kind is Kind.STARTED
            second.send(encode(Kind.START, run="r", sender="b", seq=-1),
                        other.serialize().to_pybytes())
            reply = second.reply()
            assert reply.kind is Kind.REJECT and "another schema" in reply.fields["reason"]
            first.send(encode(Kind.BATCH, run="r", sender="a", seq=0),
                       batches[0].serialize().to_pybytes())
            assert first.reply().kind is Kind.ACK
        finally:
            first.close()
            second.close()
        assert server.collector.alive and server.stats["rejected"] == 1
    # The first sender's schema was kept (infos read back as their JSON text).
    assert relayrl_gym.load(tmp_path / "collected" / "r").table.schema.equals(
        text_info_schema(schema), check_metadata=False)


def test_a_damaged_run_directory_is_refused_and_others_go_on(tmp_path):
    schema, _ = record_batches(tmp_path)
    damaged = tmp_path / "collected" / "r"
    damaged.mkdir(parents=True)
    (damaged / "_collector.json").write_text("{}")  # state without its fields
    (damaged / "_schema.arrow").write_bytes(schema.serialize().to_pybytes())
    with TrainingServer(bind="tcp://127.0.0.1:*", sink=tmp_path / "collected") as server:
        client = RawClient(server.endpoint)
        try:
            client.send(encode(Kind.START, run="r", sender="s", seq=-1),
                        schema.serialize().to_pybytes())
            reply = client.reply()
            assert reply.kind is Kind.REJECT and "cannot open run 'r'" in reply.fields["reason"]
            client.send(encode(Kind.START, run="r2", sender="s", seq=-1),
                        schema.serialize().to_pybytes())
            assert client.reply().kind is Kind.STARTED
        finally:
            client.close()
        assert server.collector.alive


def test_invented_sender_names_cannot_grow_the_counters_without_bound(tmp_path):
    from relayrl_gym.transport.collector.stats import EARLIER_SENDERS

    schema, _ = record_batches(tmp_path)
    with TrainingServer(bind="tcp://127.0.0.1:*", sink=tmp_path / "collected") as server:
        server.collector.stats.max_senders = 8  # the default (1024) takes longer to fill
        client = RawClient(server.endpoint)
        try:
            for i in range(20):  # each a new name, each refused (not an Arrow schema)
                client.send(encode(Kind.START, run="r", sender=f"made-up-{i}", seq=-1), b"junk")
                assert client.reply().kind is Kind.REJECT
            client.send(encode(Kind.START, run="r", sender="real", seq=-1),
                        schema.serialize().to_pybytes())
            assert client.reply().kind is Kind.STARTED
        finally:
            client.close()
        stats = server.stats
    per = stats["per_sender"]
    assert len(per) == 8 + 1 and stats["senders"] == 8
    assert stats["rejected"] == 20  # the totals stay exact
    assert per[EARLIER_SENDERS]["rejected"] == 13  # the 13 heard longest ago, summed
    assert "real" in per and "made-up-19" in per and "made-up-0" not in per
