"""The storage actor: the only writer of the ledger.

Blocks arrive verified (signatures, shape) from the validation actor or freshly produced
by this node; here they are checked against their ancestors and the state, stored, and the
heaviest branch is followed. Every change of tip is told to the actors that depend on it.
"""

from __future__ import annotations

import logging
import time

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

    def on_receive(self, message: object) -> object:
        match message:
            case AddBlock(block, origin):
                return self._add(block, origin)
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
            self._since_prune += len(result.connected)
            if self._since_prune >= PRUNE_EVERY:
                self._since_prune = 0
                pruned = self.store.prune_side_branches()
                if pruned:
                    log.info("pruned side branches blocks=%d", pruned)
        return result.status

    def _add_headers(self, headers: tuple, origin: bytes | None) -> None:
        try:
            last = self.store.add_headers(list(headers), self.clock.now_ms())
        except ChainError as e:
            self.refs.tell("sync", HeadersStored(origin, len(headers), None, e))
            return
        self.refs.tell("sync", HeadersStored(origin, len(headers), last.hash if last else None, None))
