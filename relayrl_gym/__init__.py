"""relayrl-gym: a multi-actor agent behind the Gymnasium API, every transition recorded.

>>> import relayrl_gym
>>> envs = relayrl_gym.wrap("CartPole-v1", actors=2, sink=None)
>>> obs, info = envs.reset(seed=0)
>>> envs.close()
"""

from relayrl_gym._version import __version__
from relayrl_gym.collect import CollectSummary, collect
from relayrl_gym.collection.fleet import Fleet, FleetSummary
from relayrl_gym.data.dataset import Dataset, load
from relayrl_gym.errors import RelayRLError
from relayrl_gym.models.inference_server import InferenceServer
from relayrl_gym.policies.device import DeviceType
from relayrl_gym.policies.module import ModelModule
from relayrl_gym.runtime.builder import AgentBuilder
from relayrl_gym.runtime.client import RelayRLAgent
from relayrl_gym.sinks.arrow import ArrowSink
from relayrl_gym.sinks.base import Sink
from relayrl_gym.transport.server import TrainingServer
from relayrl_gym.wrap import wrap
from relayrl_gym.wrappers.vector import RelayRLVectorEnv

__all__ = [
    "AgentBuilder",
    "ArrowSink",
    "CollectSummary",
    "Dataset",
    "DeviceType",
    "Fleet",
    "FleetSummary",
    "InferenceServer",
    "ModelModule",
    "RelayRLAgent",
    "RelayRLError",
    "RelayRLVectorEnv",
    "Sink",
    "TrainingServer",
    "__version__",
    "collect",
    "load",
    "wrap",
]

