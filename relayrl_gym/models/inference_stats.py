"""What an inference server counts: requests, batches, waits and model times, per client."""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["InferenceStats"]

_SAMPLES = 8192  # waits and model times kept for the percentiles
_CLIENTS = 1024  # clients remembered (the least recently heard is forgotten first)
_RATE_WINDOW = 10.0  # seconds the request rate is measured over


@dataclass
class _Client:
    name: str
    requests: int = 0
    rows: int = 0
    errors: int = 0
    last_seen: float = 0.0


class InferenceStats:
    """Counters of one server, written by its socket thread, read by `snapshot` from any.

    >>> stats = InferenceStats()
    >>> stats.answered([(b"c1", 3, 0.0002)], model=0.001)
    >>> snap = stats.snapshot()
    >>> snap["requests"], snap["rows"], snap["batches"], snap["batch_sizes"]
    (1, 3, 0, {})
    >>> stats.batch(3); stats.snapshot()["batch_sizes"]
    {'3-4': 1}
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests = self.rows = self.batches = self.batch_rows = 0
        #: Malformed messages (not the protocol), refused requests (did not fit the model),
        #: resends of a request still in flight, batches the model failed on.
        self.malformed = self.refused = self.duplicates = self.model_errors = 0
        #: Connections whose CurveZMQ handshake failed (a key not allowed, no CURVE).
        self.refused_auth = 0
        self._sizes: collections.Counter[int] = collections.Counter()
        self._waits = np.zeros(_SAMPLES)
        self._model = np.zeros(_SAMPLES)
        self._kept = 0
        self._clients: collections.OrderedDict[bytes, _Client] = collections.OrderedDict()
        self._rate: collections.deque[tuple[float, int, int]] = collections.deque()
        self.started = time.monotonic()

    def client(self, identity: bytes, name: str | None = None) -> _Client:
        """The record of a client (created, or renamed when it says its name)."""
        with self._lock:
            found = self._record(identity, time.monotonic())
            if name:
                found.name = name[:64]
            return found

    def _record(self, identity: bytes, now: float) -> _Client:
        """The client's record, the most recently heard now (the lock held)."""
        found = self._clients.get(identity)
        if found is None:
            found = self._clients[identity] = _Client(identity.hex())
            if len(self._clients) > _CLIENTS:
                self._clients.popitem(last=False)
        else:
            self._clients.move_to_end(identity)
        found.last_seen = now
        return found

    def failed(self, identity: bytes, *, malformed: bool) -> None:
        """A request refused: ``malformed`` (not the protocol), else not fitting the model."""
        self.client(identity).errors += 1
        with self._lock:
            if malformed:
                self.malformed += 1
            else:
                self.refused += 1

    def batch(self, rows: int) -> None:
        """A batch of ``rows`` rows went to the model."""
        with self._lock:
            self.batches += 1
            self.batch_rows += rows
            self._sizes[max(0, int(rows - 1)).bit_length()] += 1

    def answered(self, requests: list[tuple[bytes, int, float]], *, model: float) -> None:
        """The requests of one batch answered: ``(client, rows, seconds waited for the
        batch)`` each; the batch's model call took ``model`` seconds."""
        now = time.monotonic()
        with self._lock:
            for identity, rows, wait in requests:
                record = self._record(identity, now)
                record.requests += 1
                record.rows += rows
                self.requests += 1
                self.rows += rows
                slot = self._kept % _SAMPLES
                self._waits[slot], self._model[slot] = wait, model
                self._kept += 1
            if not self._rate or now - self._rate[-1][0] >= 1.0:
                self._rate.append((now, self.requests, self.rows))
                while now - self._rate[0][0] > _RATE_WINDOW:
                    self._rate.popleft()

    def snapshot(self) -> dict[str, Any]:
        """Every counter: ``requests``, ``rows``, ``batches``, ``mean_batch`` (rows per model
        call), ``batch_sizes`` (model calls by rows: "1", "2", "3-4", "5-8", ...),
        ``requests_per_s`` and ``rows_per_s`` (the last ~10 s), ``wait_us`` and ``model_us``
        (p50 / p90 / p99 of the time a request waited for its batch, and of the model call),
        ``malformed``, ``refused``, ``refused_auth``, ``duplicates``, ``model_errors``, and
        ``clients`` (per
        client: requests, rows, errors, seconds since last heard)."""
        with self._lock:
            kept = min(self._kept, _SAMPLES)
            waits, model = self._waits[:kept].copy(), self._model[:kept].copy()
            now = time.monotonic()
            rate = self._rate[0] if self._rate else (now, self.requests, self.rows)
            span = now - rate[0]
            out = {
                "requests": self.requests, "rows": self.rows, "batches": self.batches,
                "mean_batch": round(self.batch_rows / self.batches, 2) if self.batches else 0.0,
                "batch_sizes": {_bucket(b): n for b, n in sorted(self._sizes.items())},
                "requests_per_s": round((self.requests - rate[1]) / span, 1) if span else 0.0,
                "rows_per_s": round((self.rows - rate[2]) / span, 1) if span else 0.0,
                "malformed": self.malformed, "refused": self.refused,
                "refused_auth": self.refused_auth, "duplicates": self.duplicates,
                "model_errors": self.model_errors,
                # Keyed by the name a client gave and its connection: names are the
                # clients' to choose, and two may choose one.
                "clients": {f"{c.name} [{peer.hex()[-8:]}]": {
                    "requests": c.requests, "rows": c.rows, "errors": c.errors,
                    "idle_s": round(now - c.last_seen, 1)}
                    for peer, c in self._clients.items()},
            }
        # The percentiles outside the lock: the socket thread does not wait for them.
        out["wait_us"], out["model_us"] = _percentiles(waits), _percentiles(model)
        return out


def _bucket(bits: int) -> str:
    """The label of a batch-size bucket: rows in (2**(bits-1), 2**bits]."""
    if bits <= 1:
        return str(bits + 1)
    return f"{2 ** (bits - 1) + 1}-{2 ** bits}"


def _percentiles(samples: np.ndarray) -> dict[str, float]:
    if not len(samples):
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0}
    p50, p90, p99 = np.percentile(samples, [50, 90, 99]) * 1e6
    return {"p50": round(float(p50), 1), "p90": round(float(p90), 1),
            "p99": round(float(p99), 1)}
