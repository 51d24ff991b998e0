"""The validation actor: decoding and every check that needs no chain state, above all
signatures, which are the most expensive thing a node does.

A transaction is verified once: its id (which covers its signature) goes into a bounded
cache shared by the mempool path and the block path, so a block made of transactions
already seen in the mempool costs no signature checks. Large batches are verified in a
pool of worker processes, in chunks of hundreds (one item per task costs more in pickling
than it saves); the pool starts on first use so an idle node stays small.

A pipeline, so that neither the workers nor blocks wait:
- Blocks first. A block is decoded and checked for shape as soon as it arrives; its
  signatures are verified at once in this process when they are few, or handed to the
  workers, without waiting for them, when they and the signatures of the blocks still
  being verified reach `batch_min` (during a sync the next blocks are decoded and handed on
  while the workers verify the previous ones). Blocks go to storage in the order they came.
- Transaction batches wait in a queue and are verified in this process in slices of
  SLICE_TXS, one slice per message the actor sends itself, so a block arriving behind a
  burst of transactions waits for one slice, not for the whole burst. A batch of at least
  `batch_min` goes to the workers instead (when no block needs them). Batches reach the
  mempool whole and in the order they came (a sender's nonces must arrive in order).
- A worker that dies or hangs costs nothing but time: its chunk is verified here.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from actors.base import NodeActor, Supervisor, peer_id, quoted
from actors.directory import ActorDirectory
from actors.messages import (
    AddBlock,
    AddTxs,
    BlockReceived,
    BlockRejected,
    CheckTx,
    TxRejected,
    TxsReceived,
)
from actors.recent import RecentSet
from actors.stats import Histogram
from actors.workers import WorkerPool
from chain.block import Block, check_block_shape, decode_block
from chain.consensus import engine_for
from chain.errors import ChainError, Code
from chain.keys import verify
from chain.params import ChainParams
from chain.tx import Transaction, decode_tx

log = logging.getLogger(__name__)

POOL_TIMEOUT_S = 60.0  # a chunk that takes longer means a stuck worker: it is verified here instead
MIN_CHUNK = 128
SLICE_TXS = 64  # transactions verified in this process per turn (~11 ms), so that blocks get in between
CHECK_EVERY_S = 5.0  # how often, while chunks are out, the actor looks for stuck ones


def verify_chunk(items: list[tuple[bytes, bytes, bytes]]) -> list[bool]:
    """Runs in a worker process."""
    return [verify(public, message, signature) for public, message, signature in items]


@dataclass(eq=False, slots=True)
class _Job:
    """A block, or a batch of transactions, on its way through the pipeline."""

    block: Block | None  # None for a batch of transactions
    txs: list[Transaction]  # decoded (the block's, or the batch's)
    origin: bytes | None
    pending: list[Transaction]  # not in the cache: their signatures are to be verified
    started: float
    verdicts: dict[bytes, bool] = field(default_factory=dict)  # tx id -> signature valid
    chunks_out: int = 0  # chunks at the workers
    done: int = 0  # transactions of `pending` verified in this process (tx batches, slice by slice)
    in_pool: bool = False

    @property
    def ready(self) -> bool:
        return len(self.verdicts) >= len(self.pending)


@dataclass(frozen=True, slots=True)
class _Work:
    """To itself: verify the next slice of queued transactions."""


@dataclass(frozen=True, slots=True)
class _ChunkDone:
    token: int
    verdicts: list[bool] | None
    error: str


@dataclass(frozen=True, slots=True)
class _CheckStuck:
    """To itself, from a timer thread, while chunks are out: verify here what is stuck."""


class ValidationActor(NodeActor):
    name = "validation"

    def __init__(
        self,
        supervisor: Supervisor,
        refs: ActorDirectory,
        params: ChainParams,
        *,
        workers: int,
        batch_min: int,
        cache_size: int,
    ) -> None:
        super().__init__(supervisor)
        self.refs = refs
        self.params = params
        self.engine = engine_for(params)
        self.cache = RecentSet(cache_size)  # ids of transactions whose signatures were verified
        self.network_id = params.network_id
        self.workers = workers
        self.batch_min = batch_min
        self._pool: WorkerPool | None = None  # started on first use: idle nodes stay small
        self._blocks: deque[_Job] = deque()  # in arrival order; handed to storage from the front
        self._batches: deque[_Job] = deque()  # transaction batches, in arrival order
        self._chunks: deque[tuple[_Job, list[Transaction]]] = deque()  # waiting for a free worker
        self._out: dict[int, tuple[_Job, list[Transaction], float]] = {}  # token -> chunk at a worker
        self._next_token = 0
        self._work_told = False
        self._checker: threading.Thread | None = None
        self._stopping = threading.Event()
        # block_txs_unseen: transactions of arriving blocks not verified here before (each
        # block's producer held them back too briefly for us: see [producer] min_tx_age_ms).
        self.stats = {"verified": 0, "cache_hits": 0, "blocks_invalid": 0, "txs_invalid": 0,
                      "verified_by_workers": 0, "block_txs_unseen": 0}
        # Decoding and every check that needs no chain state (above all signatures): per
        # transaction (a batch counts each at its mean) and per block.
        self.tx_seconds = Histogram()
        self.block_seconds = Histogram()

    def on_stop(self) -> None:
        self._stopping.set()
        if self._pool is not None:
            self._pool.stop()
            self._pool = None

    def on_receive(self, message: object) -> object:
        match message:
            case CheckTx(raw):
                with self.tx_seconds.time():
                    tx = decode_tx(raw)
                    self._check_signatures([tx])
                return tx
            case TxsReceived(raws, origin):
                self._on_txs(raws, origin)
            case BlockReceived(raw, origin):
                self._on_block(raw, origin)
            case _Work():
                self._work_told = False
                self._work()
            case _ChunkDone(token, verdicts, error):
                self._on_chunk(token, verdicts, error)
            case _CheckStuck():
                self._check_stuck()
            case "stats":
                return dict(self.stats, cache_size=len(self.cache), tx_seconds=self.tx_seconds.snapshot(),
                            block_seconds=self.block_seconds.snapshot(), blocks_queued=len(self._blocks),
                            batches_queued=len(self._batches))
            case _:
                log.warning("unexpected message actor=validation type=%s", type(message).__name__)
        return None

    # --- verification: in this process, or at the workers -----------------------------------

    def _items(self, txs: list[Transaction]) -> list[tuple[bytes, bytes, bytes]]:
        return [(tx.sender, tx.signing_message(self.network_id), tx.signature) for tx in txs]

    def _verify_here(self, txs: list[Transaction]) -> list[bool]:
        verdicts = verify_chunk(self._items(txs))
        self.stats["verified"] += len(txs)
        return verdicts

    def _check_signatures(self, txs: list[Transaction] | tuple[Transaction, ...]) -> None:
        """CheckTx (the API's path), in this process: raise BAD_SIGNATURE naming the first bad
        transaction; cache the good ones."""
        pending = [tx for tx in txs if tx.id not in self.cache]
        self.stats["cache_hits"] += len(txs) - len(pending)
        if not pending:
            return
        for tx, ok in zip(pending, self._verify_here(pending)):
            if not ok:
                raise ChainError(Code.BAD_SIGNATURE, f"transaction {tx.id.hex()[:16]} has an invalid signature")
        for tx in pending:
            self.cache.add(tx.id)

    def _not_cached(self, job: _Job, txs: list[Transaction]) -> list[Transaction]:
        """Those of `txs` not verified since `job` came; the others are settled as valid."""
        fresh = []
        for tx in txs:
            if tx.id in self.cache:
                job.verdicts[tx.id] = True
            else:
                fresh.append(tx)
        self.stats["cache_hits"] += len(txs) - len(fresh)
        return fresh

    def _to_workers(self, job: _Job) -> None:
        """Cut the job's pending signatures into chunks for the workers (one per worker, of at
        least MIN_CHUNK) and hand out what idle workers can take now."""
        job.in_pool = True
        size = max(MIN_CHUNK, -(-len(job.pending) // self.workers))
        for i in range(0, len(job.pending), size):
            self._chunks.append((job, job.pending[i : i + size]))
        self._dispatch()

    def _dispatch(self) -> None:
        if self._pool is None:
            # Two calls waiting per worker: the next starts the moment its worker answers, not
            # when this actor (its inbox full of arriving blocks during a sync, and sharing the
            # GIL with storage) gets to the answer. One per worker synced 0.77 x B, two 0.79.
            self._pool = WorkerPool(self.workers, self._chunk_result, "verify", queue=2 * self.workers)
            self._checker = threading.Thread(target=self._check_loop, name="validation-check", daemon=True)
            self._checker.start()
        while self._chunks:
            job, txs = self._chunks[0]
            # A chunk waits here while every worker is busy: what another job verified
            # meanwhile (a block and a batch holding the same transactions) is not sent again.
            txs = self._not_cached(job, txs)
            if not txs:
                self._chunks.popleft()
                continue
            token = self._next_token
            if not self._pool.submit(token, verify_chunk, self._items(txs)):
                self._chunks[0] = (job, txs)
                return  # every worker is busy: the next result dispatches more
            self._chunks.popleft()
            self._next_token += 1
            self._out[token] = (job, txs, time.monotonic())
            job.chunks_out += 1

    def _chunk_result(self, token: object, result: object, error: BaseException | None) -> None:
        """In the pool's collector thread: hand the result to the actor."""
        with contextlib.suppress(Exception):  # the actor is stopping: the result no longer matters
            self.actor_ref.tell(_ChunkDone(token, result, str(error) if error else ""))

    def _on_chunk(self, token: int, verdicts: list[bool] | None, error: str) -> None:
        out = self._out.pop(token, None)
        if out is None:
            return  # given up on as stuck: verified here already
        job, txs, _ = out
        job.chunks_out -= 1
        if verdicts is None or len(verdicts) != len(txs):
            # A worker killed under us must not cost the block: verify its chunk here instead.
            log.warning("signature worker failed error=%s: verifying its chunk in the node process", quoted(error))
            verdicts = self._verify_here(txs)
        else:
            self.stats["verified"] += len(txs)
            self.stats["verified_by_workers"] += len(txs)
        for tx, ok in zip(txs, verdicts):
            job.verdicts[tx.id] = ok
            if ok:
                self.cache.add(tx.id)  # now, not when the job is done: the chunks still queued look here
        self._dispatch()
        self._deliver()

    def _check_loop(self) -> None:
        while not self._stopping.wait(CHECK_EVERY_S):
            if self._out:
                try:
                    self.actor_ref.tell(_CheckStuck())
                except Exception:  # noqa: BLE001 - the actor is gone
                    return

    def _check_stuck(self) -> None:
        now = time.monotonic()
        for token, (job, txs, since) in list(self._out.items()):
            if now - since > POOL_TIMEOUT_S:
                del self._out[token]
                job.chunks_out -= 1
                log.warning("signature worker stuck seconds=%.0f: verifying its chunk in the node process",
                            now - since)
                for tx, ok in zip(txs, self._verify_here(txs)):
                    job.verdicts[tx.id] = ok
        self._deliver()

    # --- blocks -----------------------------------------------------------------------------------

    def _on_block(self, raw: bytes, origin: bytes | None) -> None:
        started = time.perf_counter()
        block_hash = b""
        try:
            block = decode_block(raw, max_txs=self.params.max_block_txs)
            block_hash = block.hash
            self.engine.precheck(block.header)  # junk costs a hash, not thousands of signatures
            check_block_shape(block, self.params.max_block_bytes, self.params.max_block_txs)
        except ChainError as e:
            self._reject_block(block_hash, origin, e)
            return
        pending = [tx for tx in block.txs if tx.id not in self.cache]
        self.stats["cache_hits"] += len(block.txs) - len(pending)
        self.stats["block_txs_unseen"] += len(pending)
        job = _Job(block, list(block.txs), origin, pending, started)
        self._blocks.append(job)
        if pending:
            # To the workers when the block alone is worth it, or when more work is waiting
            # (blocks at the workers, messages in our inbox: a sync): this actor goes on
            # decoding the next blocks meanwhile. A lone small block is verified here.
            if self.workers > 0 and (len(pending) >= self.batch_min or any(j.in_pool for j in self._blocks)
                                     or self.actor_inbox.qsize() > 0):
                self._to_workers(job)
            else:
                for tx, ok in zip(pending, self._verify_here(pending)):
                    job.verdicts[tx.id] = ok
        self._deliver()

    def _reject_block(self, block_hash: bytes, origin: bytes | None, error: ChainError) -> None:
        self.stats["blocks_invalid"] += 1
        log.info("block rejected block=%s peer=%s code=%s reason=%s", block_hash.hex()[:16] or "-",
                 peer_id(origin), error.code.text, quoted(error.message))
        self.refs.tell("network", BlockRejected(block_hash, origin, error))

    def _deliver(self) -> None:
        """Hand finished jobs on, each queue from its front: blocks to storage, batches to the mempool."""
        while self._blocks and self._blocks[0].ready:
            job = self._blocks.popleft()
            bad = next((tx for tx in job.pending if not job.verdicts[tx.id]), None)
            if bad is not None:
                self._reject_block(job.block.hash, job.origin, ChainError(
                    Code.BAD_SIGNATURE, f"transaction {bad.id.hex()[:16]} has an invalid signature"))
                continue
            for tx in job.pending:
                self.cache.add(tx.id)
            self.block_seconds.observe(time.perf_counter() - job.started)
            self.refs.tell("storage", AddBlock(job.block, job.origin))
        while self._batches and self._batches[0].ready:
            self._finish_batch(self._batches.popleft())

    # --- transaction batches ----------------------------------------------------------------------

    def _on_txs(self, raws: tuple[bytes, ...], origin: bytes | None) -> None:
        started = time.perf_counter()
        decoded: list[Transaction] = []
        for raw in raws:
            try:
                decoded.append(decode_tx(raw))
            except ChainError as e:
                self.stats["txs_invalid"] += 1
                log.debug("tx rejected peer=%s code=%s", peer_id(origin), e.code.text)
                self.refs.tell("network", TxRejected(b"", origin, e))
        if not decoded:
            return
        pending = [tx for tx in decoded if tx.id not in self.cache]
        job = _Job(None, decoded, origin, pending, started)
        self._batches.append(job)
        if self.workers > 0 and len(pending) >= self.batch_min and not self._blocks:
            self._to_workers(job)
            self._deliver()  # queued chunks found verified meanwhile may have finished their jobs
        elif not pending:
            self._deliver()
        elif not self._work_told:
            self._work_told = True
            self.actor_ref.tell(_Work())

    def _work(self) -> None:
        """Verify the next slice of the first batch that is verified here, then come back."""
        job = next((j for j in self._batches if not j.in_pool and not j.ready), None)
        if job is None:
            return
        txs = job.pending[job.done : job.done + SLICE_TXS]
        job.done += len(txs)
        # A block may have brought and verified some of them since the batch came (blocks go
        # first): under load a lagging node otherwise verified ~5% of its transactions twice.
        fresh = self._not_cached(job, txs)
        for tx, ok in zip(fresh, self._verify_here(fresh)):
            job.verdicts[tx.id] = ok
        self._deliver()
        if any(not j.in_pool and not j.ready for j in self._batches):
            self._work_told = True
            self.actor_ref.tell(_Work())

    def _finish_batch(self, job: _Job) -> None:
        good: list[Transaction] = []
        for tx in job.txs:
            if job.verdicts.get(tx.id, True):
                self.cache.add(tx.id)
                good.append(tx)
            else:
                error = ChainError(Code.BAD_SIGNATURE, f"transaction {tx.id.hex()[:16]} has an invalid signature")
                self.stats["txs_invalid"] += 1
                log.debug("tx rejected tx=%s peer=%s code=%s", tx.id.hex()[:16], peer_id(job.origin), error.code.text)
                self.refs.tell("network", TxRejected(tx.id, job.origin, error))
        self.stats["cache_hits"] += len(job.txs) - len(job.pending)
        self.tx_seconds.observe((time.perf_counter() - job.started) / len(job.txs), len(job.txs))
        if good:
            self.refs.tell("mempool", AddTxs(tuple(good), job.origin))
