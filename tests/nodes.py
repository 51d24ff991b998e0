"""Real node processes for black-box tests: the node exactly as a user runs it.

    def test_something(nodes):                    # the fixture (tests/e2e/conftest.py)
        node = nodes.start_node()                 # init + run + wait for GET /status
        wait_until(lambda: node.height() >= 3, 20)
        node.cli("wallet", "balance")             # `python -m peerledger wallet balance --config ...`
        node.stop()                               # SIGTERM; asserts exit 0 within 5 s, nothing left behind

`Network` owns one temporary directory and one genesis spec (PoW, blocks every ~0.5 s, the
test keys of `FUNDED` holding `ALLOCATION` units each) shared by every node it makes, so
that N nodes of one network are N calls to `add_node`. Every node gets its own directory,
TOML file (test defaults, see `NODE_DEFAULTS`, with any dict merged over them), free
loopback ports, and a log file holding the process's stdout and stderr.

Peer-to-peer networks (tests/p2p) wire real nodes together:

    a, b, c = nodes.add_nodes(3, P2P, topology="mesh")   # keys made, seeds written
    nodes.start(a, b, c)                                  # init, spawn all, wait for every API
    nodes.wait_ready_peers(a, [b, c])                     # handshakes done
    nodes.wait_converged([a, b, c], 60)                   # one tip, one state hash

A node's identity (<data_dir>/node.key) is created before `peerledger init`, which keeps
it, so seeds naming every peer's key can be written first. A node may live in a network
namespace (`add_node(..., host=..., netns=...)`, see tests/netlab.py): its process is then
started with `ip netns exec`, and it listens (peers and API) on that namespace's address.

Each node process runs in its own session (and so its own process group): its mining and
validation workers stay in that group. `kill()` is a crash of the node process alone (its
workers must then end by themselves), `kill_group()` reaches them all, and "nothing left
behind" is checked by scanning /proc for live processes of that session. `Network.cleanup()`, run
by the fixture at teardown whatever the test did, kills every group still alive and fails
the test if any process outlives it.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import dataclasses
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from chain.keys import SigningKey, address_to_text
from chain.params import ChainParams
from chain.tx import sign_tx
from peerledger import keyfiles
from peerledger.client import ApiClient, ApiClientError
from peerledger.config import NetworkSettings, load_genesis
from storage.store import Store
from tests.chainbuilder import key
from tests.helpers import wait_until

PYTHON = sys.executable
REPO_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 30.0  # init + interpreter start + store open; generous for a loaded CI box
STOP_TIMEOUT_S = 5.0  # what DESIGN promises a user for SIGINT/SIGTERM
CLI_TIMEOUT_S = 60.0
API_PORT_ATTEMPTS = 3  # fresh API ports tried when the one found free was taken before the node bound it

# Test wallets funded at genesis: key(0) .. key(3) of tests.chainbuilder (fixed seeds).
FUNDED: tuple[SigningKey, ...] = tuple(key(i) for i in range(4))
ALLOCATION = 1_000_000_000_000  # units each (10,000 coins)

# A network that mines a block about every half second with one worker: at ~1.3-1.9 M
# hashes/s a worker finds a block of difficulty 400 k in ~0.2-0.3 s, and ASERT settles the
# rate on block_interval_ms within a few blocks.
GENESIS_DEFAULTS: dict[str, Any] = {
    "name": "peerledger-e2e",
    "consensus": "pow",
    "genesis_time_ms": 1_767_225_600_000,
    "block_interval_ms": 500,
    "initial_difficulty": 400_000,
    "block_reward": 5_000_000_000,
    "max_block_bytes": 1_000_000,
    "max_block_txs": 5000,
}

# Test defaults for every node; tests merge their own dict over these ("listen" and
# "[api] listen" get free ports unless the test sets them).
NODE_DEFAULTS: dict[str, dict[str, Any]] = {
    "node": {"data_dir": "data", "log_level": "INFO"},
    "network": {"enabled": False},
    "storage": {"map_size_mb": 16},
    "producer": {"enabled": True, "workers": 1, "chunk_nonces": 20_000},
    "validation": {"workers": 0},
    "api": {"enabled": True},
}

# Merge over NODE_DEFAULTS for a node that takes part in a network: peers found dead within
# seconds so that scenarios stay short, and generous enough for a loaded 2-core machine.
P2P: dict[str, dict[str, Any]] = {
    "network": {
        "enabled": True,
        "ping_interval_s": 1.0,
        "peer_timeout_s": 6.0,
        "handshake_timeout_s": 5.0,
    },
}

# Merge over P2P for scenarios that must run what users run: the shipped ping, peer and
# handshake timeouts (a slow or lossy link, where P2P's seconds would drop live sessions).
SHIPPED_LIVENESS: dict[str, dict[str, Any]] = {
    "network": {f.name: f.default for f in dataclasses.fields(NetworkSettings)
                if f.name in ("ping_interval_s", "peer_timeout_s", "handshake_timeout_s")},
}

# Who dials whom in `Network.add_nodes`: node i dials the nodes of these indexes.
TOPOLOGIES: dict[str, Callable[[int], list[int]]] = {
    "mesh": lambda i: list(range(i)),  # every node dials every earlier one (as `peerledger devnet`)
    "line": lambda i: [i - 1] if i else [],  # 0 - 1 - 2 - ...: relays must carry everything
    "star": lambda i: [0] if i else [],  # everyone dials node 0
    "none": lambda i: [],
}


# --------------------------------------------------------------------------- small tools


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports that were free a moment ago (bound together to port 0)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of `base` with `override` merged into it, table by table."""
    out = copy.deepcopy(dict(base))
    for k, v in override.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def toml_text(data: Mapping[str, Any]) -> str:
    """TOML for the small documents tests write: top-level values, tables, arrays of tables."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, (str, Path)):
            return json.dumps(str(v))
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(f"cannot write {type(v).__name__} as TOML")

    top, tables, arrays = [], [], []
    for k, v in data.items():
        if isinstance(v, Mapping):
            tables.append(f"\n[{k}]\n" + "".join(f"{kk} = {value(vv)}\n" for kk, vv in v.items()))
        elif isinstance(v, (list, tuple)) and v and all(isinstance(x, Mapping) for x in v):
            for entry in v:
                arrays.append(f"\n[[{k}]]\n" + "".join(f"{kk} = {value(vv)}\n" for kk, vv in entry.items()))
        else:
            top.append(f"{k} = {value(v)}\n")
    return "".join(top) + "".join(tables) + "".join(arrays)


def session_processes(sid: int) -> list[tuple[int, str]]:
    """Live (not zombie) processes of session `sid`, as (pid, command name), from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue  # gone meanwhile
        # pid (comm) state ppid pgrp session ...; comm may hold spaces and parentheses.
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        state, session = fields[0], int(fields[3])
        if session == sid and state not in ("Z", "X"):
            found.append((int(entry), comm))
    return found


def children_of(pid: int) -> list[int]:
    """Live processes whose parent is `pid`."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid and fields[0] not in ("Z", "X"):
            out.append(int(entry))
    return out


def peerledger(*args: str, cwd: Path | None = None, env: Mapping[str, str] | None = None,
               timeout: float = CLI_TIMEOUT_S, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m peerledger ARGS` as a user would; answers the completed process (never raises on status)."""
    full_env = dict(os.environ)
    full_env.pop("PEERLEDGER_CONFIG", None)
    full_env.pop("PEERLEDGER_PASSPHRASE", None)
    full_env.update(env or {})
    return subprocess.run(
        [PYTHON, "-m", "peerledger", *args],
        check=False,
        cwd=cwd,
        env=full_env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=None if stdin is not None else subprocess.DEVNULL,
    )


# --------------------------------------------------------------------------- the node


class NodeExited(AssertionError):
    """The node process ended when it should be running; the message carries its log."""


class NodeProcess:
    """One node: its directory, TOML file, data directory and (when started) its process."""

    def __init__(self, network: Network, name: str, config: Mapping[str, Any] | None = None, *,
                 host: str = "127.0.0.1", netns: str | None = None) -> None:
        self.network = network
        self.name = name
        self.host = host  # where it listens for peers and the API (and so where it is reached)
        self.netns = netns  # started with `ip netns exec <netns>` when set
        self.dir = network.root / name
        self.dir.mkdir(parents=True)
        self.config_path = self.dir / "node.toml"
        self.log_path = self.dir / "node.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.paused = False
        self.env: dict[str, str] = {}  # set in the node's environment at its next start (e.g. a clock skew)
        self._log_file = None
        self._key: bytes | None = None
        listen_port, api_port = free_ports(2)
        defaults = merge(
            NODE_DEFAULTS,
            {
                "node": {"name": name, "genesis": str(network.genesis_path)},
                "network": {"listen": f"{host}:{listen_port}"},
                "api": {"listen": f"{host}:{api_port}"},
            },
        )
        self.config: dict[str, Any] = merge(defaults, config or {})
        self.write_config()

    # --- files ---------------------------------------------------------------------------

    def write_config(self) -> None:
        self.config_path.write_text(toml_text(self.config))

    @property
    def data_dir(self) -> Path:
        return (self.dir / self.config["node"]["data_dir"]).resolve()

    @property
    def api_address(self) -> tuple[str, int]:
        host, _, port = self.config["api"]["listen"].rpartition(":")
        return host, int(port)

    @property
    def client(self) -> ApiClient:
        return ApiClient(*self.api_address)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wallet_address(self, name: str = "default") -> str:
        return (self.data_dir / "wallets" / f"{name}.address").read_text().strip()

    # --- identity and peers (set before the node starts) -------------------------------------

    @property
    def key(self) -> bytes:
        """The node's public key. Creates <data_dir>/node.key first if needed, as `peerledger
        init` would (init keeps an existing key), so that peers can name it in their seeds."""
        if self._key is None:
            if (self.data_dir / keyfiles.NODE_KEY_FILE).exists():
                self._key = keyfiles.load_node_key(self.data_dir)[0]
            else:
                self.data_dir.mkdir(parents=True, exist_ok=True)
                os.chmod(self.data_dir, 0o700)
                self._key = keyfiles.create_node_key(self.data_dir)
        return self._key

    @property
    def node_id(self) -> str:
        return self.key.hex()

    @property
    def listen(self) -> str:
        return self.config["network"]["listen"]

    @property
    def listen_address(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host, int(port)

    @property
    def peer_address(self) -> str:
        """"<key hex>@host:port", what other nodes list in their seeds to dial this one."""
        return f"{self.node_id}@{self.listen}"

    def dial(self, *peers: NodeProcess) -> None:
        """Add `peers` to this node's seeds (rewrites its file: takes effect at its next start)."""
        seeds = list(self.config["network"].get("seeds", []))
        seeds += [p.peer_address for p in peers if p.peer_address not in seeds]
        self.config["network"]["seeds"] = seeds
        self.write_config()

    @contextlib.contextmanager
    def open_store(self) -> Iterator[Store]:
        """The stopped node's store, opened in the test process as the node opens it."""
        assert not self.running, f"{self.name} is running; stop or kill it before opening its store"
        storage = self.config.get("storage", {})
        store = Store.open(self.data_dir, self.network.params, map_size=storage.get("map_size_mb", 1024) << 20,
                           sync=storage.get("sync", True))
        try:
            yield store
        finally:
            store.close()

    # --- the command line ------------------------------------------------------------------

    def cli(self, *args: str, check: bool = True, timeout: float = CLI_TIMEOUT_S,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """`python -m peerledger ARGS --config <this node's file>`; with `check`, fail unless status 0."""
        result = peerledger(*args, "--config", str(self.config_path), cwd=self.dir, env=env, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(
                f"`peerledger {' '.join(args)}` exited with {result.returncode}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result

    def init(self) -> subprocess.CompletedProcess[str]:
        return self.cli("init")

    # --- the process -----------------------------------------------------------------------

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was never started"
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def spawn(self) -> subprocess.Popen[bytes]:
        """Start `python -m peerledger run` without waiting for it (see `start`)."""
        assert not self.running, f"{self.name} is already running (pid {self.pid})"
        self._close_log()
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed when the process ends
        self.starts += 1
        self._log_file.write(f"----- start {self.starts} -----\n".encode())
        self._log_file.flush()
        env = dict(os.environ)
        env.pop("PEERLEDGER_CONFIG", None)
        env.update(self.env)
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []  # it execs: the pid is the node's
        self.paused = False
        self.proc = subprocess.Popen(
            [*prefix, PYTHON, "-m", "peerledger", "run", "--config", str(self.config_path)],
            cwd=self.dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own session and process group: its workers stay with it
        )
        self.network.track(self)
        return self.proc

    def start(self, *, timeout: float = START_TIMEOUT_S) -> NodeProcess:
        """Start the node and wait (bounded) until GET /status answers."""
        self.spawn()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            self.assert_running()
            try:
                return self.client.status()
            except ApiClientError:
                return None

        for attempt in range(API_PORT_ATTEMPTS):
            try:
                return wait_until(ready, timeout, interval=0.05, message=f"{self.name}'s API at {self.api_address}")
            except NodeExited:
                # The free port found for the API was taken meanwhile by another process of
                # this busy machine (peers name only the listen port, so the API's may move).
                taken = "cannot listen for the API" in self._last_run_log() and "in use" in self._last_run_log()
                if not taken or self.netns or attempt == API_PORT_ATTEMPTS - 1:
                    raise
                self.config["api"]["listen"] = f"{self.host}:{free_ports(1)[0]}"
                self.write_config()
                self.spawn()
        raise AssertionError("unreachable")

    def _last_run_log(self) -> str:
        return self.log_text().rsplit("----- start ", 1)[-1]

    def assert_running(self) -> None:
        if not self.running:
            code = None if self.proc is None else self.proc.returncode
            raise NodeExited(f"{self.name} is not running (exit status {code})\n{self.describe()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT_S) -> int:
        """Send `sig` to the node alone, as a service manager does; assert it exits within
        `timeout` seconds, leaving no process behind, and answer its exit status.

        A node that does not stop in time is killed (with its workers) and the test fails.
        """
        assert self.running, f"{self.name} is not running\n{self.describe()}"
        started = time.monotonic()
        if self.paused:
            self.resume()
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_group()
            raise AssertionError(
                f"{self.name} did not stop within {timeout:g} s of {signal.Signals(sig).name}; killed\n{self.describe()}"
            ) from None
        elapsed = time.monotonic() - started
        self._close_log()
        self.assert_nothing_left(timeout=max(0.5, timeout - elapsed))
        return code

    def kill(self) -> None:
        """SIGKILL the node process alone (a crash); its workers must go away by themselves."""
        assert self.running, f"{self.name} is not running\n{self.describe()}"
        self.proc.kill()
        self.proc.wait(STOP_TIMEOUT_S)
        self._close_log()

    def pause(self) -> None:
        """SIGSTOP the node's whole process group (node and workers): a peer gone silent
        without closing anything. `resume` (or stop, or teardown) brings it back."""
        assert self.running, f"{self.name} is not running\n{self.describe()}"
        os.killpg(self.proc.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        """SIGCONT the node's process group."""
        assert self.proc is not None, f"{self.name} was never started"
        try:
            os.killpg(self.proc.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        self.paused = False

    def workers(self) -> list[int]:
        """Pids of the node's worker processes (mining, signature pools): multiprocessing's
        spawned children, not its resource tracker."""
        if not self.running:
            return []
        found = []
        for pid in children_of(self.proc.pid):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmdline = f.read()
            except OSError:
                continue
            if b"spawn_main" in cmdline:
                found.append(pid)
        return found

    def pause_workers(self) -> list[int]:
        """SIGSTOP the node's workers only: the node stays connected and answers, but its
        miner finds nothing. Answers the pids paused (resume_workers takes them)."""
        pids = self.workers()
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        return pids

    def resume_workers(self, pids: list[int]) -> None:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass

    def kill_group(self) -> None:
        """SIGKILL every process of the node's session (the node and all its workers)."""
        if self.proc is None:
            return
        for pid, _ in session_processes(self.proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc.poll() is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
        self.paused = False
        self._close_log()

    def restart(self, *, timeout: float = START_TIMEOUT_S) -> NodeProcess:
        if self.running:
            self.stop()
        return self.start(timeout=timeout)

    def leftovers(self) -> list[tuple[int, str]]:
        """Live processes of this node's session other than a still-running node itself."""
        if self.proc is None:
            return []
        own = self.proc.pid if self.running else None
        return [(pid, comm) for pid, comm in session_processes(self.proc.pid) if pid != own]

    def assert_nothing_left(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Wait (bounded) until no process of the node's session is alive."""
        wait_until(lambda: not self.leftovers(), timeout, interval=0.05,
                   message=f"{self.name}'s processes to end: {self.leftovers()}")

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    # --- asking the running node ---------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return self.client.status()

    def height(self) -> int:
        return self.client.status()["height"]

    def wait_for_height(self, height: int, timeout: float = 30.0) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            self.assert_running()
            status = self.client.status()
            return status if status["height"] >= height else None

        return wait_until(reached, timeout, interval=0.05, message=f"{self.name} to reach height {height}")

    def peers(self) -> list[dict[str, Any]]:
        """GET /peers: sessions (node_id, ready, direction, height, score...) and bans."""
        return self.client.peers()

    def ready_peers(self) -> set[str]:
        """Node ids (hex) of the peers this node has finished a handshake with."""
        return {p["node_id"] for p in self.peers() if p.get("ready")}

    def banned(self) -> set[str]:
        """Node ids (hex) this node bans now."""
        return {p["node_id"] for p in self.peers() if "banned_until_ms" in p}

    def submit(self, raw: bytes) -> str:
        """POST /txs; answers the transaction id (hex). ApiClientError if the node refuses it."""
        return self.client.submit(raw)

    def tx_status(self, txid: str) -> str | None:
        """"confirmed", "pending", or None when the node knows no such transaction."""
        try:
            return self.client.tx(txid)["status"]
        except ApiClientError as e:
            if e.status == 404:
                return None
            raise

    def http(self, method: str, path: str, body: bytes | None = None, headers: Mapping[str, str] | None = None,
             *, content_length: bool = True, timeout: float = 10.0) -> tuple[int, Any]:
        """One raw HTTP request to the API, for requests ApiClient would never send.

        Answers (status, decoded JSON body, None if empty, or the text of a body that is not
        JSON). `content_length=False` leaves the
        Content-Length header out even when there is a body.
        """
        connection = http.client.HTTPConnection(*self.api_address, timeout=timeout)
        try:
            connection.putrequest(method, path, skip_accept_encoding=True)
            headers = dict(headers or {})
            if body is not None and content_length and not any(k.lower() == "content-length" for k in headers):
                headers["Content-Length"] = str(len(body))
            for name, value in headers.items():
                connection.putheader(name, value)
            connection.endheaders()
            if body:
                connection.send(body)
            response = connection.getresponse()
            data = response.read()
            try:
                return response.status, (json.loads(data) if data else None)
            except ValueError:
                return response.status, data.decode(errors="replace")  # not JSON: the text, for the failure
        finally:
            connection.close()

    def describe(self, tail: int = 60) -> str:
        lines = self.log_text().splitlines()
        shown = "\n".join(lines[-tail:])
        return f"--- {self.name}: last {min(tail, len(lines))} lines of {self.log_path} ---\n{shown}"


# --------------------------------------------------------------------------- the network


class Network:
    """A temporary directory, one genesis spec and the nodes that share it."""

    def __init__(self, root: Path, genesis: Mapping[str, Any] | None = None,
                 allocations: Mapping[str, int] | None = None) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.genesis_path = root / "genesis.toml"
        self.genesis: dict[str, Any] = merge(GENESIS_DEFAULTS, genesis or {})
        self.allocations: dict[str, int] = {address_to_text(k.address): ALLOCATION for k in FUNDED}
        self.allocations.update(allocations or {})
        self.nodes: list[NodeProcess] = []
        self._started: list[NodeProcess] = []
        self.write_genesis()

    def write_genesis(self) -> None:
        """(Re)write the genesis file; do it before any node is initialised, or its store won't open."""
        spec = dict(self.genesis)
        spec["allocations"] = [{"address": a, "amount": n} for a, n in self.allocations.items()]
        self.genesis_path.write_text(toml_text(spec))

    @property
    def params(self) -> ChainParams:
        return load_genesis(self.genesis_path)

    def add_node(self, config: Mapping[str, Any] | None = None, name: str | None = None, *,
                 host: str = "127.0.0.1", netns: str | None = None) -> NodeProcess:
        node = NodeProcess(self, name or f"node{len(self.nodes)}", config, host=host, netns=netns)
        self.nodes.append(node)
        return node

    def add_nodes(self, count: int, config: Mapping[str, Any] | None = None, *, topology: str = "mesh",
                  places: Sequence[tuple[str, str | None]] | None = None) -> list[NodeProcess]:
        """`count` new nodes (not started) with `config` merged over the defaults, wired by
        `topology` (see TOPOLOGIES: "mesh" = each dials every earlier one). `places` gives
        each node's (host, netns), for nodes in network namespaces. Merge `P2P` into
        `config` for a network that is quick to notice dead peers."""
        if topology not in TOPOLOGIES:
            raise ValueError(f"unknown topology {topology!r}; one of {sorted(TOPOLOGIES)}")
        if places is not None and len(places) != count:
            raise ValueError(f"{count} nodes but {len(places)} places")
        config = merge({"network": {"enabled": True}}, config or {})
        added = []
        for i in range(count):
            host, netns = places[i] if places is not None else ("127.0.0.1", None)
            added.append(self.add_node(config, host=host, netns=netns))
        for i, node in enumerate(added):
            node.dial(*(added[j] for j in TOPOLOGIES[topology](i)))
        return added

    def start(self, *nodes: NodeProcess, timeout: float = START_TIMEOUT_S) -> list[NodeProcess]:
        """`peerledger init` each node not initialised yet, start them all, wait for every API."""
        for node in nodes:
            if not (node.data_dir / "ledger").exists() and node.starts == 0:
                node.init()
        for node in nodes:
            node.spawn()
        for node in nodes:
            node.wait_ready(timeout)
        return list(nodes)

    def start_node(self, config: Mapping[str, Any] | None = None, name: str | None = None) -> NodeProcess:
        """add_node, `peerledger init`, start and wait for its API."""
        node = self.add_node(config, name)
        node.init()
        return node.start()

    def start_nodes(self, count: int, config: Mapping[str, Any] | None = None) -> list[NodeProcess]:
        added = [self.add_node(config) for _ in range(count)]
        for node in added:
            node.init()
            node.spawn()
        for node in added:
            node.wait_ready()
        return added

    # --- barriers over several nodes --------------------------------------------------------

    @staticmethod
    def wait_ready_peers(node: NodeProcess, peers: Sequence[NodeProcess], timeout: float = 60.0) -> None:
        """Wait until `node` lists every one of `peers` as a ready peer (handshake done)."""
        wanted = {p.node_id for p in peers}

        def ready() -> bool:
            node.assert_running()
            return wanted <= node.ready_peers()

        wait_until(ready, timeout, interval=0.1, ignore=(ApiClientError,),
                   message=f"{node.name} to be ready with {[p.name for p in peers]}")

    @staticmethod
    def wait_converged(nodes: Sequence[NodeProcess], timeout: float = 60.0, *, min_height: int = 0) -> dict[str, Any]:
        """Wait until every node reports the same tip and state hash (at `min_height` or above);
        answers that common status. Polls all nodes in a row, so the agreement is real."""

        def agreed() -> dict[str, Any] | None:
            statuses = []
            for node in nodes:
                node.assert_running()
                statuses.append(node.status())
            views = {(s["tip"], s["state_hash"]) for s in statuses}
            if len(views) == 1 and statuses[0]["height"] >= min_height:
                return statuses[0]
            return None

        names = [n.name for n in nodes]
        return wait_until(agreed, timeout, interval=0.1, ignore=(ApiClientError,),
                          message=f"{names} to agree on one tip and state hash (height >= {min_height})")

    @staticmethod
    def wait_confirmed(nodes: Sequence[NodeProcess], txid: str, timeout: float = 60.0) -> None:
        """Wait until transaction `txid` is confirmed on every one of `nodes`."""

        def everywhere() -> bool:
            for node in nodes:
                node.assert_running()
                if node.tx_status(txid) != "confirmed":
                    return False
            return True

        wait_until(everywhere, timeout, interval=0.1, ignore=(ApiClientError,),
                   message=f"transaction {txid[:16]} to be confirmed on {[n.name for n in nodes]}")

    @staticmethod
    def misbehaviour(nodes: Sequence[NodeProcess]) -> dict[str, list[dict[str, Any]]]:
        """What each node holds against its peers: bans, and sessions with a score. Honest
        nodes among themselves must hold nothing (an empty dict)."""
        found = {}
        for node in nodes:
            held = [p for p in node.peers() if "banned_until_ms" in p or p.get("score")]
            if held:
                found[node.name] = held
        return found

    def transfer(self, sender: int, nonce: int, *, amount: int = 1000, fee: int = 1000, recipient: int = 3) -> bytes:
        """A signed transfer (raw bytes) from FUNDED[sender] to FUNDED[recipient] on this network."""
        return sign_tx(FUNDED[sender], self.params.network_id, nonce=nonce, fee=fee,
                       recipient=FUNDED[recipient].address, amount=amount).raw

    def track(self, node: NodeProcess) -> None:
        if node not in self._started:
            self._started.append(node)
        _LIVE.add(self)

    def __iter__(self) -> Iterator[NodeProcess]:
        return iter(self.nodes)

    def cleanup(self) -> list[str]:
        """Kill every node process still alive; answers what outlived its node.

        A node still running is simply killed (tests need not stop what they start). A node
        that had ended but whose workers had not (within STOP_TIMEOUT_S), or any process
        that survives SIGKILL, is a problem reported to the caller.
        """
        problems = []
        for node in self._started:
            if not node.running:
                try:
                    node.assert_nothing_left(timeout=STOP_TIMEOUT_S)
                except AssertionError as e:
                    problems.append(str(e))
            node.kill_group()
        for node in self._started:
            try:
                node.assert_nothing_left(timeout=STOP_TIMEOUT_S)
            except AssertionError as e:
                problems.append(f"after SIGKILL: {e}")
        _LIVE.discard(self)
        return problems


_LIVE: set[Network] = set()


@atexit.register
def _kill_everything() -> None:  # last resort if pytest itself is interrupted
    for network in list(_LIVE):
        for node in network._started:
            node.kill_group()


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Network]:
    """A Network in tmp_path. At teardown, whatever the test did, every node process is
    killed; the test fails if any process outlived its node or survived SIGKILL. The tail
    of every node's log is printed (pytest shows it when the test failed)."""
    network = Network(tmp_path / "net")
    try:
        yield network
    finally:
        problems = network.cleanup()
        for node in network._started:
            print(node.describe())
    if problems:
        pytest.fail("node processes outlived the test:\n" + "\n".join(problems))
