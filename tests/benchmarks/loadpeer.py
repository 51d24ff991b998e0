"""A load generator that submits pre-signed transactions over the wire, as a peer would.

It runs in its own process (`LoadPeer.spawn`), with its own `transport.loop.Transport`
(CURVE, heartbeats, the node's own socket loop) and keypair, dials every node it is given,
says HELLO (a peer at genesis that listens nowhere, so no node dials it back or syncs from
it) and then relays transactions exactly as a node relays its mempool: it announces them
by inventory (INV, up to MAX_INV_ITEMS ids per message) every `tick_s`, and answers each
node's GETDATA with TXS batches. The nodes take them through their real peer path:
transport decode, network actor, validation actor (signatures), mempool, and relay them
on to each other.

Each node receives its own share of the transactions, and every sender's transactions
always go to the same node in nonce order (a relay race could otherwise deliver nonce n+1
to a node before nonce n, which that node must refuse). Signing happens before the
measurement, in the parent; this process only announces and serves bytes.

The parent talks to it over a pipe:
    -> ("run", rate_per_s, seconds)    announce that many per second, then answer ("ran", stats)
    -> ("stop",)                       close and exit
    <- ("ready", node ids handshaken) once every node answered our HELLO
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections import deque
from dataclasses import dataclass

from actors.network import INV_FLUSH_S
from chain.encoding import sha256
from transport.events import LinkDown, LinkUp, Received
from transport.keys import generate_node_keypair
from transport.loop import Transport
from transport.messages import (
    MAX_INV_ITEMS,
    MAX_TXS,
    PROTOCOL_VERSION,
    Addr,
    GetAddr,
    GetData,
    GetHeaders,
    Headers,
    Hello,
    Inv,
    InvItem,
    InvKind,
    NotFound,
    Ping,
    Pong,
    Txs,
)

TICK_S = INV_FLUSH_S  # announcements are sent as often as a node flushes its own
READY_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Target:
    key: bytes
    host: str
    port: int


class _Peer:
    """The load generator's side of the protocol; events arrive in the transport thread."""

    def __init__(self, network_id: bytes, genesis_hash: bytes, targets: list[Target]) -> None:
        self.network_id = network_id
        self.genesis_hash = genesis_hash
        self.targets = {t.key: t for t in targets}
        self.public, secret = generate_node_keypair()
        self.transport = Transport(public_key=self.public, secret_key=secret, network_magic=network_id[:4],
                                   on_event=self.on_event, host="127.0.0.1", port=0, send_queue_size=100_000)
        self.ready: set[bytes] = set()
        self.ready_event = threading.Event()
        self.offered: dict[bytes, bytes] = {}  # tx id -> raw, what we announced (served on GETDATA)
        self.lock = threading.Lock()
        self.served = 0
        self.served_ids: set[bytes] = set()
        self.not_found = 0
        self.link_downs = 0

    def start(self) -> None:
        self.transport.start()
        for t in self.targets.values():
            self.transport.dial(t.key, t.host, t.port)

    def hello(self, key: bytes) -> None:
        self.transport.send(key, Hello(PROTOCOL_VERSION, self.network_id, self.public, self.genesis_hash, 0, 0, "",
                                       int(time.time() * 1000), "peerledger-loadgen"))

    def on_event(self, event: object) -> None:
        match event:
            case LinkUp(peer, True, _):
                self.hello(peer)
            case LinkDown(peer, True, _):
                self.link_downs += 1
            case Received(peer, message, _):
                self.on_message(peer, message)

    def on_message(self, peer: bytes, message: object) -> None:
        match message:
            case Hello():
                if peer in self.targets and peer not in self.ready:
                    self.ready.add(peer)
                    if len(self.ready) == len(self.targets):
                        self.ready_event.set()
            case Ping(nonce):
                self.transport.send(peer, Pong(nonce))
            case GetAddr():
                self.transport.send(peer, Addr(()))
            case GetHeaders():
                self.transport.send(peer, Headers(()))  # we hold nothing beyond genesis
            case GetData(items):
                raws, missing = [], []
                with self.lock:
                    for item in items:
                        raw = self.offered.get(item.hash) if item.kind == InvKind.TX else None
                        if raw is None:
                            missing.append(item)
                        else:
                            raws.append(raw)
                            self.served_ids.add(item.hash)
                    self.served += len(raws)
                    self.not_found += len(missing)
                for i in range(0, len(raws), MAX_TXS):
                    self.transport.send(peer, Txs(tuple(raws[i : i + MAX_TXS])))
                if missing:
                    self.transport.send(peer, NotFound(tuple(missing)))
            case Inv():
                pass  # the nodes relay our own transactions back to us; we want nothing

    def announce(self, key: bytes, raws: list[bytes]) -> None:
        items = []
        with self.lock:
            for raw in raws:
                txid = sha256(raw)
                self.offered[txid] = raw
                items.append(InvItem(InvKind.TX, txid))
        for i in range(0, len(items), MAX_INV_ITEMS):
            self.transport.send(key, Inv(tuple(items[i : i + MAX_INV_ITEMS])))


def _run(conn, network_id: bytes, genesis_hash: bytes, targets: list[Target], queues: list[list[bytes]]) -> None:
    """The load generator process. `queues[i]` is what node `targets[i]` receives, in order."""
    peer = _Peer(network_id, genesis_hash, targets)
    peer.start()
    if not peer.ready_event.wait(READY_TIMEOUT_S):
        conn.send(("error", f"handshaken with {len(peer.ready)} of {len(targets)} nodes"))
        peer.transport.stop()
        return
    conn.send(("ready", len(peer.ready)))
    pending = [deque(q) for q in queues]
    while True:
        command = conn.recv()
        if command[0] == "stop":
            break
        if command[0] == "stats":
            conn.send(("stats", {"served": peer.served, "not_found": peer.not_found, "link_downs": peer.link_downs,
                                 "offered": len(peer.offered), "served_ids": peer.served_ids}))
            continue
        _, rate, seconds = command
        per_node = rate / len(targets)
        started = time.perf_counter()
        sent = [0] * len(targets)
        tick = 0
        while True:
            tick += 1
            due = time.perf_counter() - started
            if due >= seconds:
                break
            target_count = int(per_node * min(due + TICK_S, seconds))
            for i, t in enumerate(targets):
                n = min(target_count - sent[i], len(pending[i]))
                if n > 0:
                    peer.announce(t.key, [pending[i].popleft() for _ in range(n)])
                    sent[i] += n
            wake = started + tick * TICK_S
            time.sleep(max(0.0, wake - time.perf_counter()))
        ended = time.perf_counter()
        conn.send(("ran", {"sent": sum(sent), "per_node": sent, "seconds": ended - started,
                           "started_wall": time.time() - (ended - started), "served": peer.served,
                           "not_found": peer.not_found, "link_downs": peer.link_downs,
                           "drops": dict(peer.transport.stats().drops)}))
    peer.transport.stop()


class LoadPeer:
    """The parent's handle on the load generator process."""

    def __init__(self, network_id: bytes, genesis_hash: bytes, targets: list[Target], queues: list[list[bytes]]):
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_run, args=(child, network_id, genesis_hash, targets, queues),
                                   name="loadgen", daemon=True)
        self.process.start()
        child.close()

    def wait_ready(self, timeout: float = READY_TIMEOUT_S + 10) -> int:
        """Node ids handshaken, once every node answered our HELLO."""
        return self._expect("ready", timeout, "connect")

    def run(self, rate: float, seconds: float) -> None:
        """Start announcing `rate` transactions a second for `seconds`; `result` waits for the end."""
        self.conn.send(("run", rate, seconds))

    def result(self, timeout: float) -> dict:
        return self._expect("ran", timeout, "finish")

    def _expect(self, kind: str, timeout: float, what: str):
        if not self.conn.poll(timeout):
            raise TimeoutError(f"the load generator did not {what} in time")
        got, value = self.conn.recv()
        if got != kind:
            raise RuntimeError(f"load generator: {value}")
        return value

    def stop(self) -> None:
        try:
            self.conn.send(("stop",))
        except OSError:
            pass
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
