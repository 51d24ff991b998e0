"""The producer actor: builds block templates and mines them with Proof of Work.

The nonce search runs in worker processes (the GIL would serialise it in threads), in
chunks of `chunk_nonces`. The actor keeps one chunk in flight per worker; when a new tip
arrives the job number moves on, so results of chunks of the old template are ignored and
no new ones are issued: a stale template costs at most one chunk per worker. Templates are
refreshed about once a second so that new transactions get in.
"""

from __future__ import annotations

import logging
import time

from actors.base import NodeActor, Supervisor, quoted
from actors.clock import NetworkClock
from actors.directory import ActorDirectory
from actors.messages import AddBlock, BlockTemplateTxs, ChunkDone, Tick, TipChanged, WantTxs
from actors.workers import WorkerPool
from chain.block import HEADER_VERSION, Block, Header, merkle_root
from chain.params import ChainParams
from chain.pow import NONCE_SIZE, nonce_proof, search_nonce
from chain.tx import Transaction
from storage.store import Store

log = logging.getLogger(__name__)

TEMPLATE_REFRESH_MS = 1000


class ProducerActor(NodeActor):
    name = "producer"

    def __init__(
        self,
        supervisor: Supervisor,
        refs: ActorDirectory,
        store: Store,
        clock: NetworkClock,
        params: ChainParams,
        *,
        workers: int,
        reward_address: bytes,
        chunk_nonces: int,
        min_tx_age_ms: int,
    ) -> None:
        super().__init__(supervisor)
        self.refs = refs
        self.store = store
        self.clock = clock
        self.params = params
        self.workers = workers
        self.reward_address = reward_address
        self.chunk_nonces = chunk_nonces
        self.min_tx_age_ms = min_tx_age_ms
        self._pool = None
        self._job = 0
        self._template: Header | None = None
        self._txs: tuple[Transaction, ...] = ()
        self._template_ms = 0
        self._next_nonce = 0
        self._in_flight = 0
        self._waiting_for_txs = False
        self.stats = {"hashes": 0, "blocks": 0, "started_s": time.monotonic()}

    def on_start(self) -> None:
        if self.workers > 0:
            self._pool = WorkerPool(self.workers, self._report, "miner")

    def on_stop(self) -> None:
        if self._pool is not None:
            self._pool.stop()
            self._pool = None

    def on_receive(self, message: object) -> object:
        match message:
            case TipChanged():
                self._job += 1  # cancels the current template
                self._template = None
                self._waiting_for_txs = False  # a reply for the old tip will be ignored
                self._request_txs()
            case Tick():
                if self._template is None and not self._waiting_for_txs:
                    self._request_txs()
            case BlockTemplateTxs(tip_hash, txs):
                self._waiting_for_txs = False
                if tip_hash == self.store.tip().hash:
                    self._start_template(txs)
            case ChunkDone(job, nonce, hashes):
                self._in_flight = max(0, self._in_flight - 1)
                self.stats["hashes"] += hashes
                if job == self._job and nonce is not None:
                    self._found(nonce)
                self._dispatch()
            case "stats":
                elapsed = time.monotonic() - self.stats["started_s"]
                restarts = self._pool.restarts if self._pool else 0
                return dict(self.stats, hash_rate=self.stats["hashes"] / elapsed if elapsed else 0.0,
                            worker_restarts=restarts)
            case _:
                log.warning("unexpected message actor=producer type=%s", type(message).__name__)
        return None

    def _request_txs(self) -> None:
        if self._pool is None or self._waiting_for_txs:
            return
        self._waiting_for_txs = True
        self.refs.tell(
            "mempool",
            WantTxs(self.store.tip().hash, self.params.max_block_bytes, self.params.max_block_txs, self.min_tx_age_ms,
                    self.actor_ref),
        )
        if self.refs.mempool is None:
            self._waiting_for_txs = False
            self._start_template(())

    def _start_template(self, txs: tuple[Transaction, ...]) -> None:
        tip = self.store.tip()
        ctx = self.store.header_context(tip.hash)
        now = self.clock.now_ms()
        self._job += 1
        self._txs = txs
        self._template = Header(
            HEADER_VERSION,
            tip.height + 1,
            tip.hash,
            merkle_root([tx.id for tx in txs]),
            max(now, ctx.median_time_past + 1),
            self.store.engine.next_difficulty(ctx),
            self.reward_address,
            bytes(NONCE_SIZE),
        )
        self._template_ms = now
        self._next_nonce = 0
        self._dispatch()

    def _dispatch(self) -> None:
        if self._template is None or self._pool is None:
            return
        if self.clock.now_ms() - self._template_ms > TEMPLATE_REFRESH_MS:
            self._request_txs()  # keep mining this one until the fresh template arrives
        prefix = self._template.without_proof()
        difficulty = self._template.difficulty
        job = self._job
        while self._in_flight < self.workers:
            start, count = self._next_nonce, self.chunk_nonces
            if not self._pool.submit((job, start, count), search_nonce, prefix, difficulty, start, count):
                break
            self._next_nonce += count
            self._in_flight += 1

    def _report(self, token: tuple[int, int, int], nonce: int | None, error: BaseException | None) -> None:
        """Called in the pool's collector thread: hand the result to the actor.

        A worker that died (killed, out of memory) reports its chunk as not found: the
        chunk is lost, not the mining."""
        job, start, count = token
        if error is not None:
            log.warning("mining chunk lost job=%d error=%s", job, quoted(str(error)))
            nonce = None
        hashes = count if nonce is None else nonce - start + 1
        try:
            self.actor_ref.tell(ChunkDone(job, nonce, hashes))
        except Exception:  # noqa: BLE001 - the actor is stopping; the result no longer matters
            pass

    def _found(self, nonce: int) -> None:
        assert self._template is not None
        block = Block(self._template.with_proof(nonce_proof(nonce)), self._txs)
        self.stats["blocks"] += 1
        self._job += 1
        self._template = None
        log.debug("block mined block=%s height=%d txs=%d", block.hash.hex()[:16], block.height, len(block.txs))
        self.refs.tell("storage", AddBlock(block, None))
        self._request_txs()
