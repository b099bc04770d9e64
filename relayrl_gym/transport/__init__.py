"""The ZMQ transport: actors stream recorded batches to a collector and receive models.

`ZMQSink` (``sink="zmq+tcp://HOST:PORT"``) is the sender, `TrainingServer` (``relayrl-gym
serve``) the collector and model publisher; the wire format is in `protocol`. What a sink could
not deliver by its close is spilled locally and sent later with `spill.resend` (``relayrl-gym
resend``). pyzmq is needed only when one of them is used (``pip install "relayrl-gym[zmq]"``).
"""

from __future__ import annotations

from relayrl_gym.transport.collector import Limits
from relayrl_gym.transport.server import TrainingServer
from relayrl_gym.transport.sink import ZMQSink

__all__ = ["Limits", "TrainingServer", "ZMQSink"]
