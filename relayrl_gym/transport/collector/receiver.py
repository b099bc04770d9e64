"""The collector: receives ZMQ sinks' batches, writes each once, acknowledges what is stored."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import pyarrow as pa

from relayrl_gym.errors import ConfigError, RelayRLError
from relayrl_gym.schema.transitions import TransitionSchema
from relayrl_gym.transport._zmq import require_zmq
from relayrl_gym.transport.collector.stats import CollectorStats
from relayrl_gym.transport.payloads import checked_payload, read_checked_batch
from relayrl_gym.transport.protocol import (
    Header,
    Kind,
    ProtocolViolation,
    decode_header,
    encode,
)
from relayrl_gym.transport.sockets import bind_socket, failed_handshakes, watch_handshakes

if TYPE_CHECKING:
    from relayrl_gym.transport.keys import ServerKeys

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "DEFAULT_RUN_IDLE_TIMEOUT", "Collector", "Limits",
           "RunStore"]

log = logging.getLogger(__name__)

#: The largest message a collector accepts (ZMQ drops a peer that sends a larger one).
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: Seconds without a message of a run before the collector closes it (completes its files,
#: lets go of its state; a sender that comes back reopens it).
DEFAULT_RUN_IDLE_TIMEOUT = 600.0
_DRAIN_MESSAGES = 256
# Messages ZMQ queues per peer before it stops reading from that peer (TCP pushes back).
_QUEUED_MESSAGES = 16
# One commit (and acknowledgement) per this many bytes: a quarter of a sender's default window,
# so acknowledgements keep flowing while the rest of the window is in flight (draining a whole
# window before acknowledging made senders stop and wait: ~13% less throughput).
_DRAIN_BYTES = 8 * 1024 * 1024

#: Opens the store of a run: ``(run_id, schema) -> ArrowRunStore | SinkRunStore``.
RunStore = Callable[[str, pa.Schema], Any]

_TOKEN = re.compile(r"[0-9a-f]{32}")
_ANONYMOUS = ("", "anonymous")  # ZAP user ids of peers without CURVE keys


class Limits(NamedTuple):
    """What one peer (a CURVE key, else one connection) and all peers together may hold open.

    A peer past its own limit is refused (``reject``, counted under ``refused_limits``);
    past the collector's ``open_runs``, the run heard from least recently is closed (its
    files completed; its senders start it again when they come back).
    """

    runs_per_peer: int = 16
    senders_per_peer: int = 64
    open_runs: int = 128
    senders: int = 4096


class _Claim:
    """Who a sender name of a run belongs to: its token's digest, its CURVE user id, the peer
    counted for it and the connection its batches must come from."""

    __slots__ = ("digest", "identity", "peer", "user")

    def __init__(self, digest: str, user: str, peer: str, identity: bytes) -> None:
        self.digest, self.user, self.peer, self.identity = digest, user, peer, identity


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:32]


class _Round:
    """What one drain of the socket wrote, per (run, sender): committed together, then acked."""

    def __init__(self) -> None:
        self.last: dict[tuple[str, str], int] = {}
        self.identity: dict[tuple[str, str], bytes] = {}
        self.rows: dict[tuple[str, str], list[int]] = {}  # [batches, rows], counted at commit
        self.batches: list[tuple[str, pa.RecordBatch]] = []


class Collector:
    """A ROUTER socket and the thread that serves it (see `relayrl_gym.transport.protocol`).

    Batches of a sender are taken in sequence order only: a repeat is acknowledged again and
    counted as a duplicate, a gap is answered with the sequence number expected. Each drain of
    the socket writes its batches, commits every touched run (data first, then the per-sender
    last sequence numbers), and only then acknowledges. Malformed, oversized or unknown-version
    messages are refused with a ``reject`` reply and counted; nothing a peer sends stops the
    thread. A run without a message for ``run_idle_timeout`` seconds is closed: its files are
    completed (readable as a finished run) and its committed state stays on disk, so a sender
    that comes back later is asked to start again and continues the same run, its batches
    still de-duplicated. `TrainingServer` builds one; ``close`` joins the thread.

    >>> import zmq
    >>> ctx = zmq.Context()
    >>> collector = Collector(ctx, "tcp://127.0.0.1:*", open_store=lambda run, schema: None)
    >>> collector.alive, collector.stats.snapshot()["received"]
    (True, 0)
    >>> collector.close(); ctx.term()
    """

    def __init__(self, ctx: Any, bind: str, open_store: RunStore, *,
                 keys: ServerKeys | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 models_endpoint: str | None = None,
                 on_batches: Callable[[list[tuple[str, pa.RecordBatch]]], None] | None = None,
                 run_idle_timeout: float | None = DEFAULT_RUN_IDLE_TIMEOUT,
                 limits: Limits | None = None) -> None:
        """Binds the socket and starts serving.

        Args:
            ctx: the ZMQ context (its authenticator enforces CURVE keys).
            bind: the endpoint, e.g. ``tcp://*:7776`` (port ``*`` or 0: any free port).
            open_store: opens a run's store.
            keys: the server keypair for CurveZMQ.
            max_message_bytes: larger messages are refused.
            models_endpoint: announced to senders as where models come from.
            on_batches: gets ``(run_id, batch)`` pairs once they are committed.
            run_idle_timeout: seconds without a message of a run before it is closed
                (default 600); None: runs stay open until the collector closes.
            limits: runs and senders per peer and in all (default: `Limits()`).
        """
        zmq = require_zmq()
        if run_idle_timeout is not None and not run_idle_timeout > 0:
            raise ConfigError(f"`run_idle_timeout` must be > 0 seconds or None (never close "
                              f"idle runs), got {run_idle_timeout!r}")
        self.run_idle_timeout = run_idle_timeout
        self.stats = CollectorStats()
        self.max_message_bytes = int(max_message_bytes)
        self.models_endpoint = models_endpoint
        self._open_store = open_store
        self._on_batches = on_batches
        self.limits = limits or Limits()
        self._stores: dict[str, Any] = {}
        # run -> when a message of it last came, least recently heard first
        self._heard: OrderedDict[str, float] = OrderedDict()
        self._claims: dict[tuple[str, str], _Claim] = {}
        self._peer_runs: dict[str, set[str]] = {}
        self._peer_senders: dict[str, set[tuple[str, str]]] = {}
        self._sock, self.endpoint = bind_socket(ctx, zmq.ROUTER, bind, keys=keys,
                                                max_message_bytes=self.max_message_bytes,
                                                queued_messages=_QUEUED_MESSAGES)
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="relayrl-zmq-collector",
                                        daemon=True)
        self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Stops the thread and completes every run's files; idempotent."""
        self._stop.set()
        self._thread.join(timeout)
        problems = []
        for run_id, store in list(self._stores.items()):
            try:
                store.close()
            except Exception as err:
                problems.append(f"{run_id}: {err}")
        self._stores.clear()
        self._heard.clear()
        self._claims.clear()
        if problems:
            log.error("closing runs failed: %s", "; ".join(problems))

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def open_runs(self) -> list[str]:
        """The runs being written now (idle ones are closed, see ``run_idle_timeout``)."""
        return list(self._stores)

    # -- thread ------------------------------------------------------------------------------
    def _run(self) -> None:
        zmq = require_zmq()
        sock = self._sock
        monitor = watch_handshakes(sock)  # clients refused by CURVE: logged and counted
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        idle_check = 0.0
        try:
            while not self._stop.is_set():
                if self.run_idle_timeout is not None and time.monotonic() >= idle_check:
                    self._close_idle_runs(self.run_idle_timeout)
                    idle_check = time.monotonic() + min(1.0, self.run_idle_timeout / 4)
                events = dict(poller.poll(50))
                if monitor in events:
                    for problem in failed_handshakes(monitor):
                        self.stats.refused_handshakes += 1
                        log.warning("a client could not connect: %s", problem.replace(
                            "authentication refused by", "its key is not authorized at"))
                if sock not in events:
                    continue
                messages: list[list[Any]] = []
                size = 0
                while len(messages) < _DRAIN_MESSAGES and size < _DRAIN_BYTES:
                    frames = _receive(sock)
                    if frames is None:
                        break
                    messages.append(frames)
                    size += sum(len(f) for f in frames if f is not None)
                work = _Round()
                for frames in messages:
                    self._handle(frames, work)
                self._commit(work)
        except Exception as err:  # a bug, not a peer's doing: keep it visible
            self.error = err
            log.exception("the collector thread stopped")
        finally:
            sock.disable_monitor()
            monitor.close(0)
            sock.close(0)

    def _reply(self, identity: bytes, kind: Kind, **fields: Any) -> None:
        zmq = require_zmq()
        with contextlib.suppress(zmq.ZMQError):  # the peer is gone or slow: it asks again
            self._sock.send_multipart([identity, encode(kind, **fields)], zmq.NOBLOCK)

    def _handle(self, frames: list[Any], work: _Round) -> None:
        identity = frames[0].bytes
        sender = "?"
        try:
            if len(frames) < 2:
                raise ProtocolViolation("empty message")
            if frames[-1] is None:  # more frames than any message has: dropped unread
                raise ProtocolViolation("a message has at most one payload frame")
            if sum(len(f) for f in frames) > self.max_message_bytes:
                raise ProtocolViolation(f"message over the {self.max_message_bytes}-byte limit")
            header = decode_header(frames[1].buffer)
            if header.kind not in (Kind.START, Kind.BATCH):
                raise ProtocolViolation(f"a collector takes start and batch messages, not "
                                        f"{header.kind.value!r}")
            sender = header.name("sender")
            run_id = header.name("run")
            if len(frames) != 3:
                raise ProtocolViolation(f"a {header.kind.value} message has one payload frame, "
                                        f"got {len(frames) - 2}")
            if header.kind is Kind.START:
                self._start(identity, _user_id(frames[1]), sender, run_id, header, frames[2],
                            work)
            else:
                self._batch(identity, sender, run_id, header, frames[2], work)
        except ProtocolViolation as err:
            self.stats.count(sender, rejected=1)
            log.warning("rejected a message from sender %s: %s", sender, err)
            self._reply(identity, Kind.REJECT, reason=str(err)[:300])
        except Exception as err:  # a bug; one message must not stop serving everyone else
            self.stats.count(sender, rejected=1)
            log.exception("handling a message from sender %s failed", sender)
            self._reply(identity, Kind.REJECT, reason=f"collector error: {str(err)[:200]}")

    def _start(self, identity: bytes, user: str, sender: str, run_id: str, header: Header,
               payload: Any, work: _Round) -> None:
        buffer = checked_payload(payload.buffer, header.fields.get("crc"),
                                 f"start of run {run_id!r}")
        try:
            schema = pa.ipc.read_schema(buffer)
            TransitionSchema.from_arrow(schema)  # a recorded run's schema, metadata included
        except Exception as err:
            raise ProtocolViolation(f"start of run {run_id!r} carries no valid recorded-run "
                                    f"schema: {str(err)[:200]}") from err
        peer = user if user not in _ANONYMOUS else identity.hex()
        store = self._stores.get(run_id)
        if store is None:
            store = self._open_run(run_id, schema, peer, sender, work)
            self._touch(run_id)  # idle-closable and evictable from now on, even if refused below
        elif not store.schema.equals(schema, check_metadata=False):
            raise ProtocolViolation(f"run {run_id!r} is already being written with another "
                                    "schema; a sender must not reuse a run id")
        token = self._bind(store, run_id, sender, header.fields.get("token"), user, peer,
                           identity)
        self._touch(run_id)
        key = (run_id, sender)
        # ``next`` is what is committed, never a batch of this round that a failed commit
        # could still lose: a sender takes ``next`` as an acknowledgement.
        committed = store.last_seq(sender)
        last = work.last.get(key, committed)
        first = header.fields.get("first")
        if isinstance(first, int) and not isinstance(first, bool) and first - 1 > last:
            # The sender no longer has batches this run never got: an earlier collector (whose
            # state is gone: another sink directory, a lost state file) acknowledged them.
            log.warning("sender %s of run %s resumes at batch %d; batches %d..%d were "
                        "acknowledged by a collector whose state this one does not have",
                        sender, run_id, first, last + 1, first - 1)
            committed = work.last[key] = first - 1
            work.identity[key] = identity
        self.stats.set_last_seq(sender, committed)
        self._reply(identity, Kind.STARTED, run=run_id, next=committed + 1,
                    models=self.models_endpoint, max_bytes=self.max_message_bytes, token=token)

    def _open_run(self, run_id: str, schema: pa.Schema, peer: str, sender: str,
                  work: _Round) -> Any:
        runs = self._peer_runs.setdefault(peer, set())
        if len(runs) >= self.limits.runs_per_peer:
            self._refuse_limits(sender, f"this peer already has {len(runs)} runs open, its "
                                        f"limit (runs_per_peer={self.limits.runs_per_peer})")
        if len(self._stores) >= self.limits.open_runs:
            self._close_least_recent(work)
        try:
            store = self._open_store(run_id, schema)
        except Exception as err:  # a damaged run directory must not stop the thread
            if not isinstance(err, RelayRLError):
                log.exception("opening run %s failed", run_id)
            raise ProtocolViolation(f"cannot open run {run_id!r}: {err}") from err
        self._stores[run_id] = store
        runs.add(run_id)
        log.info("run %s started by sender %s", run_id, sender)
        return store

    def _bind(self, store: Any, run_id: str, sender: str, token: Any, user: str, peer: str,
              identity: bytes) -> str:
        """Checks that ``sender`` of ``run_id`` is this peer's (or makes it so); returns its
        token. A sender name belongs to the first client that starts it: later starts must
        present its token and come from the same CURVE key."""
        if token is not None and (not isinstance(token, str) or not _TOKEN.fullmatch(token)):
            raise ProtocolViolation("header field 'token' must be 32 lowercase hex digits")
        key = (run_id, sender)
        claim = self._claims.get(key)
        if claim is None:
            owner = store.owner(sender)
            if owner is not None:  # claimed before this collector (re)opened the run
                claim = _Claim(owner["token"], owner["user"], peer, identity)
        if claim is not None:
            if claim.user != user:
                self._refuse_auth(sender, f"sender {sender!r} of run {run_id!r} belongs to "
                                          "another client key")
            if token is None or not hmac.compare_digest(claim.digest, _digest(token)):
                self._refuse_auth(sender, f"sender {sender!r} of run {run_id!r} is in use; a "
                                          "sender restarting presents the token it was given "
                                          "(a new sender takes a new name)")
            claim.identity = identity
            self._claims[key] = claim
            return str(token)
        senders = self._peer_senders.setdefault(peer, set())
        if len(senders) >= self.limits.senders_per_peer:
            self._refuse_limits(sender, f"this peer already has {len(senders)} senders, its "
                                        f"limit (senders_per_peer="
                                        f"{self.limits.senders_per_peer})")
        if len(self._claims) >= self.limits.senders:
            self._refuse_limits(sender, f"the collector holds {len(self._claims)} senders, its "
                                        f"limit (senders={self.limits.senders})")
        token = token or secrets.token_hex(16)
        self._claims[key] = _Claim(_digest(token), user, peer, identity)
        senders.add(key)
        store.claim(sender, _digest(token), user)
        return str(token)

    def _refuse_auth(self, sender: str, reason: str) -> None:
        self.stats.refused_auth += 1
        raise ProtocolViolation(reason)

    def _refuse_limits(self, sender: str, reason: str) -> None:
        self.stats.refused_limits += 1
        raise ProtocolViolation(reason)

    def _touch(self, run_id: str) -> None:
        self._heard[run_id] = time.monotonic()
        self._heard.move_to_end(run_id)

    def _batch(self, identity: bytes, sender: str, run_id: str, header: Header, payload: Any,
               work: _Round) -> None:
        seq = header.integer("seq")
        store = self._stores.get(run_id)
        key = (run_id, sender)
        claim = self._claims.get(key)
        if store is None or claim is None or claim.identity != identity:
            # Unknown run, or a connection that did not start this sender: a sender that
            # reconnected starts again (with its token); anyone else gets nothing written.
            self._reply(identity, Kind.NEED_START, run=run_id)
            return
        self._touch(run_id)
        committed = store.last_seq(sender)
        last = work.last.get(key, committed)
        if seq <= last:
            self.stats.count(sender, duplicates=1)
            if seq <= committed:
                self._reply(identity, Kind.ACK, run=run_id, seq=committed)
            return
        if seq > last + 1:
            self.stats.count(sender, out_of_order=1)
            self._reply(identity, Kind.NACK, run=run_id, expected=last + 1)
            return
        what = f"batch {seq} of run {run_id!r}"
        buffer = checked_payload(payload.buffer, header.fields.get("crc"), what)
        batch = read_checked_batch(buffer, store.schema, what)
        try:
            store.write(batch)
        except Exception as err:  # not acknowledged: the sender resends it
            self.stats.sink_errors += 1
            log.warning("writing batch %d of run %s failed: %s", seq, run_id, err)
            self._abandon(run_id, work)
            return
        work.last[key] = seq
        work.identity[key] = identity
        work.batches.append((run_id, batch))
        counts = work.rows.setdefault(key, [0, 0])
        counts[0] += 1
        counts[1] += batch.num_rows

    def _abandon(self, run_id: str, work: _Round | None = None) -> None:
        """Drops a run whose files a failed write or commit left in an unknown state; its
        senders' next batches get ``need_start``, and reopening it cuts the uncommitted
        batches (written again when resent), so none is kept twice."""
        store = self._stores.pop(run_id, None)
        self._forget_run(run_id)
        if store is not None:
            store.abandon()
        if work is not None:  # this round's batches of the run are gone with its file
            for key in [k for k in work.last if k[0] == run_id]:
                del work.last[key], work.identity[key]
                work.rows.pop(key, None)
            work.batches = [(r, b) for r, b in work.batches if r != run_id]

    def _close_idle_runs(self, idle: float) -> None:
        """Closes the runs without a message for ``idle`` seconds. Between rounds every batch
        written is committed, so a closed run's files and state agree; a sender that comes
        back gets ``need_start`` and its ``start`` reopens the run where it stopped."""
        now = time.monotonic()
        for run_id in [r for r in self._stores if now - self._heard.get(r, 0.0) >= idle]:
            self.stats.runs_idle_closed += 1  # counted before it leaves `open_runs`
            self._close_run(run_id, f"{idle:.0f} s without a message")

    def _close_run(self, run_id: str, why: str) -> None:
        """Completes a run's files, then lets go of it (out of `open_runs` once its files are
        whole); a run whose close fails is cut back to what is committed when reopened."""
        store = self._stores[run_id]
        try:
            store.close()
        except Exception as err:
            self.stats.sink_errors += 1
            log.error("closing run %s (%s) failed: %s", run_id, why, err)
            store.abandon()
        else:
            log.info("run %s closed: %s", run_id, why)
        finally:
            self._forget_run(run_id)
            del self._stores[run_id]

    def _close_least_recent(self, work: _Round) -> None:
        """Closes the run heard from least recently, to make room (`Limits.open_runs`); a run
        with batches in this round is never closed (refused instead)."""
        busy = {run for run, _ in work.last}
        victim = next((run for run in self._heard if run not in busy and run in self._stores),
                      None)
        if victim is None:
            self.stats.refused_limits += 1
            raise ProtocolViolation(f"the collector has {len(self._stores)} runs open, its "
                                    f"limit (open_runs={self.limits.open_runs}); try again")
        self.stats.runs_evicted += 1
        self._close_run(victim, f"room for another run (open_runs={self.limits.open_runs})")

    def _forget_run(self, run_id: str) -> None:
        """Drops what the collector keeps in memory for a run (its state stays on disk)."""
        self._heard.pop(run_id, None)
        for key in [k for k in self._claims if k[0] == run_id]:
            claim = self._claims.pop(key)
            self._peer_senders.get(claim.peer, set()).discard(key)
        for peer, runs in list(self._peer_runs.items()):
            runs.discard(run_id)
            if not runs:
                del self._peer_runs[peer]
        for peer in [p for p, keys in self._peer_senders.items() if not keys]:
            del self._peer_senders[peer]

    def _commit(self, work: _Round) -> None:
        by_run: dict[str, dict[str, int]] = {}
        for (run_id, sender), seq in work.last.items():
            by_run.setdefault(run_id, {})[sender] = seq
        committed_runs = set()
        for run_id, seqs in by_run.items():
            try:
                store = self._stores.get(run_id)
                if store is None:  # abandoned during the round
                    continue
                store.commit(seqs)
            except Exception as err:  # not acknowledged: resent, written again after repair
                self.stats.sink_errors += 1
                log.error("committing run %s failed: %s", run_id, err)
                self._abandon(run_id)
                continue
            committed_runs.add(run_id)
        # The learner's view first: a sender whose close returned on this ack finds its
        # batches in `trajectories()`.
        if self._on_batches is not None and work.batches:
            self._on_batches([(r, b) for r, b in work.batches if r in committed_runs])
        for (run_id, sender), seq in work.last.items():
            if run_id in committed_runs:
                batches, rows = work.rows.get((run_id, sender), (0, 0))
                self.stats.count(sender, batches=batches, rows=rows)
                self.stats.set_last_seq(sender, seq)
                self._reply(work.identity[(run_id, sender)], Kind.ACK, run=run_id, seq=seq)


def _receive(sock: Any) -> list[Any] | None:
    """One message, without blocking (None: nothing waiting). Frames past the third (identity,
    header, payload) are read and dropped at once; the message then ends with None."""
    zmq = require_zmq()
    try:
        frame = sock.recv(zmq.NOBLOCK, copy=False)
    except zmq.Again:
        return None
    frames = [frame]
    while frame.more:
        frame = sock.recv(copy=False)
        if len(frames) < 3:
            frames.append(frame)
        elif frames[-1] is not None:
            frames.append(None)
    return frames


def _user_id(frame: Any) -> str:
    """The ZAP user id of a message's peer: its CURVE public key (Z85), else empty."""
    try:
        return str(frame.get("User-Id") or "")
    except Exception:  # no ZAP handler, or a libzmq without message properties
        return ""
