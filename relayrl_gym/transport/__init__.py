"""The ZMQ transport: actors stream recorded batches to a collector and receive models.

Two packages that share only the wire-level modules here (`protocol`, `payloads`, `sockets`,
`keys`, `models`): `sender` (`ZMQSink`, ``sink="zmq+tcp://HOST:PORT"``, and its spill) and
`collector` (`TrainingServer`, ``relayrl-gym serve``: the collector and model publisher). What
a sink could not deliver by its close is spilled locally and sent later with `resend`
(``relayrl-gym resend``). pyzmq is needed only when one of them is used (``pip install
"relayrl-gym[zmq]"``).
"""

from __future__ import annotations

from relayrl_gym.transport.collector.receiver import Limits
from relayrl_gym.transport.sender.sink import ZMQSink
from relayrl_gym.transport.server import TrainingServer
from relayrl_gym.transport.spill import resend, uncollected

__all__ = ["Limits", "TrainingServer", "ZMQSink", "resend", "uncollected"]
