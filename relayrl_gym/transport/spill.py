"""Resending a sink's close-time spill: `resend` (``relayrl-gym resend SPILL``) publishes a
NATS sink's spill to its stream, or sends a ZMQ sink's to its collector, each batch under its
original sender and sequence number, so that what the other end has already is kept once;
`uncollected` tells which rows of a ZMQ spill a collector lacks."""

from __future__ import annotations

import os
from pathlib import Path

from relayrl_gym.sinks.base import url_scheme
from relayrl_gym.transport.nats.options import parse_nats_url
from relayrl_gym.transport.nats.resend import resend_nats_spill
from relayrl_gym.transport.sender.spill import ResendResult, read_spill, resending, uncollected
from relayrl_gym.transport.sender.spill import resend as resend_to_collector

__all__ = ["resend", "uncollected"]


def resend(spill: str | os.PathLike[str], address: str | None = None, *,
           timeout: float = 60.0, curve_keys: str | Path | None = None,
           remove: bool = True) -> ResendResult:
    """Delivers the spilled run ``spill`` (the directory a sink's close error named) to where
    its sink sent: a NATS stream (``nats://...`` in its index, or ``address``) or a ZMQ
    collector (see `relayrl_gym.transport.sender.spill.resend`).

    Args:
        spill: the spilled run directory.
        address: where to (default: where the sink sent); a NATS URL with its credentials.
        timeout: seconds to wait for every acknowledgement.
        curve_keys: a client key folder, for a ZMQ collector requiring CurveZMQ.
        remove: remove the spill once everything is acknowledged.

    Raises:
        DatasetError: ``spill`` is not a sink's spill, or was changed since it was written.
        SinkError: not every batch was acknowledged in time (the spill is kept as it was).
    """
    where = address or read_spill(spill).endpoint
    if url_scheme(where) != "nats":  # nats:// and nats+tls://
        return resend_to_collector(spill, address, timeout=timeout, curve_keys=curve_keys,
                                   remove=remove)
    parse_nats_url(where)  # a clear error for a bad address before anything is read
    path = Path(spill)
    with resending(path):
        return resend_nats_spill(path, address, timeout=timeout, remove=remove)
