"""The process router: each actor's env lives in a process of its own, for envs that hold the
GIL or are not thread-safe.

Commands are the same ``fn(actor, arg)`` calls the thread router runs, shipped to the actor's
process with cloudpickle (Gymnasium's `AsyncVectorEnv` ships its env factories the same way),
run there against the env, and answered with the result or the exception, re-raised here. The
parent holds an `EnvView` per actor: the env's spaces, metadata, render mode and spec, read
once after creation; everything else goes through commands (`call`, `get_attr`, `render`).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import cloudpickle

from relayrl_gym.errors import RouterError
from relayrl_gym.lifecycle import finalizing
from relayrl_gym.runtime.actor import Actor

__all__ = ["EnvView", "ProcessRouter"]

_STOP = b""


@dataclass
class EnvView:
    """What the parent knows of an env that lives in an actor's process."""

    observation_space: Any
    action_space: Any
    metadata: dict[str, Any]
    render_mode: str | None
    spec: Any

    def close(self) -> None:
        """Nothing to close here: the env closes in its own process."""


def _view(env: Any) -> EnvView:
    return EnvView(env.observation_space, env.action_space, dict(env.metadata),
                   env.render_mode, env.spec)


def _serve(conn: Any, index: int) -> None:
    """An actor's process: runs each command against its env until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    actor = Actor(index)
    while True:
        try:
            message = conn.recv_bytes()
        except (EOFError, OSError):  # the parent is gone
            break
        if message == _STOP:
            break
        try:
            fn, arg = cloudpickle.loads(message)
            result = fn(actor, arg)
            reply = cloudpickle.dumps((True, result))
        except BaseException as err:
            try:
                reply = cloudpickle.dumps((False, err))
            except Exception:  # an exception that cannot travel: say what it was
                reply = cloudpickle.dumps((False, RouterError(
                    f"actor {index}'s process raised {type(err).__name__}: {err}")))
        conn.send_bytes(reply)
    if actor.env is not None:
        with contextlib.suppress(Exception):  # closed by a command already, or failing
            actor.env.close()
    conn.close()


def _create(actor: Actor, pair: tuple[Callable[[Actor, Any], None], Any]) -> EnvView:
    make, arg = pair
    make(actor, arg)
    return _view(actor.env)


class ProcessRouter:
    """Runs each actor's commands in that actor's own process (``router_scale="processes"``).

    >>> from relayrl_gym.runtime.actor import Actor
    >>> router = ProcessRouter([Actor(0), Actor(1)])
    >>> router.run(lambda actor, x: actor.index * x, [10, 10])
    [0, 10]
    >>> router.close()
    """

    scale = "processes"
    threaded = False

    def __init__(self, actors: Sequence[Actor], context: str | None = None) -> None:
        """Starts one process per actor.

        Args:
            actors: the actors to serve.
            context: the multiprocessing start method (default: the platform's, as
                `AsyncVectorEnv`); "spawn" or "forkserver" for a parent that runs threads
                of its own while it starts the processes.
        """
        ctx = multiprocessing.get_context(context)
        self._actors = {actor.index: actor for actor in actors}
        self._conns: dict[int, Any] = {}
        self._procs: dict[int, Any] = {}
        self._closed = False
        self._out_of_step: str | None = None  # a command gave up on: its answer is still due
        try:
            for actor in actors:
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=_serve, args=(child, actor.index),  # type: ignore[attr-defined]
                                   name=f"relayrl-actor-{actor.index}", daemon=True)
                proc.start()
                child.close()
                self._conns[actor.index], self._procs[actor.index] = parent, proc
        except BaseException:
            self.close()
            raise

    def create(self, make: Callable[[Actor, Any], None], args: Sequence[Any],
               actors: Sequence[Actor]) -> None:
        """Runs ``make(actor, arg)`` (which sets ``actor.env``) in each actor's process, and
        gives each actor here an `EnvView` of its env."""
        views = self.run(_create, [(make, arg) for arg in args], actors)
        for actor, view in zip(actors, views):
            actor.env = view

    def run(self, fn: Callable[[Actor, Any], Any], args: Sequence[Any],
            actors: Sequence[Actor] | None = None, timeout: float | None = None) -> list[Any]:
        """Runs ``fn(actor, arg)`` in each actor's process, all at once; re-raises the first
        error in actor order once every command has answered."""
        if self._closed:
            raise RouterError("the router is shut down")
        if finalizing():
            raise RouterError("the interpreter is exiting: actor processes no longer answer")
        if self._out_of_step is not None:
            raise RouterError(f"{self._out_of_step}; its answer would be taken for the next "
                              "command's: create the env again")
        actors = list(self._actors.values()) if actors is None else list(actors)
        if len({a.index for a in actors}) < len(actors):  # an actor listed twice: in turn
            return [self.run(fn, [arg], [actor], timeout)[0] for actor, arg in zip(actors, args)]
        # Every message is made before any is sent: one that cannot be pickled sends none.
        messages = [cloudpickle.dumps((fn, arg)) for arg in args]
        sent: list[bool] = []
        results: list[Any] = []
        error: BaseException | None = None
        try:
            for actor, message in zip(actors, messages):
                try:
                    self._conn(actor).send_bytes(message)
                    sent.append(True)
                except OSError:  # a dead process: answered below, after the others
                    sent.append(False)
            for actor, was_sent in zip(actors, sent):
                try:  # every answer is read, so that each pipe stays in step with its process
                    ok, value = self._answer(actor, timeout) if was_sent else \
                        (False, self._died(actor))
                except RouterError as err:
                    ok, value = False, err
                results.append(value if ok else None)
                if not ok and error is None:
                    error = value
        except BaseException:  # Ctrl-C with answers still due: they would answer later calls
            if len(results) < sum(sent):
                self._out_of_step = "a command was interrupted before every actor answered"
            raise
        if error is not None:
            raise error
        return results

    def call(self, actor: Actor, fn: Callable[..., Any], *args: Any,
             timeout: float | None = None) -> Any:
        """Runs ``fn(*args)`` in ``actor``'s process."""
        return self.run(lambda _, a: fn(*a), [args], [actor], timeout)[0]

    def _conn(self, actor: Actor) -> Any:
        conn = self._conns.get(actor.index)
        if conn is None:
            raise RouterError(f"actor {actor.index} is not served by this router; it serves "
                              f"actors {sorted(self._conns)}")
        return conn

    def _died(self, actor: Actor) -> RouterError:
        proc = self._procs[actor.index]
        proc.join(1.0)
        return RouterError(f"the process of actor {actor.index} died (exit code "
                           f"{proc.exitcode}); create the env again")

    def _answer(self, actor: Actor, timeout: float | None) -> tuple[bool, Any]:
        conn, proc = self._conns[actor.index], self._procs[actor.index]
        # Polled in slices: a process that dies (killed, out of memory) is noticed.
        waited = 0.0
        while not conn.poll(0.1):
            waited += 0.1
            if not proc.is_alive() and not conn.poll(0):
                raise self._died(actor)
            if timeout is not None and waited >= timeout:
                self._out_of_step = (f"the process of actor {actor.index} did not answer "
                                     f"within {timeout} s")
                raise RouterError(self._out_of_step)
        try:
            return cloudpickle.loads(conn.recv_bytes())
        except (EOFError, OSError) as err:
            raise self._died(actor) from err

    def scale_throughput(self, scale: int) -> None:
        raise RouterError("an env with router_scale='processes' runs every actor at once; "
                          "there is nothing to scale")

    def close(self, timeout: float = 10.0) -> None:
        """Stops every actor process (closing its env); idempotent."""
        if self._closed:
            return
        self._closed = True
        for conn in self._conns.values():
            with contextlib.suppress(OSError):  # already gone
                conn.send_bytes(_STOP)
        for index, proc in self._procs.items():
            proc.join(timeout)
            if proc.is_alive():
                proc.terminate()
                proc.join(1.0)
            self._conns[index].close()
