"""Resending a ZMQ sink's spill: `resend` and `uncollected`, the public names (they live in
`relayrl_gym.transport.sender.spill`, with the spill's file format)."""

from relayrl_gym.transport.sender.spill import resend, uncollected

__all__ = ["resend", "uncollected"]
