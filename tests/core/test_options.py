"""RecordingOptions: wrap()'s recording arguments, checked before anything is made."""

import pytest
from pettingzoo.classic import rps_v2

import relayrl_gym
from relayrl_gym.core.options import RecordingOptions
from relayrl_gym.errors import ConfigError


@pytest.mark.parametrize("bad", [{"flush_interval": 0}, {"flush_interval": -1.0},
                                 {"flush_interval": "1"}, {"batch_rows": 0},
                                 {"batch_rows": 2.5}, {"batch_rows": True}])
def test_bad_options_are_refused_with_their_name(bad):
    name = next(iter(bad))
    with pytest.raises(ConfigError, match=f"`{name}`"):
        RecordingOptions(**bad)


def test_a_game_with_bad_options_is_refused_before_its_factory_runs(tmp_path):
    made = []

    def factory():
        made.append(1)
        return rps_v2.parallel_env()

    with pytest.raises(ConfigError, match="flush_interval"):
        relayrl_gym.wrap(factory, sink=tmp_path, flush_interval=0)
    assert made == [] and list(tmp_path.iterdir()) == []


def test_options_reach_every_run_of_a_game(tmp_path):
    env = relayrl_gym.wrap(rps_v2.parallel_env(max_cycles=3), sink=tmp_path, run_id="rps",
                           batch_rows=2)
    env.reset(seed=0)
    while env.agents:
        env.step({a: 0 for a in env.agents})
    env.close()
    table = relayrl_gym.load(tmp_path / "rps").table
    assert table.num_rows == 6
    batches = [len(b) for b in table.to_batches()]
    assert max(batches) <= 2  # batch_rows=2
