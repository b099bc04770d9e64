"""The router: decides on which thread each actor's work runs, and runs it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from relayrl_gym.errors import ConfigError, RouterError
from relayrl_gym.runtime.actor import Actor
from relayrl_gym.runtime.worker import ActorThread, CommandGroup

__all__ = ["Router"]


class Router:
    """Dispatches commands to actors, inline or on actor threads.

    ``scale == 0`` (inline): every command runs on the calling thread, which owns every
    environment. No hand-off at all: the right choice when a step costs less than a thread
    wake-up (CartPole: ~13 µs against ~65 µs measured for a lock ping-pong here).

    ``scale >= 1`` (threaded): each actor but the first gets its own thread for its whole life
    (it creates, steps, renders and closes its environment), and at most ``scale`` actors run at
    once. The first actor runs on the calling thread, as in inline mode, while the others run
    on theirs: the caller would otherwise only wait, and each thread hand-off it saves is one
    GIL hand-over less in the chain that starts the actors (~15 us of a 1 ms step for 8
    actors here). With ``scale`` >= the number of actors, steps that release the GIL (I/O,
    sleeps, C physics, big numpy work) overlap. `scale_throughput` changes the limit while
    running; it cannot move environments between threads, so it cannot switch between inline
    and threaded.

    >>> from relayrl_gym.runtime.actor import Actor
    >>> router = Router(2, [Actor(0), Actor(1)])
    >>> router.run(lambda actor, x: actor.index * x, [10, 10])
    [0, 10]
    >>> router.close()
    """

    def __init__(self, scale: int, actors: Sequence[Actor] = (), name: str = "relayrl") -> None:
        """Creates the router (and, when threaded, one thread per actor).

        Args:
            scale: 0 for inline, else the number of actors that may run at once.
            actors: the actors to serve; more can be added with `add`.
            name: prefix of the thread names.
        """
        _check_scale(scale)
        self.scale = int(scale)
        self.name = name
        self._threads: dict[int, ActorThread] = {}
        self._actors: dict[int, Actor] = {}
        self._caller: int | None = None  # the actor that runs on the calling thread
        self._closed = False
        for actor in actors:
            self.add(actor)

    @property
    def threaded(self) -> bool:
        return self.scale > 0

    def add(self, actor: Actor) -> None:
        """Registers an actor; in threaded mode its thread starts now."""
        self._actors[actor.index] = actor
        if self.threaded and self._caller is None:
            self._caller = actor.index
        elif self.threaded and actor.index not in self._threads:
            self._threads[actor.index] = ActorThread(f"{self.name}-actor-{actor.index}")

    def remove(self, actor: Actor, timeout: float = 10.0) -> None:
        self._actors.pop(actor.index, None)
        thread = self._threads.pop(actor.index, None)
        if thread is not None:
            thread.stop(timeout)

    def run(self, fn: Callable[[Actor, Any], Any], args: Sequence[Any],
            actors: Sequence[Actor] | None = None, timeout: float | None = None) -> list[Any]:
        """Runs ``fn(actor, arg)`` for each actor (default: all, in the order added).

        If commands fail, or the wait is interrupted (KeyboardInterrupt), all of them are still
        waited for, then the first error (in actor order) is re-raised with its traceback.
        """
        if self._closed:
            raise RouterError("the router is shut down")
        if actors is None:
            actors = list(self._actors.values())
        if not self.threaded:
            return [fn(actor, arg) for actor, arg in zip(actors, args)]
        results: list[Any] = [None] * len(actors)
        errors: list[BaseException | None] = [None] * len(actors)
        here = next((i for i, actor in enumerate(actors) if actor.index == self._caller), None)
        queued = [(i, self._threads[actor.index], actor, arg)
                  for i, (actor, arg) in enumerate(zip(actors, args)) if i != here]
        if self.scale >= len(actors):
            self._run_all(queued, fn, results, errors, timeout,
                          None if here is None else (here, actors[here], args[here]))
        else:
            self._run_waves(queued, fn, results, errors, timeout,
                            None if here is None else (here, actors[here], args[here]))
        error = next((err for err in errors if err is not None), None)
        if error is not None:
            raise error
        return results

    @staticmethod
    def _run_here(fn: Callable[[Actor, Any], Any], own: tuple[int, Actor, Any],
                  results: list[Any], errors: list[BaseException | None]) -> None:
        """The calling thread's own command; an error is kept until the others have ended."""
        i, actor, arg = own
        try:
            results[i] = fn(actor, arg)
        except BaseException as err:
            errors[i] = err

    def _run_waves(self, queued: list[tuple[int, ActorThread, Actor, Any]],
                   fn: Callable[[Actor, Any], Any], results: list[Any],
                   errors: list[BaseException | None], timeout: float | None,
                   own: tuple[int, Actor, Any] | None) -> None:
        # At most ``scale`` at once, the calling thread's own command counted among them.
        limit = max(1, self.scale - (own is not None))
        try:
            if own is not None and self.scale == 1:
                self._run_here(fn, own, results, errors)
                own = None
            for k in range(min(limit, len(queued))):
                _, thread, actor, arg = queued[k]
                thread.submit(fn, actor, arg)
            if own is not None:
                self._run_here(fn, own, results, errors)
            for k, (i, thread, _, _) in enumerate(queued):
                try:
                    results[i] = thread.wait(timeout)
                except BaseException as err:
                    errors[i] = err
                    if not isinstance(err, RouterError):  # not a timeout: e.g. Ctrl-C
                        thread.settle()  # let the running command end; the thread stays usable
                nxt = k + limit
                if nxt < len(queued):
                    _, following, actor, arg = queued[nxt]
                    following.submit(fn, actor, arg)
        except BaseException:
            for _, thread, _, _ in queued:  # leave every thread free for the next command
                thread.settle()
            raise

    @staticmethod
    def _run_all(queued: list[tuple[int, ActorThread, Actor, Any]],
                 fn: Callable[[Actor, Any], Any], results: list[Any],
                 errors: list[BaseException | None], timeout: float | None,
                 own: tuple[int, Actor, Any] | None) -> None:
        # Every actor at once: the caller runs its own command, then sleeps until the last of
        # the others ends, and wakes once.
        group = CommandGroup(len(queued)) if queued else None
        try:
            for _, thread, actor, arg in queued:
                thread.submit(fn, actor, arg, group=group)
            if own is not None:
                Router._run_here(fn, own, results, errors)
            if group is not None and not group.wait(timeout):
                raise RouterError(f"actor threads did not finish within {timeout} s")
        except RouterError:
            raise
        except BaseException:  # e.g. Ctrl-C: let the commands end, so the threads stay usable
            for _, thread, _, _ in queued:
                thread.settle()
            raise
        for i, thread, _, _ in queued:
            try:
                results[i] = thread.collect()
            except BaseException as err:
                errors[i] = err

    def call(self, actor: Actor, fn: Callable[..., Any], *args: Any,
             timeout: float | None = None) -> Any:
        """Runs ``fn(*args)`` on the thread that owns ``actor``."""
        if self._closed:
            raise RouterError("the router is shut down")
        if not self.threaded or actor.index == self._caller:
            return fn(*args)
        thread = self._threads[actor.index]
        thread.submit(fn, *args)
        try:
            return thread.wait(timeout)
        except KeyboardInterrupt:
            thread.settle()
            raise

    def scale_throughput(self, scale: int) -> None:
        """Changes how many actors may run at once (threaded mode only)."""
        _check_scale(scale)
        if (scale == 0) != (self.scale == 0):
            mode = "inline (router_scale=0)" if self.scale == 0 else "threaded"
            raise RouterError(
                f"cannot change the router from {mode} to scale={scale} while running: each "
                "environment stays on the thread that created it. Create the env with "
                f"router_scale={scale} instead"
            )
        self.scale = int(scale)

    def close(self, timeout: float = 10.0) -> None:
        """Stops every actor thread; idempotent."""
        if self._closed:
            return
        self._closed = True
        errors = []
        for thread in self._threads.values():
            try:
                thread.stop(timeout)
            except RouterError as err:
                errors.append(err)
        self._threads.clear()
        if errors:
            raise errors[0]


def _check_scale(scale: Any) -> None:
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 0:
        raise ConfigError(
            f"`router_scale` must be an int >= 0 (0 = inline) or 'auto', got {scale!r}")
