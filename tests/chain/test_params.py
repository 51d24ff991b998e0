"""Chain parameters: the network id is the identity of a network, so it must change with
every rule and allocation and with nothing else; a bad genesis spec is refused with
BAD_GENESIS and a message that names the field."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chain.block import ZERO_HASH, merkle_root
from chain.errors import ChainError, Code
from chain.keys import ZERO_ADDRESS
from chain.params import POS, POW, ChainParams, encode_params, genesis_accounts, genesis_header
from chain.state import Account
from chain.tx import MAX_AMOUNT

A, B, C = b"\x0a" * 20, b"\x0b" * 20, b"\x0c" * 20

BASE = dict(
    name="testnet",
    consensus=POW,
    genesis_time_ms=1_700_000_000_000,
    block_interval_ms=10_000,
    initial_difficulty=1_000,
    block_reward=50,
    max_block_bytes=1_000_000,
    max_block_txs=5_000,
    allocations=((A, 100), (B, 200)),
)


def params(**changes) -> ChainParams:
    return ChainParams(**{**BASE, **changes})


# Every field that is part of a network's identity, with a valid different value.
FIELD_CHANGES = {
    "name": "testnet2",
    "consensus": POS,
    "genesis_time_ms": 1_700_000_000_001,
    "block_interval_ms": 10_001,
    "initial_difficulty": 1_001,
    "block_reward": 51,
    "max_block_bytes": 1_000_001,
    "max_block_txs": 5_001,
    "allocations": ((A, 100), (B, 201)),
    "difficulty_half_life": 7,
    "min_difficulty": 2,
    "median_time_span": 13,
    "max_future_ms": 15_001,
    "max_reorg_depth": 101,
    "unbonding_delay": 21,
    "slot_ms": 1_001,
    "epoch_length": 33,
    "stakes": ((C, 5),),
}


def test_every_field_is_covered():
    fields = {f.name for f in dataclasses.fields(ChainParams)} - {"network_id"}
    assert fields == set(FIELD_CHANGES), "a new ChainParams field must be part of the network id and of this test"


@pytest.mark.parametrize("field", sorted(FIELD_CHANGES))
def test_network_id_changes_with_every_field(field):
    changes = {field: FIELD_CHANGES[field]}
    if field == "consensus":
        changes["stakes"] = ((C, 5),)  # a PoS network needs a stake
        changes["unbonding_delay"] = 100  # and stake slashable as deep as a reorganisation
    base_id = params(**({"stakes": ((C, 5),)} if field == "consensus" else {})).network_id
    assert params(**changes).network_id != base_id


@pytest.mark.parametrize(
    "allocations",
    [
        ((A, 100),),  # one removed
        ((A, 100), (B, 200), (C, 1)),  # one added
        ((A, 101), (B, 200)),  # an amount changed
        ((A, 100), (C, 200)),  # an address changed
        ((A, 200), (B, 100)),  # amounts swapped between addresses
        (),
    ],
)
def test_network_id_changes_with_any_allocation_change(allocations):
    assert params(allocations=allocations).network_id != params().network_id


def test_allocation_and_stake_are_not_interchangeable():
    assert params(allocations=((A, 5),), stakes=()).network_id != params(allocations=(), stakes=((A, 5),)).network_id


@given(st.permutations([(A, 100), (B, 200), (C, 300)]))
def test_allocation_order_does_not_matter(order):
    assert params(allocations=tuple(order)).network_id == params(allocations=((A, 100), (B, 200), (C, 300))).network_id


def test_stake_order_does_not_matter():
    for order in itertools.permutations([(A, 1), (B, 2), (C, 3)]):
        assert params(stakes=tuple(order)).network_id == params(stakes=((A, 1), (B, 2), (C, 3))).network_id


PINNED_ID = "64502e61d330a7ac30b266f0ac842682b07d3e0299acfd013342b4c2650cad7b"


def test_network_id_is_stable():
    # Pinned: a change of encode_params is a change of every network's identity.
    assert params().network_id.hex() == PINNED_ID
    assert params().network_magic == params().network_id[:4]
    assert params() == params() and params().network_id == params().network_id


def test_encoding_is_unambiguous_between_name_and_consensus():
    # length-prefixed strings: moving bytes between adjacent text fields changes the id
    assert encode_params(params(name="testnetp")) != encode_params(params(name="testnet"))


def test_network_id_cannot_be_set_by_the_caller():
    forged = ChainParams(**BASE, network_id=b"\x00" * 32)
    assert forged.network_id == params().network_id


# --- refusals --------------------------------------------------------------------------------

INT_FIELDS = {
    "genesis_time_ms": (0, MAX_AMOUNT),
    "block_interval_ms": (100, 86_400_000),
    "initial_difficulty": (1, 2**62),
    "block_reward": (0, MAX_AMOUNT),
    "max_block_bytes": (1_000, 64_000_000),
    "max_block_txs": (1, 1_000_000),
    "difficulty_half_life": (1, 100_000),
    "min_difficulty": (1, 2**62),
    "median_time_span": (1, 1_000),
    "max_future_ms": (0, 86_400_000),
    "max_reorg_depth": (1, 1_000_000),
    "unbonding_delay": (0, 1_000_000),
}


def refused(match: str, **changes) -> ChainError:
    with pytest.raises(ChainError, match=match) as err:
        params(**changes)
    assert err.value.code is Code.BAD_GENESIS
    return err.value


@pytest.mark.parametrize("field", sorted(INT_FIELDS))
def test_integer_fields_out_of_range_or_of_the_wrong_type(field):
    low, high = INT_FIELDS[field]
    fix = {"min_difficulty": 1} if field == "initial_difficulty" else {}
    if field == "min_difficulty":
        fix = {"initial_difficulty": 2**62}
    for value in (low - 1, high + 1, str(low), float(low), None, True):
        refused(field, **{field: value}, **fix)
    # the bounds themselves are valid
    for value in (low, high):
        params(**{field: value}, **fix)


@pytest.mark.parametrize("name", ["", "x" * 65, "é" * 33, None, 7, b"testnet"])
def test_bad_name(name):
    refused("name", name=name)


def test_name_length_is_counted_in_utf8_bytes():
    params(name="é" * 32)  # 64 bytes


@pytest.mark.parametrize("consensus", ["", "POW", "pos ", "proof-of-work", None, 1])
def test_bad_consensus(consensus):
    refused("consensus", consensus=consensus)


def test_initial_difficulty_below_minimum():
    refused("initial_difficulty", initial_difficulty=5, min_difficulty=6)


@pytest.mark.parametrize("label", ["allocations", "stakes"])
@pytest.mark.parametrize(
    "entries",
    [
        ((b"\x01" * 19, 5),),  # short address
        ((b"\x01" * 21, 5),),  # long address
        ((ZERO_ADDRESS, 5),),  # the zero address
        ((A, 5), (A, 6)),  # listed twice
        ((A, 0),),
        ((A, -1),),
        ((A, MAX_AMOUNT + 1),),
        ((A, True),),  # a bool is not an amount
        ((A, 5.0),),
        (("a" * 20, 5),),  # text, not bytes
        ((A,),),  # not a pair
        ((A, 5, 6),),
        (A,),
        ((None, 5),),
    ],
)
def test_bad_entries(label, entries):
    refused(label, **{label: entries})


@pytest.mark.parametrize("label", ["allocations", "stakes"])
def test_entries_must_be_a_sequence(label):
    refused(label, **{label: 5})


def test_supply_over_the_maximum():
    refused("allocations", allocations=((A, MAX_AMOUNT), (B, 1)))
    refused("allocations|stakes", allocations=((A, MAX_AMOUNT),), stakes=((B, 1),))
    params(allocations=((A, MAX_AMOUNT - 1), (B, 1)))


def test_proof_of_stake_needs_a_stake():
    refused("stake", consensus=POS)
    params(consensus=POS, stakes=((A, 10),), unbonding_delay=100)


def test_proof_of_stake_keeps_stake_slashable_as_deep_as_a_reorganisation():
    refused("unbonding_delay", consensus=POS, stakes=((A, 10),), unbonding_delay=99, max_reorg_depth=100)
    params(consensus=POS, stakes=((A, 10),), unbonding_delay=100, max_reorg_depth=100)


# --- genesis ---------------------------------------------------------------------------------


def test_genesis_header():
    p = params()
    g = genesis_header(p)
    assert (g.height, g.prev_hash, g.merkle_root, g.timestamp_ms) == (0, ZERO_HASH, merkle_root([]), p.genesis_time_ms)
    assert g.difficulty == p.initial_difficulty and g.proof == p.network_id and g.producer == ZERO_ADDRESS
    assert genesis_header(params(block_reward=51)).hash != g.hash  # every network has its own genesis


def test_genesis_accounts():
    p = params(allocations=((A, 100), (B, 200)), stakes=((B, 7), (C, 9)))
    assert genesis_accounts(p) == {A: Account(100), B: Account(200, 0, 7), C: Account(0, 0, 9)}
