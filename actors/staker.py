"""The producer of a Proof of Stake network: it stakes instead of mining.

At every slot boundary (network-adjusted time) it checks whether its key is eligible for
the next block on the tip (one hash: no energy burnt on a Pi), and if so asks the mempool
for transactions, signs the block and hands it to storage like any other block. It holds
the staking key, which is why the node needs the wallet key unlocked to stake.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from actors.base import NodeActor, Supervisor, quoted
from actors.clock import NetworkClock
from actors.directory import ActorDirectory
from actors.messages import AddBlock, BlockTemplateTxs, Tick, TipChanged, WantTxs
from chain.block import HEADER_VERSION, Block, Header, merkle_root
from chain.consensus import HeaderContext
from chain.errors import ChainError
from chain.keys import SigningKey
from chain.params import ChainParams
from chain.pos import eligible, sign_header, slot_of
from chain.state import EMPTY, Overlay, TxContext, apply_tx
from chain.tx import EVIDENCE, Transaction
from storage.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SlotTick:
    slot: int


@dataclass(frozen=True, slots=True)
class _Candidate:
    slot: int
    tip_hash: bytes
    ctx: HeaderContext
    difficulty: int


class StakerActor(NodeActor):
    name = "producer"

    def __init__(
        self,
        supervisor: Supervisor,
        refs: ActorDirectory,
        store: Store,
        clock: NetworkClock,
        params: ChainParams,
        *,
        key: SigningKey,
        min_tx_age_ms: int,
    ) -> None:
        super().__init__(supervisor)
        self.refs = refs
        self.store = store
        self.clock = clock
        self.params = params
        self.key = key
        self.address = key.address
        self.min_tx_age_ms = min_tx_age_ms
        self._candidate: _Candidate | None = None
        # The highest slot this staker has signed a block for. Two different blocks for one
        # slot are evidence that slashes the whole stake, so a slot is signed at most once,
        # whatever tip the node is on when the same slot comes round again (a slot ticked
        # twice when the network clock steps back, or a tick that arrives before storage has
        # connected the block signed at the first one).
        self._signed_slot = -1
        self._stopping = threading.Event()
        self._ticker: threading.Thread | None = None
        self.stats = {"slots": 0, "eligible": 0, "blocks": 0, "hash_rate": 0.0}

    def on_start(self) -> None:
        self._ticker = threading.Thread(target=self._tick_slots, name="staker-slots", daemon=True)
        self._ticker.start()

    def on_stop(self) -> None:
        self._stopping.set()
        if self._ticker is not None:
            self._ticker.join(1.0)

    def _tick_slots(self) -> None:
        slot_ms = self.params.slot_ms
        while not self._stopping.is_set():
            now = self.clock.now_ms()
            slot = now // slot_ms + 1
            if self._stopping.wait((slot * slot_ms - now) / 1000):
                return
            try:
                self.actor_ref.tell(SlotTick(slot))
            except Exception:  # noqa: BLE001 - the actor is gone
                return

    def on_receive(self, message: object) -> object:
        match message:
            case SlotTick(slot):
                self._on_slot(slot)
            case BlockTemplateTxs(tip_hash, txs):
                self._produce(tip_hash, txs)
            case TipChanged() | Tick():
                pass
            case "stats":
                return dict(self.stats)
            case _:
                log.warning("unexpected message actor=staker type=%s", type(message).__name__)
        return None

    def _on_slot(self, slot: int) -> None:
        tip = self.store.tip()
        if slot <= slot_of(tip.timestamp_ms, self.params.slot_ms) or slot <= self._signed_slot:
            return
        self.stats["slots"] += 1
        ctx = self.store.header_context(tip.hash)
        difficulty = self.store.engine.next_difficulty(ctx)
        stake = (self.store.account(self.address) or EMPTY).stake
        if not eligible(ctx.epoch_seed, slot, self.key.public, stake, tip.total_stake, difficulty):
            return
        self.stats["eligible"] += 1
        self._candidate = _Candidate(slot, tip.hash, ctx, difficulty)
        if self.refs.mempool is None:
            self._produce(tip.hash, ())
            return
        self.refs.tell("mempool", WantTxs(tip.hash, self.params.max_block_bytes, self.params.max_block_txs,
                                          self.min_tx_age_ms, self.actor_ref))

    def _produce(self, tip_hash: bytes, txs: tuple) -> None:
        c = self._candidate
        if c is None or c.tip_hash != tip_hash or self.store.tip().hash != tip_hash or c.slot <= self._signed_slot:
            return
        self._candidate = None
        slot_ms = self.params.slot_ms
        timestamp = max(c.slot * slot_ms, c.ctx.median_time_past + 1)
        if timestamp >= (c.slot + 1) * slot_ms or self.clock.now_ms() >= (c.slot + 1) * slot_ms:
            return  # the slot is over: the block would not be valid for it
        if any(tx.kind == EVIDENCE for tx in txs):
            txs = self._applicable(txs, c.ctx.parent.height + 1)
            if self.store.tip().hash != tip_hash:
                return  # the state moved under the check
        template = Header(
            HEADER_VERSION,
            c.ctx.parent.height + 1,
            tip_hash,
            merkle_root([tx.id for tx in txs]),
            timestamp,
            c.difficulty,
            self.address,
        )
        self._signed_slot = c.slot
        block = Block(sign_header(template, self.key, self.params.network_id), tuple(txs))
        self.stats["blocks"] += 1
        log.debug("block staked block=%s height=%d slot=%d txs=%d", block.hash.hex()[:16], block.height, c.slot,
                  len(block.txs))
        self.refs.tell("storage", AddBlock(block, None))

    def _applicable(self, txs: tuple[Transaction, ...], height: int) -> tuple[Transaction, ...]:
        """The transactions that apply one after another on the tip's state.

        The mempool checks each sender's transactions on their own, which is enough while a
        transaction changes only its sender's account and its recipient's balance. Evidence
        changes a third account, the offender's: two reports of one double signing (from two
        reporters), or evidence followed by the offender's own unbond, are each valid alone
        and invalid together. A block holding both is refused, and while both wait in the
        mempool every block this staker signs would be refused: with every staker holding
        them, the chain would stop. So a template with evidence is applied in order here,
        and a transaction that fails is left out, with its sender's later ones.
        """
        ctx = TxContext(height, self.params.unbonding_delay, True, self.store.engine.check_evidence)
        overlay = Overlay(self.store.account)
        kept, dropped = [], set()
        for tx in txs:
            if tx.sender in dropped:
                continue
            try:
                overlay.put(apply_tx(overlay.get, tx, ctx))
            except ChainError as e:
                dropped.add(tx.sender)
                self.stats["txs_left_out"] = self.stats.get("txs_left_out", 0) + 1
                log.debug("tx left out of block tx=%s code=%s reason=%s", tx.id.hex()[:16], e.code.text, quoted(e.message))
                continue
            kept.append(tx)
        return tuple(kept)
