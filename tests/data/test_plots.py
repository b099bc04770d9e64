"""`relayrl_gym.data.plots`: the per-episode table checked against summaries and episodes, and
real figures written and inspected."""

from __future__ import annotations

import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from matplotlib.figure import Figure

import relayrl_gym
from relayrl_gym.data.plots import episode_table, plot
from relayrl_gym.errors import DatasetError, MissingDependencyError


def _record_cartpole(sink, steps, seed):
    envs = relayrl_gym.wrap("CartPole-v1", actors=2, sink=sink)
    envs.reset(seed=seed)
    envs.action_space.seed(seed)
    for _ in range(steps):
        envs.step(envs.action_space.sample())
    envs.close()
    return envs.run_path


@pytest.fixture(scope="module")
def cartpole(tmp_path_factory):
    """Two CartPole runs in one folder: ~20 finished episodes, then a few more."""
    sink = tmp_path_factory.mktemp("cartpole")
    first = _record_cartpole(sink, 250, seed=0)
    _record_cartpole(sink, 60, seed=1)
    return relayrl_gym.load(first), relayrl_gym.load(sink)


class _Random:
    """A tictactoe policy: a seeded random legal move, recorded with ``version``."""

    def __init__(self, version, seed):
        self.version = version
        self.rng = np.random.default_rng(seed)

    def __call__(self, obs):
        return int(self.rng.choice(np.flatnonzero(obs["action_mask"])))


@pytest.fixture(scope="module")
def tictactoe(tmp_path_factory):
    """player_1 played here (version -1), player_2 by a policy of version 3, swapped for
    version 4 in the middle of the fifth game."""
    pytest.importorskip("pettingzoo")
    from pettingzoo.classic import tictactoe_v3

    env = relayrl_gym.wrap(tictactoe_v3.env(), policies={"player_2": _Random(3, seed=1)},
                           sink=tmp_path_factory.mktemp("tictactoe"))
    me = _Random(-1, seed=0)
    obs, _ = env.reset(seed=0)
    for game in range(12):
        for move in range(9):
            obs, _, terminated, truncated, _ = env.step(me(obs))
            if game == 4 and move == 0:
                assert env.update_policy("player_2", _Random(4, seed=2)) == 4
            if terminated or truncated:
                break
        obs, _ = env.reset()
    env.step(me(obs))  # a game left unfinished
    env.close()
    return relayrl_gym.load(env.run_path)


def _finished(ds):
    return [e for e in ds.episodes() if e.terminations[-1] or e.truncations[-1]]


@pytest.mark.parametrize("which", ["one run", "two runs", "filtered"])
def test_episode_table_agrees_with_summary_and_episodes(cartpole, which):
    one, both = cartpole
    ds = {"one run": one, "two runs": both,
          "filtered": one.filter(actors=one.metadata["actor_ids"][:1])}[which]
    table = episode_table(ds)
    summary = ds.summary()
    assert table.num_rows == summary.episodes >= (5 if which == "filtered" else 20)
    assert summary.unfinished_episodes > 0  # and they are left out
    assert np.mean(table["return"].to_numpy()) == pytest.approx(summary.mean_return)
    finished = _finished(ds)
    assert Counter(zip(table["return"].to_pylist(), table["length"].to_pylist())) == \
        Counter((e.total_reward, len(e)) for e in finished)
    assert set(table["model_version"].to_pylist()) == {-1}


def test_end_step_counts_every_row_recorded_up_to_the_episode_end(cartpole):
    _, ds = cartpole
    table = episode_table(ds)
    rows = ds.to_table(["run_id", "episode_id", "step", "timestamp"])
    stamps = rows["timestamp"].to_numpy()
    expected = []
    for run, episode in zip(table["run_id"].to_pylist(), table["episode_id"].to_pylist()):
        mine = (rows["run_id"].to_numpy(zero_copy_only=False) == run) & \
            (rows["episode_id"].to_numpy() == episode)
        expected.append(int((stamps <= stamps[mine].max()).sum()))
    assert table["end_step"].to_pylist() == expected
    assert expected == sorted(expected) and expected[-1] <= len(ds)
    assert all(e >= n for e, n in zip(expected, table["length"].to_pylist()))


def test_an_episode_has_the_model_version_of_its_last_row(tictactoe):
    table = episode_table(tictactoe)
    finished = _finished(tictactoe)
    assert table.num_rows == len(finished) == tictactoe.summary().episodes == 24
    mixed = [e for e in finished if len(set(e.model_versions.tolist())) > 1]
    assert mixed  # the swap fell inside a game
    version = dict(zip(zip(table["agent_id"].to_pylist(), table["episode_id"].to_pylist()),
                       table["model_version"].to_pylist()))
    assert all(version[e.agent_id, e.episode_id] == e.model_versions[-1] for e in finished)
    assert set(version.values()) == {-1, 3, 4}


@pytest.mark.parametrize("suffix,magic", [("png", b"\x89PNG\r\n\x1a\n"), ("svg", b"<?xml")],
                         ids=["png", "svg"])
def test_writes_the_figure_in_the_format_of_the_suffix(cartpole, tmp_path, suffix, magic):
    ds, _ = cartpole
    path = tmp_path / f"r.{suffix}"
    fig = ds.plot(path)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    data = path.read_bytes()
    assert data.startswith(magic) and len(data) > 10_000
    if suffix == "svg":
        assert b"<svg" in data


@pytest.mark.parametrize("by,labels", [(None, ["all episodes"]), ("model_version", ["-1"]),
                                       ("agent", ["-"]), ("run", "run_ids")],
                         ids=["none", "model_version", "agent", "run"])
def test_one_line_per_group_on_cartpole(cartpole, by, labels):
    _, ds = cartpole
    fig = plot(ds, by=by)
    expected = sorted(ds.run_ids) if labels == "run_ids" else labels
    assert [line.get_label() for line in fig.axes[0].get_lines()] == expected
    assert len(fig.axes[1].patches) == len(expected)  # one histogram each


@pytest.mark.parametrize("window", [1, 3, 1000])
def test_the_line_is_the_rolling_mean_of_the_returns(cartpole, window):
    ds, _ = cartpole
    table = episode_table(ds)
    returns = table["return"].to_numpy()
    (line,) = plot(ds, by=None, window=window).axes[0].get_lines()
    expected = [returns[max(0, i + 1 - window):i + 1].mean() for i in range(len(returns))]
    np.testing.assert_allclose(line.get_xdata(), table["end_step"].to_numpy())
    np.testing.assert_allclose(line.get_ydata(), expected)


def test_by_agent_and_by_model_version_on_tictactoe(tictactoe, tmp_path):
    fig = plot(tictactoe, tmp_path / "t.pdf", by="agent", title="tictactoe")
    assert [line.get_label() for line in fig.axes[0].get_lines()] == ["player_1", "player_2"]
    assert fig.get_suptitle() == "tictactoe"
    assert (tmp_path / "t.pdf").read_bytes().startswith(b"%PDF")
    fig = plot(tictactoe, by="model_version")
    assert [line.get_label() for line in fig.axes[0].get_lines()] == ["-1", "3", "4"]


def test_plots_from_threads(cartpole, tmp_path):
    ds, both = cartpole
    with ThreadPoolExecutor(2) as pool:
        figs = list(pool.map(lambda a: plot(a[0], tmp_path / f"{a[1]}.png", by="run"),
                             [(ds, "one"), (both, "two")]))
    assert [len(f.axes[0].get_lines()) for f in figs] == [1, 2]
    assert all((tmp_path / f"{name}.png").stat().st_size > 10_000 for name in ("one", "two"))


def test_errors(cartpole, sink_dir, tmp_path):
    ds, _ = cartpole
    with pytest.raises(DatasetError, match=r"`by` must be one of 'model_version', 'agent', "
                                           r"'run' or None, got 'actor'"):
        plot(ds, by="actor")
    with pytest.raises(DatasetError, match=r"`window` must be an int >= 1, got 0"):
        plot(ds, window=0)
    with pytest.raises(DatasetError, match=r"`window` must be an int >= 1, got 2.5"):
        plot(ds, window=2.5)
    with pytest.raises(DatasetError, match=r"`path` must end in a format matplotlib writes "
                                           r"\(.*\.png.*\), got '.*r\.txt'"):
        plot(ds, tmp_path / "r.txt")
    assert not (tmp_path / "r.txt").exists()
    short = relayrl_gym.load(_record_cartpole(sink_dir, 5, seed=0))  # no episode ends
    with pytest.raises(DatasetError, match=r"holds no finished episode .* record longer"):
        plot(short)
    assert episode_table(short).num_rows == 0
    with pytest.raises(DatasetError, match=r"holds no finished episode"):
        plot(ds.filter(model_versions=[7]))


def test_missing_matplotlib_names_the_extra(cartpole, monkeypatch):
    monkeypatch.delitem(sys.modules, "relayrl_gym.data.plots")  # imported afresh by ds.plot
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # `import` now raises ImportError
    with pytest.raises(MissingDependencyError,
                       match=r"'matplotlib' is not installed.*relayrl-gym\[plot\]"):
        cartpole[0].plot()
