"""What the Gymnasium front ends need from copies of a game: slots to reset and step."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

from gymnasium import spaces

from relayrl_gym.errors import run_all
from relayrl_gym.runtime.actor import Actor
from relayrl_gym.runtime.router import Router
from relayrl_gym.wrappers.pettingzoo.policies import AgentPolicies
from relayrl_gym.wrappers.pettingzoo.recording import GameRecording

__all__ = ["GameCopies", "GameStep", "Games"]


class GameStep(NamedTuple):
    """One game copy's step, one entry per slot (a caller-played agent) in each list."""

    obs: list[Any]
    rewards: list[float]
    terminated: list[bool]
    truncated: list[bool]
    infos: list[dict[str, Any]]
    over: bool  # no caller-played agent is left in the game: it must be reset


class Games(Protocol):
    """Copies of a game whose caller-played agents are slots (``copies * slots`` in all) and
    whose other agents are played by `policies`."""

    copies: int
    slots: int
    agents: list[Any]  # the caller-played agents, slot order
    observation_space: spaces.Space
    action_space: spaces.Space
    policies: AgentPolicies
    recording: GameRecording | None
    envs: list[Any]
    actors: list[Actor]
    router: Router

    def reset(self, copies: list[int], seeds: list[int | None],
              options: dict[str, Any] | None = None
              ) -> list[tuple[list[Any], list[dict[str, Any]]]]:
        """Resets the given copies; for each, the observation and info of each of its slots."""
        ...

    def step(self, copies: list[int], actions: list[list[Any]]) -> list[GameStep]:
        """Steps the given copies, each with one action per slot."""
        ...

    def render(self) -> list[Any]:
        """Each copy's render output."""
        ...

    def close_copies(self) -> None:
        """Closes every copy (the run stays open)."""
        ...

    def close(self) -> None:
        """Closes every copy, the actor threads and the run's sinks."""
        ...


class GameCopies:
    """Game copies as actors: copy ``c`` is actor ``c``, which owns the (recorded) env, and a
    `Router` steps them, on the calling thread (``router_scale`` 0, the default) or each on
    its own actor thread (``router_scale`` n >= 1: at most n stepping at once). Recording
    stays in step order whichever thread steps a copy (see `GameRecording.stage`).
    """

    def __init__(self, envs: list[Any], recording: GameRecording | None,
                 router_scale: int) -> None:
        self.recording = recording
        self.actors = [Actor(c, env=env) for c, env in enumerate(envs)]
        self.router = Router(router_scale, self.actors, name="relayrl-game")
        self._closed = False

    @property
    def envs(self) -> list[Any]:
        """The (recorded) env of each copy, in copy order."""
        return [actor.env for actor in self.actors]

    def run(self, fn: Callable[[Actor, Any], Any], copies: Sequence[int], args: Sequence[Any]
            ) -> list[Any]:
        """``fn(actor, arg)`` for the actor of each copy in ``copies``, where its env lives; the
        rows they record come after those of earlier calls."""
        if self.recording is not None:
            self.recording.next_phase()
        return self.router.run(fn, args, [self.actors[c] for c in copies])

    def render(self) -> list[Any]:
        """Each copy's render output, rendered where the copy lives."""
        return self.run(lambda actor, _: actor.env.render(), range(len(self.actors)),
                        [None] * len(self.actors))

    def close_copies(self) -> None:
        """Closes every copy where it lives, and the policies' connections to inference
        servers, whatever fails on the way (then raises the first error), after handing the
        staged rows to the recorders."""
        policies = getattr(self, "policies", None)  # the subclasses' (AgentPolicies)
        run_all([*([self.recording.hand_over] if self.recording is not None else []),
                 self._close_envs, *([policies.close] if policies is not None else [])])

    def _close_envs(self) -> None:
        # Every copy at once where it lives, each whatever the others do; then the first error
        # in copy order.
        failed = [err for err in self.router.run(_close_env, [None] * len(self.actors))
                  if err is not None]
        if failed:
            raise failed[0]

    def close(self) -> None:
        """Closes every copy, stops the actor threads, then flushes and closes the run,
        whatever fails on the way (then raises the first error); idempotent."""
        if self._closed:
            return
        self._closed = True
        run_all([self.close_copies, self.router.close,
                 *([self.recording.close] if self.recording is not None else [])])


def _close_env(actor: Actor, _: Any) -> Exception | None:
    try:
        actor.env.close()
    except Exception as err:
        return err
    return None
