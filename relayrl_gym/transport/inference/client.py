"""`RemotePolicy`: a policy served by an inference server, usable wherever a ModelModule is."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from typing import Any
from urllib.parse import parse_qsl

import numpy as np

from relayrl_gym.errors import ConfigError, ModelError, TransportError
from relayrl_gym.lifecycle import close_at_exit, forget_at_exit
from relayrl_gym.policies.heads import HEAD_OUTPUTS
from relayrl_gym.policies.metadata import ModelMetadata
from relayrl_gym.policies.module import obs_shape_error
from relayrl_gym.transport.inference.channels import NatsChannel, ZmqChannel
from relayrl_gym.transport.inference.wire import decode_actions, encode_request
from relayrl_gym.transport.keys import client_keys
from relayrl_gym.transport.nats.options import parse_nats_url
from relayrl_gym.transport.protocol import (
    Header,
    Kind,
    ProtocolViolation,
    decode_header,
    encode,
)
from relayrl_gym.transport.sockets import tcp_endpoint

__all__ = ["DEFAULT_RETRY", "DEFAULT_TIMEOUT", "RemotePolicy", "is_remote_policy"]

log = logging.getLogger(__name__)

#: Seconds a client waits for an answer before it sends the request again.
DEFAULT_RETRY = 1.0
#: Seconds without an answer before a request fails.
DEFAULT_TIMEOUT = 30.0
_SLICE = 0.1  # how often a waiting call looks whether it was closed
_SCHEMES = ("zmq+tcp://", "nats://", "nats+tls://")


def is_remote_policy(model: Any) -> bool:
    """Whether ``model`` names an inference server (``zmq+tcp://HOST:PORT``, or the servers
    of ``nats://HOST:PORT/NAME``) rather than a model on disk.

    >>> is_remote_policy("zmq+tcp://127.0.0.1:7780"), is_remote_policy("policies/pi")
    (True, False)
    """
    return isinstance(model, str) and model.startswith(_SCHEMES)


class RemotePolicy:
    """A ModelModule served by a `relayrl_gym.InferenceServer` (``relayrl-gym serve-policy``):
    ``step`` sends the observation rows and returns the server's actions, batched there with
    other clients' rows.

    It has what the places that take a ModelModule use: ``step(obs, mask)``, ``seed``,
    ``observation_space``, ``action_space``, ``metadata``, ``version``. The version is the
    server's: ``step_versioned`` also returns the version that answered, and the rows a
    wrapped env records carry it. One request is in flight at a time (a lock), one message per
    call. A request unanswered after ``retry`` seconds is sent again under the same id (the
    server may have restarted), and only its first answer is taken; after ``timeout`` seconds
    without one, ``step`` raises `TransportError`. Refused requests (observations that do not
    fit the served model) raise `ModelError` with the server's reason. ``close()`` is
    idempotent; an open one is closed at interpreter exit.
    """

    remote = True

    def __init__(self, url: str, *, timeout: float | None = None, retry: float | None = None,
                 curve_keys: str | None = None, name: str | None = None) -> None:
        """Connects and asks the server what it serves.

        Args:
            url: ``zmq+tcp://HOST:PORT``, with optional ``?curve=DIR`` (a client key folder
                from ``relayrl-gym keygen``), ``timeout=S`` and ``retry=S``; or
                ``nats://[CREDENTIALS@]HOST:PORT/NAME`` (the queue group of servers bound
                to that URL; ``timeout`` and ``retry`` too).
            timeout: seconds without an answer before a call fails (default 30; also
                ``?timeout=``).
            retry: seconds before an unanswered request is sent again (default 1; also
                ``?retry=``).
            curve_keys: the client key folder (overrides ``?curve=``; ZMQ only).
            name: how the server's statistics name this client (default host:pid).

        Raises:
            TransportError: no answer within ``timeout`` (the message says whether the
                CurveZMQ handshake failed).
        """
        #: The URL as given (credentials and options included: never shown).
        self.url_given = url
        if not is_remote_policy(url):
            raise ConfigError(f"an inference server URL is zmq+tcp://HOST:PORT or "
                              f"nats://HOST:PORT/NAME, got {url!r}")
        options: dict[str, str]
        if url.startswith("zmq+tcp://"):
            base, _, query = url.partition("?")
            options = dict(parse_qsl(query, keep_blank_values=True))
            unknown = sorted(set(options) - {"curve", "timeout", "retry"})
            if unknown:
                raise ConfigError(f"unknown option(s) {unknown} in {base!r}; known: curve, "
                                  "timeout, retry")
            self.url = base
            keys_dir = curve_keys if curve_keys is not None else options.get("curve")
            keys = client_keys(keys_dir) if keys_dir else None
            endpoint = tcp_endpoint(base)
            self.timeout = _seconds(timeout, options.get("timeout"), DEFAULT_TIMEOUT, "timeout")
            self.retry = _seconds(retry, options.get("retry"), DEFAULT_RETRY, "retry")
            self._channel: Any = ZmqChannel(endpoint, keys)
        else:
            target = parse_nats_url(url)
            self.url = target.display
            self.timeout = _seconds(timeout, target.option("timeout"), DEFAULT_TIMEOUT,
                                    "timeout")
            self.retry = _seconds(retry, target.option("retry"), DEFAULT_RETRY, "retry")
            self._channel = NatsChannel(target)
        self._lock = threading.Lock()
        # Request ids nobody can guess: over NATS a client that knows this one's reply subject
        # could otherwise answer in the server's place, or have its own request taken for
        # this one's resend, without seeing the requests.
        self._ids = iter(lambda: secrets.randbits(62), None)
        self._seeds: np.random.Generator | None = None
        self._closed = self._channel_closed = False
        self._exit_key = close_at_exit(self, RemotePolicy.close)
        #: Malformed or unknown messages from the server, ignored.
        self.rejected = 0
        #: Requests sent again after ``retry`` seconds without an answer.
        self.retries = 0
        try:
            header, _ = self._call(lambda rid: [encode(
                Kind.INFO, id=rid, client=name or f"{socket.gethostname()}:{os.getpid()}")],
                Kind.DESCRIBED)
            self.metadata = ModelMetadata.from_json(header.fields.get("metadata"),
                                                    source=f"the server at {self.url}")
            self._version = header.integer("version", minimum=-1)
            self.max_rows = header.integer("max_rows", minimum=1)
            #: The extra outputs every answer carries (what the model's step gives in data).
            self._outputs = {*self.metadata.extra_outputs,
                             *HEAD_OUTPUTS[self.metadata.action_head]}
        except BaseException:
            self.close()
            raise
        self._in_dtype = np.dtype(self.metadata.input_dtype)
        self._row_shape = self.metadata.row_shape

    # -- what a ModelModule has -------------------------------------------------------------
    @property
    def version(self) -> int:
        """The version of the server's last answer (at first, the version it described)."""
        return self._version

    @property
    def observation_space(self) -> Any:
        return self.metadata.observation_space

    @property
    def action_space(self) -> Any:
        return self.metadata.action_space

    @property
    def action_head(self) -> str:
        return self.metadata.action_head

    def seed(self, seed: int | None = None) -> None:
        """Makes sampling reproducible: each request then carries a seed drawn from a generator
        seeded with ``seed`` (None: the server samples with its own generator)."""
        self._seeds = None if seed is None else np.random.default_rng(seed)

    def step(self, obs: Any, mask: Any = None, *, rng: np.random.Generator | None = None
             ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Actions (and extra outputs) for a batch of observations, from the server; see
        `ModelModule.step`. ``rng``: the request's sampling seed is drawn from it."""
        actions, data, _ = self.step_versioned(obs, mask, rng=rng)
        return actions, data

    def step_versioned(self, obs: Any, mask: Any = None, *,
                       rng: np.random.Generator | None = None
                       ) -> tuple[np.ndarray, dict[str, np.ndarray], int]:
        """`step`, with the version of the model that answered."""
        x = np.asarray(obs, dtype=self._in_dtype)
        if x.ndim != 1 + len(self._row_shape) or x.shape[1:] != self._row_shape:
            raise obs_shape_error(x.shape, self._row_shape, self.observation_space,
                                  f" (served by {self.url})")
        if len(x) > self.max_rows:
            raise ModelError(f"{len(x)} observations in one call; the inference server at "
                             f"{self.url} takes at most {self.max_rows}: call it in parts")
        rows = None if mask is None else np.asarray(mask).astype(np.bool_)
        source = rng if rng is not None else self._seeds
        seed = None if source is None else int(source.integers(2**63))
        header, payload = self._call(lambda rid: encode_request(rid, x, rows, seed),
                                     Kind.ACTIONS)
        try:
            reply = decode_actions(header, payload)
        except ProtocolViolation as err:
            raise TransportError(f"the inference server at {self.url} sent a malformed "
                                 f"answer: {err}") from err
        problem = self._unexpected(reply.actions, reply.data, len(x))
        if problem is not None:
            raise TransportError(f"the inference server at {self.url} answered {problem}; "
                                 "was it restarted with another model? Reconnect (a new "
                                 "RemotePolicy, or a new env) to act with the model it serves now")
        self._version = reply.version
        # Copies: the frames are read-only and callers may write into what they get.
        return (reply.actions.copy(), {k: v.copy() for k, v in reply.data.items()},
                reply.version)

    def _unexpected(self, actions: np.ndarray, data: dict[str, np.ndarray], rows: int
                    ) -> str | None:
        """What in an answer does not fit the model the server described (None: it fits)."""
        space = self.action_space
        wanted = (rows, *(space.shape or ()))
        if actions.shape != wanted or actions.dtype != space.dtype:
            return (f"actions of shape {actions.shape} and dtype {actions.dtype} where the "
                    f"model it described gives {wanted} and {space.dtype}")
        if set(data) != self._outputs:
            return (f"the extra outputs {sorted(data)} where the model it described gives "
                    f"{sorted(self._outputs)}")
        return None

    # -- the exchange -------------------------------------------------------------------------
    def _call(self, frames_for: Any, expected: Kind) -> tuple[Header, list[bytes]]:
        channel = self._channel
        with self._lock:
            if self._closed:
                raise TransportError(f"the connection to the inference server at {self.url} "
                                     "is closed")
            request_id = next(self._ids)
            frames = frames_for(request_id)
            start = time.monotonic()
            deadline, resend = start + self.timeout, start
            while True:
                now = time.monotonic()
                if now >= resend:
                    if resend > start:  # not the first send
                        self.retries += 1
                    channel.send(frames)
                    resend = now + self.retry
                if now >= deadline:
                    raise TransportError(self._silence())
                if self._closed:  # close() from another thread (or at exit): stop waiting
                    self._close_channel()
                    raise TransportError(f"the connection to the inference server at "
                                         f"{self.url} was closed while waiting for an answer")
                reply = channel.receive(min(resend, deadline, now + _SLICE) - now)
                if reply is None:
                    continue
                if not reply:  # a message that was not packed frames (logged by the channel)
                    self.rejected += 1
                    continue
                try:
                    header = decode_header(reply[0])
                except ProtocolViolation as err:
                    self.rejected += 1
                    log.warning("ignoring a malformed answer from %s: %s", self.url, err)
                    continue
                if header.fields.get("id") != request_id:
                    continue  # the answer to an earlier try of an earlier request
                if header.kind is Kind.ERROR:
                    raise ModelError(f"the inference server at {self.url} refused the request: "
                                     f"{str(header.fields.get('reason'))[:500]}")
                if header.kind is not expected:
                    self.rejected += 1
                    continue
                return header, reply[1:]

    def _silence(self) -> str:
        problem = self._channel.silence()
        if problem and "authentication refused" in problem:
            return f"no answer from the inference server at {self.url}: {problem}"
        return (f"no answer from the inference server at {self.url} for {self.timeout:g} s; is "
                f"`relayrl-gym serve-policy` running there (and reachable)? Raise "
                f"?timeout= to wait longer" + (f" ({problem})" if problem else ""))

    def close(self, wait: float = _SLICE * 5) -> None:
        """Closes the connection; idempotent. A call waiting for an answer on another thread
        stops within a fraction of a second with `TransportError`; ``wait``: how long to let
        it end first."""
        if self._closed:
            return
        self._closed = True
        forget_at_exit(self._exit_key)
        self._channel.interrupt()
        if self._lock.acquire(timeout=wait):  # else the call in flight closes it as it ends
            try:
                self._close_channel()
            finally:
                self._lock.release()

    def _close_channel(self) -> None:
        if not self._channel_closed:
            self._channel_closed = True
            self._channel.close()

    def __enter__(self) -> RemotePolicy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        meta = self.metadata
        return (f"RemotePolicy({self.url!r}, version={self._version}, head="
                f"{meta.action_head!r}, observation_space={meta.observation_space}, "
                f"action_space={meta.action_space})")


def _seconds(given: float | None, option: str | None, default: float, name: str) -> float:
    value: Any = given if given is not None else option if option is not None else default
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ConfigError(f"`{name}` must be a number of seconds > 0, got {value!r}")
    return seconds
