"""The agent's config file: created with defaults, read back, malformed files refused clearly."""

from __future__ import annotations

import json

import pytest

from relayrl_gym.errors import ConfigError
from relayrl_gym.runtime.config import AgentConfig, load_config


@pytest.mark.parametrize("name", ["agent.toml", "agent.json"])
def test_a_missing_file_is_created_with_the_defaults_and_reads_back(tmp_path, name):
    path = tmp_path / "conf" / name
    assert load_config(path) == AgentConfig()
    assert path.exists()
    assert load_config(path) == AgentConfig()


def test_settings_are_read(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text('[sink]\ntargets = ["runs/", "sqlite:///x.db"]\nflush_interval = 0.5\n'
                    "[trajectory]\nmax_length = 200\n")
    config = load_config(path)
    assert config.sink.targets == ("runs/", "sqlite:///x.db")
    assert config.sink.flush_interval == 0.5 and config.trajectory.max_length == 200
    assert config.transport.kind == "local"
    (tmp_path / "agent.json").write_text(json.dumps({"sink": {"targets": "one/"}}))
    assert load_config(tmp_path / "agent.json").sink.targets == ("one/",)


@pytest.mark.parametrize(("text", "message"), [
    ("[sink\ntargets = 1", r"is not valid TOML"),
    ("[sinks]\n", r"unknown section\(s\) \['sinks'\]"),
    ("[sink]\nflush = 1\n", r"unknown setting\(s\) \['flush'\] in \[sink\]"),
    ("[sink]\ntargets = [1, 2]\n", r"\[sink\] targets must be a list of strings"),
    ("[trajectory]\nmax_length = -3\n", r"max_length must be a number >= 0"),
    ("[trajectory]\nrecord_info = true\n", r"unknown setting\(s\) \['record_info'\]"),
    ("[transport]\nkind = 'grpc'\n", r"kind 'grpc' is unknown; use \"local\", \"zmq\" or \"nats\""),
    ("[transport]\nkind = 'zmq'\n", r"kind \"zmq\" needs address"),
    ("[transport]\nkind = 'nats'\naddress = 'tcp://h:1'\n", r"kind \"nats\" needs address"),
], ids=["syntax", "section", "setting", "list", "negative", "unused", "transport",
        "zmq-address", "nats-address"])
def test_malformed_files_are_clear_errors(tmp_path, text, message):
    path = tmp_path / "agent.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_malformed_json(tmp_path):
    path = tmp_path / "agent.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match=r"is not valid JSON.*delete it to get the defaults"):
        load_config(path)
