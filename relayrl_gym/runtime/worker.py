"""A thread that owns one actor's environment and runs the commands the router gives it."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import Any

from relayrl_gym.errors import RouterError

__all__ = ["ActorThread", "CommandGroup"]


class CommandGroup:
    """Counts down the commands of one dispatch: the caller wakes once, when the last ends.

    Waking the dispatching thread once per vector step instead of once per actor saves a GIL
    hand-off per actor (~5 µs each here), which is what many actors on a fast, GIL-releasing
    env pay for.
    """

    __slots__ = ("_done", "_tokens")

    def __init__(self, size: int) -> None:
        # One token per command; ``deque.pop`` is atomic, and the command that takes token 0
        # is the last to end: a countdown without a lock round trip per actor.
        self._tokens = collections.deque(range(size))
        self._done = threading.Lock()
        self._done.acquire()

    def arrive(self) -> None:
        if self._tokens.pop() == 0:
            self._done.release()

    def wait(self, timeout: float | None = None) -> bool:
        """True once every command of the group has ended (False on timeout)."""
        return self._done.acquire(timeout=-1 if timeout is None else timeout)


class ActorThread:
    """Runs one command at a time on a dedicated, named thread.

    The hand-off is a pair of bare locks (the cheapest wake-up CPython offers); a command's
    exception is re-raised by `wait` in the caller with its original traceback.

    >>> t = ActorThread("doc-actor")
    >>> t.submit(threading.current_thread); t.wait().name
    'doc-actor'
    >>> t.stop()
    """

    def __init__(self, name: str) -> None:
        self._go = threading.Lock()
        self._go.acquire()
        self._done = threading.Lock()
        self._done.acquire()
        self._fn: Callable[..., Any] | None = None
        self._args: tuple[Any, ...] = ()
        self._result: Any = None
        self._error: BaseException | None = None
        self._busy = False
        # Commands are numbered; _ended is the number of the last one whose end was signalled
        # (written by the actor thread after the signal, so a late write names an old command).
        self._submitted = 0
        self._ended = 0
        self._group: CommandGroup | None = None
        self._grouped = False
        self._abandoned = False  # a timed-out command: its result is dropped when it ends
        self._stopped = False  # set when the thread ends (cheaper to read than is_alive())
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    @property
    def name(self) -> str:
        return self._thread.name

    def submit(self, fn: Callable[..., Any], *args: Any, group: CommandGroup | None = None
               ) -> None:
        """Starts ``fn(*args)`` on the thread; one command at a time.

        Without ``group``, `wait` collects the result. With one, the command reports its end
        to the group instead, and `collect` takes the result once the group is done.
        """
        if self._busy or self._stopped:
            self.check_ready()  # raises unless an abandoned command has ended meanwhile
        self._busy = True
        self._submitted += 1
        self._group = group
        self._grouped = group is not None
        self._fn, self._args = fn, args
        self._go.release()

    def wait(self, timeout: float | None = None) -> Any:
        """Waits for the submitted command and returns its result (or raises its exception).

        On timeout the command is abandoned (see `abandon`) and RouterError is raised.
        """
        if not self._done.acquire(timeout=-1 if timeout is None else timeout):
            self.abandon()
            raise RouterError(f"actor thread {self.name} did not finish within {timeout} s; "
                              "the command runs on to its end, and its result is dropped")
        return self.collect()

    def collect(self) -> Any:
        """The result of a grouped command whose group is done (or raises its exception)."""
        self._busy = False
        error, self._error = self._error, None
        result, self._result = self._result, None
        if error is not None:
            raise error
        return result

    @property
    def busy(self) -> bool:
        """True between `submit` and the `wait` that collected the result."""
        return self._busy

    def check_ready(self) -> None:
        """Raises RouterError unless `submit` can start a command now."""
        if self._busy and not self._reclaim():
            if self._abandoned:
                raise RouterError(f"actor thread {self.name} is still running a command that "
                                  "timed out earlier; it takes new commands once that ends")
            raise RouterError(f"actor thread {self.name} is still running its previous command")
        if self._stopped:
            raise RouterError(f"actor thread {self.name} has stopped")

    @property
    def abandoned(self) -> bool:
        """True while a command given up on (`abandon`, `settle`) still runs."""
        return self._abandoned  # set only while busy; cleared with it

    def abandon(self) -> None:
        """Gives up on the running command after a timed-out wait.

        The command cannot be stopped; it runs to its end, its result or error is dropped, and
        then the thread takes new commands again.
        """
        if self._busy:
            self._abandoned = True
            self._reclaim()

    def _reclaim(self) -> bool:
        # Frees the thread of an abandoned command whose end has been signalled; False before.
        if not (self._abandoned and self._ended == self._submitted):
            return False
        if not self._grouped:
            # Take the end signal, so the next wait() does not return at once with nothing;
            # an interrupted wait() may have taken it already (then the lock is held: fine).
            self._done.acquire(blocking=False)
        self._busy = self._abandoned = False
        self._result = self._error = None
        return True

    def settle(self, timeout: float = 60.0) -> None:
        """Waits for the running command after an interrupted `wait`, dropping its result.

        The command is abandoned first: if this wait is itself cut short (a second Ctrl-C, or
        ``timeout``), the thread still takes new commands once the command has ended.
        """
        self.abandon()
        deadline = time.monotonic() + timeout
        while self._busy and not self._reclaim() and time.monotonic() < deadline:
            time.sleep(0.001)

    def stop(self, timeout: float = 10.0) -> None:
        """Ends the thread after its current command; idempotent."""
        if not self._thread.is_alive():
            return
        if self._busy:
            self.settle(timeout)
            if self._busy:
                raise RouterError(f"actor thread {self.name} is still running a command after "
                                  f"{timeout} s; it cannot be stopped")
        self._fn = None
        self._go.release()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RouterError(f"actor thread {self.name} did not stop within {timeout} s")

    def _loop(self) -> None:
        try:
            self._serve()
        finally:
            self._stopped = True

    def _serve(self) -> None:
        while True:
            self._go.acquire()
            fn, args, number = self._fn, self._args, self._submitted
            if fn is None:
                return
            try:
                self._result = fn(*args)
            except BaseException as err:  # handed to the caller by wait()
                self._error = err
            finally:
                # Drop every reference to the command (a bound method holds its env wrapper)
                # before waiting, so an env dropped without close() can be collected.
                self._fn, self._args = None, ()
                fn, args = None, ()
                group, self._group = self._group, None
                if group is None:
                    self._done.release()
                else:
                    group.arrive()
                    group = None
                self._ended = number  # signalled: an abandoned command frees the thread
