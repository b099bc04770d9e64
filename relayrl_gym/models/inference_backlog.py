"""The requests an inference server holds, bounded in all and per client, and when they form a
batch."""

from __future__ import annotations

import collections
from typing import Any, NamedTuple

from relayrl_gym.transport.inference.wire import Request

__all__ = ["ACTIVE_S", "Backlog", "Pending"]

#: A client heard this recently counts among those a batch may wait for.
ACTIVE_S = 1.0
_HEARD = 4096  # clients remembered for that rule before the silent ones are forgotten


class Pending(NamedTuple):
    """A request taken in: its client, where its answer goes, when it arrived."""

    peer: bytes  # the client, for de-duplication, limits and statistics
    reply_to: Any
    request: Request
    arrived: float

    @property
    def nbytes(self) -> int:
        mask = self.request.mask
        return int(self.request.obs.nbytes) + (0 if mask is None else int(mask.nbytes))


class Backlog:
    """Requests waiting for a batch (``pending``, oldest first) and requests in a batch, until
    answered (`done`).

    A request sent again while its first copy is held is a duplicate (not taken twice). A
    client may hold ``per_client`` requests at once (a `RemotePolicy` holds one); all clients
    ``max_requests`` and ``max_bytes`` of observations: when `full`, the server reads no
    more until answers free room (the clients' messages wait in the transport's bounded
    queues). A client is what the transport says: a ZMQ connection, or over NATS a reply
    subject, which a client may vary (there only the totals bound it).

    >>> import numpy as np
    >>> backlog = Backlog()
    >>> item = Pending(b"c", None, Request(1, np.zeros((2, 4)), None, None), 0.0)
    >>> backlog.admit(item), backlog.admit(item), backlog.rows
    (None, 'duplicate', 2)
    >>> [p.request.id for p in backlog.take(256)], backlog.rows, backlog.held
    ([1], 0, 1)
    """

    def __init__(self, *, per_client: int = 64, max_requests: int = 8192,
                 max_bytes: int = 512 * 1024 * 1024) -> None:
        self.pending: collections.deque[Pending] = collections.deque()
        #: Rows of the pending requests.
        self.rows = 0
        self._per_client, self._max_requests, self._max_bytes = (
            per_client, max_requests, max_bytes)
        self._held: set[tuple[bytes, int]] = set()
        self._by_peer: collections.Counter[bytes] = collections.Counter()
        self._pending_peers: collections.Counter[bytes] = collections.Counter()
        self._bytes = 0
        #: When each client was last heard, least recently first (at most `_HEARD`).
        self._heard: collections.OrderedDict[bytes, float] = collections.OrderedDict()

    @property
    def held(self) -> int:
        """Requests held, pending or in a batch."""
        return len(self._held)

    @property
    def full(self) -> bool:
        return len(self._held) >= self._max_requests or self._bytes >= self._max_bytes

    def hear(self, peer: bytes, now: float) -> None:
        """``peer`` sent something at ``now``."""
        heard = self._heard
        heard[peer] = now
        heard.move_to_end(peer)
        if len(heard) > _HEARD:
            heard.popitem(last=False)

    def admit(self, item: Pending) -> str | None:
        """Takes ``item`` in: None; ``"duplicate"`` when its first copy is held; else why it
        is refused."""
        key = (item.peer, item.request.id)
        if key in self._held:
            return "duplicate"
        if self._by_peer[item.peer] >= self._per_client:
            return (f"this client has {self._per_client} requests waiting already; wait for "
                    "their answers before sending more")
        self._held.add(key)
        self._by_peer[item.peer] += 1
        self._pending_peers[item.peer] += 1
        self._bytes += item.nbytes
        self.rows += len(item.request.obs)
        self.pending.append(item)
        return None

    def ready(self, now: float, max_batch: int, max_wait: float) -> bool:
        """Whether the pending requests should go now: ``max_batch`` rows, the oldest has
        waited ``max_wait`` s, or every client heard in the last second is waiting."""
        if not self.pending:
            return False
        if self.rows >= max_batch or now - self.pending[0].arrived >= max_wait:
            return True
        waiting = len(self._pending_peers)
        # The most recently heard first: one more active client than waiting ones is enough.
        for active, heard in enumerate(reversed(self._heard.values()), start=1):
            if now - heard > ACTIVE_S:
                break
            if active > waiting:
                return False  # someone heard lately is not waiting yet
        return True

    def take(self, max_batch: int) -> list[Pending]:
        """The oldest pending requests of at most ``max_batch`` rows (at least one request)."""
        job: list[Pending] = []
        taken = 0
        pending = self.pending
        while pending and (not job or taken + len(pending[0].request.obs) <= max_batch):
            item = pending.popleft()
            job.append(item)
            taken += len(item.request.obs)
            left = self._pending_peers[item.peer] - 1
            if left:
                self._pending_peers[item.peer] = left
            else:
                del self._pending_peers[item.peer]
        self.rows -= taken
        return job

    def done(self, item: Pending) -> None:
        """``item`` was answered."""
        self._held.discard((item.peer, item.request.id))
        left = self._by_peer[item.peer] - 1
        if left > 0:
            self._by_peer[item.peer] = left
        else:
            del self._by_peer[item.peer]
        self._bytes -= item.nbytes
