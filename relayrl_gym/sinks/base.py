"""The sink interface and the URL factory that maps ``sqlite:///...`` and friends to classes."""

from __future__ import annotations

import abc
import importlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relayrl_gym.errors import ConfigError

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["DEFAULT_SINK_ROOT", "SQL_SCHEMES", "Sink", "open_sink", "redact_url",
           "register_sink", "url_scheme"]

#: Where runs go when no sink is given.
DEFAULT_SINK_ROOT = "relayrl_runs"


_USERINFO_PASSWORD = re.compile(r"(://[^/?#@:]*):[^/?#@]*@")
_QUERY_SECRET = re.compile(r"([?&](?:password|sslpassword|passfile|sslkey)=)[^&#]*", re.I)


def redact_url(url: str) -> str:
    """A URL fit for logs and error messages: passwords (``user:PW@`` and ``?password=``)
    replaced by ``***``.

    >>> redact_url("postgresql://me:s3cret@db/runs?sslmode=require&password=x")
    'postgresql://me:***@db/runs?sslmode=require&password=***'
    """
    return _QUERY_SECRET.sub(r"\1***", _USERINFO_PASSWORD.sub(r"\1:***@", url))


class Sink(abc.ABC):
    """Where recorded transitions go: ``start`` once, then ``write`` batches, ``flush``, ``close``.

    Sinks receive whole `pyarrow.RecordBatch` objects from the background writer, never rows from
    the stepping thread. ``run_path`` is the local directory of the run, when the sink has one.
    """

    run_path: Path | None = None
    #: Whether the started sink stores batches in the ``once`` observation layout (see
    #: `relayrl_gym.storage.obs_layout`): then, when every sink of a run does, the recorder
    #: builds its batches that way, which spares it copying most next observations.
    stores_obs_once: bool = False
    #: Whether a block may be written by the thread that recorded it (a local sink whose
    #: ``write`` is quick and never waits on a network), not only by the writer thread.
    writes_inline: bool = False

    @abc.abstractmethod
    def start(self, run_id: str, schema: pa.Schema) -> None:
        """Prepares the sink for a run; raises `SinkError` if it cannot be written."""

    @abc.abstractmethod
    def write(self, batch: pa.RecordBatch) -> None:
        """Stores one batch of transitions."""

    def flush(self) -> None:  # noqa: B027 - optional hook; most sinks write through
        """Makes everything written so far durable."""

    @abc.abstractmethod
    def close(self) -> None:
        """Flushes and releases the sink; idempotent."""

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: URL schemes of databases (the SQL sink writes them, `relayrl_gym.load` reads them).
SQL_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql", "mariadb")

_FACTORIES: dict[str, Callable[[str], Sink] | str] = {
    "arrow": "relayrl_gym.sinks.arrow:ArrowSink.from_url",
    **{scheme: "relayrl_gym.sinks.sql:SQLSink.from_url" for scheme in SQL_SCHEMES},
    "zmq": "relayrl_gym.transport.sender.sink:ZMQSink.from_url",
    "nats": "relayrl_gym.transport.nats.sink:NatsSink.from_url",
}


def url_scheme(spec: str) -> str:
    """The sink kind a spec names: the URL scheme without its ``+driver`` part ("arrow" for a
    plain path).

    >>> url_scheme("postgresql+psycopg://db"), url_scheme("runs/")
    ('postgresql', 'arrow')
    """
    scheme, sep, _ = spec.partition("://")
    return scheme.split("+", 1)[0] if sep else "arrow"


def register_sink(scheme: str, factory: Callable[[str], Sink] | str) -> None:
    """Maps a URL scheme to a factory (or ``"module:attr"`` path, imported on first use)."""
    _FACTORIES[scheme] = factory


def open_sink(spec: Any) -> Sink:
    """Turns a sink spec (a `Sink`, a directory path, or a URL) into a `Sink`.

    >>> open_sink("arrow://runs").root.name
    'runs'
    """
    if isinstance(spec, Sink):
        return spec
    if isinstance(spec, Path):
        spec = str(spec)
    if not isinstance(spec, str) or not spec:
        raise ConfigError(
            f"`sink` must be a directory path, a URL such as 'arrow://DIR', a Sink object, a "
            f"list of those, or None; got {spec!r}"
        )
    # "postgresql+psycopg://" and "zmq+tcp://" select a driver/transport within one scheme.
    scheme = url_scheme(spec)
    factory = _FACTORIES.get(scheme)
    if factory is None:
        raise ConfigError(
            f"unknown sink URL scheme {scheme!r} in {redact_url(spec)!r}; known schemes: "
            f"{', '.join(sorted(_FACTORIES))} (or a plain directory path)"
        )
    if isinstance(factory, str):
        module, attr = factory.split(":")
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        factory = obj
    return factory(spec)
