"""``nats://`` URLs: the servers, the stream, the credentials and the options of one NATS target.

    nats://[USER:PASSWORD@ | TOKEN@]HOST[:PORT][,HOST[:PORT]...]/STREAM?OPTIONS

(``nats+tls://`` for TLS: the servers' certificates checked against the system's certificate
authorities, or ``tls_ca=FILE``.)

Credentials may also come from a JSON file (``?config=FILE``, keys ``user``, ``password``,
``token``, ``creds``, ``nkey``, ``tls_ca``, ``tls_cert``, ``tls_key``) so that they stay out of
command lines. They are never logged: `NatsTarget.display` and ``repr`` show the servers and
the stream only.
"""

from __future__ import annotations

import json
import re
import ssl
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from relayrl_gym.errors import ConfigError

__all__ = ["CREDENTIAL_KEYS", "OPTIONS", "NatsTarget", "parse_nats_url", "subject_token"]

#: What may name credentials, in the URL's query or in a ``config=`` file.
CREDENTIAL_KEYS = ("user", "password", "token", "creds", "nkey", "tls_ca", "tls_cert", "tls_key")
#: The other options of a NATS URL; one URL serves every part (a part ignores the others'):
#: the stream a sink or consumer creates when missing (``replicas``, ``max_age``,
#: ``max_bytes``), the sink (``spill``, ``close_timeout``, ``models=off``), the consumer
#: (``durable``, ``partition``), an inference client (``timeout``, ``retry``).
OPTIONS = ("replicas", "max_age", "max_bytes", "spill", "close_timeout", "models", "durable",
           "partition", "timeout", "retry")
_STREAM_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_DURABLE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_UNSAFE_TOKEN = re.compile(r"[^A-Za-z0-9_-]")


def subject_token(name: str) -> str:
    """``name`` made a valid NATS subject token (letters, digits, ``_`` and ``-`` kept; any
    other character written ``=XX`` in hex), so that distinct names stay distinct.

    >>> subject_token("CartPole-v1-20261205T1200-ab12"), subject_token("ALE/Pong.v5")
    ('CartPole-v1-20261205T1200-ab12', 'ALE=2fPong=2ev5')
    """
    return _UNSAFE_TOKEN.sub(lambda m: "".join(f"={b:02x}" for b in m.group().encode()), name)


@dataclass(frozen=True)
class NatsTarget:
    """Where and how to reach one JetStream stream; `parse_nats_url` builds it.

    >>> target = parse_nats_url("nats://me:pw@127.0.0.1:4222/relayrl?replicas=3")
    >>> target.servers, target.stream, target.replicas, target.display
    (('nats://127.0.0.1:4222',), 'relayrl', 3, 'nats://127.0.0.1:4222/relayrl')
    >>> "pw" in repr(target), parse_nats_url("nats://a,b:4223/s?replicas=3").address
    (False, 'nats://a:4222,b:4223/s')
    """

    servers: tuple[str, ...]
    stream: str
    #: The subject prefix: the stream's subjects are ``PREFIX.>`` (the stream name, unless an
    #: existing stream says otherwise).
    prefix: str = ""
    replicas: int = 1
    #: Options that are not credentials (``replicas``, ``durable``, ``spill``...), as given.
    options: dict[str, str] = field(default_factory=dict)
    credentials: dict[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self.prefix:
            object.__setattr__(self, "prefix", self.stream)

    @property
    def display(self) -> str:
        """The target for logs and messages: servers and stream, no credentials."""
        return self.address

    @property
    def address(self) -> str:
        """A URL of the stream without credentials or options (``nats://H:P,H:P/STREAM``)."""
        scheme = "nats+tls" if self.servers[0].startswith("tls://") else "nats"
        hosts = ",".join(server.split("://", 1)[1] for server in self.servers)
        return f"{scheme}://{hosts}/{self.stream}"

    def __repr__(self) -> str:
        return f"NatsTarget({self.display!r})"

    def with_prefix(self, prefix: str) -> NatsTarget:
        return replace(self, prefix=prefix)

    def option(self, name: str, default: Any = None) -> Any:
        return self.options.get(name, default)

    def number(self, name: str, default: float) -> float:
        """Option ``name`` as a number of seconds or bytes; `ConfigError` when it is not."""
        raw = self.options.get(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            value = -1.0
        if not value >= 0:
            raise ConfigError(f"`{name}` in the NATS URL {self.display!r} must be a number "
                              f">= 0, got {raw!r}")
        return value

    def connect_options(self) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect`` (credentials and TLS included)."""
        creds = self.credentials
        out: dict[str, Any] = {"servers": list(self.servers)}
        for key in ("user", "password", "token"):
            if key in creds:
                out[key] = creds[key]
        if "creds" in creds:
            out["user_credentials"] = creds["creds"]
        if "nkey" in creds:
            out["nkeys_seed"] = creds["nkey"]
        if any(key in creds for key in ("tls_ca", "tls_cert", "tls_key")):
            context = ssl.create_default_context(cafile=creds.get("tls_ca"))
            if "tls_cert" in creds:
                context.load_cert_chain(creds["tls_cert"], creds.get("tls_key"))
            out["tls"] = context
        return out


def parse_nats_url(url: str) -> NatsTarget:
    """Parses ``nats://[CREDENTIALS@]HOST[:PORT][,HOST[:PORT]...]/STREAM?OPTIONS``.

    Args:
        url: the URL (``nats+tls://`` for TLS).

    Raises:
        ConfigError: what is wrong with the URL, and how to write it.

    >>> parse_nats_url("nats://a:4222,b/runs").servers
    ('nats://a:4222', 'nats://b:4222')
    >>> parse_nats_url("nats://a:4222")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    relayrl_gym.errors.ConfigError: the NATS URL 'nats://a:4222' names no stream: write ...
    """
    parts = urlsplit(url)
    if parts.scheme not in ("nats", "nats+tls"):
        raise ConfigError(f"a NATS URL starts with nats:// (or nats+tls:// for TLS), got "
                          f"{url.split('://', 1)[0]!r}")
    server_scheme = "tls" if parts.scheme == "nats+tls" else "nats"
    userinfo, _, hosts = parts.netloc.rpartition("@")
    shown = f"{parts.scheme}://{hosts}{parts.path}"
    stream = parts.path.strip("/")
    if not stream:
        raise ConfigError(f"the NATS URL {shown!r} names no stream: write "
                          "nats://HOST:PORT/STREAM (e.g. nats://127.0.0.1:4222/relayrl)")
    if not _STREAM_NAME.fullmatch(stream):
        raise ConfigError(f"the stream name {stream!r} in {shown!r} must be 1-64 letters, "
                          "digits, '_' or '-'")
    servers = []
    for host in hosts.split(","):
        if not host:
            raise ConfigError(f"the NATS URL {shown!r} has an empty server address")
        servers.append(f"{server_scheme}://{host if ':' in host else host + ':4222'}")
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    credentials = {k: query.pop(k) for k in CREDENTIAL_KEYS if k in query}
    if userinfo:
        user, sep, password = userinfo.partition(":")
        if sep:
            credentials.update(user=unquote(user), password=unquote(password))
        else:
            credentials["token"] = unquote(user)
    if "config" in query:
        credentials = {**_read_config(query.pop("config"), shown), **credentials}
    allowed = set(OPTIONS)
    unknown = sorted(set(query) - allowed)
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} in the NATS URL {shown!r}; known: "
                          f"{sorted(allowed | {'config', *CREDENTIAL_KEYS})}")
    replicas = query.pop("replicas", "1")
    if not replicas.isdigit() or not 1 <= int(replicas) <= 5:
        raise ConfigError(f"`replicas` in {shown!r} must be 1 to 5 (3 for a replicated "
                          f"stream on a 3-node cluster), got {replicas!r}")
    if "durable" in query and not _DURABLE_NAME.fullmatch(query["durable"]):
        raise ConfigError(f"`durable` in {shown!r} must be 1-64 letters, digits, '_' or '-', "
                          f"got {query['durable']!r}")
    return NatsTarget(tuple(servers), stream, replicas=int(replicas), options=query,
                      credentials=credentials)


def _read_config(path: str, shown: str) -> dict[str, str]:
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read the NATS config file {path!r} named in {shown!r}: "
                          f"{type(err).__name__}: {err}") from err
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise ConfigError(f"the NATS config file {path!r} must hold a JSON object of strings "
                          f"(keys among {list(CREDENTIAL_KEYS)})")
    unknown = sorted(set(raw) - set(CREDENTIAL_KEYS))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in the NATS config file {path!r}; known: "
                          f"{list(CREDENTIAL_KEYS)}")
    return dict(raw)
