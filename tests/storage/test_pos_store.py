"""A Proof of Stake ledger on disk: eligibility checked when a block connects, header rules
with their codes, total stake kept in the tip through bonds, unbonds, slashing and
reorganisations, and the reorg limit as finality.

Blocks come from tests.posbuilder (deterministic stakers, real signatures); the reference
state is always the replay of the store's main chain from genesis with the same rules
(tests.posbuilder.replay_accounts: staking on, evidence checked).
"""

from __future__ import annotations

import logging

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from chain.block import Block
from chain.consensus import future_limit_ms
from chain.errors import ChainError, Code
from chain.keys import SigningKey
from chain.params import genesis_accounts
from chain.pos import slot_of
from chain.state import EMPTY, state_digest, state_hash_hex
from chain.tx import BOND, sign_tx
from storage.store import AddResult, Store
from tests.chainbuilder import ChainBuilder, key
from tests.posbuilder import STAKE, PosBuilder, make_pos_params, replay_accounts, staker

REPORTER = key(0)


# --- helpers -----------------------------------------------------------------------------


def add(store: Store, block: Block, now_ms: int | None = None) -> AddResult:
    """Add `block` as if the clock read its own timestamp (or `now_ms`)."""
    return store.add_block(block, block.header.timestamp_ms if now_ms is None else now_ms)


def add_all(store: Store, blocks: list[Block]) -> AddResult:
    result = None
    for block in blocks:
        result = add(store, block)
    return result


def refused(store: Store, block: Block, now_ms: int | None = None) -> Code:
    with pytest.raises(ChainError) as info:
        add(store, block, now_ms)
    return info.value.code


def weight(b: PosBuilder, block_hash: bytes) -> int:
    return sum(blk.header.difficulty for blk in b.chain(block_hash))


def assert_matches_replay(store: Store) -> None:
    """The store's accounts, state hash and total stake are those of its chain replayed."""
    replayed = replay_accounts(store)
    tip = store.tip()
    assert dict(store.iter_accounts()) == replayed
    assert tip.state_hash == state_hash_hex(state_digest(replayed.items()))
    assert tip.total_stake == sum(a.stake for a in replayed.values())


def outgrow(b: PosBuilder, parent: bytes, rival: bytes, *, stakers: list[int] | None = None) -> list[Block]:
    """Blocks on `parent` until their branch is heavier than the one ending at `rival`. The
    first one takes a slot after that of the rival branch's block at its height, so that the
    branches differ even when the same stakers sign them."""
    height = b.header(parent).height + 1
    after = max((b.slot(blk.header) for blk in b.chain(rival) if blk.height == height), default=None)
    blocks = []
    while weight(b, parent) <= weight(b, rival):
        block = b.produce(parent=parent, stakers=stakers, after_slot=after)
        after = None
        blocks.append(block)
        parent = block.hash
    return blocks


@pytest.fixture
def store(tmp_path):
    params = make_pos_params()
    s = Store.open(tmp_path / "data", params, map_size=1 << 24)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def b(store) -> PosBuilder:
    return PosBuilder(store.params)


# --- connecting --------------------------------------------------------------------------


def test_genesis_holds_the_stakes_and_their_total(store, b):
    tip = store.tip()
    assert tip.height == 0 and tip.total_stake == 4 * STAKE
    assert store.account(staker(2).address).stake == STAKE
    assert tip.state_hash == state_hash_hex(state_digest(genesis_accounts(store.params).items()))


def test_a_pos_chain_with_transfers_and_staking_connects_and_equals_its_replay(store, b):
    blocks = b.produce_many(5)
    blocks.append(b.produce([b.bond(staker(1), 5000, nonce=0)], transfers=[(0, 1, 700)]))
    blocks.append(b.produce([b.unbond(staker(3), STAKE // 2, nonce=0)]))
    blocks += b.produce_many(25)  # across several epochs (epoch_length 8)
    for block in blocks:
        result = add(store, block)
        assert result.status == "connected", block.height
        assert result.tip.total_stake == b.total_stake(block.hash)
    assert store.tip().hash == b.tip.hash and store.tip().height == 32
    assert dict(store.iter_accounts()) == b.state(b.tip.hash)
    assert_matches_replay(store)
    assert store.tip().total_stake == 4 * STAKE + 5000 - STAKE // 2
    producers = {blk.header.producer for blk in blocks}
    assert len(producers) >= 3  # stake-weighted, not one staker always


def test_total_stake_survives_a_reopen(tmp_path):
    params = make_pos_params()
    b = PosBuilder(params)
    with_bond = [b.produce(), b.produce([b.bond(staker(0), 1234, nonce=0)])]
    s = Store.open(tmp_path / "d", params, map_size=1 << 24)
    add_all(s, with_bond)
    s.close()
    s = Store.open(tmp_path / "d", params, map_size=1 << 24)
    try:
        assert s.tip().total_stake == 4 * STAKE + 1234 and s.tip().hash == b.tip.hash
    finally:
        s.close()


def test_stake_counts_from_the_block_after_the_one_that_bonds_it(store, b):
    newcomer = staker(5)  # holds nothing at genesis: funded, then bonds
    b.stakers = 6
    blocks = [b.produce(transfers=[(0, newcomer.address, 500_000)])]
    blocks.append(b.produce([b.bond(newcomer, 400_000, nonce=0)]))
    assert b.account(blocks[-1].hash, newcomer.address).stake == 400_000
    later = b.produce(stakers=[5])  # eligible with the stake of the parent's state
    add_all(store, blocks + [later])
    assert store.tip().hash == later.hash and later.header.producer == newcomer.address
    # And a key that has unbonded everything signs nothing from the next block on.
    gone = b.produce([b.unbond(newcomer, 400_000, nonce=1)])
    add(store, gone)
    would_win = _first_slot_eligible_with(b, gone.hash, 5, 400_000, b.slot(gone.header) + 1)
    forged = b.forge(parent=gone.hash, slot=would_win, staker_index=5)
    assert refused(store, forged) == Code.BAD_PROOF


def _first_slot_eligible_with(b: PosBuilder, parent: bytes, index: int, stake: int, start: int) -> int:
    """A slot in which staker(index) would be eligible if it still held `stake`."""
    from chain.pos import eligible

    ctx = b.context(parent)
    d = b.engine.next_difficulty(ctx)
    total = b.total_stake(parent) + stake
    return next(s for s in range(start, start + 1_000_000)
                if eligible(ctx.epoch_seed, s, staker(index).public, stake, total, d))


# --- refusals, each with its code ----------------------------------------------------------


def test_an_ineligible_producer_is_refused_when_its_block_connects(store, b):
    add_all(store, b.produce_many(3))
    parent = b.tip
    first = b.slot(parent) + 1
    lost = next(s for s in range(first, first + 10_000) if not b.is_eligible(parent.hash, s, 1))
    block = b.forge(slot=lost, staker_index=1)
    assert refused(store, block) == Code.BAD_PROOF
    assert store.tip().hash == parent.hash
    assert refused(store, block) == Code.INVALID_ANCESTOR  # remembered as invalid
    # The honest block for the same parent still connects.
    assert add(store, b.produce()).status == "connected"


def test_a_validly_signed_header_by_a_key_without_stake_is_refused(store, b):
    add(store, b.produce())
    outsider = SigningKey.from_seed(b"\x07" * 32)
    block = b.forge(signer=outsider)
    assert refused(store, block) == Code.BAD_PROOF


def test_a_wrong_signature_is_refused(store, b):
    add(store, b.produce())
    good = b.produce()
    h = good.header
    bad = Block(h.with_proof(h.proof[:-1] + bytes([h.proof[-1] ^ 0x40])), good.txs)
    assert refused(store, bad) == Code.BAD_PROOF
    other = next(staker(i).public for i in range(8) if staker(i).public != h.proof[:32])  # not the signer
    other_key = Block(h.with_proof(other + h.proof[32:]), good.txs)
    assert refused(store, other_key) == Code.BAD_PROOF
    assert add(store, good).status == "connected"


def test_a_producer_other_than_the_signer_is_refused(store, b):
    add(store, b.produce())
    slot, index = b.next_eligible(b.tip.hash)
    block = b.forge(slot=slot, staker_index=index, producer=key(7).address)
    assert refused(store, block) == Code.BAD_PROOF


def test_a_block_in_its_parents_slot_is_refused(store, b):
    add_all(store, b.produce_many(2))
    parent = b.tip
    block = b.forge(timestamp_ms=parent.timestamp_ms + 1)
    assert slot_of(block.header.timestamp_ms, b.params.slot_ms) == b.slot(parent)
    assert refused(store, block) == Code.BAD_PROOF


def test_a_wrong_difficulty_is_refused(store, b):
    add_all(store, b.produce_many(4))
    slot, index = b.next_eligible(b.tip.hash)
    expected = b.engine.next_difficulty(b.context(b.tip.hash))
    for d in (expected + 1, max(1, expected - 1)):
        if d != expected:
            assert refused(store, b.forge(slot=slot, staker_index=index, difficulty=d)) == Code.BAD_DIFFICULTY


def test_timestamps_before_the_median_time_past_are_refused(store, b):
    # Block 1: its parent is genesis (no slot rule), so the median-time rule speaks.
    at_genesis = b.forge(timestamp_ms=b.genesis.timestamp_ms)
    assert refused(store, at_genesis) == Code.TIME_TOO_OLD
    # Above it, one block per slot already puts a child after its parent's slot, so any
    # timestamp at or before the median time past is in an earlier slot: refused by the slot
    # rule, which comes first (and penalises the sender just the same).
    add_all(store, b.produce_many(12))
    ctx = store.header_context(b.tip.hash)
    old = b.forge(timestamp_ms=ctx.median_time_past)
    assert refused(store, old) == Code.BAD_PROOF


def test_a_block_too_far_in_the_future_waits_and_connects_later(store, b):
    add(store, b.produce())
    limit = future_limit_ms(b.params)
    # Proof of Stake allows two slots ahead at most, whatever max_future_ms says.
    assert limit == min(b.params.max_future_ms, 2 * b.params.slot_ms)
    ahead = b.slot(b.tip) + 5
    future = b.produce(after_slot=ahead)
    ts = future.header.timestamp_ms
    assert refused(store, future, now_ms=ts - limit - 1) == Code.TIME_TOO_NEW
    assert Code.TIME_TOO_NEW.penalise is False
    assert store.index_entry(future.hash) is None  # not remembered as invalid: our clock may lag
    assert add(store, future, now_ms=ts - limit).status == "connected"


def test_headers_first_judge_eligibility_by_the_stake_at_our_tip(store, b):
    """Headers arrive before the state they depend on: eligibility is judged by the stake at
    our tip (a forged heavy header chain costs more than signatures), refused without
    penalty (the stake may exist on a branch we have not seen), and judged exactly again
    when the block connects."""
    add(store, b.produce())
    parent = b.tip
    first = b.slot(parent) + 1
    lost = next(s for s in range(first, first + 10_000) if not b.is_eligible(parent.hash, s, 2))
    block = b.forge(slot=lost, staker_index=2)
    with pytest.raises(ChainError) as info:
        store.add_headers([block.header], now_ms=block.header.timestamp_ms)
    assert info.value.code == Code.NOT_ELIGIBLE and not Code.NOT_ELIGIBLE.penalise
    good = b.produce()
    assert store.add_headers([good.header], now_ms=good.header.timestamp_ms) == good.header
    bad_sig = b.forge(slot=lost + 1, staker_index=2)
    h = bad_sig.header
    with pytest.raises(ChainError) as info:
        store.add_headers([h.with_proof(h.proof[:-1] + bytes([h.proof[-1] ^ 1]))], now_ms=h.timestamp_ms)
    assert info.value.code == Code.BAD_PROOF
    assert refused(store, block) == Code.BAD_PROOF
    assert store.tip().hash == parent.hash
    assert add(store, good).status == "connected"


def test_a_side_block_needs_an_eligible_signer_too(store, b):
    """A block that does not beat the tip is stored without being connected, so nothing
    would judge its signer until its branch won: under Proof of Stake that would let anyone
    fill the disk with blocks that cost one signature each. A side block's signer must be
    eligible (by the stake at its parent): refused as a bad proof, penalised and remembered.
    An honest side block (a staker's, in a slot it won) is still stored."""
    add_all(store, b.produce_many(3))
    tip = b.tip
    fork = b.header(tip.prev_hash)
    outsider = SigningKey.from_seed(b"\x07" * 32)
    forged = b.forge(parent=fork.hash, slot=b.slot(tip) + 1, signer=outsider)
    assert refused(store, forged) == Code.BAD_PROOF and Code.BAD_PROOF.penalise
    assert store.block(forged.hash) is None
    assert refused(store, forged) == Code.INVALID_ANCESTOR  # remembered
    first = b.slot(tip) + 1
    lost = next(s for s in range(first, first + 10_000) if not b.is_eligible(fork.hash, s, 1))
    assert refused(store, b.forge(parent=fork.hash, slot=lost, staker_index=1)) == Code.BAD_PROOF
    honest = b.produce(parent=fork.hash, after_slot=b.slot(tip))
    assert add(store, honest).status == "side_branch"
    assert store.block(honest.hash) == honest
    assert store.tip().hash == tip.hash
    assert_matches_replay(store)  # the exact check's trial left nothing behind


def test_a_side_block_is_judged_by_the_stake_of_its_own_branch(store, b):
    """Our branch slashed staker 3; a branch where it was not slashed has honest blocks
    signed by it. Judged by the stake at our tip they would be refused and that branch could
    never win; judged by the stake at their parent they are stored, and the branch wins
    when it grows heavier."""
    base = b.produce_many(3)
    add_all(store, base)
    main = slashing_branch(b, base[-1].hash)
    add_all(store, main)
    assert store.account(staker(3).address).stake == 0
    side = outgrow(b, base[-1].hash, main[-1].hash, stakers=[3])
    results = [add(store, block) for block in side]
    assert [r.status for r in results[:-1]] == ["side_branch"] * (len(side) - 1)
    assert results[-1].status == "reorganized"
    assert store.account(staker(3).address).stake == STAKE
    assert_matches_replay(store)


def test_a_side_block_on_an_invalid_side_branch_is_refused_with_it(store, b):
    """Working out the stake at a side block's parent connects its branch: an ancestor that
    breaks a rule makes the block, and the branch, invalid."""
    add_all(store, b.produce_many(3))
    tip = b.tip
    fork = b.header(tip.prev_hash)
    # A side block that only the stake at our tip vouches for: its transfer overspends.
    overspend = b.tx(key(0), nonce=0, amount=10**30 % (1 << 63), recipient=key(1).address)
    bad_parent = b.forge([overspend], parent=fork.hash, slot=b.next_eligible(fork.hash, after_slot=b.slot(tip))[0],
                         staker_index=b.next_eligible(fork.hash, after_slot=b.slot(tip))[1])
    assert add(store, bad_parent).status == "side_branch"
    child = b.forge(parent=bad_parent.hash, slot=b.slot(bad_parent.header) + 1, signer=SigningKey.from_seed(b"\x09" * 32))
    assert refused(store, child) == Code.INSUFFICIENT_FUNDS
    assert store.block(bad_parent.hash) is None and store.block(child.hash) is None
    assert refused(store, child) == Code.INVALID_ANCESTOR
    assert store.tip().hash == tip.hash
    assert_matches_replay(store)


# --- total stake and reorganisations -----------------------------------------------------------


def slashing_branch(b: PosBuilder, parent: bytes) -> list[Block]:
    """Blocks on `parent` that bond, unbond and slash: staker 3 signs twice in one slot."""
    blocks = [b.produce(parent=parent, stakers=[0, 1, 2])]
    blocks.append(b.produce([b.bond(staker(1), 5000, nonce=b.nonce(blocks[-1].hash, staker(1)))],
                            parent=blocks[-1].hash, stakers=[0, 1, 2]))
    blocks.append(b.produce([b.unbond(staker(0), 300_000, nonce=b.nonce(blocks[-1].hash, staker(0)))],
                            parent=blocks[-1].hash, stakers=[0, 1, 2]))
    signed_twice = b.produce(parent=blocks[-1].hash, stakers=[3])
    blocks.append(signed_twice)
    other = b.double_sign(signed_twice)
    evidence = b.evidence(REPORTER, signed_twice.header, other, nonce=b.nonce(signed_twice.hash, REPORTER))
    blocks.append(b.produce([evidence], parent=signed_twice.hash, stakers=[0, 1, 2]))
    return blocks


def test_total_stake_follows_bond_unbond_and_slash_and_a_reorganisation_restores_it(store, b):
    base = b.produce_many(3)
    add_all(store, base)
    main = slashing_branch(b, base[-1].hash)
    for block in main:
        assert add(store, block).tip.total_stake == b.total_stake(block.hash)
    assert store.tip().total_stake == 4 * STAKE + 5000 - 300_000 - STAKE
    assert store.account(staker(3).address).stake == 0

    side = outgrow(b, base[-1].hash, main[-1].hash, stakers=[1, 2, 3])
    results = [add(store, block) for block in side]
    assert results[-1].status == "reorganized"
    assert [blk.hash for blk in results[-1].disconnected] == [blk.hash for blk in reversed(main)]
    assert store.tip().total_stake == 4 * STAKE == b.total_stake(side[-1].hash)
    assert store.account(staker(3).address).stake == STAKE  # the slashing was undone
    assert_matches_replay(store)

    back = outgrow(b, main[-1].hash, side[-1].hash, stakers=[0, 1, 2])
    results = [add(store, block) for block in back]
    assert results[-1].status == "reorganized"
    assert store.tip().total_stake == b.total_stake(back[-1].hash) == 4 * STAKE + 5000 - 300_000 - STAKE
    assert store.account(staker(3).address).stake == 0
    assert_matches_replay(store)


def test_a_reorganisation_deeper_than_the_limit_is_refused_and_shallower_ones_happen(store, b, caplog):
    limit = store.params.max_reorg_depth
    main = b.produce_many(limit + 6)
    add_all(store, main)
    tip = store.tip()
    # A heavier branch forking limit + 2 blocks below the tip: refused, logged, tip unchanged.
    fork = main[3]
    deep = outgrow(b, fork.hash, main[-1].hash)
    assert tip.height - fork.height == limit + 2
    with caplog.at_level(logging.WARNING, logger="storage.store"):
        statuses = [add(store, block).status for block in deep]
    assert statuses == ["side_branch"] * (len(deep) - 1) + ["reorg_refused"]
    assert store.tip() == tip
    assert any("refusing a reorganisation of depth" in r.getMessage() for r in caplog.records)
    # More blocks on the refused branch are refused too; the main chain goes on.
    more = b.produce(parent=deep[-1].hash)
    assert add(store, more).status == "reorg_refused" and store.tip() == tip
    assert_matches_replay(store)

    # Exactly at the limit: the reorganisation happens.
    fork = main[-1 - limit]
    assert tip.height - fork.height == limit
    at_limit = outgrow(b, fork.hash, main[-1].hash)
    result = add_all(store, at_limit)
    assert result.status == "reorganized" and len(result.disconnected) == limit
    assert store.tip().hash == at_limit[-1].hash
    assert_matches_replay(store)


def test_state_hash_equals_the_replay_after_reorganisations_across_epochs(store, b):
    """Branches long enough to cross epoch boundaries (epoch_length 8): eligibility on a side
    branch is drawn from the side branch's own seed block, as the builder draws it."""
    trunk = b.produce_many(4)
    add_all(store, trunk)
    a = slashing_branch(b, trunk[-1].hash)
    a += b.produce_many(4, parent=a[-1].hash)
    add_all(store, a)
    tip_a = store.tip()
    c = outgrow(b, trunk[-1].hash, a[-1].hash, stakers=[1, 2, 3])
    assert add_all(store, c).status == "reorganized"
    assert_matches_replay(store)
    d = outgrow(b, a[-1].hash, c[-1].hash)
    assert add_all(store, d).status == "reorganized"
    assert_matches_replay(store)
    assert store.tip().height > tip_a.height and store.hash_at(tip_a.height) == tip_a.hash


# --- random branching ------------------------------------------------------------------------


@st.composite
def branching(draw):
    """A list of steps: (which known block to build on, which staking action to include)."""
    n = draw(st.integers(5, 18))
    return [(draw(st.integers(0, 10**6)), draw(st.sampled_from(["none", "bond", "unbond", "transfer"])),
             draw(st.integers(1, 200_000))) for _ in range(n)]


@given(branching())
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_random_branching_keeps_the_store_equal_to_its_replay(tmp_path_factory, steps):
    params = make_pos_params(max_reorg_depth=30, unbonding_delay=30)
    b = PosBuilder(params)
    store = Store.open(tmp_path_factory.mktemp("rnd"), params, map_size=1 << 24)
    try:
        known = [b.genesis.hash]
        for pick, action, amount in steps:
            parent = known[pick % len(known)]
            who = staker(pick % 4)
            nonce = b.nonce(parent, who)
            txs = []
            account = b.account(parent, who.address)
            if action == "bond" and account.balance > amount + 1:
                txs = [b.bond(who, amount, nonce=nonce)]
            elif action == "unbond" and account.stake > amount:
                txs = [b.unbond(who, amount, nonce=nonce)]
            elif action == "transfer":
                txs = [b.tx(who, nonce=nonce, amount=min(amount, account.balance - 1) or 1,
                            recipient=key(pick % 3).address)]
            block = b.produce(txs, parent=parent)
            event(add(store, block).status)
            known.append(block.hash)
            tip = store.tip()
            assert tip.total_stake == b.total_stake(tip.hash)
        heaviest = max(known, key=lambda h: (weight(b, h), -known.index(h)))
        assert weight(b, store.tip().hash) == weight(b, heaviest)
        assert_matches_replay(store)
    finally:
        store.close()


# --- staking on Proof of Work --------------------------------------------------------------------


def test_staking_transactions_are_refused_in_a_proof_of_work_block(tmp_path):
    pow_builder = ChainBuilder()
    s = Store.open(tmp_path / "pow", pow_builder.params, map_size=1 << 24)
    try:
        add(s, pow_builder.mine())
        bond = sign_tx(key(0), pow_builder.params.network_id, kind=BOND, nonce=0, fee=1, amount=10)
        block = pow_builder.mine([bond], allow_invalid=True)
        assert refused(s, block) == Code.BAD_BLOCK
        assert s.tip().total_stake == 0 and (s.account(key(0).address) or EMPTY).stake == 0
    finally:
        s.close()
