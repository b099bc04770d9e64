"""The agent's config file (``config_path``, TOML or JSON): sinks, trajectories, transport.

A missing file is created with the defaults below, so a user always has one to edit; a malformed
one is a `ConfigError` naming the file and the problem.

The defaults are the text a missing file is created with (``DEFAULT_CONFIG_TOML`` below; the
JSON form holds the same values): sinks ``["relayrl_runs"]`` flushed every second, no limit on
trajectory length, a local transport (``kind = "zmq"`` with ``address`` also streams to a
collector, see `relayrl_gym.transport`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from relayrl_gym.errors import ConfigError
from relayrl_gym.sinks.base import DEFAULT_SINK_ROOT

__all__ = ["DEFAULT_CONFIG_TOML", "AgentConfig", "load_config"]

DEFAULT_CONFIG_TOML = '''# relayrl-gym agent configuration (created with the defaults; edit freely)

[sink]
targets = ["relayrl_runs"]     # directories or URLs, as wrap(sink=...)
flush_interval = 1.0           # seconds: the most a crash can lose
spill_dir = ""                 # where rows wait while a sink is down ("" = next to it)

[trajectory]
max_length = 0                 # steps; a longer trajectory is cut (truncated=True); 0 = none

[transport]
kind = "local"                 # "local": this process writes; "zmq": also stream to a collector;
                               # "nats": also publish to a NATS JetStream stream
address = ""                   # zmq: the collector, tcp://HOST:PORT (relayrl-gym serve);
                               # nats: the stream, nats://HOST:PORT/STREAM (options allowed)
models = ""                    # zmq: where models come from ("" = what the collector announces);
                               # "off": follow no models (zmq and nats)
curve_keys = ""                # zmq: a client key folder from `relayrl-gym keygen` ("" = none)
'''


@dataclass(frozen=True)
class SinkConfig:
    targets: tuple[str, ...] = (DEFAULT_SINK_ROOT,)
    flush_interval: float = 1.0
    spill_dir: str = ""


@dataclass(frozen=True)
class TrajectoryConfig:
    max_length: int = 0


@dataclass(frozen=True)
class TransportConfig:
    kind: str = "local"
    address: str = ""
    models: str = ""
    curve_keys: str = ""

    def sink_urls(self) -> list[str]:
        """The ZMQ or NATS sink URL this transport adds to the sinks (none for "local").

        >>> TransportConfig("zmq", "tcp://learner:7776", curve_keys="keys").sink_urls()
        ['zmq+tcp://learner:7776?curve=keys']
        >>> TransportConfig("nats", "nats://nats-host:4222/relayrl", models="off").sink_urls()
        ['nats://nats-host:4222/relayrl?models=off']
        """
        if self.kind == "nats":
            off = "models=off" if self.models == "off" else ""
            joiner = "&" if "?" in self.address else "?"
            return [self.address + (joiner + off if off else "")]
        if self.kind != "zmq":
            return []
        options = urlencode([(k, v) for k, v in (("models", self.models),
                                                  ("curve", self.curve_keys)) if v])
        address = self.address.split("://", 1)[-1]
        return [f"zmq+tcp://{address}" + (f"?{options}" if options else "")]


@dataclass(frozen=True)
class AgentConfig:
    """The settings of an agent, as read from its config file.

    >>> AgentConfig().trajectory.max_length
    0
    """

    sink: SinkConfig = field(default_factory=SinkConfig)
    trajectory: TrajectoryConfig = field(default_factory=TrajectoryConfig)
    transport: TransportConfig = field(default_factory=TransportConfig)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["sink"]["targets"] = list(self.sink.targets)
        return out


_SECTIONS: dict[str, type] = {"sink": SinkConfig, "trajectory": TrajectoryConfig,
                              "transport": TransportConfig}


def _section(path: Path, name: str, raw: Any) -> Any:
    cls = _SECTIONS[name]
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: [{name}] must be a table of settings, got {raw!r}")
    defaults = cls()
    unknown = sorted(set(raw) - set(asdict(defaults)))
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s) {unknown} in [{name}]; known: "
                          f"{sorted(asdict(defaults))}")
    values = {}
    for key, default in asdict(defaults).items():
        value = raw.get(key, default)
        if isinstance(default, tuple | list):
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{path}: [{name}] {key} must be a list of strings, "
                                  f"got {value!r}")
            value = tuple(value)
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{path}: [{name}] {key} must be true or false, got {value!r}")
        elif isinstance(default, int | float):
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ConfigError(f"{path}: [{name}] {key} must be a number >= 0, "
                                  f"got {value!r}")
            value = type(default)(value)
        elif not isinstance(value, str):
            raise ConfigError(f"{path}: [{name}] {key} must be a string, got {value!r}")
        values[key] = value
    return cls(**values)


def _toml() -> Any:
    try:
        import tomllib  # Python >= 3.11
    except ImportError:
        try:
            import tomli as tomllib  # type: ignore[no-redef,unused-ignore]
        except ImportError as err:
            raise ConfigError("reading a TOML config file needs Python >= 3.11 or `pip install "
                              "tomli`; or use a .json config file") from err
    return tomllib


def load_config(path: str | Path | None) -> AgentConfig:
    """Reads the config file, creating it with the defaults when it does not exist.

    ``path`` ending in ``.json`` is JSON, anything else TOML; None means the defaults, no file.
    """
    if path is None:
        return AgentConfig()
    path = Path(path)
    if not path.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            text = (json.dumps(AgentConfig().to_dict(), indent=2) + "\n"
                    if path.suffix == ".json" else DEFAULT_CONFIG_TOML)
            path.write_text(text)
        except OSError as err:
            raise ConfigError(f"cannot create the default config file {path}: {err}") from err
        return AgentConfig()
    toml = _toml() if path.suffix != ".json" else None
    try:
        text = path.read_text()
        raw = json.loads(text) if toml is None else toml.loads(text)
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read the config file {path}: {err}") from err
    except ValueError as err:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        kind = "JSON" if path.suffix == ".json" else "TOML"
        raise ConfigError(f"{path} is not valid {kind}: {err}; fix it or delete it to get "
                          "the defaults") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a table of sections")
    unknown = sorted(set(raw) - set(_SECTIONS))
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {unknown}; known: {sorted(_SECTIONS)}")
    config = AgentConfig(**{name: _section(path, name, raw.get(name, {})) for name in _SECTIONS})
    if config.transport.kind not in ("local", "zmq", "nats"):
        raise ConfigError(f"{path}: [transport] kind {config.transport.kind!r} is unknown; use "
                          "\"local\", \"zmq\" or \"nats\"")
    if config.transport.kind == "nats" and not config.transport.address.startswith(
            ("nats://", "nats+tls://")):
        raise ConfigError(f"{path}: [transport] kind \"nats\" needs address = "
                          "\"nats://HOST:PORT/STREAM\" (the JetStream stream to publish to)")
    if config.transport.kind == "zmq" and not config.transport.address:
        raise ConfigError(f"{path}: [transport] kind \"zmq\" needs address = "
                          "\"tcp://HOST:PORT\" (where `relayrl-gym serve` listens)")
    return config
