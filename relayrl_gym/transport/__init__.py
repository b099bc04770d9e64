"""The ZMQ transport: actors stream recorded batches to a collector and receive models.

`ZMQSink` (``sink="zmq+tcp://HOST:PORT"``) is the sender, `TrainingServer` (``relayrl-gym
serve``) the collector and model publisher; the wire format is in `protocol`. pyzmq is needed
only when one of them is used (``pip install "relayrl-gym[zmq]"``).
"""

from __future__ import annotations

from relayrl_gym.transport.server import TrainingServer
from relayrl_gym.transport.sink import ZMQSink

__all__ = ["TrainingServer", "ZMQSink"]
