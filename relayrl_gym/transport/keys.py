"""CurveZMQ keys: generating them, and reading the server's and a client's.

Layout written by `generate_keys` (``relayrl-gym keygen DIR``)::

    DIR/server.key, DIR/server.key_secret     the collector's keypair (keep the secret there)
    DIR/authorized/<name>.key                 the allow-list: public keys of accepted clients
    DIR/clients/<name>/                       what to copy to an actor host: client.key,
                                              client.key_secret and the server's server.key

The collector takes ``curve_keys=DIR``; a client takes ``?curve=DIR/clients/<name>`` in its
sink URL. Adding a client later: ``relayrl-gym keygen DIR --client NAME`` (existing keys kept).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import NamedTuple

from relayrl_gym.errors import ConfigError
from relayrl_gym.transport._zmq import require_zmq

__all__ = ["ClientKeys", "ServerKeys", "client_keys", "generate_keys", "server_keys"]


class ServerKeys(NamedTuple):
    """The collector's keypair and the folder of allowed client public keys."""

    public: bytes
    secret: bytes
    authorized: Path


class ClientKeys(NamedTuple):
    """A client's keypair and the server public key it expects."""

    public: bytes
    secret: bytes
    server: bytes


def generate_keys(directory: str | os.PathLike[str],
                  clients: list[str] | tuple[str, ...] = ("actor",)) -> Path:
    """Creates the server keypair (unless present) and one keypair per client name, whose
    public key joins the allow-list; returns ``directory``.

    >>> import tempfile
    >>> d = generate_keys(tempfile.mkdtemp(), ["a1"])
    >>> sorted(p.name for p in (d / "clients" / "a1").iterdir())
    ['client.key', 'client.key_secret', 'server.key']
    """
    require_zmq()
    import zmq.auth

    root = Path(directory)
    for name in clients:
        if not name or "/" in name or name.startswith("."):
            raise ConfigError(f"client name {name!r} must be a plain file name")
    try:
        root.mkdir(parents=True, exist_ok=True)
        if not (root / "server.key_secret").exists():
            zmq.auth.create_certificates(str(root), "server")
        os.chmod(root / "server.key_secret", 0o600)  # pyzmq leaves it to the umask
        (root / "authorized").mkdir(exist_ok=True)
        for name in clients:
            folder = root / "clients" / name
            folder.mkdir(parents=True, exist_ok=True)
            if not (folder / "client.key_secret").exists():
                zmq.auth.create_certificates(str(folder), "client")
            os.chmod(folder / "client.key_secret", 0o600)
            shutil.copyfile(root / "server.key", folder / "server.key")
            shutil.copyfile(folder / "client.key", root / "authorized" / f"{name}.key")
    except OSError as err:
        raise ConfigError(f"cannot write keys to {str(root)!r}: {err}") from err
    return root


def _load(path: Path, what: str) -> tuple[bytes, bytes | None]:
    require_zmq()
    import zmq.auth

    if not path.is_file():
        raise ConfigError(f"{what} {str(path)!r} is missing; create keys with "
                          "`relayrl-gym keygen DIR`")
    if "secret" in what and os.name == "posix" and path.stat().st_mode & 0o077:
        raise ConfigError(f"{what} {str(path)!r} can be read by other users (mode "
                          f"{path.stat().st_mode & 0o777:o}); make it private: chmod 600 "
                          f"{str(path)!r}")
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as err:
        raise ConfigError(f"{what} {str(path)!r} is not a ZMQ certificate: {err}") from err
    return public, secret


def server_keys(directory: str | os.PathLike[str]) -> ServerKeys:
    """Reads ``DIR/server.key_secret`` and the ``DIR/authorized`` allow-list."""
    root = Path(directory)
    public, secret = _load(root / "server.key_secret", "the server secret key")
    authorized = root / "authorized"
    if not authorized.is_dir() or not any(authorized.glob("*.key")):
        raise ConfigError(f"no allowed client keys in {str(authorized)!r}; add one with "
                          f"`relayrl-gym keygen {root} --client NAME`")
    for key in sorted(authorized.glob("*.key")):  # one bad file empties the whole allow-list
        _load(key, "the allowed client key")
    if secret is None:
        raise ConfigError(f"{str(root / 'server.key_secret')!r} holds no secret key")
    return ServerKeys(public, secret, authorized)


def client_keys(directory: str | os.PathLike[str]) -> ClientKeys:
    """Reads ``client.key_secret`` and ``server.key`` from a client key folder."""
    root = Path(directory)
    public, secret = _load(root / "client.key_secret", "the client secret key")
    server, _ = _load(root / "server.key", "the server public key")
    if secret is None:
        raise ConfigError(f"{str(root / 'client.key_secret')!r} holds no secret key")
    return ClientKeys(public, secret, server)
