"""Every error a user can meet wrapping a PettingZoo game: raised at wrap time (or at the
wrong call), with a message that says what was wrong and how to fix it."""

from __future__ import annotations

import sys

import numpy as np
import pytest

pytest.importorskip("pettingzoo")

from pettingzoo.classic import rps_v2, tictactoe_v3

import relayrl_gym
from relayrl_gym.errors import (
    ConfigError,
    EnvCreationError,
    MissingDependencyError,
    StateError,
    UnsupportedSpaceError,
)
from relayrl_gym.wrappers.detect import require_pettingzoo


def test_policy_for_an_agent_that_does_not_exist():
    with pytest.raises(ConfigError, match=r"names agent\(s\) \['player_3'\] that the env does "
                                          r"not have; its agents are \['player_1', 'player_2'\]"):
        relayrl_gym.wrap(tictactoe_v3.env(), policies={"player_3": lambda obs: 0}, sink=None)


def test_policy_spaces_that_do_not_fit(ttt_module, tmp_path):
    torch = pytest.importorskip("torch")
    from gymnasium import spaces

    wrong = relayrl_gym.ModelModule.from_torch(torch.nn.Linear(4, 3),
                                               spaces.Box(-1, 1, (4,)), spaces.Discrete(3))
    with pytest.raises(ConfigError, match=r"the policy for agent 'player_2' does not fit it: the "
                                          r"policy takes Box\(-1.0, 1.0, \(4,\), float32\).*"
                                          r"expected Box\(0, 1, \(3, 3, 2\), int8\) and "
                                          r"Discrete\(9\).*'observation' entry"):
        relayrl_gym.wrap(tictactoe_v3.env(), policies={"player_2": wrong}, sink=tmp_path)
    assert not any(tmp_path.iterdir())  # nothing opened


def test_policy_of_the_wrong_kind_and_policies_not_a_dict():
    with pytest.raises(ConfigError, match=r"the policy of agent 'player_1' must be a "
                                          r"ModelModule, a path to one, or a callable"):
        relayrl_gym.wrap(rps_v2.parallel_env(), policies={"player_1": 42}, sink=None)
    with pytest.raises(ConfigError, match=r"`policies` must be a dict"):
        relayrl_gym.wrap(rps_v2.parallel_env(), policies=["player_1"], sink=None)


def test_heterogeneous_agents_in_parameter_sharing(toy_game, tmp_path):
    with pytest.raises(UnsupportedSpaceError,
                       match=r"parameter sharing .* needs agents with the same spaces: agent "
                             r"'a0' has .*\(2,\).*agent 'a2' has .*\(3,\).*policies="):
        relayrl_gym.wrap(lambda: toy_game(odd_agent=True), actors=2, sink=tmp_path)
    assert not any(tmp_path.iterdir())
    # (recording such a game with its own API: tests/wrappers/pettingzoo/test_mixed_spaces.py)


@pytest.mark.parametrize("api", ["gym", "SB3", "parallel"])
def test_bad_api_values(api):
    with pytest.raises(ConfigError, match=rf"`api` for a PettingZoo game must be one of "
                                          rf"'pettingzoo', 'gymnasium', 'sb3' or left out, got "
                                          rf"'{api}'"):
        relayrl_gym.wrap(rps_v2.parallel_env(), api=api, sink=None)


def test_combinations_that_do_not_make_sense():
    with pytest.raises(ConfigError, match=r"api='pettingzoo' keeps the game's own API"):
        relayrl_gym.wrap(rps_v2.parallel_env(), api="pettingzoo", actors=2, sink=None)
    with pytest.raises(ConfigError, match=r"`policies` plays every agent .*leave at least one"):
        relayrl_gym.wrap(rps_v2.parallel_env(), sink=None,
                         policies={"player_0": lambda o: 0, "player_1": lambda o: 0})
    with pytest.raises(ConfigError, match=r"a turn-based \(AEC\) game as a Gymnasium env needs "
                                          r"`policies` for every agent but one"):
        relayrl_gym.wrap(tictactoe_v3.env, actors=4, sink=None)
    with pytest.raises(ConfigError, match=r"`policy` is for Gymnasium envs; for a PettingZoo "
                                          r"game pass policies="):
        relayrl_gym.wrap(rps_v2.parallel_env(), policy="model/", sink=None)
    with pytest.raises(ConfigError, match=r"`policies` plays agents of a PettingZoo game"):
        relayrl_gym.wrap("CartPole-v1", policies={"x": lambda o: 0}, sink=None)
    with pytest.raises(ConfigError, match=r"extra keyword arguments \['max_cycles'\]"):
        relayrl_gym.wrap(rps_v2.parallel_env(), max_cycles=3, sink=None)
    # A factory is only called where its env will live: the actor's thread says what it made.
    with pytest.raises(EnvCreationError, match=r"made a PettingZoo game .* leave `router_scale` "
                                               r"at 'auto' or 0"):
        relayrl_gym.wrap(rps_v2.parallel_env, actors=2, router_scale=4, sink=None)
    with pytest.raises(ConfigError, match=r"`actors` must be an int >= 1 \(game copies\), got 0"):
        relayrl_gym.wrap(rps_v2.parallel_env, actors=0, sink=None)
    with pytest.raises(ConfigError, match=r"`autoreset_mode` applies to vector envs"):
        relayrl_gym.wrap(rps_v2.parallel_env(), autoreset_mode="same_step", sink=None)
    with pytest.raises(ConfigError, match=r"api='sb3' resets a finished game in the same step"):
        relayrl_gym.wrap(rps_v2.parallel_env, actors=2, api="sb3", autoreset_mode="next_step",
                         sink=None)
    with pytest.raises(ConfigError, match=r"must be 'next_step' or 'same_step', got 'Disabled'"):
        relayrl_gym.wrap(rps_v2.parallel_env, actors=2, autoreset_mode="disabled", sink=None)


def test_factories_that_fail_or_change_kind():
    made = iter([rps_v2.parallel_env(), tictactoe_v3.env()])
    with pytest.raises(EnvCreationError, match=r"the game factory returned .*, expected a "
                                               r"PettingZoo ParallelEnv like its first game"):
        relayrl_gym.wrap(lambda: next(made), actors=2, sink=None)

    def broken():
        raise RuntimeError("no board")

    with pytest.raises(RuntimeError, match=r"no board") as err:  # the caller's own, as itself
        relayrl_gym.wrap(broken, sink=None)
    assert "creating the environment of actor 0" in "".join(err.value.__notes__)


def test_wrong_calls_at_run_time(ttt_module):
    env = relayrl_gym.wrap(tictactoe_v3.env(), policies={"player_2": ttt_module()}, sink=None)
    with pytest.raises(StateError, match=r"the game is over for agent 'player_1' \(or was "
                                         r"never started\); call env.reset\(\)"):
        env.step(0)
    with pytest.raises(ConfigError, match=r"agent 'player_1' is not played by a policy; the "
                                          r"policy-played agents are \['player_2'\]"):
        env.update_policy("player_1", lambda obs: 0)
    env.close()
    with pytest.raises(StateError, match=r"this env is closed"):
        env.reset()
    envs = relayrl_gym.wrap(rps_v2.parallel_env, actors=2, sink=None)
    with pytest.raises(StateError, match=r"step\(\) called before reset\(\)"):
        envs.step(np.zeros(4, np.int64))
    with pytest.raises(ConfigError, match=r"`seed` as a list must have one seed per game copy "
                                          r"\(2\), got 3"):
        envs.reset(seed=[1, 2, 3])
    envs.close()


def test_missing_pettingzoo_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pettingzoo", None)  # import pettingzoo now fails
    with pytest.raises(MissingDependencyError, match=r'pip install "relayrl-gym\[pettingzoo\]"'):
        require_pettingzoo()


def test_reset_mask_that_does_not_fit():
    envs = relayrl_gym.wrap(rps_v2.parallel_env, actors=2, sink=None)  # 2 copies x 2 slots
    envs.reset(seed=0)
    for mask in ([True, False, True], [True, False]):
        with pytest.raises(ConfigError, match=r"`options\['reset_mask'\]` must hold one bool "
                                              r"per slot \(shape \(4,\): 2 game copies x 2 "
                                              rf"slots\), got shape \({len(mask)},\)"):
            envs.reset(options={"reset_mask": mask})
    with pytest.raises(ConfigError, match=r"must select whole game copies \(all 2 slots of a "
                                          r"copy or none\)"):
        envs.reset(options={"reset_mask": [True, False, False, False]})
    envs.close()
