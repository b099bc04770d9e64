"""Private NATS servers with JetStream for tests: one server, or a cluster of them.

Each server is ``nats-server -c FILE`` on free loopback ports, with its config, store and log in
a folder of its own. Nothing here touches a NATS server it did not start (the system one on
port 4222 included); a server a test forgot is killed at interpreter exit, and, on Linux, by the
kernel if the test process dies without running its exit handlers.
"""

from __future__ import annotations

import atexit
import ctypes
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["NATS_SERVER", "NatsCluster", "NatsServer", "free_port"]

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"
"""The ``nats-server`` binary the servers run (2.9 or later: JetStream clustering, /healthz)."""

_handed_out: set[int] = set()
_running: set[subprocess.Popen] = set()
_prctl = ctypes.CDLL(None).prctl if sys.platform == "linux" else None


def free_port() -> int:
    """A loopback TCP port nothing listens on now, never the same twice in this process."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def _die_with_parent() -> None:
    """In the child before exec: the kernel SIGKILLs the server when its parent thread dies."""
    if _prctl is not None:
        _prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@atexit.register
def _kill_running() -> None:
    for proc in list(_running):
        proc.kill()
        proc.wait(5)


def _get_json(port: int, path: str) -> dict[str, Any]:
    """The JSON an HTTP monitoring endpoint answers; OSError when it does not answer 200."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
        return json.loads(resp.read())


class NatsServer:
    """One ``nats-server`` with JetStream on 127.0.0.1, its config, store and log in ``root/name``.

    Ports and store are fixed when the object is made, so `restart` brings back the same server
    with its streams and messages. `start` returns once clients can connect and JetStream is
    enabled; a failed start raises RuntimeError with the tail of the server's log.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as root, NatsServer(root) as server:
    ...     server.url.startswith("nats://127.0.0.1:"), server.alive
    (True, True)
    >>> server.alive
    False
    """

    def __init__(self, root: str | Path, *, name: str = "nats", cluster_name: str = "cluster",
                 cluster_port: int | None = None, routes: Sequence[str] = (),
                 user: str | None = None, password: str | None = None, token: str | None = None,
                 auth: str | None = None, binary: str = NATS_SERVER) -> None:
        """Args:
            root: the folder that gets this server's folder, ``root/name`` (pytest's tmp_path).
            name: the server's name (unique in a cluster: JetStream places replicas by it).
            cluster_name: the cluster's name, when ``cluster_port`` is given.
            cluster_port: the port of routes from other servers; None: no cluster block.
            routes: ``nats-route://127.0.0.1:PORT`` URLs of the other servers.
            user: with ``password``, the one user clients must log in as.
            password: ``user``'s password.
            token: the token clients must give (instead of user and password).
            auth: config text added as is, such as an ``authorization {...}`` or
                ``accounts {...}`` block (instead of the above).
            binary: the ``nats-server`` to run.
        """
        if (user is None) != (password is None):
            raise ValueError("`user` and `password` go together, got only one of them")
        if sum(x is not None for x in (user, token, auth)) > 1:
            raise ValueError("give one of `user`/`password`, `token` and `auth`, got several")
        self.name = name
        self.dir = Path(root) / name
        self.port = free_port()
        self.monitor_port = free_port()
        self.cluster_name = cluster_name
        self.cluster_port = cluster_port
        self.routes = list(routes)
        self.user, self.password, self.token, self.auth = user, password, token, auth
        self.binary = binary
        self.config_file = self.dir / "server.conf"
        self.log_file = self.dir / "server.log"
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """``nats://127.0.0.1:PORT``, the client URL."""
        return f"nats://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        """Whether the server process runs."""
        return self._live() is not None

    def start(self, timeout: float = 10.0) -> NatsServer:
        """Run the server and wait until it is ready; self."""
        self._spawn()
        self._wait_ready(timeout)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (a clean shutdown), SIGKILL after ``timeout`` seconds; nothing if not running."""
        proc = self._terminate()
        if proc is not None:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
        self._reap()

    def kill(self) -> None:
        """SIGKILL, as a crash would; nothing if not running."""
        if (proc := self._live()) is not None:
            proc.kill()
        self._reap()

    def restart(self, timeout: float = 10.0) -> NatsServer:
        """Stop the server if it runs and start it again on its ports, with its store; self."""
        self.stop()
        return self.start(timeout)

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the server's log (all its runs)."""
        try:
            text = self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> NatsServer:
        return self if self.alive else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {proc.pid}" if (proc := self._live()) is not None else "stopped"
        return f"NatsServer({self.name!r}, {self.url}, {state})"

    def _config(self) -> str:
        store = json.dumps(str(self.dir / "store"))
        lines = [f"server_name: {json.dumps(self.name)}",
                 f"listen: 127.0.0.1:{self.port}",
                 f"http: 127.0.0.1:{self.monitor_port}",
                 f"jetstream {{ store_dir: {store}, max_memory_store: 256MB, "
                 "max_file_store: 1GB }"]
        if self.cluster_port is not None:
            routes = ", ".join(json.dumps(r) for r in self.routes)
            lines.append(f"cluster {{ name: {json.dumps(self.cluster_name)}, "
                         f"listen: 127.0.0.1:{self.cluster_port}, routes: [{routes}] }}")
        if self.user is not None:
            lines.append(f"authorization {{ user: {json.dumps(self.user)}, "
                         f"password: {json.dumps(self.password)} }}")
        if self.token is not None:
            lines.append(f"authorization {{ token: {json.dumps(self.token)} }}")
        if self.auth is not None:
            lines.append(self.auth)
        return "\n".join(lines) + "\n"

    def _spawn(self) -> None:
        """Run the process without waiting for it to be ready."""
        if self.alive:
            raise RuntimeError(f"{self!r} already runs")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(self._config())
        # The death signal follows the thread that forks: only the main thread lives long enough.
        on_main = threading.current_thread() is threading.main_thread()
        with open(self.log_file, "ab") as log:
            self._proc = subprocess.Popen(
                [self.binary, "-c", str(self.config_file)], stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if on_main else None)
        _running.add(self._proc)

    def _wait_ready(self, timeout: float) -> None:
        """Until clients can connect and JetStream is enabled; kill and raise if it does not."""
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self._proc is not None and self._proc.poll() is not None:
                problem = f"exited with status {self._proc.returncode}"
            elif time.monotonic() > deadline:
                problem = f"was not ready after {timeout} s"
            else:
                time.sleep(0.02)
                continue
            self.kill()
            raise RuntimeError(f"nats-server {self.name!r} ({self.config_file}) {problem}; "
                               f"the end of {self.log_file}:\n{self.log_tail()}")

    def _ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                pass
            health = _get_json(self.monitor_port, "/healthz?js-enabled-only=true")
        except OSError:
            return False
        return health.get("status") == "ok"

    def _live(self) -> subprocess.Popen | None:
        """The server process while it runs."""
        return self._proc if self._proc is not None and self._proc.poll() is None else None

    def _terminate(self) -> subprocess.Popen | None:
        """SIGTERM without waiting; the process signalled, if it ran."""
        if (proc := self._live()) is not None:
            proc.terminate()
        return proc

    def _reap(self) -> None:
        if self._proc is not None:
            self._proc.wait(10)
            _running.discard(self._proc)

    def _jsz(self, query: str = "") -> dict[str, Any] | None:
        """The server's /jsz report, None when it does not answer."""
        if not self.alive:
            return None
        try:
            return _get_json(self.monitor_port, f"/jsz{query}")
        except (OSError, ValueError):
            return None


class NatsCluster:
    """``size`` NatsServers routed to each other as one JetStream cluster, named n1, n2, ...

    `start` returns once every server knows the JetStream meta leader, so streams can be made
    at once. A killed server can be started again with its own `NatsServer.restart`.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as root, NatsCluster(root) as cluster:
    ...     len(cluster.urls), cluster.meta_leader() in cluster.servers
    (3, True)
    """

    def __init__(self, root: str | Path, size: int = 3, *, name: str = "cluster",
                 **options: Any) -> None:
        """Args:
            root: the folder that gets the servers' folders (pytest's tmp_path).
            size: how many servers; 3 tolerates the loss of one.
            name: the cluster's name.
            options: given to every NatsServer, such as ``user`` and ``password``.
        """
        if size < 1:
            raise ValueError(f"`size` must be >= 1, got {size}")
        ports = [free_port() for _ in range(size)]
        self.servers = [
            NatsServer(root, name=f"n{i + 1}", cluster_name=name, cluster_port=port,
                       routes=[f"nats-route://127.0.0.1:{p}" for p in ports if p != port],
                       **options)
            for i, port in enumerate(ports)]

    @property
    def urls(self) -> list[str]:
        """The servers' client URLs, the ``servers=`` of ``nats.connect``."""
        return [server.url for server in self.servers]

    def start(self, timeout: float = 30.0) -> NatsCluster:
        """Run every server and wait until they agree on a meta leader; self."""
        deadline = time.monotonic() + timeout
        try:
            for server in self.servers:
                server._spawn()
            for server in self.servers:
                server._wait_ready(max(deadline - time.monotonic(), 0.1))
            self.meta_leader(max(deadline - time.monotonic(), 0.1))
        except BaseException:
            self.close()
            raise
        return self

    def meta_leader(self, timeout: float = 10.0) -> NatsServer:
        """The live server leading JetStream's meta group, once every live server names it."""
        by_name = {server.name: server for server in self.servers}
        deadline = time.monotonic() + timeout
        while True:
            live = [s for s in self.servers if s.alive]
            reports = [s._jsz() for s in live]
            leaders = {(r or {}).get("meta_cluster", {}).get("leader") for r in reports}
            if len(leaders) == 1 and (leader := by_name.get(leaders.pop())) in live:
                return leader
            if time.monotonic() > deadline:
                raise TimeoutError(f"no JetStream meta leader after {timeout} s; "
                                   f"the end of {live[0].log_file if live else 'no log'}:\n"
                                   f"{live[0].log_tail() if live else ''}")
            time.sleep(0.05)

    def stream_leader(self, stream: str, timeout: float = 10.0) -> NatsServer:
        """The live server leading ``stream`` (in any account), waiting for an election."""
        deadline = time.monotonic() + timeout
        while True:
            for server in self.servers:
                if self._leads(server, stream):
                    return server
            if time.monotonic() > deadline:
                raise TimeoutError(f"no live server leads stream {stream!r} after {timeout} s")
            time.sleep(0.05)

    def close(self) -> None:
        """Stop every server: SIGTERM to all, then wait (SIGKILL after 10 s)."""
        for server in self.servers:
            server._terminate()
        for server in self.servers:
            server.stop()

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _leads(server: NatsServer, stream: str) -> bool:
        """Whether ``server`` itself says it leads ``stream`` (a follower's view may be stale)."""
        report = server._jsz("?accounts=true&streams=true") or {}
        return any(detail.get("name") == stream
                   and detail.get("cluster", {}).get("leader") == server.name
                   for account in report.get("account_details") or []
                   for detail in account.get("stream_detail") or [])
