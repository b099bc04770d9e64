"""`NatsLink`: one NATS connection on an asyncio event loop of its own thread.

nats-py speaks asyncio; relayrl-gym's writer, collector and model threads are plain threads.
A link runs the loop on a named daemon thread, keeps the connection up (the first connection
is retried in the background like every later reconnection, so a server that is down when a
run starts costs no data: the sink refuses batches until it is up, and the writer keeps them),
and lets the other threads run coroutines on it with a timeout.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from relayrl_gym.errors import MissingDependencyError, TransportError
from relayrl_gym.transport.nats.options import NatsTarget

__all__ = ["NatsLink", "require_nats"]

log = logging.getLogger(__name__)

T = TypeVar("T")
_RETRY_FIRST, _RETRY_MAX = 0.25, 5.0


def require_nats() -> Any:
    """The ``nats`` module (nats-py), or an error naming the extra that installs it."""
    try:
        import nats
    except ImportError as err:
        raise MissingDependencyError(
            'NATS needs nats-py: pip install "relayrl-gym[nats]"') from err
    return nats


class NatsLink:
    """A connection to ``target`` kept up on a loop thread; ``on_connect`` runs after each
    (re)connection, before `connected` is set.

    ``problem`` says, in words, why the link is not connected (the last error: a server that
    cannot be reached, credentials refused), for the errors of the parts that use it.
    """

    def __init__(self, target: NatsTarget, name: str, *,
                 on_connect: Callable[[Any], Awaitable[None]] | None = None) -> None:
        """Starts the loop thread and the first connection attempt.

        Args:
            target: the servers and credentials.
            name: the thread's name (``relayrl-nats-...``).
            on_connect: a coroutine function given the connection after each (re)connection.
        """
        self.nats = require_nats()
        self.target = target
        self.nc: Any = None
        self.connected = threading.Event()
        self.problem = "not connected yet"
        self._refused = False
        self._preparing: asyncio.Task[None] | None = None
        self._on_connect = on_connect
        self._closing = False
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()
        self._connector = self.submit(self._connect_until_up())

    # -- calling into the loop --------------------------------------------------------------
    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedules ``coro`` on the loop; its future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Runs ``coro`` on the loop and waits at most ``timeout`` seconds for its result.

        Raises:
            TransportError: it did not finish in time.
        """
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError as err:
            future.cancel()
            raise TransportError(f"NATS at {self.target.display} did not answer within "
                                 f"{timeout} s ({self.problem})") from err

    def wait_connected(self, timeout: float) -> bool:
        return self.connected.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Flushes and closes the connection, stops the loop and joins its thread."""
        if self._closing:
            return
        self._closing = True
        self._connector.cancel()
        if self.loop.is_running():
            with contextlib.suppress(Exception):
                self.submit(self._close_connection()).result(timeout)
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()

    # -- on the loop ------------------------------------------------------------------------
    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            # Tasks still pending (a publish waiting for its acknowledgement) end with the loop;
            # again for tasks their ending starts (nats-py's reconnection starts a flusher): a
            # task left pending in a closed loop fails when the collector finalizes it.
            for _ in range(5):
                pending = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
                if not pending:
                    break
                for task in pending:
                    task.cancel()
                with contextlib.suppress(Exception):
                    self.loop.run_until_complete(
                        asyncio.gather(*pending, return_exceptions=True))

    async def _close_connection(self) -> None:
        if self.nc is not None and not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await self.nc.flush(timeout=1)
            with contextlib.suppress(Exception):
                await self.nc.close()

    async def _connect_until_up(self) -> None:
        if await self._with_backoff(self._connect_once, lambda: not self._closing):
            await self._reconnected()

    async def _connect_once(self) -> None:
        self.nc = await self.nats.connect(
            **self.target.connect_options(), allow_reconnect=True, max_reconnect_attempts=-1,
            reconnect_time_wait=0.5, connect_timeout=2, error_cb=self._error,
            disconnected_cb=self._disconnected, reconnected_cb=self._reconnected,
            closed_cb=self._disconnected, name=self._thread.name)

    async def _with_backoff(self, attempt: Callable[[], Awaitable[None]],
                            going_on: Callable[[], bool]) -> bool:
        """Runs ``attempt`` until it succeeds (True) or ``going_on()`` turns false (False),
        waiting longer after each failure."""
        delay = _RETRY_FIRST
        while going_on():
            try:
                await attempt()
            except asyncio.CancelledError:
                raise
            except Exception as err:
                self._note(err)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX)
                continue
            return True
        return False

    async def _error(self, err: Exception) -> None:
        self._note(err)

    async def _disconnected(self) -> None:
        self.connected.clear()
        if not self._closing:
            self.problem = f"disconnected from {self.target.display}; reconnecting"

    async def _reconnected(self) -> None:
        # nats-py awaits this callback before it reads from the new connection again: what
        # the connection needs first (requests that wait for answers) runs as a task of its own.
        if self._preparing is not None:
            self._preparing.cancel()
        self._preparing = asyncio.get_running_loop().create_task(self._prepare())

    async def _prepare(self) -> None:
        # What a connection needs before use (the stream, a schema published) is retried
        # while the connection stays up: a stream's leader may be moving just then.
        def up() -> bool:
            return not self._closing and self.nc is not None and self.nc.is_connected

        async def prepare() -> None:
            if self._on_connect is not None:
                await self._on_connect(self.nc)

        if await self._with_backoff(prepare, up):
            self.problem = ""
            self._refused = False
            self.connected.set()

    def _note(self, err: BaseException) -> None:
        text = str(err) or type(err).__name__
        if "authorization" in text.lower() or type(err).__name__ == "AuthorizationError":
            text = (f"the server refused the credentials ({text}): give user/password, a "
                    "token, creds or nkey in the URL or its config= file")
        elif "permissions violation" in text.lower():
            text = (f"the NATS user lacks a permission ({text}): it needs to publish to and "
                    "subscribe to the stream's subjects, $JS.API.> and _INBOX.>")
        elif self._refused:  # the timeouts that follow a refusal say less than it
            return
        self._refused = "refused the credentials" in text or "lacks a permission" in text
        if text != self.problem:
            log.warning("NATS at %s: %s", self.target.display, text)
        self.problem = text
