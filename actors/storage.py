"""The storage actor: the only writer of the ledger.

Blocks arrive verified (signatures, shape) from the validation actor or freshly produced
by this node; here they are checked against their ancestors and the state, stored, and the
heaviest branch is followed. Every change of tip is told to the actors that depend on it.

During a sync (the block is SYNC_GAP or more below the best header we know of, so more are
coming) blocks are queued briefly and a run of them that extends the tip is connected in
one write transaction (Store.add_blocks): one commit and one flush to disk, one TipChanged,
for up to MAX_RUN_BLOCKS blocks, with the same atomicity as one block. The queue is added
when it is full, when a block near the best header arrives, RUN_WAIT_S after it started,
and when the actor stops. Near the tip every block is added at once, as it comes.

The transaction index follows in a write transaction of its own once the new tip is told
(Store.index_txs): a block reaches the other actors and the peers without waiting for it.
It is caught up in bounded steps, between other messages, when the node starts.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from actors.base import NodeActor, Supervisor, peer_id, quoted
from actors.clock import NetworkClock
from actors.directory import ActorDirectory
from actors.messages import (
    AddBlock,
    AddHeaders,
    BlockDeferred,
    BlockRejected,
    BlockStored,
    HeadersStored,
    SaveMempool,
    SavePeers,
    TipChanged,
)
from actors.stats import DEPTH_BUCKETS, Histogram
from chain.errors import ChainError, Code
from storage.store import Store

log = logging.getLogger(__name__)

PRUNE_EVERY = 100  # blocks between prunings of dead side branches
SYNC_GAP = 8  # a block this far below the best header is part of a sync: more are coming
# Runs: on a big ledger nearly every account and tx-index write of a commit lands on a leaf
# page of its own, which LMDB copies and writes out at the commit, so the fewer the commits
# the cheaper each block. A second of blocks a commit halved the storage time of a sync on
# a 10^6-account ledger (runs of 5-7 blocks at 0.1 s). Bounded by blocks and transactions,
# and the sync actor counts queued blocks against its MAX_IN_FLIGHT (128): a full run must
# leave room for the blocks being fetched.
MAX_RUN_BLOCKS = 64  # blocks connected in one write transaction at most
MAX_RUN_TXS = 20_000  # ... and transactions
RUN_WAIT_S = 1.0  # the longest a queued block waits for the rest of its run


@dataclass(frozen=True, slots=True)
class _AddQueued:
    """To itself (from a timer): add the blocks queued for a run."""


@dataclass(frozen=True, slots=True)
class _IndexTxs:
    """To itself: bring the transaction index further toward the tip."""


class StorageActor(NodeActor):
    name = "storage"

    def __init__(self, supervisor: Supervisor, refs: ActorDirectory, store: Store, clock: NetworkClock) -> None:
        super().__init__(supervisor)
        self.refs = refs
        self.store = store
        self.clock = clock
        self._since_prune = 0
        self.stats = {"blocks_connected": 0, "blocks_disconnected": 0, "blocks_rejected": 0, "reorgs": 0,
                      "reorgs_refused": 0}
        self.connect_seconds = Histogram()  # checks against the chain and the write transaction
        self.reorg_depth = Histogram(DEPTH_BUCKETS)
        self._queued: list[tuple] = []  # (block, origin) waiting to be added as a run
        self._queued_txs = 0
        self._timer: threading.Timer | None = None
        self.stats["runs"] = 0  # write transactions that connected several blocks

    def on_start(self) -> None:
        self.actor_ref.tell(_IndexTxs())  # a power cut may have left it behind

    def on_stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._add_queued()  # verified blocks: store them rather than fetch them again after a restart

    def on_receive(self, message: object) -> object:
        match message:
            case AddBlock(block, origin):
                self._on_block(block, origin)
            case _AddQueued():
                self._timer = None
                self._add_queued()
            case _IndexTxs():
                self._index_txs()
            case AddHeaders(headers, origin):
                self._add_headers(headers, origin)
            case SavePeers(records, bans):
                if records:
                    self.store.save_peers(records)
                for node_id, until in bans.items():
                    self.store.save_ban(node_id, until)
            case SaveMempool(added, removed):
                self.store.save_mempool(added, removed)
            case "stats":
                return dict(self.stats, connect_seconds=self.connect_seconds.snapshot(),
                            reorg_depth=self.reorg_depth.snapshot())
            case _:
                log.warning("unexpected message actor=storage type=%s", type(message).__name__)
        return None

    # --- blocks: one by one near the tip, in runs during a sync ------------------------------------

    def _on_block(self, block, origin: bytes | None) -> None:
        _, best = self.store.best_header()
        if best.height - block.height < SYNC_GAP:
            self._add_queued()
            self._add(block, origin)
            return
        self._queued.append((block, origin))
        self._queued_txs += len(block.txs)
        if len(self._queued) >= MAX_RUN_BLOCKS or self._queued_txs >= MAX_RUN_TXS:
            self._add_queued()
        elif self._timer is None:
            self._timer = threading.Timer(RUN_WAIT_S, self._wake)
            self._timer.daemon = True
            self._timer.start()

    def _wake(self) -> None:
        try:
            self.actor_ref.tell(_AddQueued())
        except Exception:  # noqa: BLE001 - the actor is gone: on_stop added the queue
            return

    def _add_queued(self) -> None:
        """Add the queued blocks: each run that extends the tip in one write transaction, the
        rest (and a run that cannot be added whole) one by one."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        queued, self._queued, self._queued_txs = self._queued, [], 0
        # Blocks fetched from several peers at once arrive out of height order: in order, the
        # queue is one run instead of a scatter of orphans.
        queued.sort(key=lambda item: item[0].height)
        i = 0
        while i < len(queued):
            j = i + 1
            if queued[i][0].header.prev_hash == self.store.tip().hash:
                while j < len(queued) and queued[j][0].header.prev_hash == queued[j - 1][0].hash:
                    j += 1
            if j - i >= 2 and self._add_run(queued[i:j]):
                i = j
                continue
            for block, origin in queued[i:j]:
                self._add(block, origin)
            i = j

    def _add_run(self, run: list[tuple]) -> bool:
        started = time.perf_counter()
        results = self.store.add_blocks([block for block, _ in run], self.clock.now_ms())
        if results is None:
            return False
        seconds = time.perf_counter() - started
        self.stats["runs"] += 1
        self.stats["blocks_connected"] += len(run)
        self.connect_seconds.observe(seconds / len(run), len(run))
        for (block, origin), result in zip(run, results):
            self.refs.tell("sync", BlockStored(block.hash, result.status))
            tip = result.tip
            log.info("tip hash=%s height=%d txs=%d state=%s peer=%s", tip.hash.hex()[:16], tip.height,
                     len(block.txs), tip.state_hash[:16], peer_id(origin))
        change = TipChanged(results[-1].tip, tuple(block for block, _ in run), ())
        for name in ("mempool", "producer", "network", "sync", "notifier"):
            self.refs.tell(name, change)
        self._after_connect(len(run))
        return True

    def _index_txs(self) -> None:
        if self.store.index_txs():
            try:
                self.actor_ref.tell(_IndexTxs())  # more after the messages waiting
            except Exception:  # noqa: BLE001 - stopping (on_stop adds the queued blocks): the next start goes on
                return

    def _after_connect(self, blocks: int) -> None:
        self._index_txs()
        self._since_prune += blocks
        if self._since_prune >= PRUNE_EVERY:
            self._since_prune = 0
            pruned = self.store.prune_side_branches()
            if pruned:
                log.info("pruned side branches blocks=%d", pruned)

    def _add(self, block, origin: bytes | None) -> str:
        started = time.perf_counter()
        try:
            result = self.store.add_block(block, self.clock.now_ms())
        except ChainError as e:
            if e.code in (Code.UNKNOWN_PARENT, Code.TIME_TOO_NEW):
                self.refs.tell("sync", BlockDeferred(block, origin, e))
                return e.code.text
            self.stats["blocks_rejected"] += 1
            level = logging.WARNING if origin is None else logging.INFO
            log.log(level, "block rejected block=%s height=%d peer=%s code=%s reason=%s", block.hash.hex()[:16],
                    block.height, peer_id(origin), e.code.text, quoted(e.message))
            self.refs.tell("network", BlockRejected(block.hash, origin, e))
            return e.code.text
        if result.status != "duplicate":
            self.connect_seconds.observe(time.perf_counter() - started)
            self.refs.tell("sync", BlockStored(block.hash, result.status))
        if result.status == "reorg_refused":
            self.stats["reorgs_refused"] += 1
        if result.status in ("connected", "reorganized"):
            tip = result.tip
            self.stats["blocks_connected"] += len(result.connected)
            if result.disconnected:
                self.stats["reorgs"] += 1
                self.stats["blocks_disconnected"] += len(result.disconnected)
                self.reorg_depth.observe(len(result.disconnected))
            log.info(
                "tip hash=%s height=%d txs=%d state=%s peer=%s%s",
                tip.hash.hex()[:16], tip.height, len(block.txs), tip.state_hash[:16], peer_id(origin),
                f" reorg_depth={len(result.disconnected)}" if result.disconnected else "",
            )
            change = TipChanged(tip, result.connected, result.disconnected)
            for name in ("mempool", "producer", "network", "sync", "notifier"):
                self.refs.tell(name, change)
            self._after_connect(len(result.connected))
        return result.status

    def _add_headers(self, headers: tuple, origin: bytes | None) -> None:
        try:
            last = self.store.add_headers(list(headers), self.clock.now_ms())
        except ChainError as e:
            self.refs.tell("sync", HeadersStored(origin, len(headers), None, e))
            return
        self.refs.tell("sync", HeadersStored(origin, len(headers), last.hash if last else None, None))
