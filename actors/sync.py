"""The sync actor: follows the heaviest chain any peer knows, headers first.

A peer that claims more weight than our best header is asked for headers after our block
locator (GETHEADERS); storage validates and stores them without their blocks. The blocks
on the way from our tip to the best header are then fetched in parallel from every peer
that has them, a bounded number in flight per peer, each request with a timeout: a block
that does not come is asked of another peer, and a peer that keeps stalling is dropped.
Blocks that arrive before their parent wait in a bounded orphan pool. Nothing assumes zmq
delivers everything: every request is retried, every answer de-duplicated by hash. A block
that arrived is not asked for again while validation and storage work on it (until storage
has placed it, or BLOCK_TIMEOUT_MS); such blocks count against MAX_IN_FLIGHT, so a node that
validates slower than its peers send waits for its queue instead of refilling it.

New blocks announced by inventory at the tip are fetched directly from the announcer. A
peer may also push a new block unasked (the network actor pushes small tip blocks): it is
taken if it extends a block we have, and otherwise tells us that peer is ahead (we ask it
for headers). A block we already have costs nothing, whoever sends it: duplicates are what
pushes, hedged requests and late answers produce. Invalid blocks are punished by validation.

Hedged requests. A block that holds everything up - one announced at the tip, or one of the
next few our chain needs - and that has not come `HEDGE_AFTER_MS` after we asked is asked of
one more peer that announced it or claims it, up to `MAX_ASKERS` peers at once; the first
answer wins and the others are taken without penalty if they come. On a lossy link TCP can
sit in retransmission back-off for tens of seconds: waiting out BLOCK_TIMEOUT_MS for that
one peer left relay nodes stuck while every other peer had the block.
"""

from __future__ import annotations

import logging
import random
from collections import OrderedDict, deque
from itertools import islice
from dataclasses import dataclass, field
from typing import Any

from actors.base import NodeActor, Supervisor, peer_id
from actors.clock import NetworkClock
from actors.directory import ActorDirectory
from actors.messages import (
    AddBlock,
    AddHeaders,
    BlockArrived,
    BlockDeferred,
    BlockReceived,
    BlocksAnnounced,
    BlocksNotFound,
    BlockStored,
    DropPeer,
    HeadersArrived,
    HeadersStored,
    Penalise,
    PeerGone,
    PeerReady,
    Tick,
    TipChanged,
)
from chain.block import Block, decode_header, decode_header_at
from chain.errors import Code, DecodeError
from storage.store import Store
from transport.messages import MAX_HEADERS, GetData, GetHeaders, InvItem, InvKind

log = logging.getLogger(__name__)

BLOCK_TIMEOUT_MS = 15_000
HEADERS_TIMEOUT_MS = 15_000
MAX_IN_FLIGHT_PER_PEER = 32  # a sync from one peer keeps its verify workers fed (16 left them idle)
MAX_IN_FLIGHT = 128
MAX_ORPHANS = 512
MAX_ORPHAN_BYTES = 64 * 1024 * 1024
STRIKES_TO_DROP = 3
HEDGE_AFTER_MS = 2_000  # an urgent block not here this long after we asked: ask one more peer
MAX_ASKERS = 3  # peers asked for one block at once
HEDGE_WINDOW = 8  # the next blocks of the download plan that count as urgent
MAX_ANNOUNCED = 1024  # blocks whose announcers we remember (the peers to hedge with)
MAX_LACKS = 4096  # NOTFOUND answers remembered per peer...
LACKS_FORGET_MS = 10_000  # ...this long at most: it may have the block by then
CATCHUP_EVERY_MS = 20_000  # ask a peer for headers now and then, in case we missed a tip
MAX_PLAN = 100_000  # blocks planned for download at once
LATE_WINDOW_MS = 120_000  # an answer this late to a request is taken, not punished as unrequested
OWED_MEMORY = 16_384  # (peer, block) requests not yet answered, remembered up to LATE_WINDOW_MS
LATE_MEMORY = 4096  # header requests given up on (timed out, peer gone), remembered as long
_HEADERS = b"headers"  # the key of a GETHEADERS among the given-up requests

POINTS_UNREQUESTED = 20
POINTS_MALFORMED = 50
POINTS_INVALID_HEADERS = 100
POINTS_DISCONNECTED_HEADERS = 20


@dataclass(slots=True)
class SyncPeer:
    key: bytes
    best_hash: bytes
    best_height: int
    best_weight: int
    headers_asked_ms: int = 0  # 0: no GETHEADERS outstanding
    in_flight: dict[bytes, int] = field(default_factory=dict)  # block hash -> asked at (ms)
    strikes: int = 0  # timeout windows it let pass without an answer: a peer that keeps stalling is dropped
    last_strike_ms: int = 0
    last_block_ms: int = 0  # when a block last came from it: its link works
    lacks: dict[bytes, int] = field(default_factory=dict)  # block hash -> when it answered NOTFOUND (ms)

    def may_have(self, block_hash: bytes, now: int) -> bool:
        """False if it said it lacks this block in the last LACKS_FORGET_MS (news of it clears that)."""
        since = self.lacks.get(block_hash)
        return since is None or now - since > LACKS_FORGET_MS


@dataclass(slots=True)
class Orphan:
    block: Block
    origin: bytes | None
    added_ms: int
    code: Code


class SyncActor(NodeActor):
    name = "sync"

    def __init__(
        self, supervisor: Supervisor, refs: ActorDirectory, store: Store, clock: NetworkClock, transport: Any
    ) -> None:
        super().__init__(supervisor)
        self.refs = refs
        self.store = store
        self.clock = clock
        self.transport = transport
        self.peers: dict[bytes, SyncPeer] = {}
        self.requested: dict[bytes, list[bytes]] = {}  # block hash -> peers asked, first asked first
        self._announcers: OrderedDict[bytes, list[bytes]] = OrderedDict()  # block hash -> peers that announced it
        self.validating: dict[bytes, int] = {}  # block hash -> when it went to validation (ms)
        self.orphans: OrderedDict[bytes, Orphan] = OrderedDict()
        self.orphan_bytes = 0
        self._plan: deque[bytes] = deque()  # blocks to fetch towards the best header, oldest first
        self._plan_start_height = 0
        self._plan_target = b""
        self._last_catchup_ms = 0
        # A slow or reconnected honest peer still delivers what we asked, long after we stopped
        # waiting or asked someone else. Blocks: (peer, block hash) -> (answers owed, last asked
        # ms), one owed per GETDATA item sent: an answer owed is taken even if its parent is
        # missing (it waits among the orphans); a block nobody asked for is taken only when it
        # extends what we have. Headers: (peer, _HEADERS) -> when we gave up waiting (ms), so that
        # late headers are not punished as unrequested.
        self._owed: OrderedDict[tuple[bytes, bytes], tuple[int, int]] = OrderedDict()
        self._given_up: OrderedDict[tuple[bytes, bytes], int] = OrderedDict()
        self.stats = {"blocks_requested": 0, "blocks_received": 0, "timeouts": 0, "headers_received": 0,
                      "hedged": 0}

    # --- dispatch ----------------------------------------------------------------------------

    def on_receive(self, message: object) -> object:
        now = self.clock.now_ms()
        match message:
            case PeerReady(peer, best_hash, best_height, best_weight):
                self._on_peer_ready(peer, best_hash, best_height, best_weight, now)
            case PeerGone(peer):
                self._forget_peer(peer, now)
            case HeadersArrived(peer, raws):
                self._on_headers(peer, raws, now)
            case HeadersStored(origin, count, last_hash, error):
                self._on_headers_stored(origin, count, last_hash, error, now)
            case BlockArrived(peer, raw):
                self._on_block(peer, raw, now)
            case BlocksAnnounced(peer, hashes):
                self._on_announced(peer, hashes, now)
            case BlocksNotFound(peer, hashes):
                self._on_not_found(peer, hashes, now)
            case BlockDeferred(block, origin, error):
                self.validating.pop(block.hash, None)
                self._on_deferred(block, origin, error.code, now)
            case BlockStored(block_hash, _status):
                self.validating.pop(block_hash, None)
                self._announcers.pop(block_hash, None)
                self._release_children(block_hash, now)
            case TipChanged():
                pass
            case Tick():
                self._on_tick(now)
            case "syncing":
                return self.syncing()
            case "stats":
                return dict(self.stats, orphans=len(self.orphans), in_flight=len(self.requested),
                            validating=len(self.validating),
                            syncing=self.syncing(), peers=len(self.peers),
                            best_peer_height=max((p.best_height for p in self.peers.values()), default=0))
            case _:
                log.warning("unexpected message actor=sync type=%s", type(message).__name__)
                return None
        self._schedule(now)
        return None

    def syncing(self) -> bool:
        tip = self.store.tip()
        _, best = self.store.best_header()
        return best.weight > tip.weight or any(p.best_weight > tip.weight for p in self.peers.values())

    # --- peers -------------------------------------------------------------------------------

    def _on_peer_ready(self, peer: bytes, best_hash: bytes, best_height: int, best_weight: int, now: int) -> None:
        p = self.peers.get(peer)
        if p is None:
            p = self.peers[peer] = SyncPeer(peer, best_hash, best_height, best_weight)
        else:
            # Another HELLO from a peer we sync with (a link re-established, or links
            # crossing): its answers to what we asked may be on their way, keep expecting them.
            p.best_hash, p.best_height, p.best_weight = best_hash, best_height, best_weight
            p.lacks.clear()
        _, best = self.store.best_header()
        if best_weight > best.weight and self.store.index_entry(best_hash) is None:
            self._ask_headers(p, now)

    def _forget_peer(self, peer: bytes, now: int) -> None:
        p = self.peers.pop(peer, None)
        if p is None:
            return
        for block_hash in p.in_flight:
            self._unask(block_hash, peer)
        if p.headers_asked_ms:
            self._give_up(peer, _HEADERS, now)

    def _give_up(self, peer: bytes, what: bytes, now: int) -> None:
        key = (peer, what)
        self._given_up[key] = now
        self._given_up.move_to_end(key)
        while len(self._given_up) > LATE_MEMORY:
            self._given_up.popitem(last=False)

    def _late_answer(self, peer: bytes, what: bytes, now: int) -> bool:
        """True (once) if `peer` answers a request we gave up on not long ago."""
        since = self._given_up.pop((peer, what), None)
        return since is not None and now - since <= LATE_WINDOW_MS

    def _owe(self, peer: bytes, block_hash: bytes, now: int) -> None:
        key = (peer, block_hash)
        count, _ = self._owed.pop(key, (0, 0))
        self._owed[key] = (count + 1, now)
        while len(self._owed) > OWED_MEMORY:
            self._owed.popitem(last=False)

    def _settle(self, peer: bytes, block_hash: bytes, now: int) -> bool:
        """True if we asked `peer` for this block (in the last LATE_WINDOW_MS) and it had not
        answered every time yet: this answer settles one request."""
        key = (peer, block_hash)
        owed = self._owed.pop(key, None)
        if owed is None or now - owed[1] > LATE_WINDOW_MS:
            return False
        if owed[0] > 1:
            self._owed[key] = (owed[0] - 1, owed[1])
        return True

    def _ask_headers(self, p: SyncPeer, now: int, start: bytes | None = None) -> None:
        if p.headers_asked_ms:
            return
        locator = self.store.locator()
        if start is not None:
            locator = [start, *locator][:64]
        if self.transport.send(p.key, GetHeaders(tuple(locator))):
            p.headers_asked_ms = now

    # --- headers -----------------------------------------------------------------------------

    def _on_headers(self, peer: bytes, raws: tuple[bytes, ...], now: int) -> None:
        p = self.peers.get(peer)
        if p is None:
            return
        if not p.headers_asked_ms and not self._late_answer(peer, _HEADERS, now):
            self.refs.tell("network", Penalise(peer, POINTS_UNREQUESTED, "sent unrequested headers"))
            return
        p.headers_asked_ms = 0
        if not raws:
            return
        try:
            headers = tuple(decode_header(raw) for raw in raws)
        except DecodeError as e:
            self.refs.tell("network", Penalise(peer, POINTS_MALFORMED, f"sent a malformed header ({e.message})"))
            return
        for previous, header in zip(headers, headers[1:]):
            if header.prev_hash != previous.hash:
                self.refs.tell("network", Penalise(peer, POINTS_INVALID_HEADERS, "sent headers that do not chain"))
                return
        self.stats["headers_received"] += len(headers)
        p.lacks.clear()  # it has moved on: what it lacked it may hold now
        last = headers[-1]
        if last.height > p.best_height:
            p.best_height, p.best_hash = last.height, last.hash
        self.refs.tell("storage", AddHeaders(headers, peer))

    def _on_headers_stored(self, origin, count: int, last_hash, error, now: int) -> None:
        p = self.peers.get(origin) if origin else None
        if error is not None:
            if error.code == Code.UNKNOWN_PARENT:
                points, what = POINTS_DISCONNECTED_HEADERS, "sent headers that connect to nothing we know"
            elif error.code.penalise or error.code == Code.INVALID_ANCESTOR:
                points, what = POINTS_INVALID_HEADERS, f"sent invalid headers ({error.code})"
            else:
                return  # e.g. a header ahead of our clock: not the peer's fault
            if origin is not None:
                self.refs.tell("network", Penalise(origin, points, what))
            return
        if p is not None and count >= MAX_HEADERS and last_hash is not None:
            self._ask_headers(p, now, start=last_hash)  # there is more where that came from

    # --- blocks ----------------------------------------------------------------------------------

    def _on_block(self, peer: bytes, raw: bytes, now: int) -> None:
        try:
            header, _ = decode_header_at(raw, 0)
        except DecodeError as e:
            self.refs.tell("network", Penalise(peer, POINTS_MALFORMED, f"sent a malformed block ({e.message})"))
            return
        block_hash = header.hash
        owed = self._settle(peer, block_hash, now)
        p = self.peers.get(peer)
        if p is not None:
            p.last_block_ms = now
        if block_hash in self.validating or block_hash in self.orphans or self._has_block(block_hash):
            self._unrequest(block_hash)  # a duplicate, or an answer after another peer's
            return
        if not owed and block_hash not in self.requested:
            prev = header.prev_hash
            if not (prev in self.validating or prev in self.orphans or self._has_block(prev)):
                # Pushed, and ahead of us: fetch what leads to it rather than hold an orphan
                # nobody asked for.
                if p is not None:
                    self._ask_headers(p, now)
                return
        self._unrequest(block_hash)
        if p is not None:
            p.strikes = 0
            if header.height > p.best_height:
                p.best_height, p.best_hash = header.height, block_hash
        self.stats["blocks_received"] += 1
        self.validating[block_hash] = now
        self.refs.tell("validation", BlockReceived(raw, peer))

    def _on_announced(self, peer: bytes, hashes: tuple[bytes, ...], now: int) -> None:
        p = self.peers.get(peer)
        if p is None:
            return
        p.lacks.clear()  # it announces new blocks: what it lacked it may hold now
        wanted = []
        for block_hash in hashes:
            self._remember_announcer(block_hash, peer)
            if block_hash in self.requested or block_hash in self.orphans or block_hash in self.validating:
                continue
            entry = self.store.index_entry(block_hash)
            if entry is not None and (entry.has_block or entry.invalid):
                continue
            wanted.append(block_hash)
        if wanted:
            self._request(p, wanted[-MAX_IN_FLIGHT_PER_PEER:], now)

    def _on_not_found(self, peer: bytes, hashes: tuple[bytes, ...], now: int) -> None:
        """An honest answer (the peer is behind, or pruned that branch), not a stall: no strike,
        but that peer is not asked for those blocks again for a while (LACKS_FORGET_MS, or until
        it sends news). Dropping it instead cost a new handshake, which on a lossy link left relay
        nodes without peers for a minute; remembering it for good left them without a block
        nobody else had been asked for (new blocks are pushed now, not announced)."""
        p = self.peers.get(peer)
        for block_hash in hashes:
            self._settle(peer, block_hash, now)
            self._unask(block_hash, peer)
            if p is not None:
                p.in_flight.pop(block_hash, None)
                if len(p.lacks) >= MAX_LACKS:
                    p.lacks.clear()
                p.lacks[block_hash] = now

    def _request(self, p: SyncPeer, hashes: list[bytes], now: int) -> None:
        items = tuple(InvItem(InvKind.BLOCK, h) for h in hashes)
        if not self.transport.send(p.key, GetData(items)):
            return
        for block_hash in hashes:
            self.requested.setdefault(block_hash, []).append(p.key)
            p.in_flight[block_hash] = now
            self._owe(p.key, block_hash, now)
        self.stats["blocks_requested"] += len(hashes)

    def _unrequest(self, block_hash: bytes) -> None:
        """Stop waiting for `block_hash` from everyone asked (their answers will be late)."""
        for key in self.requested.pop(block_hash, ()):
            if (q := self.peers.get(key)) is not None:
                q.in_flight.pop(block_hash, None)

    def _unask(self, block_hash: bytes, peer: bytes) -> None:
        askers = self.requested.get(block_hash)
        if askers is not None and peer in askers:
            askers.remove(peer)
            if not askers:
                del self.requested[block_hash]

    def _remember_announcer(self, block_hash: bytes, peer: bytes) -> None:
        announcers = self._announcers.setdefault(block_hash, [])
        self._announcers.move_to_end(block_hash)
        if peer not in announcers and len(announcers) < MAX_ASKERS * 2:
            announcers.append(peer)
        while len(self._announcers) > MAX_ANNOUNCED:
            self._announcers.popitem(last=False)

    def _hedge(self, now: int) -> None:
        """Ask one more peer for each urgent block that is late (see the module docstring)."""
        urgent = set(islice(self._plan, HEDGE_WINDOW))
        for block_hash, askers in list(self.requested.items()):
            if len(askers) >= MAX_ASKERS:
                continue
            last = self.peers.get(askers[-1])
            asked_ms = last.in_flight.get(block_hash) if last is not None else None
            if asked_ms is None or now - asked_ms < HEDGE_AFTER_MS:
                continue
            entry = self.store.index_entry(block_hash)
            if entry is not None and block_hash not in urgent:
                continue  # deep in a download: the timeout and the stall rule deal with it
            candidates = [k for k in self._announcers.get(block_hash, ()) if k not in askers and k in self.peers]
            if not candidates and entry is not None:
                candidates = [k for k, q in self.peers.items()
                              if k not in askers and q.best_height >= entry.height and q.may_have(block_hash, now)]
            if candidates:
                # Not held to MAX_IN_FLIGHT_PER_PEER: under loss every peer's queue may be full of
                # requests its link holds back. The peer whose link carried a block last goes first.
                key = min(candidates, key=lambda k: (-self.peers[k].last_block_ms, len(self.peers[k].in_flight),
                                                     random.random()))
                self._request(self.peers[key], [block_hash], now)
                self.stats["hedged"] += 1

    # --- orphans and blocks ahead of our clock ----------------------------------------------------

    def _on_deferred(self, block: Block, origin: bytes | None, code: Code, now: int) -> None:
        if block.hash in self.orphans:
            return
        if code == Code.TIME_TOO_NEW and block.header.timestamp_ms > now + 120_000:
            return  # far in the future: it will be announced again when its time comes
        while self.orphans and (len(self.orphans) >= MAX_ORPHANS or self.orphan_bytes + block.size > MAX_ORPHAN_BYTES):
            _, evicted = self.orphans.popitem(last=False)
            self.orphan_bytes -= evicted.block.size
        self.orphans[block.hash] = Orphan(block, origin, now, code)
        self.orphan_bytes += block.size
        if code == Code.UNKNOWN_PARENT and self.store.index_entry(block.header.prev_hash) is None:
            p = self.peers.get(origin) if origin else None
            if p is not None:
                self._ask_headers(p, now)  # fill the gap between our chain and this block

    def _release_children(self, parent_hash: bytes, now: int) -> None:
        """Hand storage every orphan that descends from `parent_hash`, parents before their
        children: storage adds them in that order (during a sync, as one run), instead of
        one generation per round trip. They count as being validated until stored."""
        if not self.orphans:
            return
        by_parent: dict[bytes, list[bytes]] = {}
        for block_hash, orphan in self.orphans.items():
            by_parent.setdefault(orphan.block.header.prev_hash, []).append(block_hash)
        todo = deque([parent_hash])
        while todo:
            for block_hash in by_parent.get(todo.popleft(), ()):
                orphan = self.orphans.pop(block_hash)
                self.orphan_bytes -= orphan.block.size
                self.validating[block_hash] = now
                self.refs.tell("storage", AddBlock(orphan.block, orphan.origin))
                todo.append(block_hash)

    # --- the download plan ---------------------------------------------------------------------------

    def _schedule(self, now: int) -> None:
        if not self.peers:
            return
        tip = self.store.tip()
        best_hash, best = self.store.best_header()
        if best.weight <= tip.weight:
            self._plan.clear()
            return
        if best_hash != self._plan_target:
            self._plan = deque(self.store.missing_blocks(best_hash, MAX_PLAN))
            self._plan_start_height = best.height - len(self._plan) + 1
            self._plan_target = best_hash
        # Drop what has arrived since the plan was made (oldest first).
        while self._plan and self._has_block(self._plan[0]):
            self._plan.popleft()
            self._plan_start_height += 1
        busy = len(self.requested) + len(self.validating)
        if busy >= MAX_IN_FLIGHT:
            return
        batches: dict[bytes, list[bytes]] = {}
        load = {key: len(p.in_flight) for key, p in self.peers.items()}
        for offset, block_hash in enumerate(islice(self._plan, MAX_IN_FLIGHT * 2)):
            if busy + sum(map(len, batches.values())) >= MAX_IN_FLIGHT:
                break
            if block_hash in self.requested or block_hash in self.orphans or block_hash in self.validating:
                continue
            height = self._plan_start_height + offset
            free = [k for k in self.peers if load[k] < MAX_IN_FLIGHT_PER_PEER]
            if not free:
                break
            willing = [k for k in free if self.peers[k].may_have(block_hash, now)]
            able = [k for k in willing if self.peers[k].best_height >= height] or willing
            if not able:
                continue  # every peer with room said it lacks this block: wait for news of it
            key = min(able, key=lambda k: (load[k], random.random()))
            batches.setdefault(key, []).append(block_hash)
            load[key] += 1
        for key, hashes in batches.items():
            self._request(self.peers[key], hashes, now)

    @staticmethod
    def _strike(p: SyncPeer, now: int) -> None:
        """One strike per timeout window at most: requests sent a second apart that time out a
        second apart are one stall, not several (it dropped peers on a lossy link in seconds)."""
        if now - p.last_strike_ms >= BLOCK_TIMEOUT_MS:
            p.strikes += 1
            p.last_strike_ms = now

    def _has_block(self, block_hash: bytes) -> bool:
        entry = self.store.index_entry(block_hash)
        return entry is not None and (entry.has_block or entry.invalid)

    # --- timers ------------------------------------------------------------------------------------

    def _on_tick(self, now: int) -> None:
        for p in list(self.peers.values()):
            late = [h for h, asked in p.in_flight.items() if now - asked > BLOCK_TIMEOUT_MS]
            for block_hash in late:
                del p.in_flight[block_hash]
                self._unask(block_hash, p.key)
            if late:
                self.stats["timeouts"] += len(late)
                self._strike(p, now)
            if p.headers_asked_ms and now - p.headers_asked_ms > HEADERS_TIMEOUT_MS:
                p.headers_asked_ms = 0
                self._strike(p, now)
                self._give_up(p.key, _HEADERS, now)
            # The last peer is kept: dropping it leaves nobody to ask, and it would come back
            # through a new handshake anyway (a dead one is found by the network's pings).
            if p.strikes >= STRIKES_TO_DROP and len(self.peers) > 1:
                log.info("peer stalls peer=%s late_answers=%d action=drop", peer_id(p.key), p.strikes)
                self._forget_peer(p.key, now)
                self.refs.tell("network", DropPeer(p.key, "stalled"))
        self._hedge(now)
        # A block validation refused, or that storage found it already had, gets no answer:
        # after the timeout it may be asked for again (if storage did not mark it invalid).
        for block_hash, since in list(self.validating.items()):
            if now - since > BLOCK_TIMEOUT_MS:
                del self.validating[block_hash]
        # Blocks that were ahead of our clock may fit now; orphans too old are dropped.
        for block_hash, orphan in list(self.orphans.items()):
            if orphan.code == Code.TIME_TOO_NEW or now - orphan.added_ms > 60_000:
                self.orphans.pop(block_hash)
                self.orphan_bytes -= orphan.block.size
                if orphan.code == Code.TIME_TOO_NEW:
                    self.refs.tell("storage", AddBlock(orphan.block, orphan.origin))
        tip = self.store.tip()
        if self.peers and now - self._last_catchup_ms > CATCHUP_EVERY_MS:
            self._last_catchup_ms = now
            ahead = [p for p in self.peers.values() if p.best_weight > tip.weight] or list(self.peers.values())
            self._ask_headers(random.choice(ahead), now)
