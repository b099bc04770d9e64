"""The router: one thread owns each env for life; inline for cheap envs, threads for slow ones."""

from __future__ import annotations

import gc
import random
import signal
import threading
import time

import numpy as np
import pytest
from tests_helpers import make_testing_env

import relayrl_gym
from relayrl_gym.errors import RouterError


@pytest.mark.parametrize("router_scale", [0, 1, 3], ids=["inline", "one-at-a-time", "threaded"])
def test_each_env_lives_on_one_thread(router_scale, sink_dir):
    envs = relayrl_gym.wrap(make_testing_env(render_mode="rgb_array"), actors=3, sink=sink_dir,
                            router_scale=router_scale)
    envs.reset(seed=0)
    for _ in range(12):
        envs.step(np.array([0, 1, 0]))
    frames = envs.render()
    assert len(frames) == 3 and frames[0].shape == (4, 4, 3)
    inner = [a.env for a in envs.agent.actors]
    envs.close()
    threads = [env.threads for env in inner]
    assert all(len(t) == 1 for t in threads), threads  # created, stepped, rendered, closed
    assert all(env.closed for env in inner)
    if router_scale == 0:
        assert threads[0] == {threading.get_ident()}
    else:
        assert len(set().union(*threads)) == 3 and threading.get_ident() not in threads[0]


@pytest.mark.parametrize("sleep", [0.0, 0.002], ids=["cheap", "slow"])
def test_auto_scale_builds_exactly_n_envs_steps_none_and_is_inline(sleep):
    # Before: "auto" built and stepped an extra env (36 steps) to time it, and its choice
    # varied from run to run. Now: N envs, nothing stepped before reset, always inline.
    made = []

    def make():
        env = make_testing_env(sleep=sleep)()
        made.append(env)
        return env

    for _ in range(3):
        made.clear()
        envs = relayrl_gym.wrap(make, actors=4, sink=None)
        assert len(made) == 4
        assert all(env.t == 0 and env.last_action is None for env in made)
        assert envs.agent.router_scale == 0
        envs.close()
    made.clear()  # threads: each env made on its own thread, none in the caller's
    envs = relayrl_gym.wrap(make, actors=4, sink=None, router_scale=4)
    assert len(made) == 4
    envs.close()


def test_threaded_steps_overlap(sink_dir):
    # 8 envs sleeping 20 ms each: inline would take 160 ms per step, threads about 20 ms.
    envs = relayrl_gym.wrap(make_testing_env(sleep=0.02, length=50), actors=8, sink=sink_dir,
                            router_scale=8)
    envs.reset(seed=0)
    import time

    start = time.perf_counter()
    for _ in range(3):
        envs.step(np.zeros(8, dtype=np.int64))
    elapsed = time.perf_counter() - start
    envs.close()
    assert elapsed < 3 * 0.16 / 2, elapsed


def test_scale_throughput_live_and_its_limits(sink_dir):
    envs = relayrl_gym.wrap(make_testing_env(), actors=4, sink=sink_dir, router_scale=4)
    envs.reset(seed=0)
    envs.agent.scale_throughput(1)
    assert envs.agent.router_scale == 1
    envs.step(np.zeros(4, dtype=np.int64))
    envs.agent.scale_throughput(2)
    envs.step(np.zeros(4, dtype=np.int64))
    with pytest.raises(RouterError, match="cannot change the router from threaded to scale=0"):
        envs.agent.scale_throughput(0)
    ids = envs.agent.get_actor_ids()
    assert len(set(ids)) == 4
    assert envs.agent.get_model_version(ids) == [-1] * 4
    envs.close()
    assert len(relayrl_gym.load(envs.run_path)) == 8

    inline = relayrl_gym.wrap(make_testing_env(), actors=2, sink=None, router_scale=0)
    with pytest.raises(RouterError, match=r"inline.*router_scale=2 instead"):
        inline.agent.scale_throughput(2)
    inline.close()
    with pytest.raises(relayrl_gym.RelayRLError, match="shut down"):
        inline.agent.get_actor_ids()


def test_vector_api_call_get_set_attr(sink_dir):
    envs = relayrl_gym.wrap(make_testing_env(length=5), actors=3, sink=sink_dir, router_scale=3)
    envs.reset(seed=0)
    assert envs.get_attr("length") == (5, 5, 5)
    envs.set_attr("length", [1, 2, 3])
    assert envs.get_attr("length") == (1, 2, 3)
    envs.set_attr("length", 4)
    assert envs.call("length") == (4, 4, 4)
    frames = envs.call("render")
    assert len(frames) == 3
    assert len(envs.np_random_seed) == 3
    with pytest.raises(relayrl_gym.RelayRLError, match="one value per env"):
        envs.set_attr("length", [1, 2])
    envs.close()


def test_close_joins_every_thread(sink_dir):
    envs = relayrl_gym.wrap(make_testing_env(), actors=4, sink=sink_dir, router_scale=4)
    envs.reset(seed=0)
    envs.step(np.zeros(4, dtype=np.int64))
    assert any(t.name.startswith("relayrl") for t in threading.enumerate())
    envs.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("relayrl")]


@pytest.mark.parametrize("scale", [2, 4], ids=["in-waves", "all-at-once"])
def test_a_failing_command_is_re_raised_after_all_end_and_threads_stay_usable(scale):
    from relayrl_gym.runtime.actor import Actor
    from relayrl_gym.runtime.router import Router

    router = Router(scale, [Actor(i) for i in range(4)])
    ended = []

    def work(actor, arg):
        time.sleep(0.01 * actor.index)
        ended.append(actor.index)
        if actor.index in (1, 3):
            raise ValueError(f"actor {actor.index} failed")
        return arg * 2

    with pytest.raises(ValueError, match="actor 1 failed"):  # the first in actor order
        router.run(work, [1, 2, 3, 4])
    assert sorted(ended) == [0, 1, 2, 3]  # every command ran to its end
    assert router.run(lambda actor, arg: arg + actor.index, [10, 10, 10, 10]) == [10, 11, 12, 13]
    router.close()


@pytest.mark.parametrize("scale", [2, 4], ids=["in-waves", "all-at-once"])
def test_an_actor_listed_twice_runs_its_commands_one_after_the_other(scale):
    from relayrl_gym.runtime.actor import Actor
    from relayrl_gym.runtime.router import Router

    actors = [Actor(i) for i in range(4)]
    router = Router(scale, actors)
    seen = []

    def work(actor, arg):
        seen.append((actor.index, arg, threading.current_thread().name))
        time.sleep(0.01)
        return (actor.index, arg)

    order = [actors[1], actors[0], actors[1], actors[3], actors[1]]
    assert router.run(work, ["a", "b", "c", "d", "e"], order) == \
        [(1, "a"), (0, "b"), (1, "c"), (3, "d"), (1, "e")]
    ones = [(arg, name) for index, arg, name in seen if index == 1]
    assert [arg for arg, _ in ones] == ["a", "c", "e"]  # in the order listed
    assert {name for _, name in ones} == {"relayrl-actor-1"}  # always on its own thread
    assert router.run(lambda actor, x: x + actor.index, [0] * 4) == [0, 1, 2, 3]
    router.close()


def test_sb3_indices_may_repeat_an_env(sink_dir):
    envs = relayrl_gym.wrap("CartPole-v1", actors=2, sink=sink_dir, router_scale=2, api="sb3")
    envs.reset()
    assert envs.get_attr("spec", indices=[0, 0, 1]) == [envs.get_attr("spec", [0])[0]] * 3
    assert envs.env_method("get_wrapper_attr", "np_random_seed", indices=[1, 1]) == \
        envs.env_method("get_wrapper_attr", "np_random_seed", indices=[1]) * 2
    envs.step(np.zeros(2, dtype=np.int64))
    envs.close()


@pytest.mark.parametrize("scale", [1, 2], ids=["in-waves", "all-at-once"])
def test_a_timed_out_command_runs_on_and_frees_its_thread_when_it_ends(scale):
    from relayrl_gym.runtime.actor import Actor
    from relayrl_gym.runtime.router import Router

    router = Router(scale, [Actor(0), Actor(1)])
    ended = threading.Event()

    def slow_on_actor_0(actor, arg):
        if actor.index == 0 and arg == "slow":
            time.sleep(0.4)
            ended.set()
            return "stale"
        return (actor.index, arg)

    with pytest.raises(RouterError, match=r"did not finish within 0\.05 s.*runs? on"):
        router.run(slow_on_actor_0, ["slow", "slow"], timeout=0.05)
    with pytest.raises(RouterError, match="relayrl-actor-0 is still running a command that "
                                          "timed out"):
        router.run(slow_on_actor_0, ["x", "y"])
    assert ended.wait(5)
    # Once the abandoned command has ended, the thread serves again, without its stale result.
    assert router.run(slow_on_actor_0, ["x", "y"]) == [(0, "x"), (1, "y")]
    assert router.call(Actor(0), lambda: "called") == "called"
    router.close()


def test_a_timed_out_call_frees_its_thread_when_it_ends():
    from relayrl_gym.runtime.actor import Actor
    from relayrl_gym.runtime.router import Router

    actor = Actor(0)
    router = Router(1, [actor])
    with pytest.raises(RouterError, match=r"did not finish within 0\.05 s"):
        router.call(actor, time.sleep, 0.3, timeout=0.05)
    time.sleep(0.4)
    assert router.call(actor, lambda: 42) == 42
    router.close()


def test_ctrl_c_wins_over_an_earlier_error_and_starts_no_further_command():
    from relayrl_gym.runtime.actor import Actor
    from relayrl_gym.runtime.router import Router

    router = Router(2, [Actor(i) for i in range(4)])
    started = []

    def work(actor, arg):
        started.append(actor.index)
        if actor.index == 0:
            raise ValueError("actor 0 failed")
        time.sleep(0.3)
        return arg

    # A real SIGINT: it interrupts the main thread's blocked wait, as Ctrl-C does.
    timer = threading.Timer(0.1, signal.pthread_kill, (threading.main_thread().ident,
                                                        signal.SIGINT))
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        router.run(work, [0, 1, 2, 3])
    timer.join()
    # Actor 2 started when actor 0 failed (an ordinary error); the interrupt, which landed
    # while actor 1 ran, started nothing more.
    assert sorted(started) == [0, 1, 2]
    assert router.run(lambda actor, x: x, [5, 6, 7, 8]) == [5, 6, 7, 8]
    router.close()


def test_an_actor_the_router_does_not_serve_is_named():
    from relayrl_gym.runtime.actor import Actor
    from relayrl_gym.runtime.router import Router

    actors = [Actor(0), Actor(1)]
    router = Router(2, actors)
    router.remove(actors[1])
    with pytest.raises(RouterError, match=r"actor 1 is not served by this router.*\[0\]"):
        router.run(lambda actor, x: x, [1, 2], actors)
    with pytest.raises(RouterError, match="actor 1 is not served"):
        router.call(actors[1], lambda: None)
    assert router.run(lambda actor, x: x, [3]) == [3]
    router.close()


@pytest.mark.parametrize("scale", [4, 8], ids=["in-waves", "all-at-once"])
def test_ctrl_c_at_any_moment_of_a_step_leaves_every_thread_usable(scale):
    """Interrupts land anywhere, including just after a submit started its command."""
    from relayrl_gym.runtime.actor import Actor
    from relayrl_gym.runtime.router import Router

    armed = [False]

    def interrupt(signum, frame):
        if armed[0]:  # only inside the steps below
            armed[0] = False
            raise KeyboardInterrupt

    router = Router(scale, [Actor(i) for i in range(8)])
    rng = random.Random(0)
    previous = signal.signal(signal.SIGALRM, interrupt)
    interrupted = 0
    # A garbage collection could run a weakref callback (another test's leftovers) just as the
    # interrupt lands, where Python can only print it: the router is what is under test here.
    gc.collect()
    gc.disable()
    try:
        for _ in range(300):
            armed[0] = True
            try:  # the timer set inside: it may fire as soon as setitimer returns
                signal.setitimer(signal.ITIMER_REAL, rng.uniform(0.00002, 0.0015))
                for _ in range(3):
                    router.run(lambda actor, x: time.sleep(0.0005) or x, list(range(8)))
                armed[0] = False
            except KeyboardInterrupt:
                interrupted += 1
            signal.setitimer(signal.ITIMER_REAL, 0)
            assert router.run(lambda actor, x: x * actor.index, [2] * 8) == \
                [2 * i for i in range(8)]
    finally:
        gc.enable()
        signal.signal(signal.SIGALRM, previous)
    assert interrupted > 250  # the interrupts did land during steps
    router.close()


def test_a_settle_cut_short_leaves_a_thread_that_frees_itself():
    from relayrl_gym.runtime.worker import ActorThread

    thread = ActorThread("relayrl-settle-test")
    thread.submit(lambda: time.sleep(0.3) or "old")
    thread.settle(timeout=0.05)  # gives up while the command still runs
    assert thread.abandoned
    with pytest.raises(RouterError, match="still running a command that timed out"):
        thread.submit(lambda: "new")
    time.sleep(0.4)
    thread.submit(lambda: "new")
    assert thread.wait(5) == "new"  # its own result, not the dropped one's end signal
    thread.submit(lambda: "newer")
    assert thread.wait(5) == "newer"
    thread.stop()


@pytest.mark.parametrize("scale", [0, 1, 4])
def test_a_command_for_no_actors_returns_at_once(scale):
    # (a threaded router once waited for ever on a group of no commands)
    from relayrl_gym.runtime.actor import Actor
    from relayrl_gym.runtime.router import Router

    router = Router(scale, [Actor(i) for i in range(3)])
    assert router.run(lambda actor, _: actor.index, [], []) == []
    assert router.run(lambda actor, _: actor.index, [None] * 3) == [0, 1, 2]
    router.close()
