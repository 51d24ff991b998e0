"""The staker never signs two blocks for one slot: that is evidence that slashes its stake.

In-process, against the StakerActor object itself (its message handler called directly,
so the order of events is exact): a real PoS store, a clock the test sets, and recording
stand-ins for the mempool and storage actors. A slot may come round twice - the network
clock (median of the peers' offsets) steps back when peers come and go, or the system
clock is stepped back by NTP - and the tip the node is on then may be one where that slot
is still open: before storage has connected the block signed the first time, or after that
block lost a tie to a competitor from an earlier slot.
"""

from __future__ import annotations

from actors.messages import AddBlock, BlockTemplateTxs, WantTxs
from actors.staker import SlotTick, StakerActor
from chain.tx import sign_tx
from storage.store import Store
from tests.chainbuilder import key
from tests.posbuilder import PosBuilder, make_pos_params, staker


class Clock:
    def __init__(self) -> None:
        self.now = 0

    def now_ms(self) -> int:
        return self.now


class Recorder:
    """Stands in for the ActorDirectory: records what the staker tells the other actors."""

    mempool = object()  # a node with a mempool: the staker asks it for transactions

    def __init__(self) -> None:
        self.told: list[tuple[str, object]] = []

    def tell(self, name: str, message: object) -> None:
        self.told.append((name, message))

    def blocks(self) -> list:
        return [m.block for name, m in self.told if name == "storage" and isinstance(m, AddBlock)]


class Supervisor:
    def actor_failed(self, name: str, error: BaseException) -> None:
        raise AssertionError(f"{name} failed: {error!r}")


def transfer(i: int, params):
    return sign_tx(key(i), params.network_id, nonce=0, fee=1, recipient=key(9).address, amount=5)


def setup(tmp_path, stakes, min_tx_age_ms=0):
    params = make_pos_params(stakes=stakes, initial_difficulty=1)
    store = Store.open(tmp_path / "data", params, map_size=1 << 24)
    clock, refs = Clock(), Recorder()
    actor = StakerActor(Supervisor(), refs, store, clock, params, key=staker(0),
                        min_tx_age_ms=min_tx_age_ms)
    return params, store, clock, refs, actor


def test_the_staker_asks_the_mempool_for_transactions_old_enough(tmp_path):
    params, store, clock, refs, actor = setup(tmp_path, (1000,), min_tx_age_ms=250)
    try:
        slot = store.tip().timestamp_ms // params.slot_ms + 1
        clock.now = slot * params.slot_ms + 10
        actor.on_receive(SlotTick(slot))
        name, wanted = refs.told[-1]
        assert name == "mempool" and isinstance(wanted, WantTxs)
        assert wanted.min_age_ms == 250
    finally:
        store.close()


def test_a_slot_ticked_twice_before_its_block_connects_is_signed_once(tmp_path):
    params, store, clock, refs, actor = setup(tmp_path, (1000,))  # all the stake, difficulty 1: every slot
    try:
        tip = store.tip()
        slot = tip.timestamp_ms // params.slot_ms + 5
        clock.now = slot * params.slot_ms + 10
        actor.on_receive(SlotTick(slot))
        actor.on_receive(BlockTemplateTxs(tip.hash, (transfer(0, params),)))
        # The same slot again; storage has not connected the first block yet, and the
        # mempool now answers with other transactions.
        actor.on_receive(SlotTick(slot))
        actor.on_receive(BlockTemplateTxs(tip.hash, (transfer(1, params),)))
        blocks = refs.blocks()
        assert len(blocks) == 1, [b.hash.hex()[:16] for b in blocks]
        # The next slot is signed as usual.
        clock.now += params.slot_ms
        actor.on_receive(SlotTick(slot + 1))
        assert isinstance(refs.told[-1][1], WantTxs)
        actor.on_receive(BlockTemplateTxs(tip.hash, (transfer(1, params),)))
        assert [b.header.timestamp_ms // params.slot_ms for b in refs.blocks()] == [slot, slot + 1]
    finally:
        store.close()


def test_a_slot_whose_block_lost_to_an_earlier_one_is_not_signed_again(tmp_path):
    params, store, clock, refs, actor = setup(tmp_path, (1000, 1000))
    try:
        b = PosBuilder(params)
        genesis = b.genesis
        competitor = b.produce(stakers=[1])  # staker 1's block at height 1, in an earlier slot
        c_slot = b.slot(competitor.header)
        slot = next(s for s in range(c_slot + 1, c_slot + 10_000)
                    if b.is_eligible(genesis.hash, s, 0) and b.is_eligible(competitor.hash, s, 0))
        clock.now = slot * params.slot_ms + 10
        actor.on_receive(SlotTick(slot))
        actor.on_receive(BlockTemplateTxs(genesis.hash, ()))
        (ours,) = refs.blocks()
        assert ours.height == 1 and ours.header.prev_hash == genesis.hash
        # The competitor reached storage first (ties keep the first seen): it is the tip.
        assert store.add_block(competitor, clock.now).status == "connected"
        assert store.add_block(ours, clock.now).status == "side_branch"
        # The clock steps back across the slot: it comes round again, on the competitor.
        actor.on_receive(SlotTick(slot))
        actor.on_receive(BlockTemplateTxs(competitor.hash, ()))
        assert refs.blocks() == [ours], "signed a second block for the same slot"
    finally:
        store.close()


def test_a_template_is_cut_to_the_transactions_that_apply_together(tmp_path):
    """Evidence reaches a third account (the offender's): a second report of the same double
    signing, or the offender's unbond after it, is valid alone and not after it. The staker
    leaves those out instead of signing a block that every node refuses."""
    params, store, clock, refs, actor = setup(tmp_path, (1000, 1000))
    try:
        b = PosBuilder(params)
        genesis = b.genesis
        signed = b.forge(parent=genesis.hash, slot=b.slot(genesis) + 3, staker_index=1)
        proof = (signed.header, b.double_sign(signed))
        first, second = (b.evidence(key(i), *proof, nonce=0, fee=10 - i) for i in (0, 1))
        unbond = b.unbond(staker(1), 500, nonce=0)
        payment = b.tx(key(2), nonce=0, amount=7, recipient=key(9).address)
        start = b.slot(genesis) + 1
        slot = next(s for s in range(start, start + 10_000) if b.is_eligible(genesis.hash, s, 0))
        clock.now = slot * params.slot_ms + 10
        actor.on_receive(SlotTick(slot))
        actor.on_receive(BlockTemplateTxs(genesis.hash, (first, second, unbond, payment)))
        (block,) = refs.blocks()
        assert block.txs == (first, payment)
        result = store.add_block(block, clock.now)
        assert result.status == "connected" and store.account(staker(1).address).stake == 0
    finally:
        store.close()
