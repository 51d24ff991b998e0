"""The fault suite's cluster, load and checkers: written once, used after every fault.

    cluster = Cluster.build(tmp, consensus="pow", size=5, lab=lab)   # 5 real nodes, each in a namespace
    with cluster.running(report, "partition: ring") as run:           # load + monitor around the fault
        before = run.checkpoint()                                     # what is final now
        lab.ring(cluster.hosts)
        ...
        lab.heal()
        run.after_heal(before)                                        # converge, nothing lost, bounded

`Cluster` is 5-7 real node processes of one network (Proof of Work: a genesis that mines a
block about every 0.6 s, or Proof of Stake: the genesis of tests/pos, one block a second),
wired as a mesh, optionally each in a network namespace of tests/netlab.py so that links can
be cut. `Load` is a wallet: it signs transfers from its own funded senders at a steady
rate, each sender through one node (so nonces arrive in order), resubmits what a node lost
(a crash before relay) as a wallet rebroadcasts, and remembers every transaction a node
accepted. `Monitor` samples every node twice a second - its status and, from /proc, its
resident memory and open descriptors - and holds the bounds.

The checkers (`Run`):

- converged: every honest node on one tip and one state hash within
  CONVERGE_BASE_S + CONVERGE_PER_BLOCK_S x (blocks the furthest node is behind); the time it
  took is the fault's convergence time in RESULTS.md;
- progressing: while a producer runs, the highest height moves at least every STUCK_S, and
  so does every node not excused by the fault at that moment (a node cut off from every
  producer is excused);
- nothing lost: the main-chain block at the finality depth before the fault (and with it
  every transaction confirmed at that depth) is still on every node's main chain, and a
  sample of those transactions still reads as confirmed in the same block;
- every accepted transaction confirmed, eventually (after the heal);
- bounded: every node's VmRSS, open descriptors, mempool size, sync orphans and in-flight
  requests, and transport send queue stay under BOUNDS for the whole run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from chain.keys import SigningKey, address_to_text
from chain.tx import sign_tx
from peerledger.client import ApiClient, ApiClientError
from tests.chainbuilder import key
from tests.helpers import wait_until
from tests.netlab import Host, NetLab
from tests.nodes import ALLOCATION, P2P, Network, NodeProcess, merge

# --- the cluster's settings ---------------------------------------------------------------------

CONVERGE_BASE_S = 60.0
CONVERGE_PER_BLOCK_S = 2.0
STUCK_S = 20.0
SAMPLE_EVERY_S = 0.5
LOAD_SENDERS = 10
LOAD_KEY_BASE = 100  # tests.chainbuilder.key(100 + i): the load's senders, funded at genesis
FINALITY = {"pow": 40, "pos": 30}  # max_reorg_depth of the fault networks (blocks), unless a profile sets it

# Upper bounds every node must keep under, throughout every fault (an idle node here: ~40 MB
# resident, ~40 descriptors; the peaks each fault reached are in RESULTS.md).
BOUNDS = {
    "rss_mb": 400,  # the node process
    "worker_rss_mb": 200,  # any one of its worker processes
    "fds": 400,  # open descriptors of the node process
    "mempool_size": 20_000,
    "orphans": 512,  # sync.MAX_ORPHANS
    "in_flight": 128,  # sync.MAX_IN_FLIGHT
    "send_queue": 10_000,  # transport.SEND_QUEUE_SIZE
}

POW_GENESIS: dict[str, Any] = {
    "block_interval_ms": 600,
    "initial_difficulty": 300_000,
    "max_reorg_depth": FINALITY["pow"],
}
POS_GENESIS: dict[str, Any] = {"max_reorg_depth": FINALITY["pos"]}

# Fault networks notice a dead peer within seconds (ping every second, silent for 6 s: gone),
# except the flaky-link ones, which keep the shipped settings (tests/faults/test_faults_links.py).
NODE_CONFIG = merge(P2P, {"storage": {"map_size_mb": 32}, "producer": {"chunk_nonces": 20_000}})


def load_keys() -> list[SigningKey]:
    return [key(LOAD_KEY_BASE + i) for i in range(LOAD_SENDERS)]


# --- reading a node from the outside -----------------------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS (kB) and open descriptors of a process, from /proc; {} if it is gone."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    out["rss_kb"] = int(line.split()[1])
        out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, ValueError):
        return {}
    return out


def metrics(node: NodeProcess, timeout: float = 2.0) -> dict[str, float]:
    """GET /metrics as {name{labels}: value} (empty if the node has no such route)."""
    host, port = node.api_address
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=timeout) as response:
            text = response.read().decode()
    except (OSError, ValueError):
        return {}
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            continue
    return out


def metric_sum(values: dict[str, float], name: str) -> float:
    """The sum of every sample of metric `name` (any labels)."""
    full = f"peerledger_{name}"
    return sum(v for k, v in values.items() if k == full or k.startswith(full + "{"))


def quick(node: NodeProcess, timeout: float = 3.0) -> ApiClient:
    return ApiClient(*node.api_address, timeout=timeout)


# --- the cluster ----------------------------------------------------------------------------------------


class Cluster:
    """`size` nodes of one network, a mesh, the first `producers` of them producing."""

    def __init__(self, network: Network, nodes: list[NodeProcess], consensus: str, hosts: list[Host],
                 lab: NetLab | None, producers: list[NodeProcess], finality: int | None = None) -> None:
        self.network = network
        self.nodes = nodes
        self.consensus = consensus
        self.hosts = hosts
        self.lab = lab
        self.producers = producers
        self.finality = FINALITY[consensus] if finality is None else finality
        self.load: Load | None = None
        self.monitor: Monitor | None = None
        self.nonces = [0] * LOAD_SENDERS  # the load's wallets' next nonces, kept across runs

    @classmethod
    def build(cls, root: Path, *, consensus: str, size: int = 5, producers: Sequence[int] = (0, 2, 4),
              lab: NetLab | None = None, config: dict[str, Any] | None = None,
              genesis: dict[str, Any] | None = None, finality: int | None = None) -> Cluster:
        """Make (not start) the nodes. PoW: the nodes at indexes `producers` mine (three: a
        2-core machine runs no more hashing workers usefully); PoS: every node stakes."""
        allocations = {address_to_text(k.address): ALLOCATION for k in load_keys()}
        config = merge(NODE_CONFIG, config or {})
        finality = FINALITY[consensus] if finality is None else finality
        # PoS needs the unbonding delay at least as deep as a reorganisation can reach.
        depth = {"max_reorg_depth": finality} | ({"unbonding_delay": max(100, finality)} if consensus == "pos" else {})
        genesis = merge(genesis or {}, depth)
        if consensus == "pow":
            network = Network(root, merge(POW_GENESIS, genesis or {}), allocations)
        else:
            network = Network(root, None, allocations)
        hosts = lab.add_hosts(size) if lab is not None else []
        places = [h.place for h in hosts] if hosts else None
        if consensus == "pos":
            from tests.pos.posnet import add_stakers

            nodes = add_stakers(network, size, config, genesis=merge(POS_GENESIS, genesis or {}), places=places)
            making = list(nodes)
        else:
            nodes = network.add_nodes(size, config, topology="mesh", places=places)
            making = [nodes[i] for i in producers]
            for node in (n for n in nodes if n not in making):
                node.config = merge(node.config, {"producer": {"enabled": False}})
                node.write_config()
        return cls(network, nodes, consensus, hosts, lab, making, finality)

    def start(self, timeout: float = 60.0) -> None:
        self.network.start(*self.nodes)
        self.wait_meshed(timeout)

    def wait_meshed(self, timeout: float = 60.0) -> None:
        """Every node has a ready session with at least two others."""
        def meshed() -> bool:
            for node in self.nodes:
                node.assert_running()
                if len(node.ready_peers()) < min(2, len(self.nodes) - 1):
                    return False
            return True

        wait_until(meshed, timeout, interval=0.2, ignore=(ApiClientError,), message="the cluster to mesh")

    def host_of(self, node: NodeProcess) -> Host:
        return self.hosts[self.nodes.index(node)]

    def up(self) -> list[NodeProcess]:
        """Nodes running and not paused."""
        return [n for n in self.nodes if n.running and not n.paused]

    def producing(self) -> list[NodeProcess]:
        return [n for n in self.producers if n.running and not n.paused]

    def stop(self) -> list[str]:
        if self.load is not None:
            self.load.stop()
        if self.monitor is not None:
            self.monitor.stop()
        return self.network.cleanup()

    def describe(self) -> str:
        return "\n".join(node.describe(40) for node in self.network._started)


# --- the load -----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Sent:
    txid: str
    sender: int
    nonce: int
    raw: bytes
    node: str
    at: float
    resubmitted: int = 0


class Load(threading.Thread):
    """A steady stream of transfers, `rate` a second, from LOAD_SENDERS wallets.

    Sender i submits through node i mod N (its "home"; another up node while that one is
    down or paused). Its next nonce is kept here, as a wallet keeps it; when the node it
    talks to says the nonce is wrong, the wallet asks that node for the sender's next nonce
    and resubmits what the node does not know (lost with a crashed node's mempool before
    it was relayed), never a different transaction with a used nonce.
    """

    def __init__(self, cluster: Cluster, rate: float = 4.0, seed: int = 1) -> None:
        super().__init__(name="fault-load", daemon=True)
        self.cluster = cluster
        self.rate = rate
        self.rng = random.Random(seed)
        self.keys = load_keys()
        self.network_id = cluster.network.params.network_id
        self.next_nonce = cluster.nonces
        self.sent: dict[str, Sent] = {}
        self.by_sender: list[list[Sent]] = [[] for _ in self.keys]
        self.refused: dict[str, int] = {}
        self.resubmitted = 0
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._paused = threading.Event()
        self._turn = 0

    def run(self) -> None:
        period = 1.0 / self.rate
        while not self._halt.wait(period):
            if self._paused.is_set():
                continue
            try:
                self._send_one()
            except Exception as e:  # noqa: BLE001 - counted, the load goes on
                self._count(type(e).__name__)

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(10)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        self._paused.set()
        try:
            yield
        finally:
            self._paused.clear()

    def _count(self, code: str) -> None:
        self.refused[code] = self.refused.get(code, 0) + 1

    def _node_for(self, sender: int) -> NodeProcess | None:
        nodes = self.cluster.nodes
        home = nodes[sender % len(nodes)]
        if home.running and not home.paused:
            return home
        up = self.cluster.up()
        return up[sender % len(up)] if up else None

    def _send_one(self) -> None:
        sender = self._turn % len(self.keys)
        self._turn += 1
        node = self._node_for(sender)
        if node is None:
            return
        client = quick(node)
        nonce = self.next_nonce[sender]
        recipient = self.keys[(sender + 1 + self.rng.randrange(len(self.keys) - 1)) % len(self.keys)]
        tx = sign_tx(self.keys[sender], self.network_id, nonce=nonce, fee=1000 + self.rng.randrange(500),
                     recipient=recipient.address, amount=1 + self.rng.randrange(10_000))
        try:
            txid = client.submit(tx.raw)
        except ApiClientError as e:
            self._count(e.code)
            if e.code == "wrong_nonce":
                self._resync(sender, node)
            return
        record = Sent(txid, sender, nonce, tx.raw, node.name, time.monotonic())
        with self._lock:
            self.sent[txid] = record
            self.by_sender[sender].append(record)
        self.next_nonce[sender] = nonce + 1

    def _resync(self, sender: int, node: NodeProcess) -> None:
        """The node expects another nonce: resubmit (in order) what it lacks of ours."""
        try:
            expected = quick(node).account(address_to_text(self.keys[sender].address))["next_nonce"]
        except ApiClientError:
            return
        if expected > self.next_nonce[sender]:  # used by an earlier run's load
            self.next_nonce[sender] = expected
            return
        with self._lock:
            missing = [s for s in self.by_sender[sender] if s.nonce >= expected]
        for record in sorted(missing, key=lambda s: s.nonce):
            try:
                quick(node).submit(record.raw)
            except ApiClientError as e:
                if e.code != "duplicate":
                    self._count(f"resubmit_{e.code}")
                    return
            record.resubmitted += 1
            self.resubmitted += 1

    def rebroadcast(self, txids: Sequence[str]) -> None:
        """Resubmit these (pending too long) to a node that is up, each sender's in nonce order."""
        with self._lock:
            records = sorted((self.sent[t] for t in txids), key=lambda s: (s.sender, s.nonce))
        for record in records:
            node = self._node_for(record.sender)
            if node is None:
                return
            try:
                quick(node).submit(record.raw)
                record.resubmitted += 1
                self.resubmitted += 1
            except ApiClientError:
                pass

    def accepted(self) -> list[Sent]:
        with self._lock:
            return list(self.sent.values())


# --- the monitor --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Sample:
    at: float
    node: str
    height: int
    tip: str
    state_hash: str
    mempool_size: int
    peers: int
    rss_kb: int
    fds: int
    worker_rss_kb: int
    orphans: float
    in_flight: float
    send_queue: float


class Monitor(threading.Thread):
    """Samples every node that is up; records bound violations and stalls."""

    def __init__(self, cluster: Cluster) -> None:
        super().__init__(name="fault-monitor", daemon=True)
        self.cluster = cluster
        self.samples: list[Sample] = []
        self.violations: list[str] = []
        self.maxima: dict[str, float] = {}
        self.excused: set[str] = set()  # nodes a fault keeps from producers (or stopped) now
        self.stall_checks = True
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._moved_at: dict[str, tuple[int, float]] = {}
        self._max_height = (0, time.monotonic())
        self._metrics_every = 4  # /metrics is heavier than /status: every 4th sample
        self._round = 0

    def run(self) -> None:
        while not self._halt.wait(SAMPLE_EVERY_S):
            try:
                self._sample_all()
            except Exception as e:  # noqa: BLE001 - a monitor bug must not hide as a hang
                with self._lock:
                    self.violations.append(f"monitor error: {type(e).__name__}: {e}")

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(10)

    @contextlib.contextmanager
    def excusing(self, *nodes: NodeProcess) -> Iterator[None]:
        names = {n.name for n in nodes}
        with self._lock:
            self.excused |= names
        try:
            yield
        finally:
            now = time.monotonic()
            with self._lock:
                self.excused -= names
                for name in names:  # its clock starts again now
                    height = self._moved_at.get(name, (0, now))[0]
                    self._moved_at[name] = (height, now)

    @contextlib.contextmanager
    def no_stall_checks(self) -> Iterator[None]:
        """For faults that stop every producer for a while (a full disk, all paused)."""
        self.stall_checks = False
        try:
            yield
        finally:
            now = time.monotonic()
            with self._lock:
                self._moved_at = {k: (h, now) for k, (h, _) in self._moved_at.items()}
                self._max_height = (self._max_height[0], now)
            self.stall_checks = True

    def _sample_all(self) -> None:
        self._round += 1
        with_metrics = self._round % self._metrics_every == 0
        now = time.monotonic()
        heights = []
        for node in list(self.cluster.nodes):
            if not node.running or node.paused:
                self._moved_at.pop(node.name, None)
                continue
            try:
                status = quick(node, 2.0).status()
            except ApiClientError:
                continue
            proc = proc_status(node.pid)
            workers = [proc_status(pid).get("rss_kb", 0) for pid in node.workers()]
            values = metrics(node) if with_metrics else {}
            sample = Sample(
                now, node.name, status["height"], status["tip"], status["state_hash"], status["mempool_size"],
                status["peers"], proc.get("rss_kb", 0), proc.get("fds", 0), max(workers, default=0),
                metric_sum(values, "sync_orphans"), metric_sum(values, "sync_in_flight"),
                metric_sum(values, "transport_send_queue"),
            )
            heights.append(sample.height)
            with self._lock:
                self.samples.append(sample)
                if len(self.samples) > 20_000:
                    del self.samples[:5_000]
                self._check_bounds(sample)
                self._check_moving(node, sample, now)
        if heights:
            with self._lock:
                top = max(heights)
                if top > self._max_height[0]:
                    self._max_height = (top, now)
                elif (self.stall_checks and self.cluster.producing()
                      and now - self._max_height[1] > STUCK_S):
                    self.violations.append(f"no node's height moved for {now - self._max_height[1]:.0f} s "
                                           f"(stuck at {top}) while producers ran")
                    self._max_height = (top, now)

    def _check_bounds(self, s: Sample) -> None:
        figures = {
            "rss_mb": s.rss_kb / 1024, "worker_rss_mb": s.worker_rss_kb / 1024, "fds": s.fds,
            "mempool_size": s.mempool_size, "orphans": s.orphans, "in_flight": s.in_flight,
            "send_queue": s.send_queue,
        }
        for name, value in figures.items():
            self.maxima[name] = max(self.maxima.get(name, 0), value)
            if value > BOUNDS[name]:
                self.violations.append(f"{s.node}: {name} = {value:.0f} over its bound {BOUNDS[name]}")

    def _check_moving(self, node: NodeProcess, s: Sample, now: float) -> None:
        height, since = self._moved_at.get(node.name, (s.height, now))
        if s.height != height:
            self._moved_at[node.name] = (s.height, now)
            return
        self._moved_at.setdefault(node.name, (height, since))
        if (self.stall_checks and node.name not in self.excused and self.cluster.producing()
                and now - since > STUCK_S):
            self.violations.append(f"{node.name}: height stuck at {s.height} for {now - since:.0f} s "
                                   f"while producers ran")
            self._moved_at[node.name] = (s.height, now)

    def take_violations(self) -> list[str]:
        with self._lock:
            out, self.violations = self.violations, []
        return out


# --- a run: load + monitor + the checkers ------------------------------------------------------------------


@dataclasses.dataclass
class Final:
    """What was final before a fault: the main-chain block at the finality depth."""

    height: int
    block_hash: str
    txids: list[str]


class Run:
    """One fault scenario on a started cluster, with the load and the monitor running."""

    def __init__(self, cluster: Cluster, row: Any) -> None:
        self.cluster = cluster
        self.row = row  # the RESULTS.md row this run fills (tests/faults/results.py)
        self.load = cluster.load
        self.monitor = cluster.monitor
        self.convergence: list[float] = []

    # the honest nodes: those running (a paused node is honest but silent: resume it first)
    def honest(self) -> list[NodeProcess]:
        return [n for n in self.cluster.nodes if n.running]

    def checkpoint(self, node: NodeProcess | None = None) -> Final | None:
        """The block at the finality depth on `node`'s main chain now, with its transactions'
        ids and those of every block below it that the load sent (None if the chain is too short)."""
        node = node or self.cluster.up()[0]
        status = quick(node).status()
        height = status["height"] - self.cluster.finality
        if height < 1:
            return None
        block = quick(node).block(height)
        confirmed = []
        for record in self.load.accepted() if self.load else []:
            try:
                located = quick(node).tx(record.txid)
            except ApiClientError:
                continue
            if located.get("status") == "confirmed" and located["height"] <= height:
                confirmed.append(record.txid)
            if len(confirmed) >= 40:  # a sample: the block hash check covers them all
                break
        return Final(height, block["hash"], confirmed)

    def converge(self, nodes: Sequence[NodeProcess] | None = None, *, started: float | None = None,
                 extra_s: float = 0.0) -> float:
        """Wait for one tip and state hash on every honest node; answers the seconds it took
        (from `started`, default now) and records it. Fails past 60 s + 2 s x blocks behind."""
        nodes = list(nodes or self.honest())
        started = started or time.monotonic()
        heights = []
        for node in nodes:
            try:
                heights.append(quick(node).status()["height"])
            except ApiClientError:
                pass
        behind = (max(heights) - min(heights)) if heights else 0
        limit = CONVERGE_BASE_S + CONVERGE_PER_BLOCK_S * behind + extra_s
        left = limit - (time.monotonic() - started)
        self.cluster.network.wait_converged(nodes, max(left, 1.0))
        took = time.monotonic() - started
        self.convergence.append(took)
        self.row.convergence(took)
        return took

    def nothing_lost(self, final: Final | None, nodes: Sequence[NodeProcess] | None = None) -> None:
        if final is None:
            return
        for node in nodes or self.honest():
            block = quick(node).block(final.height)
            assert block["hash"] == final.block_hash, (
                f"{node.name}: the block final at height {final.height} before the fault "
                f"({final.block_hash[:16]}) is no longer on its main chain (now {block['hash'][:16]})"
            )
        target = (nodes or self.honest())[-1]
        for txid in final.txids:
            located = quick(target).tx(txid)
            assert located["status"] == "confirmed" and located["height"] <= final.height, (
                f"{target.name}: transaction {txid[:16]}, final before the fault, is now {located}"
            )

    def all_confirmed(self, timeout: float = 90.0, node: NodeProcess | None = None) -> int:
        """Every transaction any node accepted is confirmed (on `node`), eventually. Pending
        ones nobody knows any more after 15 s are rebroadcast, as a wallet does."""
        if self.load is None:
            return 0
        node = node or self.honest()[0]
        deadline = time.monotonic() + timeout
        pending = {r.txid for r in self.load.accepted()}
        last_rebroadcast = time.monotonic()
        while True:
            for txid in list(pending):
                try:
                    if quick(node).tx(txid)["status"] == "confirmed":
                        pending.discard(txid)
                except ApiClientError:
                    pass
            if not pending:
                return len(self.load.accepted())
            if time.monotonic() > deadline:
                sample = sorted(pending)[:5]
                raise AssertionError(f"{len(pending)} accepted transactions not confirmed on {node.name} "
                                     f"after {timeout:g} s, e.g. {sample}")
            if time.monotonic() - last_rebroadcast > 15:
                self.load.rebroadcast(sorted(pending))
                last_rebroadcast = time.monotonic()
            time.sleep(1.0)

    def bounded(self) -> None:
        problems = self.monitor.take_violations() if self.monitor else []
        self.row.maxima(self.monitor.maxima if self.monitor else {})
        assert not problems, "bounds or progress violated:\n" + "\n".join(problems[:20])

    def after_heal(self, final: Final | None, *, started: float | None = None, extra_s: float = 0.0) -> float:
        """The checkers after a fault is healed: converged, nothing final lost, bounded."""
        took = self.converge(started=started, extra_s=extra_s)
        self.nothing_lost(final)
        self.bounded()
        return took


@contextlib.contextmanager
def running(cluster: Cluster, row: Any, *, rate: float = 4.0, seed: int = 1) -> Iterator[Run]:
    """Load and monitor around a fault scenario; at the end, every accepted transaction must
    be confirmed and every bound held. The row is marked passed only if all of it held."""
    cluster.load = Load(cluster, rate=rate, seed=seed)
    cluster.monitor = Monitor(cluster)
    cluster.load.start()
    cluster.monitor.start()
    run = Run(cluster, row)
    try:
        yield run
        cluster.load.stop()
        honest = run.honest()
        run.converge(honest)
        total = run.all_confirmed()
        run.bounded()
        row.note(f"{total} txs accepted, all confirmed; {cluster.load.resubmitted} resubmitted")
        row.passed()
    finally:
        cluster.load.stop()
        cluster.monitor.stop()


def random_moment(rng: random.Random, low: float, high: float) -> float:
    return rng.uniform(low, high)


def wait_for(predicate: Callable[[], Any], timeout: float, message: str) -> Any:
    return wait_until(predicate, timeout, interval=0.1, ignore=(ApiClientError,), message=message)
