"""The ledger on disk: connecting, reorganising, refusing, growing and locking a real LMDB
store in tmp_path. Blocks come from tests.chainbuilder (valid, deterministic PoW chains);
the reference state is always the replay of the main chain from genesis (tests.storage.replay).
"""

from __future__ import annotations

import logging
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import lmdb
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from chain.block import HEADER_VERSION, Block, Header, merkle_root
from chain.errors import ChainError, Code
from chain.params import genesis_accounts, genesis_header
from chain.pow import meets_target, nonce_proof, search_nonce
from chain.state import state_digest, state_hash_hex
from chain.tx import Transaction
import storage.store
from storage.store import AddResult, Store, StoreError, StoreLocked, _RecentBlocks
from tests.chainbuilder import INITIAL_BALANCE, ChainBuilder, key, make_params
from tests.storage.replay import replay_state_digest

REPO = Path(__file__).resolve().parents[2]
SIDE = key(8).address  # producer of side-branch blocks, so that they differ from main-chain ones
OTHER = key(9).address
FRESH = key(20).address  # an address that holds nothing at genesis


# --- helpers -----------------------------------------------------------------------------


def add(store: Store, block: Block, now_ms: int | None = None) -> AddResult:
    """Add `block` as if the clock read its own timestamp (or `now_ms`)."""
    return store.add_block(block, block.header.timestamp_ms if now_ms is None else now_ms)


def refused(store: Store, block: Block, now_ms: int | None = None) -> Code:
    """Add `block`, expecting a ChainError; answers its code."""
    with pytest.raises(ChainError) as info:
        add(store, block, now_ms)
    return info.value.code


def forge(
    store: Store,
    parent_hash: bytes,
    txs: tuple[Transaction, ...] = (),
    *,
    producer: bytes = SIDE,
    timestamp_ms: int | None = None,
    difficulty: int | None = None,
    height: int | None = None,
    bad_proof: bool = False,
) -> Block:
    """A block on any parent the store holds (valid, side, even invalid), with real PoW.

    Every header field is what the store's own context asks for unless overridden, so that a
    test breaks exactly one rule. Used where the chain builder cannot go: on top of a block
    that breaks a state rule, or with a header the builder would refuse to make.
    """
    ctx = store.header_context(parent_hash)
    assert ctx is not None, "forge needs a parent the store knows"
    parent = ctx.parent
    template = Header(
        HEADER_VERSION,
        parent.height + 1 if height is None else height,
        parent.hash,
        merkle_root([tx.id for tx in txs]),
        parent.timestamp_ms + store.params.block_interval_ms if timestamp_ms is None else timestamp_ms,
        store.engine.next_difficulty(ctx) if difficulty is None else difficulty,
        producer,
        nonce_proof(0),
    )
    if bad_proof:
        nonce = next(
            n for n in range(1000) if not meets_target(template.with_proof(nonce_proof(n)).hash, template.difficulty)
        )
    else:
        nonce = search_nonce(template.without_proof(), template.difficulty, 0, 2**32)
    return Block(template.with_proof(nonce_proof(nonce)), tuple(txs))


def snapshot(store: Store) -> dict:
    """Everything a refused or aborted write must leave exactly as it was."""
    tip = store.tip()
    return {
        "tip": tip,
        "digest": store.state_digest(),
        "accounts": dict(store.iter_accounts()),
        "main": store.main_chain_hashes(0, tip.height + 2),
    }


def assert_state(store: Store, builder: ChainBuilder, tip_hash: bytes) -> None:
    """The store's tip is `tip_hash` and its state is the builder's, the replay's, the scan's."""
    tip = store.tip()
    assert tip.hash == tip_hash
    expected = builder.state(tip_hash)
    digest = store.state_digest()
    assert digest == state_digest(expected.items())
    assert digest == replay_state_digest(store)
    assert digest == state_digest(store.iter_accounts())
    assert tip.state_hash == state_hash_hex(digest)
    assert dict(store.iter_accounts()) == expected
    assert tip.tx_count == main_chain_tx_count(store)


def assert_tx_index(store: Store, known: list[Block]) -> None:
    """Once the index has caught up, every transaction of the main chain is found where it
    is; any other is not found."""
    store.index_all_txs()
    on_main = {}
    for height in range(store.tip().height + 1):
        block = store.block(store.hash_at(height))
        for position, tx in enumerate(block.txs):
            on_main[tx.id] = (block.hash, height, position)
    for txid, where in on_main.items():
        assert store.tx_location(txid) == where
    for block in known:
        for tx in block.txs:
            if tx.id not in on_main:
                assert store.tx_location(tx.id) is None


def main_chain_tx_count(store: Store) -> int:
    return sum(len(store.block(store.hash_at(h)).txs) for h in range(store.tip().height + 1))


@pytest.fixture
def builder() -> ChainBuilder:
    return ChainBuilder()


@pytest.fixture
def store(tmp_path: Path, builder: ChainBuilder):
    s = Store.open(tmp_path / "node", builder.params)
    yield s
    s.close()


# --- opening -----------------------------------------------------------------------------


def test_fresh_store_holds_genesis_and_its_allocations(tmp_path: Path, builder: ChainBuilder) -> None:
    params = builder.params
    genesis = genesis_header(params)
    store = Store.open(tmp_path / "node", params)
    try:
        tip = store.tip()
        assert (tip.hash, tip.height, tip.weight, tip.timestamp_ms) == (genesis.hash, 0, 0, params.genesis_time_ms)
        assert store.hash_at(0) == genesis.hash and store.hash_at(1) is None and store.hash_at(-1) is None
        assert store.block(genesis.hash).txs == ()
        assert store.header(genesis.hash) == genesis
        assert store.locator() == [genesis.hash]
        accounts = dict(store.iter_accounts())
        assert accounts == genesis_accounts(params)
        assert all(a.balance == INITIAL_BALANCE for a in accounts.values()) and len(accounts) == 4
        assert store.account(key(0).address).balance == INITIAL_BALANCE
        assert store.account(FRESH) is None
        assert store.state_digest() == state_digest(store.iter_accounts()) == replay_state_digest(store)
        assert tip.state_hash == state_hash_hex(store.state_digest())
    finally:
        store.close()
    again = Store.open(tmp_path / "node", params)
    try:
        assert again.tip() == tip
        assert dict(again.iter_accounts()) == accounts
        assert again.state_digest() == state_digest(accounts.items())
    finally:
        again.close()


def test_connecting_blocks_moves_balances_nonces_and_indexes(tmp_path: Path, builder: ChainBuilder) -> None:
    store = Store.open(tmp_path / "node", builder.params)
    plan = [
        [(0, 1, 500)],
        [(0, 2, 7), (0, FRESH, 40), (1, 0, 1_000)],
        [],
        [(2, 3, 999_000), (3, 2, 1)],
        [(1, 1, 5)],  # a transfer to oneself
    ]
    blocks = []
    try:
        for i in range(30):
            block = builder.mine(transfers=plan[i] if i < len(plan) else [((i % 4), (i + 1) % 4, i)])
            result = add(store, block)
            assert result.status == "connected"
            assert result.connected == (block,) and result.disconnected == ()
            assert result.tip == store.tip()
            assert (result.tip.height, result.tip.weight) == (i + 1, 4 * (i + 1))
            assert_state(store, builder, block.hash)
            blocks.append(block)
        state = builder.state(blocks[-1].hash)
        assert store.account(FRESH).balance == 40
        assert store.account(key(0).address).nonce == state[key(0).address].nonce > 0
        miner = store.account(key(-1).address)
        fees = sum(tx.fee for b in blocks for tx in b.txs)
        assert miner.balance == 30 * builder.params.block_reward + fees
        # Every transaction is found where it was confirmed, once the index has caught up.
        assert store.index_behind() and store.index_txs() is False and not store.index_behind()
        for block in blocks:
            assert store.hash_at(block.height) == block.hash
            assert store.block(block.hash) == block and store.block_raw(block.hash) == block.raw
            for position, tx in enumerate(block.txs):
                assert store.tx_location(tx.id) == (block.hash, block.height, position)
        assert store.tx_location(bytes(32)) is None
        # The locator: the last ten heights one by one, then exponentially spaced, then genesis.
        heights = [30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 19, 15, 7, 0]
        assert store.locator() == [store.hash_at(h) for h in heights]
        assert store.main_chain_hashes(28, 5) == [blocks[27].hash, blocks[28].hash, blocks[29].hash]
        tip, accounts = store.tip(), dict(store.iter_accounts())
    finally:
        store.close()
    again = Store.open(tmp_path / "node", builder.params)
    try:
        assert again.tip() == tip
        assert dict(again.iter_accounts()) == accounts
        assert_state(again, builder, blocks[-1].hash)
        assert again.tx_location(blocks[1].txs[2].id) == (blocks[1].hash, 2, 2)
        nxt = builder.mine(transfers=[(0, 3, 1)])
        assert add(again, nxt).status == "connected"
        assert_state(again, builder, nxt.hash)
    finally:
        again.close()


# --- branches and reorganisations ----------------------------------------------------------


def test_side_branch_is_stored_but_not_connected(store: Store, builder: ChainBuilder) -> None:
    a1, a2, a3 = builder.mine(transfers=[(0, 1, 10)]), builder.mine(), builder.mine()
    for block in (a1, a2, a3):
        add(store, block)
    before = snapshot(store)
    b2 = builder.mine(transfers=[(1, 2, 30)], parent=a1.hash, producer=SIDE)
    result = add(store, b2)
    assert result.status == "side_branch"
    assert result.tip == before["tip"] and result.connected == result.disconnected == ()
    assert snapshot(store) == before
    assert store.block(b2.hash) == b2
    entry = store.index_entry(b2.hash)
    assert entry.has_block and not entry.invalid and (entry.height, entry.weight) == (2, 8)
    assert store.hash_at(2) == a2.hash
    assert store.tx_location(b2.txs[0].id) is None
    assert_state(store, builder, a3.hash)
    # An equal-weight branch does not win: the first seen stays.
    b3 = builder.mine(parent=b2.hash, producer=SIDE)
    assert add(store, b3).status == "side_branch"
    assert store.tip().hash == a3.hash


def test_heavier_branch_reorganises_and_back_restores_the_exact_state(tmp_path: Path) -> None:
    # No block reward: empty blocks leave the state as it was, so reorganising back to a
    # branch that only adds empty blocks must give back the very same state hash.
    builder = ChainBuilder(make_params(block_reward=0))
    store = Store.open(tmp_path / "node", builder.params)
    try:
        a1 = builder.mine(transfers=[(0, 1, 100)])
        a2 = builder.mine(transfers=[(0, FRESH, 40), (1, 2, 60)])
        a3 = builder.mine(transfers=[(2, 3, 5)])
        for block in (a1, a2, a3):
            assert add(store, block).status == "connected"
        store.index_txs()  # the index then trails on the branch the reorganisations leave
        state_a3 = snapshot(store)
        assert store.account(FRESH).balance == 40

        b2 = builder.mine(transfers=[(0, 3, 777), (3, 0, 1)], parent=a1.hash, producer=SIDE)
        b3 = builder.mine(parent=b2.hash, producer=SIDE)
        assert add(store, b2).status == "side_branch"
        assert add(store, b3).status == "side_branch"
        b4 = builder.mine(transfers=[(1, 2, 9)], parent=b3.hash, producer=SIDE)
        result = add(store, b4)
        assert result.status == "reorganized"
        store.index_txs()
        assert [b.hash for b in result.disconnected] == [a3.hash, a2.hash]
        assert [b.hash for b in result.connected] == [b2.hash, b3.hash, b4.hash]
        assert result.tip == store.tip() and result.tip.height == 4
        assert_state(store, builder, b4.hash)
        assert store.account(FRESH) is None  # created by a2 only: undone, not left at zero
        assert [store.hash_at(h) for h in range(5)] == [builder.genesis.hash, a1.hash, b2.hash, b3.hash, b4.hash]
        # The tx index follows the main chain only.
        for tx in a2.txs + a3.txs:
            assert store.tx_location(tx.id) is None
        assert store.tx_location(a1.txs[0].id) == (a1.hash, 1, 0)
        assert store.tx_location(b2.txs[1].id) == (b2.hash, 2, 1)
        assert store.tx_location(b4.txs[0].id) == (b4.hash, 4, 0)
        # The old branch stays stored, as a side branch.
        assert store.block(a3.hash) == a3 and store.index_entry(a3.hash).has_block

        a4 = builder.mine(parent=a3.hash)
        assert add(store, a4).status == "side_branch"  # equal weight: b4 stays
        a5 = builder.mine(parent=a4.hash)
        result = add(store, a5)
        assert result.status == "reorganized"
        store.index_txs()
        assert [b.hash for b in result.disconnected] == [b4.hash, b3.hash, b2.hash]
        assert [b.hash for b in result.connected] == [a2.hash, a3.hash, a4.hash, a5.hash]
        assert_state(store, builder, a5.hash)
        assert store.state_digest() == state_a3["digest"]
        assert store.tip().state_hash == state_a3["tip"].state_hash
        assert dict(store.iter_accounts()) == state_a3["accounts"]
        for tx in b2.txs + b4.txs:
            assert store.tx_location(tx.id) is None
        for block in (a1, a2, a3):
            for position, tx in enumerate(block.txs):
                assert store.tx_location(tx.id) == (block.hash, block.height, position)
    finally:
        store.close()


def test_reorganisation_to_a_recent_rival_reads_no_block_back_from_disk(
    tmp_path: Path, builder: ChainBuilder, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store.open(tmp_path / "node", builder.params)
    try:
        a1 = builder.mine(transfers=[(0, 1, 100)])
        b1 = builder.mine(transfers=[(1, 2, 50)], parent=builder.genesis.hash, producer=SIDE)
        b2 = builder.mine(transfers=[(2, 3, 5)], parent=b1.hash, producer=SIDE)
        assert add(store, a1).status == "connected"
        assert add(store, b1).status == "side_branch"
        decoded = []
        real_decode = storage.store.decode_block
        monkeypatch.setattr(storage.store, "decode_block", lambda raw: decoded.append(raw) or real_decode(raw))
        result = add(store, b2)
        assert result.status == "reorganized"
        assert result.disconnected == (a1,) and result.connected == (b1, b2)
        assert decoded == []  # a1 and b1 were still held decoded
        assert_state(store, builder, b2.hash)
        assert store.tx_location(a1.txs[0].id) is None and store.tx_location(b1.txs[0].id) == (b1.hash, 1, 0)
    finally:
        store.close()


def test_an_index_left_on_a_dead_branch_leaves_it_and_its_lookups_stay_right(tmp_path: Path) -> None:
    builder = ChainBuilder(make_params(max_reorg_depth=3))
    store = Store.open(tmp_path / "node", builder.params)
    try:
        a1 = builder.mine(transfers=[(0, 1, 10)])
        a2 = builder.mine(transfers=[(1, 2, 10)])
        for block in (a1, a2):
            add(store, block)
        assert store.index_txs() is False and not store.index_behind()
        b2 = builder.mine(transfers=[(2, 3, 10)], parent=a1.hash, producer=SIDE)
        b3 = builder.mine(parent=b2.hash, producer=SIDE)
        assert add(store, b2).status == "side_branch"
        assert add(store, b3).status == "reorganized"
        # The index still holds a2 and not b2: lookups answer for the main chain all the same.
        assert store.index_behind()
        assert store.tx_location(a2.txs[0].id) is None
        assert store.tx_location(b2.txs[0].id) == (b2.hash, 2, 0)
        assert store.tx_location(a1.txs[0].id) == (a1.hash, 1, 0)
        parent = b3.hash
        for _ in range(4):
            block = builder.mine(parent=parent, producer=SIDE)
            assert add(store, block).status == "connected"
            parent = block.hash
        # a2 is now deeper than the reorganisation limit: pruning it takes the index off it first.
        assert store.prune_side_branches() == 1
        assert_not_stored(store, a2)
        assert not store.index_behind()
        assert store.tx_location(a2.txs[0].id) is None
        assert store.tx_location(b2.txs[0].id) == (b2.hash, 2, 0)
        assert_tx_index(store, [a1, a2, b2])
    finally:
        store.close()


def test_the_index_catches_up_in_bounded_steps(tmp_path: Path, builder: ChainBuilder) -> None:
    store = Store.open(tmp_path / "node", builder.params)
    try:
        blocks = [builder.mine(transfers=[(0, 1, 1), (1, 2, 1)]) for _ in range(5)]
        for block in blocks:
            add(store, block)
        steps = 1
        while store.index_txs(max_txs=3):  # two blocks a step (whole blocks, 4 transactions)
            steps += 1
        assert steps == 3
        assert_tx_index(store, blocks)
    finally:
        store.close()


def test_recent_blocks_are_bounded_by_count_and_by_transactions(builder: ChainBuilder) -> None:
    blocks = [builder.mine(transfers=[(0, 1, 1)] * n) for n in (1, 2, 3, 4, 5)]
    txs = [len(b.txs) for b in blocks]
    recent = _RecentBlocks(max_blocks=3, max_txs=sum(txs[2:5]))
    recent.keep(blocks)
    assert [recent.get(b.hash) for b in blocks] == [None, None, *blocks[2:]]
    recent = _RecentBlocks(max_blocks=10, max_txs=txs[4] - 1)
    recent.keep(blocks)
    assert [recent.get(b.hash) for b in blocks] == [None] * 4 + [blocks[4]]  # the newest stays, whatever its size


BAD_KINDS = ["double_spend", "replayed_nonce", "wrong_nonce", "insufficient_funds"]


def bad_block(builder: ChainBuilder, parent: Block, kind: str) -> tuple[Block, Code]:
    """A well-formed block on `parent` that breaks a state rule, and the code it must fail with."""
    nonce = builder.state(parent.hash)[key(0).address].nonce
    if kind == "double_spend":  # the same nonce spent twice in one block
        txs = [builder.transfer(0, 1, 10, nonce=nonce), builder.transfer(0, 2, 10, nonce=nonce)]
        code = Code.WRONG_NONCE
    elif kind == "replayed_nonce":  # a nonce the branch already used, to another recipient
        txs = [builder.transfer(0, 3, 10, nonce=nonce - 1)]
        code = Code.WRONG_NONCE
    elif kind == "wrong_nonce":
        txs = [builder.transfer(0, 1, 10, nonce=nonce + 3)]
        code = Code.WRONG_NONCE
    else:
        balance = builder.state(parent.hash)[key(0).address].balance
        txs = [builder.transfer(0, 1, 10, nonce=nonce), builder.transfer(0, 2, balance - 10, nonce=nonce + 1)]
        code = Code.INSUFFICIENT_FUNDS
    block = builder.mine(txs, parent=parent.hash, producer=SIDE, allow_invalid=True)
    return block, code


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_branch_with_an_invalid_block_is_refused_as_a_whole(tmp_path: Path, builder: ChainBuilder, kind: str) -> None:
    store = Store.open(tmp_path / "node", builder.params)
    try:
        main = [builder.mine(transfers=[(0, 1, 100)]), builder.mine(transfers=[(1, 2, 50)])]
        main += [builder.mine(transfers=[(0, 3, 1)]) for _ in range(3)]
        for block in main:
            add(store, block)
        before = snapshot(store)

        # A side branch from a1: b2 valid, b3 invalid, b4..b6 on top of it. While lighter than
        # the main chain it is only stored; b6 makes it heavier, and connecting it fails at b3.
        b2 = builder.mine(transfers=[(0, 2, 300)], parent=main[0].hash, producer=SIDE)
        b3, code = bad_block(builder, b2, kind)
        assert add(store, b2).status == "side_branch"
        assert add(store, b3).status == "side_branch"
        b4 = forge(store, b3.hash)
        assert add(store, b4).status == "side_branch"
        b5 = forge(store, b4.hash)
        assert add(store, b5).status == "side_branch"  # equal weight to the main chain
        b6 = forge(store, b5.hash)
        assert refused(store, b6) == code

        # One write transaction, aborted as a whole: nothing of b2 (valid, connected first
        # inside it) or of the undo of a2..a5 remains.
        assert snapshot(store) == before
        store.index_txs()
        assert store.tx_location(b2.txs[0].id) is None
        for block in main:
            for position, tx in enumerate(block.txs):
                assert store.tx_location(tx.id) == (block.hash, block.height, position)
        assert_state(store, builder, main[-1].hash)

        # The bad block and every descendant are refused from now on, without work.
        assert store.index_entry(b2.hash).has_block and not store.index_entry(b2.hash).invalid
        for block in (b3, b4, b5, b6):
            assert store.index_entry(block.hash).invalid
            assert refused(store, block) == Code.INVALID_ANCESTOR
        for parent in (b3, b4, b5, b6):
            child = forge(store, parent.hash, producer=OTHER)
            assert refused(store, child) == Code.INVALID_ANCESTOR
        assert snapshot(store) == before

        # The valid part of the branch is still a branch like any other.
        c3 = builder.mine(parent=b2.hash, producer=OTHER)
        assert add(store, c3).status == "side_branch"
        nxt = builder.mine()
        assert add(store, nxt).status == "connected"
        assert_state(store, builder, nxt.hash)
    finally:
        store.close()
    again = Store.open(tmp_path / "node", builder.params)
    try:
        assert_state(again, builder, nxt.hash)
        assert refused(again, b6) == Code.INVALID_ANCESTOR
    finally:
        again.close()


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_invalid_block_on_the_tip_is_refused(store: Store, builder: ChainBuilder, kind: str) -> None:
    a1 = builder.mine(transfers=[(0, 1, 100)])
    a2 = builder.mine(transfers=[(0, 1, 100)])
    for block in (a1, a2):
        add(store, block)
    before = snapshot(store)
    bad, code = bad_block(builder, a2, kind)
    assert refused(store, bad) == code
    assert snapshot(store) == before
    assert store.block(bad.hash) is None
    assert refused(store, bad) == Code.INVALID_ANCESTOR
    assert refused(store, forge(store, bad.hash)) == Code.INVALID_ANCESTOR
    good = builder.mine(transfers=[(0, 2, 5)])
    assert add(store, good).status == "connected"
    assert_state(store, builder, good.hash)


# --- header rules ----------------------------------------------------------------------------


@pytest.fixture
def twelve(store: Store, builder: ChainBuilder) -> list[Block]:
    blocks = builder.mine_many(12)
    for block in blocks:
        add(store, block)
    return blocks


def assert_not_stored(store: Store, block: Block) -> None:
    assert store.index_entry(block.hash) is None
    assert store.block_raw(block.hash) is None and store.header(block.hash) is None


def test_wrong_difficulty_is_refused(store: Store, twelve: list[Block]) -> None:
    tip = store.tip()
    expected = store.engine.next_difficulty(store.header_context(tip.hash))
    for difficulty in (expected - 1, expected + 1, 1):
        block = forge(store, tip.hash, difficulty=difficulty)
        assert refused(store, block) == Code.BAD_DIFFICULTY
        assert_not_stored(store, block)
    assert store.tip() == tip


def test_timestamp_must_be_after_median_time_past(store: Store, twelve: list[Block]) -> None:
    tip = store.tip()
    mtp = store.header_context(tip.hash).median_time_past
    assert mtp == twelve[-6].header.timestamp_ms  # median of the last 11, one second apart
    for stamp in (mtp, mtp - 1, 0):
        block = forge(store, tip.hash, timestamp_ms=stamp)
        assert refused(store, block) == Code.TIME_TOO_OLD
        assert_not_stored(store, block)
    assert store.tip() == tip
    # One millisecond later is enough, even though it is before the parent's own time.
    block = forge(store, tip.hash, timestamp_ms=mtp + 1)
    assert add(store, block, now_ms=tip.timestamp_ms).status == "connected"


def test_block_too_far_in_the_future_is_not_stored_and_can_be_retried(store: Store, twelve: list[Block]) -> None:
    tip = store.tip()
    now = tip.timestamp_ms + 1_000
    limit = store.params.max_future_ms
    block = forge(store, tip.hash, timestamp_ms=now + limit + 1)
    with pytest.raises(ChainError) as info:
        add(store, block, now_ms=now)
    assert info.value.code == Code.TIME_TOO_NEW and not info.value.code.penalise
    assert_not_stored(store, block)  # not remembered as invalid: our clock may be behind
    assert store.tip() == tip
    assert add(store, block, now_ms=now + 1).status == "connected"  # a millisecond later it is fine
    edge = forge(store, block.hash, timestamp_ms=block.header.timestamp_ms + 5_000)
    assert add(store, edge, now_ms=edge.header.timestamp_ms - limit).status == "connected"


def test_unknown_parent_is_refused_and_not_stored(store: Store, builder: ChainBuilder) -> None:
    b1, b2 = builder.mine(), builder.mine()
    assert refused(store, b2) == Code.UNKNOWN_PARENT
    assert_not_stored(store, b2)
    assert add(store, b1).status == "connected"
    assert add(store, b2).status == "connected"
    assert_state(store, builder, b2.hash)


def test_duplicate_block(store: Store, builder: ChainBuilder) -> None:
    b1, b2 = builder.mine(transfers=[(0, 1, 1)]), builder.mine()
    for block in (b1, b2):
        add(store, block)
    before = snapshot(store)
    for block in (b1, b2):
        result = add(store, block)
        assert result.status == "duplicate" and result.connected == result.disconnected == ()
        assert result.tip == before["tip"]
    side = builder.mine(parent=b1.hash, producer=SIDE)
    assert add(store, side).status == "side_branch"
    assert add(store, side).status == "duplicate"
    assert snapshot(store) == before


def test_bad_height_and_bad_proof(store: Store, twelve: list[Block]) -> None:
    tip = store.tip()
    assert refused(store, forge(store, tip.hash, height=tip.height + 2)) == Code.BAD_HEIGHT
    assert refused(store, forge(store, tip.hash, height=tip.height)) == Code.BAD_HEIGHT
    assert refused(store, forge(store, tip.hash, bad_proof=True)) == Code.BAD_PROOF
    assert store.tip() == tip


def test_body_that_does_not_match_its_header_does_not_poison_the_header(store: Store, builder: ChainBuilder) -> None:
    real = builder.mine(transfers=[(0, 1, 10), (1, 2, 20)])
    # The same header with a body it does not commit to: refused, but the header is not
    # marked invalid, or anyone could get a good block refused by relaying a mangled copy.
    for txs in (real.txs[:1], real.txs[::-1], real.txs + real.txs[:1]):
        fake = Block(real.header, txs)
        assert fake.hash == real.hash
        assert refused(store, fake) in (Code.BAD_MERKLE_ROOT, Code.BAD_BLOCK)
        assert store.index_entry(real.hash) is None
    assert add(store, real).status == "connected"
    assert_state(store, builder, real.hash)


# --- finality: reorganisation depth and pruning ------------------------------------------------


def test_reorganisation_deeper_than_the_limit_is_refused(tmp_path: Path) -> None:
    builder = ChainBuilder(make_params(max_reorg_depth=3))
    store = Store.open(tmp_path / "node", builder.params)
    try:
        main = [builder.mine(transfers=[(0, 1, 1)]) for _ in range(6)]
        for block in main:
            add(store, block)
        before = snapshot(store)
        # Forks at height 2: overtaking the tip at 6 would undo 4 blocks, one too many.
        deep, parent = [], main[1].hash
        for _ in range(5):
            deep.append(builder.mine(transfers=[(2, 3, 1)], parent=parent, producer=SIDE))
            parent = deep[-1].hash
        statuses = [add(store, block).status for block in deep]
        assert statuses == ["side_branch"] * 4 + ["reorg_refused"]
        assert snapshot(store) == before
        assert_state(store, builder, main[-1].hash)
        more = builder.mine(parent=deep[-1].hash, producer=SIDE)
        assert add(store, more).status == "reorg_refused"
        assert store.tip() == before["tip"]
        # Forking at height 3 undoes exactly 3 blocks: allowed.
        ok, parent = [], main[2].hash
        for _ in range(4):
            ok.append(builder.mine(transfers=[(3, 2, 1)], parent=parent, producer=OTHER))
            parent = ok[-1].hash
        results = [add(store, block) for block in ok]
        assert [r.status for r in results] == ["side_branch"] * 3 + ["reorganized"]
        assert [b.hash for b in results[-1].disconnected] == [b.hash for b in main[:2:-1]]
        assert_state(store, builder, ok[-1].hash)
    finally:
        store.close()


def test_prune_side_branches_forgets_what_can_never_win(tmp_path: Path) -> None:
    builder = ChainBuilder(make_params(max_reorg_depth=3))
    store = Store.open(tmp_path / "node", builder.params)
    try:
        main = builder.mine_many(8)
        for block in main:
            add(store, block)
        assert store.prune_side_branches() == 0
        # x: forks at 1 (x2, x3), all below the limit of 8 - 3 = 5.
        x2 = builder.mine(parent=main[0].hash, producer=SIDE)
        x3 = builder.mine(parent=x2.hash, producer=SIDE)
        # y: forks at 4 (y5, y6): at or above the limit, it may still win.
        y5 = builder.mine(parent=main[3].hash, producer=OTHER)
        y6 = builder.mine(parent=y5.hash, producer=OTHER)
        # z: forks at 2 and climbs above the limit (z3..z6): dead at its root, so dead whole.
        z, parent = [], main[1].hash
        for _ in range(4):
            z.append(builder.mine(parent=parent, producer=key(10).address))
            parent = z[-1].hash
        for block in (x2, x3, y5, y6, *z):
            assert add(store, block).status == "side_branch"
        before = snapshot(store)
        assert store.prune_side_branches() == 2 + 4
        for block in (x2, x3, *z):
            assert_not_stored(store, block)
        for block in (y5, y6):
            assert store.block(block.hash) == block
        assert snapshot(store) == before
        assert store.prune_side_branches() == 0
        # A child of a forgotten block is an orphan, not a crash; y is still extendable.
        assert refused(store, builder.mine(parent=z[-1].hash, producer=key(10).address)) == Code.UNKNOWN_PARENT
        assert refused(store, builder.mine(parent=x3.hash, producer=SIDE)) == Code.UNKNOWN_PARENT
        y7 = builder.mine(parent=y6.hash, producer=OTHER)
        assert add(store, y7).status == "side_branch"
        assert_state(store, builder, main[-1].hash)
    finally:
        store.close()


def test_headers_and_blocks_on_a_pruned_branch_are_orphans_not_a_crash(tmp_path: Path) -> None:
    builder = ChainBuilder(make_params(max_reorg_depth=3))
    store = Store.open(tmp_path / "node", builder.params)
    try:
        main = builder.mine_many(8)
        side = [builder.mine(parent=main[0].hash, producer=SIDE)]
        for _ in range(5):
            side.append(builder.mine(parent=side[-1].hash, producer=SIDE))
        for block in main[:2]:
            add(store, block)
        # The branch's first block is stored; three more are known by their headers only
        # (headers-first sync), the last of them above the pruning limit to come.
        assert add(store, side[0]).status == "side_branch"
        assert store.add_headers([b.header for b in side[1:4]], side[3].header.timestamp_ms) == side[3].header
        for block in main[2:]:
            add(store, block)
        assert store.prune_side_branches() == 1
        far_future = side[-1].header.timestamp_ms
        with pytest.raises(ChainError) as info:
            store.add_headers([side[4].header], far_future)
        assert info.value.code == Code.UNKNOWN_PARENT
        for block in side[3:]:
            assert refused(store, block) == Code.UNKNOWN_PARENT
        assert_state(store, builder, main[-1].hash)
    finally:
        store.close()


# --- the map grows while readers read ------------------------------------------------------------


def test_map_grows_when_full_while_readers_keep_reading(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="storage.store")
    builder = ChainBuilder()
    blocks = [
        builder.mine(transfers=[(i % 4, (i + 1) % 4, 1), ((i + 1) % 4, FRESH, 2), ((i + 2) % 4, i % 4, 3)])
        for i in range(120)
    ]
    store = Store.open(tmp_path / "node", builder.params, map_size=64 << 10)
    initial = store._env.info()["map_size"]
    stop = threading.Event()
    errors: list[BaseException] = []
    read_times: list[float] = []
    slowest = [0.0]
    addresses = [key(i).address for i in range(4)] + [FRESH]

    def reader() -> None:
        # Readers as the API or sync serving would be: many, frequent, short. (A reader that
        # spins without pause starves the single writer: py-lmdb gives up the GIL on every
        # call, so each of the writer's calls waits a whole switch interval to get it back.)
        try:
            while not stop.is_set():
                started = time.monotonic()
                for address in addresses:
                    store.account(address)
                tip = store.tip()
                assert store.block_raw(tip.hash) is not None
                store.accounts(addresses)
                store.locator()
                finished = time.monotonic()
                slowest[0] = max(slowest[0], finished - started)
                read_times.append(time.time())  # the clock of log records' `created`
                time.sleep(0.0005)
        except BaseException as e:  # noqa: BLE001 - reported by the test thread
            errors.append(e)

    threads = [threading.Thread(target=reader, daemon=True, name=f"reader-{i}") for i in range(3)]
    try:
        for thread in threads:
            thread.start()
        for block in blocks:
            assert add(store, block).status == "connected"
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    try:
        assert not any(thread.is_alive() for thread in threads), "a reader is stuck"
        assert not errors, errors
        assert slowest[0] < 5.0
        assert store._env.info()["map_size"] >= 4 * initial
        grown = [r.created for r in caplog.records if "store map grown" in r.getMessage()]
        assert len(grown) >= 2
        # The readers were at work around every resize, not only before or after them.
        for moment in grown:
            assert any(t < moment for t in read_times) and any(t > moment for t in read_times)
        assert store.tip().height == 120
        assert_state(store, builder, blocks[-1].hash)
    finally:
        store.close()
    again = Store.open(tmp_path / "node", builder.params, map_size=64 << 10)
    try:
        assert_state(again, builder, blocks[-1].hash)
    finally:
        again.close()


# --- the data directory lock and identity checks ----------------------------------------------------

OPEN_IN_ANOTHER_PROCESS = """
import sys
from storage.store import Store, StoreLocked
from tests.chainbuilder import make_params
try:
    Store.open(sys.argv[1], make_params()).close()
except StoreLocked as e:
    print(e)
    sys.exit(3)
print("opened")
"""


def open_elsewhere(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", OPEN_IN_ANOTHER_PROCESS, str(path)],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )


def test_second_process_cannot_open_a_store_in_use(tmp_path: Path, builder: ChainBuilder) -> None:
    path = tmp_path / "node"
    store = Store.open(path, builder.params)
    try:
        other = open_elsewhere(path)
        assert other.returncode == 3, other.stderr
        message = other.stdout.strip()
        assert str(path) in message and "in use by another peerledger process" in message
        assert f"pid {os.getpid()}" in message
        with pytest.raises(StoreLocked):  # a second open in this very process too
            Store.open(path, builder.params)
        assert store.tip().height == 0  # the refused attempt did not disturb the holder
    finally:
        store.close()
    other = open_elsewhere(path)
    assert other.returncode == 0 and other.stdout.strip() == "opened", other.stderr


def test_schema_version_mismatch_is_refused_with_a_clear_message(tmp_path: Path, builder: ChainBuilder) -> None:
    path = tmp_path / "node"
    Store.open(path, builder.params).close()
    env = lmdb.open(str(path / "ledger"), max_dbs=16)
    with env.begin(write=True) as txn:
        txn.put(b"schema", struct.pack(">I", 99), db=env.open_db(b"meta", txn=txn))
    env.close()
    with pytest.raises(StoreError, match=r"schema version 99; this peerledger reads version 1") as info:
        Store.open(path, builder.params)
    assert str(path) in str(info.value) and "empty data directory" in str(info.value)
    # The refused open released the directory: putting the version back makes it usable.
    env = lmdb.open(str(path / "ledger"), max_dbs=16)
    with env.begin(write=True) as txn:
        txn.put(b"schema", struct.pack(">I", 1), db=env.open_db(b"meta", txn=txn))
    env.close()
    store = Store.open(path, builder.params)
    assert store.tip().height == 0
    store.close()


def test_a_ledger_written_before_the_index_trailed_the_tip_keeps_its_index(
    tmp_path: Path, builder: ChainBuilder
) -> None:
    path = tmp_path / "node"
    store = Store.open(path, builder.params)
    blocks = [builder.mine(transfers=[(0, 1, 1)]) for _ in range(6)]
    for block in blocks:
        add(store, block)
    store.index_txs()
    store.close()
    # Earlier versions wrote the index in each block's transaction and had no txindex_tip.
    env = lmdb.open(str(path / "ledger"), max_dbs=16)
    with env.begin(write=True) as txn:
        assert txn.delete(b"txindex_tip", db=env.open_db(b"meta", txn=txn))
    env.close()
    store = Store.open(path, builder.params)
    try:
        assert not store.index_behind()
        assert store.tx_location(blocks[0].txs[0].id) == (blocks[0].hash, 1, 0)  # not among the recent blocks
        nxt = builder.mine(transfers=[(0, 2, 1)])
        add(store, nxt)
        assert store.index_behind() and store.index_txs() is False
        assert_tx_index(store, [*blocks, nxt])
    finally:
        store.close()


def test_store_of_another_network_is_refused_with_a_clear_message(tmp_path: Path, builder: ChainBuilder) -> None:
    path = tmp_path / "node"
    store = Store.open(path, builder.params)
    add(store, builder.mine())
    store.close()
    other = make_params(name="another-network")
    with pytest.raises(StoreError, match="belongs to network") as info:
        Store.open(path, other)
    text = str(info.value)
    assert builder.params.network_id.hex()[:16] in text and other.network_id.hex()[:16] in text
    store = Store.open(path, builder.params)  # not locked by the refused attempt, not changed
    assert store.tip().height == 1
    store.close()


# --- random branching: the store always follows the heaviest valid branch ------------------------

OPS = st.lists(
    st.tuples(st.sampled_from(["tip", "tip", "fork", "side", "side", "side", "invalid"]), st.integers(0, 2**16),
              st.integers(0, 2**16)),
    min_size=1,
    max_size=30,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS)
def test_store_follows_the_heaviest_valid_branch(ops: list[tuple[str, int, int]]) -> None:
    builder = ChainBuilder()
    with tempfile.TemporaryDirectory() as directory:
        store = Store.open(Path(directory) / "node", builder.params)
        try:
            genesis = builder.genesis.hash
            valid = [genesis]  # valid blocks known to the store, in the order added
            weight = {genesis: 0}
            invalid: set[bytes] = set()  # refused: known to be invalid
            unchecked: set[bytes] = set()  # invalid, but stored without a state check while light
            tip = side_head = genesis
            known: list[Block] = []  # every block offered, valid or not
            for kind, pick, shape in ops:
                # On the tip, on any earlier block (starting a branch), or on the head of the last
                # branch started (which grows until it overtakes the main chain).
                parent = {"tip": tip, "side": side_head}.get(kind, valid[pick % len(valid)])
                producer = key(10 + shape % 4).address
                if kind == "invalid":
                    state = builder.state(parent)
                    sender = key(shape % 4).address
                    if shape % 2:
                        bad = builder.transfer(shape % 4, 1, 5, nonce=state[sender].nonce + 1 + shape % 3)
                    else:
                        bad = builder.transfer(shape % 4, 1, state[sender].balance, nonce=state[sender].nonce)
                    block = builder.mine([bad], parent=parent, producer=producer, allow_invalid=True)
                    known.append(block)
                    heavier = weight[parent] + block.header.difficulty > weight[tip]
                    if block.hash in unchecked:
                        assert add(store, block).status == "duplicate"
                    elif heavier or block.hash in invalid:
                        refused(store, block)
                        invalid.add(block.hash)
                        event("invalid block: refused")
                    else:
                        assert add(store, block).status == "side_branch"
                        unchecked.add(block.hash)
                        event("invalid block: stored unchecked while lighter")
                else:
                    transfers = [((shape + i) % 4, (shape + 2 * i + 1) % 6, 1 + shape % 97) for i in range(shape % 3)]
                    block = builder.mine(transfers=transfers, parent=parent, producer=producer)
                    known.append(block)
                    result = add(store, block)
                    if block.hash in weight:
                        assert result.status == "duplicate"
                    else:
                        if kind != "tip":
                            side_head = block.hash
                        valid.append(block.hash)
                        weight[block.hash] = weight[parent] + block.header.difficulty
                        if weight[block.hash] > weight[tip]:
                            assert result.status == ("connected" if parent == tip else "reorganized")
                            tip = block.hash
                        else:
                            assert result.status == "side_branch"
                    event(f"valid block: {result.status}")
                assert store.tip().hash == tip
                assert store.tip().tx_count == main_chain_tx_count(store)
                assert_tx_index(store, known)
                assert store.state_digest() == replay_state_digest(store)
                assert store.state_digest() == state_digest(builder.state(tip).items())
        finally:
            store.close()
        again = Store.open(Path(directory) / "node", builder.params)
        try:
            assert again.tip().hash == tip
            assert again.state_digest() == replay_state_digest(again) == state_digest(again.iter_accounts())
        finally:
            again.close()
