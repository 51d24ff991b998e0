"""The test chain builder others build on: deterministic, valid, and honest about state."""

from __future__ import annotations

import pytest

from chain.block import decode_block
from chain.errors import ChainError, Code
from chain.tx import check_signature
from tests.chainbuilder import INITIAL_BALANCE, ChainBuilder, key, make_params


def test_same_calls_build_the_same_chain():
    a, b = ChainBuilder(), ChainBuilder()
    for builder in (a, b):
        builder.mine()
        builder.mine(transfers=[(0, 1, 10), (0, 2, 20)])
    assert a.tip.hash == b.tip.hash
    assert a.params.network_id == b.params.network_id
    assert ChainBuilder.address(0) == key(0).address


def test_blocks_are_valid_and_round_trip():
    b = ChainBuilder()
    blocks = b.mine_many(3) + [b.mine(transfers=[(1, 3, 99)])]
    for block in blocks:
        assert decode_block(block.raw) == block
        assert b.engine.next_difficulty(b.context(block.header.prev_hash)) == block.header.difficulty
        for tx in block.txs:
            check_signature(tx, b.params.network_id)
    assert [blk.height for blk in blocks] == [1, 2, 3, 4] and b.tip.hash == blocks[-1].hash


def test_state_follows_transfers_fees_and_rewards():
    b = ChainBuilder()
    block = b.mine(transfers=[(0, 1, 500), (0, 2, 5), (1, 0, 7)])
    state = b.state(block.hash)
    assert state[b.address(0)].balance == INITIAL_BALANCE - 500 - 5 - 2 + 7
    assert state[b.address(0)].nonce == 2
    assert state[b.address(1)].balance == INITIAL_BALANCE + 500 - 7 - 1
    assert state[key(-1).address].balance == b.params.block_reward + 3
    assert b.state(b.genesis.hash)[b.address(0)].balance == INITIAL_BALANCE  # earlier states are kept


def test_side_branches_do_not_move_the_tip():
    b = ChainBuilder()
    first = b.mine()
    main = b.mine(transfers=[(0, 1, 1)])
    side = b.mine(parent=first.hash, transfers=[(0, 2, 1)], producer=b.address(3))
    assert b.tip.hash == main.hash and side.height == main.height and side.hash != main.hash
    assert side.txs[0].nonce == 0  # nonces come from the side branch's own state
    longer = b.mine(parent=side.hash)
    assert longer.height == 3 and b.tip.hash == main.hash


def test_invalid_blocks_only_on_request():
    b = ChainBuilder()
    overspend = b.transfer(0, 1, 10 * INITIAL_BALANCE, nonce=0)
    with pytest.raises(ChainError) as err:
        b.mine([overspend])
    assert err.value.code is Code.INSUFFICIENT_FUNDS
    bad = b.mine([overspend], allow_invalid=True)
    assert b.tip.hash == b.genesis.hash  # the tip did not move
    with pytest.raises(KeyError):
        b.state(bad.hash)
    with pytest.raises(ValueError):
        b.mine(parent=bad.hash)


def test_custom_params():
    b = ChainBuilder(make_params(funded=2, balance=7, difficulty=16, block_reward=0))
    block = b.mine()
    assert block.header.difficulty == 16
    assert b.address(2) not in b.state(block.hash)
