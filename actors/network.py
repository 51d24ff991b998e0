"""The network actor: peers, handshakes, liveness, relay of transactions and new blocks,
peer exchange, misbehaviour scores and bans.

Every transport event arrives here (told by the transport thread). Block download belongs
to the sync actor: block announcements, headers and blocks are passed on to it.

Handshake. A link that comes up outbound sends HELLO at once; a node that receives a HELLO
answers with its own unless it sent one in the last `HELLO_ECHO_WINDOW_MS` (so two HELLOs
crossing each other end the exchange instead of starting a loop). A peer is ready once we
have its HELLO and it has ours. zmq reconnects silently, so every outbound LinkUp says
hello again (and starts a new session, unless one is ready over a live inbound link).
Messages that arrive before the handshake are ignored and answered with our HELLO.

Relay. Accepted transactions are announced by inventory in batches (flushed every
`INV_FLUSH_S`), never echoed to the peer they came from or to a peer known to have them;
peers fetch them with GETDATA from a bounded relay cache. A peer may only send us the
transactions we asked for. We fetch a transaction once, from the first peer that announces
it: not again while it is being validated, nor once a block has confirmed it, nor (for a
while) after it was refused for good. A new tip block is pushed whole to every peer not
known to have it when it is small (`PUSH_MAX_BYTES`): one message instead of INV, GETDATA
and BLOCK, each of which a lossy link may hold back for seconds; larger blocks are
announced by inventory.

Misbehaviour. Malformed frames, invalid objects and unrequested data add points to the
peer's score; at `ban_threshold` the peer is banned for `ban_seconds`, persisted, and its
traffic ignored. Honest peers never score: a transaction that merely lost a race (a used
nonce, a full mempool) costs nothing.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from actors.base import NodeActor, Supervisor, peer_id, quoted
from actors.clock import NetworkClock
from actors.directory import ActorDirectory
from actors.messages import (
    BlockArrived,
    BlockRejected,
    BlocksAnnounced,
    BlocksNotFound,
    DropPeer,
    Flush,
    HeadersArrived,
    Penalise,
    PeerGone,
    PeerReady,
    SavePeers,
    Tick,
    TipChanged,
    TxRejected,
    TxsAccepted,
    TxsReceived,
)
from actors.peerbook import AddressBook
from actors.recent import RecentSet
from chain.block import decode_header_at
from chain.encoding import sha256
from chain.errors import Code, DecodeError
from chain.params import ChainParams
from storage.store import Store
from transport.events import AuthRefused, LinkDown, LinkUp, Received, Rejected
from transport.keys import format_host_port, parse_host_port, parse_peer_address
from transport.messages import (
    MAX_ADDRS,
    MAX_HEADERS,
    MAX_INV_ITEMS,
    MAX_TXS,
    PROTOCOL_VERSION,
    Addr,
    AddrEntry,
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
    RejectReason,
    Txs,
)
from transport.messages import Block as BlockMessage

log = logging.getLogger(__name__)

USER_AGENT = "peerledger/0.1"
HELLO_ECHO_WINDOW_MS = 2_000
# Transaction announcements are batched this long. Every batch costs each hop the same
# fixed work (INV, GETDATA and TXS messages, a verification batch, an admission batch)
# whatever its size: at 50 ms a node under load handled about one message per
# transaction. A block waits for nothing: it is announced at once.
INV_FLUSH_S = 0.2
PUSH_MAX_BYTES = 64 * 1024  # a new tip block this small is sent whole, not announced
MAX_INV_QUEUE = 10_000  # announcements waiting for one peer; oldest dropped beyond
KNOWN_INV = 20_000  # ids remembered per peer as already known to it
RELAY_CACHE_TXS = 50_000
RELAY_CACHE_AGE_MS = 15 * 60_000
REANNOUNCE_EVERY_MS = 30_000  # pending transactions this old are announced again to every peer
TX_REQUEST_TIMEOUT_MS = 10_000
# A transaction received and on its way through validation and the mempool is not fetched
# again from the other peers that announce it meanwhile (under load that way can take
# seconds, and each peer announces every transaction); after this long it may be.
TX_IN_PROGRESS_MS = 30_000
MAX_TX_REQUESTS = 50_000
LATE_TX_MEMORY = 50_000  # transaction requests remembered after we gave up on them...
LATE_TX_WINDOW_MS = 120_000  # ...so that an answer this late is taken, not punished as unrequested
RECENT_REJECTS = 20_000
# Transactions confirmed by recent blocks, not fetched again when a peer announces them: a
# node whose transaction pipeline lags its blocks by a block interval or more (a busy Pi)
# otherwise fetches, verifies and refuses ("nonce already used") each transaction once per
# peer that announces it, which makes it lag further - at 1,000 tx/s on five nodes, one node
# refused twice as many transactions as the network carried and never caught up.
RECENT_CONFIRMED = 50_000
DIAL_TIMEOUT_MS = 20_000  # a non-seed address that does not connect in this time failed
SEED_RETRY_MAX_MS = 30_000  # a seed that refused us is dialled again at least this often
PERSIST_EVERY_MS = 30_000
MAX_TXS_BYTES = 2_000_000  # bytes of transactions per TXS reply
SCORES_KEPT = 10_000
SCORE_DECAY_PER_MINUTE = 5  # rare harmless glitches must not add up to a ban over months

# Points per kind of misbehaviour; ban_threshold (default 100) bans.
REJECT_POINTS = {
    RejectReason.TOO_SHORT: 20,
    RejectReason.WRONG_VERSION: 50,
    RejectReason.WRONG_NETWORK: 50,
    RejectReason.UNKNOWN_TYPE: 20,
    RejectReason.OVERSIZE: 50,
    RejectReason.MALFORMED: 20,
    RejectReason.MULTIPART: 20,
    RejectReason.SPOOFED: 100,
}
POINTS_INVALID_BLOCK = 100
POINTS_INVALID_TX = 20
POINTS_UNREQUESTED = 20
POINTS_BAD_HELLO = 100
# Refusals that may not hold later (a gap in nonces filled, room in the mempool).
_RETRYABLE = frozenset({Code.WRONG_NONCE, Code.MEMPOOL_FULL, Code.FEE_TOO_LOW, Code.INSUFFICIENT_FUNDS})


@dataclass(slots=True)
class Session:
    key: bytes
    since_ms: int
    outbound: bool = False
    inbound: bool = False
    address: str = ""  # what we dialled, or the peer's IP when it dialled us
    hello: Hello | None = None
    hello_sent_ms: int = 0
    last_recv_ms: int = 0
    ping_nonce: int | None = None
    ping_sent_ms: int = 0
    latency_ms: float | None = None
    best_height: int = 0  # the highest block it has shown us: its HELLO, blocks it sent or announced
    known: RecentSet = field(default_factory=lambda: RecentSet(KNOWN_INV))
    inv_queue: list[InvItem] = field(default_factory=list)
    sent_addr: bool = False

    @property
    def ready(self) -> bool:
        return self.hello is not None and self.hello_sent_ms > 0


class NetworkActor(NodeActor):
    name = "network"

    def __init__(
        self,
        supervisor: Supervisor,
        refs: ActorDirectory,
        store: Store,
        clock: NetworkClock,
        params: ChainParams,
        transport: Any,
        settings: Any,  # the [network] section
        advertise: str,
    ) -> None:
        super().__init__(supervisor)
        self.refs = refs
        self.store = store
        self.clock = clock
        self.params = params
        self.transport = transport
        self.settings = settings
        self.advertise = advertise
        self.own_key: bytes = transport.public_key
        self.book = AddressBook(self.own_key)
        self.sessions: dict[bytes, Session] = {}
        self.scores: dict[bytes, int] = {}
        self.dialing: dict[bytes, int] = {}  # key -> when we dialled (ms)
        self.seeds: dict[bytes, str] = {}
        self.seed_retry: dict[bytes, int] = {}  # seed key -> when to dial it again after a refusal (ms)
        self.relay: OrderedDict[bytes, tuple[bytes, int]] = OrderedDict()  # txid -> (raw, added ms)
        self.tx_requests: OrderedDict[bytes, tuple[bytes, int]] = OrderedDict()  # txid -> (peer, ms)
        # (txid, peer) -> when we gave up waiting (ms). On a lossy link TCP delivers a reply
        # long after our timeout; only what was never asked is misbehaviour.
        self.tx_given_up: OrderedDict[tuple[bytes, bytes], int] = OrderedDict()
        self.tx_in_progress: OrderedDict[bytes, int] = OrderedDict()  # txid -> when handed to validation (ms)
        self.rejected_txs = RecentSet(RECENT_REJECTS)
        self.confirmed_txs = RecentSet(RECENT_CONFIRMED)
        self._last_persist_ms = 0
        self._last_reannounce_ms = 0
        self._last_decay_ms = 0
        self._flusher_stop = threading.Event()
        self._flusher: threading.Thread | None = None
        self.counters = {"banned": 0, "misbehaviours": 0, "inbound_refused": 0, "txs_relayed": 0,
                         "blocks_announced": 0, "blocks_pushed": 0}

    # --- lifecycle -------------------------------------------------------------------------

    def on_start(self) -> None:
        self.book.load(self.store.load_peers(), self.store.load_bans())
        now = self.clock.now_ms()
        for key, until in self.book.bans.items():
            if until > now:  # bans outlive restarts
                self.transport.ban(key, (until - now) / 1000)
        for seed in self.settings.seeds:
            address = parse_peer_address(seed)
            self.seeds[address.key] = format_host_port(address.host, address.port)
            self.book.add_seed(address.key, self.seeds[address.key])
        self._flusher = threading.Thread(target=self._flush_loop, name="network-flush", daemon=True)
        self._flusher.start()

    def on_stop(self) -> None:
        self._flusher_stop.set()
        if self._flusher is not None:
            self._flusher.join(1.0)
        self._persist(force=True)

    def _flush_loop(self) -> None:
        while not self._flusher_stop.wait(INV_FLUSH_S):
            try:
                self.actor_ref.tell(Flush())
            except Exception:  # noqa: BLE001 - the actor is gone: stop ticking
                return

    # --- dispatch ----------------------------------------------------------------------------

    def on_receive(self, message: object) -> object:
        now = self.clock.now_ms()
        match message:
            case Received(peer, msg, _size):
                self._on_message(peer, msg, now)
            case LinkUp(peer, outbound, address):
                self._on_link_up(peer, outbound, address, now)
            case LinkDown(peer, outbound, reason):
                self._on_link_down(peer, outbound, reason, now)
            case Rejected(peer, reason, _size):
                if reason == RejectReason.WRONG_NETWORK:
                    log.warning("frame from another network peer=%s hint=%s", peer_id(peer),
                                quoted("check that it uses the same genesis spec"))
                elif reason == RejectReason.WRONG_VERSION:
                    log.warning("frame of another protocol version peer=%s", peer_id(peer))
                self._penalise(peer, REJECT_POINTS.get(reason, 20), f"sent a frame rejected as {reason}", now)
            case AuthRefused(peer, address, outbound, reason):
                log.info("connection refused direction=%s address=%s peer=%s reason=%s",
                         "outbound" if outbound else "inbound", address or "-", peer_id(peer), quoted(reason))
                if outbound:
                    self._dial_failed(peer, now)
            case Flush():
                self._flush()
            case TxsAccepted(txs, origin):
                for tx in txs:
                    self.tx_in_progress.pop(tx.id, None)
                self._relay_txs(txs, origin, now)
            case TipChanged(_tip, connected, disconnected):
                self._announce_blocks(connected)
                for block in disconnected:  # no longer confirmed (their transactions may return)
                    for tx in block.txs:
                        self.confirmed_txs.discard(tx.id)
                for block in connected:  # confirmed: no longer pending, never announced or fetched again
                    for tx in block.txs:
                        self.relay.pop(tx.id, None)
                        self.confirmed_txs.add(tx.id)
                if disconnected:
                    self._relay_returned(connected, disconnected, now)
            case TxRejected(txid, origin, error):
                self.tx_in_progress.pop(txid, None)
                if txid and error.code not in _RETRYABLE:
                    self.rejected_txs.add(txid)  # not worth fetching again from anyone
                if origin is not None and error.code.penalise:
                    self._penalise(origin, POINTS_INVALID_TX, f"sent an invalid transaction ({error.code})", now)
            case BlockRejected(_block_hash, origin, error):
                if origin is not None and error.code.penalise:
                    self._penalise(origin, POINTS_INVALID_BLOCK, f"sent an invalid block ({error.code})", now)
            case Penalise(peer, points, reason):
                self._penalise(peer, points, reason, now)
            case DropPeer(peer, reason):
                self._drop(peer, reason, now)
            case Tick():
                self._housekeeping(now)
            case "peers":
                return self._peer_list(now)
            case "stats":
                ready = [s for s in self.sessions.values() if s.ready]
                outbound = sum(1 for s in ready if s.outbound)
                bans = sum(1 for until in self.book.bans.values() if until > now)
                return dict(self.counters, peers=len(ready), peers_out=outbound, peers_in=len(ready) - outbound,
                            bans_active=bans, sessions=len(self.sessions))
            case _:
                log.warning("unexpected message actor=network type=%s", type(message).__name__)
        return None

    # --- links and handshakes -------------------------------------------------------------------

    def _on_link_up(self, peer: bytes, outbound: bool, address: str, now: int) -> None:
        if self.book.is_banned(peer, now):
            self.transport.hang_up(peer)
            return
        session = self.sessions.get(peer)
        if session is None:
            if not outbound and self._inbound_count() >= self.settings.max_inbound:
                self.counters["inbound_refused"] += 1
                log.debug("inbound peer refused peer=%s reason=max_inbound limit=%d", peer_id(peer),
                          self.settings.max_inbound)
                self.transport.hang_up(peer)
                return
            session = self.sessions[peer] = Session(peer, now, last_recv_ms=now)
        if outbound:
            # A new or re-established outbound link: hello again. It starts a new session
            # unless the session is ready over an inbound link that is still up: that
            # peer's HELLO still holds, and it would not answer ours with another one if it
            # sent its own a moment ago (two nodes dialling each other at once).
            self.dialing.pop(peer, None)
            self.seed_retry.pop(peer, None)
            keep = session.ready and session.inbound
            session.outbound, session.address = True, address
            if not keep:
                session.hello, session.since_ms, session.last_recv_ms = None, now, now
            self._send_hello(session, now)
        else:
            session.inbound = True
            if not session.address:
                session.address = address

    def _on_link_down(self, peer: bytes, outbound: bool, reason: str, now: int) -> None:
        session = self.sessions.get(peer)
        if session is None:
            return
        if outbound:
            session.outbound = False
        else:
            session.inbound = False
        if not (session.outbound or session.inbound):
            self._end_session(session, f"link down: {reason}")

    def _end_session(self, session: Session, reason: str) -> None:
        was_ready = session.ready
        self.sessions.pop(session.key, None)
        self.clock.remove_sample(session.key)
        if was_ready:
            log.info("peer gone peer=%s reason=%s", peer_id(session.key), quoted(reason))
            self.refs.tell("sync", PeerGone(session.key))

    def _send_hello(self, session: Session, now: int) -> None:
        tip = self.store.tip()
        hello = Hello(
            PROTOCOL_VERSION,
            self.params.network_id,
            self.own_key,
            tip.hash,
            tip.height,
            tip.weight,
            self.advertise,
            self.clock.now_ms(),
            USER_AGENT,
        )
        if self.transport.send(session.key, hello):
            session.hello_sent_ms = now

    def _on_hello(self, session: Session, hello: Hello, now: int) -> None:
        peer = session.key
        if hello.network_id != self.params.network_id:
            log.warning(
                "peer refused peer=%s reason=other_network its_network=%s our_network=%s hint=%s",
                peer_id(peer), hello.network_id.hex()[:16], self.params.network_id.hex()[:16],
                quoted("check the genesis spec"),
            )
            self._penalise(peer, POINTS_BAD_HELLO, "handshake for another network", now)
            return
        if hello.protocol_version != PROTOCOL_VERSION:
            log.warning("peer refused peer=%s reason=protocol_version its_version=%d our_version=%d",
                        peer_id(peer), hello.protocol_version, PROTOCOL_VERSION)
            self._drop(peer, "incompatible protocol version", now)
            return
        if hello.node_id != peer:
            self._penalise(peer, POINTS_BAD_HELLO, "handshake with a node id that is not its key", now)
            return
        was_ready = session.ready
        session.hello = hello
        session.best_height = hello.best_height
        if now - session.hello_sent_ms > HELLO_ECHO_WINDOW_MS:
            self._send_hello(session, now)
        self.clock.add_sample(peer, hello.time_ms)
        if hello.listen_address:
            try:
                parse_host_port(hello.listen_address)
                self.book.learn(peer, hello.listen_address, now)
            except ValueError:
                pass
        self.book.connected(peer, now)
        if session.ready:
            if not was_ready:
                log.info(
                    "peer ready peer=%s direction=%s address=%s height=%d agent=%s", peer_id(peer),
                    "outbound" if session.outbound else "inbound", session.address or "-", hello.best_height,
                    quoted(hello.user_agent),
                )
                if not session.sent_addr:
                    self.transport.send(peer, GetAddr())
                self._announce_pending(session, now, min_age_ms=0)
            self.refs.tell("sync", PeerReady(peer, hello.best_hash, hello.best_height, hello.best_weight))

    # --- inbound messages ---------------------------------------------------------------------

    def _on_message(self, peer: bytes, msg: object, now: int) -> None:
        if self.book.is_banned(peer, now):
            return
        session = self.sessions.get(peer)
        if session is None:
            return  # refused (inbound cap) or dropped: ignore until it links up again
        session.last_recv_ms = now
        if isinstance(msg, Hello):
            self._on_hello(session, msg, now)
            return
        if not session.ready:
            # Not taken, and not punished either: a peer that finished its handshake with us
            # may be talking into a session we just reset (a link re-established under it).
            # Our HELLO makes it answer with its own; a peer that never says hello is dropped
            # after handshake_timeout_s.
            if now - session.hello_sent_ms > HELLO_ECHO_WINDOW_MS:
                self._send_hello(session, now)
            return
        match msg:
            case Ping(nonce):
                self.transport.send(peer, Pong(nonce))
            case Pong(nonce):
                if nonce == session.ping_nonce:
                    session.latency_ms = now - session.ping_sent_ms
                    session.ping_nonce = None
            case Inv(items):
                self._on_inv(session, items, now)
            case GetData(items):
                self._on_getdata(session, items)
            case NotFound(items):
                blocks = tuple(i.hash for i in items if i.kind == InvKind.BLOCK)
                for item in items:
                    if item.kind == InvKind.TX and self.tx_requests.get(item.hash, (b"",))[0] == peer:
                        del self.tx_requests[item.hash]
                if blocks:
                    self.refs.tell("sync", BlocksNotFound(peer, blocks))
            case Txs(raws):
                self._on_txs(session, raws, now)
            case BlockMessage(raw):
                with contextlib.suppress(DecodeError):  # the sync actor judges a malformed block
                    header = decode_header_at(raw, 0)[0]
                    session.known.add(header.hash)
                    session.best_height = max(session.best_height, header.height)
                self.refs.tell("sync", BlockArrived(peer, raw))
            case GetHeaders(locator, stop_hash):
                headers = self.store.headers_after(list(locator), stop_hash, MAX_HEADERS)
                self.transport.send(peer, Headers(tuple(headers)))
            case Headers(raws):
                self.refs.tell("sync", HeadersArrived(peer, raws))
            case GetAddr():
                self._on_getaddr(session)
            case Addr(entries):
                for entry in entries:
                    try:
                        parse_host_port(entry.address)
                    except ValueError:
                        continue
                    self.book.learn(entry.node_id, entry.address, min(entry.last_seen_ms, now))

    def _on_inv(self, session: Session, items: tuple[InvItem, ...], now: int) -> None:
        wanted: list[InvItem] = []
        blocks: list[bytes] = []
        for item in items:
            session.known.add(item.hash)
            if item.kind == InvKind.BLOCK:
                blocks.append(item.hash)
            elif (
                item.hash not in self.relay
                and item.hash not in self.tx_requests
                and item.hash not in self.tx_in_progress
                and item.hash not in self.rejected_txs
                and item.hash not in self.confirmed_txs
                and len(self.tx_requests) < MAX_TX_REQUESTS
            ):
                self.tx_requests[item.hash] = (session.key, now)
                wanted.append(item)
        if wanted:
            self.transport.send(session.key, GetData(tuple(wanted)))
        if blocks:
            self.refs.tell("sync", BlocksAnnounced(session.key, tuple(blocks)))
            entry = self.store.index_entry(blocks[-1])  # its tip, announced last: if we know it, its height
            if entry is not None:
                session.best_height = max(session.best_height, entry.height)

    def _on_getdata(self, session: Session, items: tuple[InvItem, ...]) -> None:
        missing: list[InvItem] = []
        batch: list[bytes] = []
        batch_bytes = 0
        for item in items:
            if item.kind == InvKind.TX:
                cached = self.relay.get(item.hash)
                if cached is None:
                    missing.append(item)
                    continue
                raw = cached[0]
                if len(batch) >= MAX_TXS or batch_bytes + len(raw) > MAX_TXS_BYTES:
                    self.transport.send(session.key, Txs(tuple(batch)))
                    batch, batch_bytes = [], 0
                batch.append(raw)
                batch_bytes += len(raw)
            else:
                raw = self.store.block_raw(item.hash)
                if raw is None:
                    missing.append(item)
                else:
                    self.transport.send(session.key, BlockMessage(raw))
        if batch:
            self.transport.send(session.key, Txs(tuple(batch)))
        if missing:
            self.transport.send(session.key, NotFound(tuple(missing)))

    def _on_txs(self, session: Session, raws: tuple[bytes, ...], now: int) -> None:
        requested: list[bytes] = []
        unrequested = 0
        for raw in raws:
            txid = sha256(raw)
            session.known.add(txid)
            request = self.tx_requests.get(txid)
            if request is not None and request[0] == session.key:
                del self.tx_requests[txid]
                if txid in self.confirmed_txs:
                    continue  # a block brought it while it was on its way
            elif not self._late_tx(txid, session.key, now):
                unrequested += 1
                continue
            elif (txid in self.relay or txid in self.tx_requests or txid in self.tx_in_progress
                  or txid in self.confirmed_txs):
                continue  # a late answer, but no longer news to us
            requested.append(raw)
            self.tx_in_progress[txid] = now
        while len(self.tx_in_progress) > MAX_TX_REQUESTS:
            self.tx_in_progress.popitem(last=False)
        if unrequested:
            self._penalise(session.key, POINTS_UNREQUESTED, f"sent {unrequested} unrequested transactions", now)
        if requested:
            self.refs.tell("validation", TxsReceived(tuple(requested), session.key))

    def _late_tx(self, txid: bytes, peer: bytes, now: int) -> bool:
        """True (once) if `peer` answers a transaction request we gave up on not long ago."""
        since = self.tx_given_up.pop((txid, peer), None)
        return since is not None and now - since <= LATE_TX_WINDOW_MS

    def _on_getaddr(self, session: Session) -> None:
        if session.sent_addr:
            return  # once per session: a peer cannot make us scan the book in a loop
        session.sent_addr = True
        entries = [
            AddrEntry(key, record.address, record.last_seen_ms)
            for key, record in self.book.sample(MAX_ADDRS)
            if key != session.key and record.address
        ]
        if self.advertise:
            entries.append(AddrEntry(self.own_key, self.advertise, self.clock.now_ms()))
        self.transport.send(session.key, Addr(tuple(entries[:MAX_ADDRS])))

    # --- relay ----------------------------------------------------------------------------------

    def _relay_txs(self, txs: tuple, origin: bytes | None, now: int) -> None:
        for tx in txs:
            self.relay[tx.id] = (tx.raw, now)
            self.relay.move_to_end(tx.id)
        while len(self.relay) > RELAY_CACHE_TXS:
            self.relay.popitem(last=False)
        for session in self.sessions.values():
            if not session.ready or session.key == origin:
                continue
            for tx in txs:
                if tx.id not in session.known:
                    session.known.add(tx.id)
                    session.inv_queue.append(InvItem(InvKind.TX, tx.id))
            if len(session.inv_queue) > MAX_INV_QUEUE:
                del session.inv_queue[: len(session.inv_queue) - MAX_INV_QUEUE]
        self.counters["txs_relayed"] += len(txs)

    def _relay_returned(self, connected: tuple, disconnected: tuple, now: int) -> None:
        """A reorganisation put the transactions of the blocks it disconnected back in the
        mempool; the peers on the branch we moved to may never have seen them (a partition
        kept them apart), so announce them again, oldest first. One the mempool could not
        take back is fetched and refused without penalty (a used nonce, missing funds)."""
        confirmed = {tx.id for block in connected for tx in block.txs}
        returned = tuple(tx for block in reversed(disconnected) for tx in block.txs if tx.id not in confirmed)
        if returned:
            self._relay_txs(returned, None, now)

    def _announce_pending(self, session: Session, now: int, min_age_ms: int) -> None:
        """Announce the pending transactions of the relay cache (at least `min_age_ms` old) to
        a peer, whether or not we announced them before: an INV or its GETDATA lost with a
        link that went down (zmq drops what is in flight), or a peer that was away, would
        otherwise leave a transaction in our mempool that no producer ever hears of. The
        peer fetches only what it lacks; the per-peer queue bound applies."""
        for txid, (_raw, added_ms) in self.relay.items():
            if now - added_ms < min_age_ms:
                break  # oldest first: the rest are younger
            session.known.add(txid)
            session.inv_queue.append(InvItem(InvKind.TX, txid))
        if len(session.inv_queue) > MAX_INV_QUEUE:
            del session.inv_queue[: len(session.inv_queue) - MAX_INV_QUEUE]

    def _flush(self) -> None:
        for session in self.sessions.values():
            queue = session.inv_queue
            while queue:
                chunk, queue[:] = queue[:MAX_INV_ITEMS], queue[MAX_INV_ITEMS:]
                self.transport.send(session.key, Inv(tuple(chunk)))

    def _announce_blocks(self, connected: tuple) -> None:
        if not connected:
            return
        tip = connected[-1]
        push = tip.size <= PUSH_MAX_BYTES
        # After a long sync only the tip is worth announcing; peers fetch the rest by headers.
        announce = [b.hash for b in connected[-8:]]
        if push:
            announce.pop()
        push_to: list[bytes] = []
        for session in self.sessions.values():
            if not session.ready:
                continue
            if push and tip.hash not in session.known:
                session.known.add(tip.hash)
                push_to.append(session.key)
            items = tuple(InvItem(InvKind.BLOCK, h) for h in announce if h not in session.known)
            if items:
                for h in announce:
                    session.known.add(h)
                self.transport.send(session.key, Inv(items))
        if push_to:
            self.transport.send_many(push_to, BlockMessage(tip.raw))
            self.counters["blocks_pushed"] += len(push_to)
        self.counters["blocks_announced"] += len(announce)

    # --- misbehaviour, drops, bans -----------------------------------------------------------------

    def _penalise(self, peer: bytes, points: int, reason: str, now: int) -> None:
        if self.book.is_banned(peer, now):
            return
        score = self.scores.get(peer, 0) + points
        if len(self.scores) >= SCORES_KEPT and peer not in self.scores:
            self.scores.pop(next(iter(self.scores)))
        self.scores[peer] = score
        self.counters["misbehaviours"] += 1
        log.info("peer misbehaved peer=%s points=%d score=%d reason=%s", peer_id(peer), points, score, quoted(reason))
        if score >= self.settings.ban_threshold:
            self._ban(peer, reason, now)

    def _ban(self, peer: bytes, reason: str, now: int) -> None:
        until = now + self.settings.ban_seconds * 1000
        self.book.ban(peer, until)
        self.scores.pop(peer, None)
        self.counters["banned"] += 1
        log.warning("peer banned peer=%s seconds=%d reason=%s", peer_id(peer), self.settings.ban_seconds, quoted(reason))
        self.transport.ban(peer, self.settings.ban_seconds)  # its frames are dropped before decoding
        self.refs.tell("storage", SavePeers({}, {peer: until}))
        self._drop(peer, "banned", now)

    def _drop(self, peer: bytes, reason: str, now: int) -> None:
        self.transport.hang_up(peer)
        self.dialing.pop(peer, None)
        session = self.sessions.get(peer)
        if session is not None:
            self._end_session(session, reason)

    def _dial_failed(self, peer: bytes, now: int) -> None:
        self.dialing.pop(peer, None)
        self.book.failed(peer, now)
        if peer in self.seeds:
            # zmq never redials a link the remote refused (allow-list, ban): _dial_more dials
            # the seed again, backing off as the book does but never slower than the cap.
            record = self.book.entries.get(peer)
            retry_ms = record.next_try_ms if record is not None else now
            self.seed_retry[peer] = min(retry_ms, now + SEED_RETRY_MAX_MS)
        else:
            self.transport.hang_up(peer)

    # --- periodic work --------------------------------------------------------------------------------

    def _housekeeping(self, now: int) -> None:
        s = self.settings
        if now - self._last_decay_ms >= 60_000:
            self._last_decay_ms = now
            for key in list(self.scores):
                self.scores[key] -= SCORE_DECAY_PER_MINUTE
                if self.scores[key] <= 0:
                    del self.scores[key]
        for session in list(self.sessions.values()):
            silent_ms = now - session.last_recv_ms
            if not session.ready and now - session.since_ms > s.handshake_timeout_s * 1000:
                self._drop(session.key, "no handshake in time", now)
            elif silent_ms > s.peer_timeout_s * 1000:
                self._drop(session.key, f"silent for {silent_ms // 1000} s", now)
            elif session.ready and silent_ms > s.ping_interval_s * 1000 and session.ping_nonce is None:
                session.ping_nonce = random.getrandbits(64)
                session.ping_sent_ms = now
                self.transport.send(session.key, Ping(session.ping_nonce))
            elif session.ping_nonce is not None and now - session.ping_sent_ms > s.ping_interval_s * 1000:
                session.ping_nonce = None  # lost: ask again next time
        for txid, (peer, asked_ms) in list(self.tx_requests.items()):
            if now - asked_ms < TX_REQUEST_TIMEOUT_MS:
                break
            del self.tx_requests[txid]
            self.tx_given_up[(txid, peer)] = now
        while len(self.tx_given_up) > LATE_TX_MEMORY:
            self.tx_given_up.popitem(last=False)
        while self.tx_in_progress and now - next(iter(self.tx_in_progress.values())) > TX_IN_PROGRESS_MS:
            self.tx_in_progress.popitem(last=False)
        while self.relay:
            txid, (_raw, added_ms) = next(iter(self.relay.items()))
            if now - added_ms < RELAY_CACHE_AGE_MS:
                break
            self.relay.popitem(last=False)
        if now - self._last_reannounce_ms >= REANNOUNCE_EVERY_MS:
            self._last_reannounce_ms = now
            for session in self.sessions.values():
                if session.ready:
                    self._announce_pending(session, now, min_age_ms=REANNOUNCE_EVERY_MS)
        self._dial_more(now)
        self._persist()

    def _outbound_count(self) -> int:
        return sum(1 for s in self.sessions.values() if s.outbound) + len(self.dialing)

    def _inbound_count(self) -> int:
        return sum(1 for s in self.sessions.values() if s.inbound and not s.outbound)

    def _dial_more(self, now: int) -> None:
        for key, started in list(self.dialing.items()):
            if now - started > DIAL_TIMEOUT_MS and key not in self.seeds:
                self._dial_failed(key, now)
        connected = {k for k, s in self.sessions.items() if s.outbound}
        # Seeds are redialled for ever (zmq backs off between attempts by itself, except
        # after a refusal: then seed_retry says when).
        for key, address in self.seeds.items():
            if (key not in connected and key not in self.dialing and not self.book.is_banned(key, now)
                    and self.seed_retry.get(key, 0) <= now):
                self._dial(key, address, now)
        room = self.settings.max_outbound - self._outbound_count()
        if room > 0:
            exclude = connected | set(self.dialing) | set(self.sessions) | {self.own_key}
            for key, address in self.book.candidates(exclude, now, room):
                self._dial(key, address, now)

    def _dial(self, key: bytes, address: str, now: int) -> None:
        try:
            host, port = parse_host_port(address)
        except ValueError:
            return
        if self.transport.dial(key, host, port):
            self.dialing[key] = now

    def _persist(self, force: bool = False) -> None:
        now = self.clock.now_ms()
        if not force and now - self._last_persist_ms < PERSIST_EVERY_MS:
            return
        self._last_persist_ms = now
        dirty = self.book.take_dirty()
        if dirty:
            # Even when stopping: storage stops after us and handles this first.
            self.refs.tell("storage", SavePeers(dirty, {}))

    def _peer_list(self, now: int) -> list[dict[str, Any]]:
        out = []
        for session in self.sessions.values():
            hello = session.hello
            out.append(
                {
                    "node_id": session.key.hex(),
                    "address": session.address,
                    "direction": "outbound" if session.outbound else "inbound",
                    "ready": session.ready,
                    "height": session.best_height if hello else None,
                    "latency_ms": session.latency_ms,
                    "score": self.scores.get(session.key, 0),
                    "connected_s": round((now - session.since_ms) / 1000, 1),
                    "user_agent": hello.user_agent if hello else "",
                }
            )
        for key, until in self.book.bans.items():
            if until > now:
                out.append({"node_id": key.hex(), "banned_until_ms": until, "ready": False})
        return out
