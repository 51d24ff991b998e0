"""The validation actor: decoding and every check that needs no chain state, above all
signatures, which are the most expensive thing a node does.

A transaction is verified once: its id (which covers its signature) goes into a bounded
cache shared by the mempool path and the block path, so a block made of transactions
already seen in the mempool costs no signature checks. Large batches are verified in a
pool of worker processes, in chunks of hundreds (one item per task costs more in pickling
than it saves); the pool starts on first use so an idle node stays small.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

from actors.base import NodeActor, Supervisor, peer_id, quoted
from actors.directory import ActorDirectory
from actors.messages import AddBlock, AddTxs, BlockReceived, BlockRejected, CheckTx, TxRejected, TxsReceived
from actors.stats import Histogram
from actors.workers import BatchRunner, WorkerDied
from chain.block import check_block_shape, decode_block
from chain.consensus import engine_for
from chain.errors import ChainError, Code
from chain.keys import verify
from chain.params import ChainParams
from chain.tx import Transaction, decode_tx

log = logging.getLogger(__name__)

POOL_TIMEOUT_S = 60.0  # a batch that takes longer means a stuck worker
MIN_CHUNK = 128


class SignatureCache:
    """Ids of transactions whose signatures were verified, least recently used evicted."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[bytes, None] = OrderedDict()

    def __contains__(self, txid: bytes) -> bool:
        if txid in self._ids:
            self._ids.move_to_end(txid)
            return True
        return False

    def add(self, txid: bytes) -> None:
        if self.capacity <= 0:
            return
        self._ids[txid] = None
        self._ids.move_to_end(txid)
        while len(self._ids) > self.capacity:
            self._ids.popitem(last=False)

    def __len__(self) -> int:
        return len(self._ids)


def verify_chunk(items: list[tuple[bytes, bytes, bytes]]) -> list[bool]:
    """Runs in a worker process."""
    return [verify(public, message, signature) for public, message, signature in items]


class SignatureVerifier:
    """Verifies batches in this process or, past `batch_min`, in worker processes."""

    def __init__(self, network_id: bytes, workers: int, batch_min: int) -> None:
        self.network_id = network_id
        self.workers = workers
        self.batch_min = batch_min
        self._runner: BatchRunner | None = None

    def verify(self, txs: list[Transaction]) -> list[bool]:
        items = [(tx.sender, tx.signing_message(self.network_id), tx.signature) for tx in txs]
        if self.workers <= 0 or len(items) < self.batch_min:
            return verify_chunk(items)
        if self._runner is None:
            self._runner = BatchRunner(self.workers, "verify")  # on first use: idle nodes stay small
        size = max(MIN_CHUNK, -(-len(items) // self.workers))
        chunks = [(items[i : i + size],) for i in range(0, len(items), size)]
        try:
            results = self._runner.map(verify_chunk, chunks, POOL_TIMEOUT_S)
        except (WorkerDied, TimeoutError, RuntimeError) as e:
            # A worker killed under us must not cost the block: verify it here instead.
            log.warning("signature workers failed error=%s: verifying in the node process", quoted(str(e)))
            return verify_chunk(items)
        return [ok for chunk in results for ok in chunk]

    def close(self) -> None:
        if self._runner is not None:
            self._runner.stop()
            self._runner = None


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
        self.cache = SignatureCache(cache_size)
        self.verifier = SignatureVerifier(params.network_id, workers, batch_min)
        self.stats = {"verified": 0, "cache_hits": 0, "blocks_invalid": 0, "txs_invalid": 0}
        # Decoding and every check that needs no chain state (above all signatures): per
        # transaction (a batch counts each at its mean) and per block.
        self.tx_seconds = Histogram()
        self.block_seconds = Histogram()

    def on_stop(self) -> None:
        self.verifier.close()

    def on_receive(self, message: object) -> object:
        match message:
            case CheckTx(raw):
                with self.tx_seconds.time():
                    tx = decode_tx(raw)
                    self._check_signatures([tx])
                return tx
            case TxsReceived(raws, origin):
                with self.tx_seconds.time(len(raws)):
                    self._on_txs(raws, origin)
            case BlockReceived(raw, origin):
                with self.block_seconds.time():
                    self._on_block(raw, origin)
            case "stats":
                return dict(self.stats, cache_size=len(self.cache), tx_seconds=self.tx_seconds.snapshot(),
                            block_seconds=self.block_seconds.snapshot())
            case _:
                log.warning("unexpected message actor=validation type=%s", type(message).__name__)
        return None

    def _check_signatures(self, txs: list[Transaction] | tuple[Transaction, ...]) -> None:
        """Raise BAD_SIGNATURE naming the first bad transaction; cache the good ones."""
        pending = [tx for tx in txs if tx.id not in self.cache]
        self.stats["cache_hits"] += len(txs) - len(pending)
        if not pending:
            return
        verdicts = self.verifier.verify(pending)
        self.stats["verified"] += len(pending)
        for tx, ok in zip(pending, verdicts):
            if not ok:
                raise ChainError(Code.BAD_SIGNATURE, f"transaction {tx.id.hex()[:16]} has an invalid signature")
        for tx in pending:
            self.cache.add(tx.id)

    def _on_txs(self, raws: tuple[bytes, ...], origin: bytes | None) -> None:
        good: list[Transaction] = []
        decoded: list[Transaction] = []
        for raw in raws:
            try:
                decoded.append(decode_tx(raw))
            except ChainError as e:
                self.stats["txs_invalid"] += 1
                log.debug("tx rejected peer=%s code=%s", peer_id(origin), e.code.text)
                self.refs.tell("network", TxRejected(b"", origin, e))
        pending = [tx for tx in decoded if tx.id not in self.cache]
        verdicts = dict(zip((tx.id for tx in pending), self.verifier.verify(pending))) if pending else {}
        self.stats["verified"] += len(pending)
        for tx in decoded:
            if verdicts.get(tx.id, True):
                self.cache.add(tx.id)
                good.append(tx)
            else:
                error = ChainError(Code.BAD_SIGNATURE, f"transaction {tx.id.hex()[:16]} has an invalid signature")
                self.stats["txs_invalid"] += 1
                log.debug("tx rejected tx=%s peer=%s code=%s", tx.id.hex()[:16], peer_id(origin), error.code.text)
                self.refs.tell("network", TxRejected(tx.id, origin, error))
        if good:
            self.refs.tell("mempool", AddTxs(tuple(good), origin))

    def _on_block(self, raw: bytes, origin: bytes | None) -> None:
        block_hash = b""
        try:
            block = decode_block(raw, max_txs=self.params.max_block_txs)
            block_hash = block.hash
            self.engine.precheck(block.header)  # junk costs a hash, not thousands of signatures
            check_block_shape(block, self.params.max_block_bytes, self.params.max_block_txs)
            self._check_signatures(block.txs)
        except ChainError as e:
            self.stats["blocks_invalid"] += 1
            log.info("block rejected block=%s peer=%s code=%s reason=%s", block_hash.hex()[:16] or "-",
                     peer_id(origin), e.code.text, quoted(e.message))
            self.refs.tell("network", BlockRejected(block_hash, origin, e))
            return
        self.refs.tell("storage", AddBlock(block, origin))
