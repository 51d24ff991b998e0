"""Proof of Stake in chain/: signed headers, slot rules, stake-weighted eligibility, the
difficulty adjustment when stake goes offline, double-signing evidence, and the staking
transactions (bond, unbond and its delay, slashing) in the state transition.

Blocks come from tests.posbuilder (fixed staker keys, real signatures). Statistical tests
use the real eligibility draw over fixed seeds, so they are deterministic: a tolerance below
is "how far from the expectation a correct implementation may land", stated with its
standard deviation, not a retry budget.
"""

from __future__ import annotations

import itertools
import math
import statistics
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chain.block import HEADER_VERSION, MAX_HEADER_SIZE, Block, Header, decode_header
from chain.consensus import HeaderContext, engine_for
from chain.encoding import Writer, sha256
from chain.errors import ChainError, Code
from chain.keys import SigningKey, address_of
from chain.params import POS, ChainParams, genesis_accounts, genesis_header
from chain.pos import (
    PROOF_SIZE,
    ProofOfStake,
    eligible,
    encode_evidence,
    epoch_seed_height,
    header_signer,
    sign_header,
    slot_of,
)
from chain.state import (
    EMPTY,
    SLASH_REPORTER_PERCENT,
    Account,
    Evidence,
    TxContext,
    apply_block,
    spendable,
)
from chain.tx import BOND, EVIDENCE, TRANSFER, UNBOND, sign_tx
from peerledger.config import load_genesis
from tests.chainbuilder import INITIAL_BALANCE, key, make_params
from tests.posbuilder import STAKE, PosBuilder, make_pos_params, staker

ROOT = Path(__file__).resolve().parents[2]
GENESIS_POS = ROOT / "configs" / "genesis-pos.toml"
NET = sha256(b"test network")
REPORTER = key(0)  # funded at genesis by make_pos_params
REWARD_TO = key(9).address  # producer address in state-transition tests (holds nothing)


def template(**fields: object) -> Header:
    values: dict[str, object] = dict(
        version=HEADER_VERSION,
        height=7,
        prev_hash=b"\x11" * 32,
        merkle_root=b"\x22" * 32,
        timestamp_ms=1_700_000_000_000,
        difficulty=4,
        producer=staker(0).address,
        proof=b"",
    )
    values.update(fields)
    return Header(**values)  # type: ignore[arg-type]


def code_of(call, *args) -> Code:
    with pytest.raises(ChainError) as info:
        call(*args)
    return info.value.code


# --- the example genesis spec ----------------------------------------------------------------


def test_example_genesis_spec_loads_as_a_proof_of_stake_network():
    params = load_genesis(GENESIS_POS)
    assert params.consensus == POS and isinstance(engine_for(params), ProofOfStake)
    assert len(params.stakes) == 3 and len(params.allocations) == 3
    # What its comments promise: difficulty is slots per block, and stake stays slashable
    # for as long as a competing history could still be accepted.
    assert params.initial_difficulty == params.block_interval_ms // params.slot_ms
    assert params.unbonding_delay > params.max_reorg_depth
    assert params.max_future_ms <= 4 * params.slot_ms
    accounts = genesis_accounts(params)
    stakes = sorted((a.stake for a in accounts.values() if a.stake), reverse=True)
    assert stakes == [300_000_000_000, 100_000_000_000, 100_000_000_000]
    first_staker = params.stakes[0][0]
    assert accounts[first_staker] == Account(balance=10_000_000_000, stake=300_000_000_000)


# --- signed headers --------------------------------------------------------------------------

heights = st.integers(1, 2**40)
headers = st.builds(
    template,
    height=heights,
    prev_hash=st.binary(min_size=32, max_size=32),
    merkle_root=st.binary(min_size=32, max_size=32),
    timestamp_ms=st.integers(0, 2**62),
    difficulty=st.integers(1, 2**62),
)


@given(headers, st.integers(0, 3), st.binary(min_size=32, max_size=32))
def test_sign_header_and_header_signer_round_trip(h, index, network_id):
    signed = sign_header(h, staker(index), network_id)
    assert len(signed.proof) == PROOF_SIZE and signed.proof[:32] == staker(index).public
    assert header_signer(signed, network_id) == staker(index).public
    assert decode_header(signed.raw) == signed
    # Every field but the proof is what was signed; the template's own proof is ignored.
    assert signed.with_proof(b"") == h.with_proof(b"")
    assert sign_header(h.with_proof(b"\x99" * 8), staker(index), network_id) == signed


def test_a_signature_for_another_network_is_refused():
    signed = sign_header(template(), staker(0), NET)
    assert code_of(header_signer, signed, sha256(b"another network")) == Code.BAD_PROOF


def _refused_after_flip(raw: bytes, position: int, mask: int) -> bool:
    flipped = bytearray(raw)
    flipped[position] ^= mask
    try:
        header = decode_header(bytes(flipped))
        public = header_signer(header, NET)
        if header.producer != address_of(public):
            raise ChainError(Code.BAD_PROOF, "producer")
    except ChainError:
        return True
    return False


def test_every_single_bit_flip_in_a_signed_header_is_refused():
    signed = sign_header(template(), staker(1), NET)
    survivors = [(i, bit) for i in range(len(signed.raw)) for bit in range(8)
                 if not _refused_after_flip(signed.raw, i, 1 << bit)]
    assert survivors == []


@given(st.data())
def test_any_flipped_byte_breaks_the_signature(data):
    signed = sign_header(data.draw(headers), staker(data.draw(st.integers(0, 3))), NET)
    position = data.draw(st.integers(0, len(signed.raw) - 1))
    mask = data.draw(st.integers(1, 255))
    assert _refused_after_flip(signed.raw, position, mask)


def test_precheck_refuses_a_producer_that_is_not_the_signer():
    engine = ProofOfStake(make_pos_params())
    net = engine.params.network_id
    honest = sign_header(template(producer=staker(0).address), staker(0), net)
    engine.precheck(honest)
    # Signed by staker 0 but naming staker 1 (or anyone) as the producer: the reward would go
    # to an address whose key signed nothing.
    for producer in (staker(1).address, key(0).address, b"\x00" * 20):
        stolen = sign_header(template(producer=producer), staker(0), net)
        assert header_signer(stolen, net) == staker(0).public  # the signature itself is fine
        assert code_of(engine.precheck, stolen) == Code.BAD_PROOF


@pytest.mark.parametrize("proof", [b"", b"\x00" * 8, b"\x01" * (PROOF_SIZE - 1), b"\x01" * (PROOF_SIZE + 1)])
def test_a_proof_of_the_wrong_size_is_refused(proof):
    engine = ProofOfStake(make_pos_params())
    assert code_of(engine.precheck, template(proof=proof)) == Code.BAD_PROOF


def test_an_all_zero_key_and_signature_prove_nothing():
    # The small-order key that "verifies" an all-zero signature on any message (chain.keys).
    assert code_of(header_signer, template(proof=bytes(PROOF_SIZE)), NET) == Code.BAD_PROOF


# --- slots -----------------------------------------------------------------------------------


def test_one_block_per_slot():
    b = PosBuilder()
    b.produce()
    parent = b.tip
    ctx = b.context(parent.hash)
    parent_slot = b.slot(parent)
    slot_ms = b.params.slot_ms

    def child(timestamp_ms: int) -> Header:
        return b.forge(parent=parent.hash, timestamp_ms=timestamp_ms).header

    last_ms_of_parent_slot = (parent_slot + 1) * slot_ms - 1
    assert last_ms_of_parent_slot > parent.timestamp_ms  # later in the same slot, after the parent
    for ts in (last_ms_of_parent_slot, parent.timestamp_ms + 1):
        assert code_of(b.engine.check_proof, child(ts), ctx) == Code.BAD_PROOF
    assert code_of(b.engine.check_proof, child(parent.timestamp_ms - slot_ms), ctx) == Code.BAD_PROOF
    b.engine.check_proof(child((parent_slot + 1) * slot_ms), ctx)  # the next slot is fine
    b.engine.check_proof(child((parent_slot + 7) * slot_ms + 3), ctx)


def test_slots_and_epoch_seeds():
    assert [slot_of(t, 250) for t in (0, 249, 250, 999, 1000)] == [0, 0, 1, 3, 4]
    # The seed for a block in epoch e (e >= 1) is the first block of epoch e - 1.
    assert [epoch_seed_height(h, 8) for h in (1, 7, 8, 15, 16, 23, 24, 100)] == [0, 0, 0, 0, 8, 8, 16, 88]
    b = PosBuilder()
    blocks = b.produce_many(20)
    assert b.context(blocks[5].hash).epoch_seed == b.genesis.hash
    assert b.context(blocks[15].hash).epoch_seed == blocks[7].hash  # child at 17: seed block 8


# --- eligibility -----------------------------------------------------------------------------

SEED = sha256(b"a fixed epoch seed")
SLOTS = 40_000


def eligible_count(public: bytes, stake: int, total: int, difficulty: int, slots: int = SLOTS,
                   seed: bytes = SEED) -> int:
    return sum(eligible(seed, s, public, stake, total, difficulty) for s in range(slots))


def test_three_times_the_stake_is_eligible_three_times_as_often():
    # Stakes 3:1 out of 4, difficulty 4: p = 3/16 and 1/16 a slot. Over 40,000 slots the
    # counts are ~7,500 and ~2,500; the ratio's standard deviation is ~0.07, so 2.7..3.3 is
    # more than 4 of them either way.
    total, d = 4 * STAKE, 4
    big = eligible_count(staker(0).public, 3 * STAKE, total, d)
    small = eligible_count(staker(1).public, STAKE, total, d)
    assert 2.7 < big / small < 3.3, (big, small)
    assert abs(big - SLOTS * 3 / 16) < 5 * math.sqrt(SLOTS * 3 / 16)
    assert abs(small - SLOTS / 16) < 5 * math.sqrt(SLOTS / 16)


@pytest.mark.parametrize("difficulty", [1, 2, 4, 10, 100])
def test_with_all_the_stake_about_one_slot_in_difficulty_has_a_producer(difficulty):
    # Ten equal stakers: the expected number of (staker, slot) wins is slots / difficulty
    # exactly, and a slot has at least one winner with probability 1 - (1 - 1/(10 d))**10.
    n, slots = 10, 10_000
    keys = [staker(i).public for i in range(n)]
    wins = [[eligible(SEED, s, k, STAKE, n * STAKE, difficulty) for k in keys] for s in range(slots)]
    total_wins = sum(map(sum, wins))
    expected = slots / difficulty
    assert abs(total_wins - expected) < 5 * math.sqrt(expected) + 1, (total_wins, expected)
    slots_with_a_producer = sum(any(w) for w in wins)
    p = 1 - (1 - 1 / (n * difficulty)) ** n
    assert abs(slots_with_a_producer - slots * p) < 5 * math.sqrt(slots * p * (1 - p)) + 1
    if difficulty >= 10:  # "about 1 slot in d": within 5% once overlaps are rare
        assert abs(slots_with_a_producer * difficulty / slots - 1) < 0.1
    if difficulty == 1:
        assert slots_with_a_producer == slots or abs(slots_with_a_producer / slots - p) < 0.02


def test_one_staker_with_all_the_stake_wins_one_slot_in_difficulty():
    for d in (1, 3, 8):
        count = eligible_count(staker(2).public, 7, 7, d, slots=20_000)
        assert abs(count - 20_000 / d) < 5 * math.sqrt(20_000 / d * (1 - 1 / d)) + 1, (d, count)
    assert eligible_count(staker(2).public, 7, 7, 1, slots=1000) == 1000


@given(st.integers(0, 2**20), st.integers(1, 10**12), st.integers(1, 10**12), st.integers(1, 1000))
def test_eligibility_grows_with_stake_and_falls_with_difficulty(slot, stake, extra, difficulty):
    total = stake + extra + 10**12
    k = staker(3).public
    if eligible(SEED, slot, k, stake, total, difficulty):
        assert eligible(SEED, slot, k, stake + extra, total, difficulty)
        assert eligible(SEED, slot, k, stake, total, max(1, difficulty // 2))
    assert not eligible(SEED, slot, k, 0, total, difficulty)
    assert not eligible(SEED, slot, k, stake, 0, difficulty)


def test_the_draw_depends_on_seed_slot_and_key():
    k0, k1 = staker(0).public, staker(1).public
    a = [eligible(SEED, s, k0, 1, 2, 1) for s in range(2000)]
    assert a != [eligible(SEED, s, k1, 1, 2, 1) for s in range(2000)]
    assert a != [eligible(sha256(b"other seed"), s, k0, 1, 2, 1) for s in range(2000)]
    assert a != a[1:] + a[:1]


def test_check_stake_refuses_an_ineligible_staker():
    b = PosBuilder()
    b.produce_many(3)
    parent = b.tip
    ctx = b.context(parent.hash)
    total = b.total_stake(parent.hash)
    d = b.engine.next_difficulty(ctx)
    first = b.slot(parent) + 1
    slot_won = next(s for s in range(first, first + 10_000) if b.is_eligible(parent.hash, s, 1))
    slot_lost = next(s for s in range(first, first + 10_000) if not b.is_eligible(parent.hash, s, 1))
    won = b.forge(slot=slot_won, staker_index=1).header
    lost = b.forge(slot=slot_lost, staker_index=1).header
    b.engine.check_stake(won, ctx, STAKE, total)
    assert code_of(b.engine.check_stake, lost, ctx, STAKE, total) == Code.BAD_PROOF
    # The same slot is lost without stake, and won by a staker holding all the stake at d = 1.
    assert code_of(b.engine.check_stake, won, ctx, 0, total) == Code.BAD_PROOF
    assert won.difficulty == d
    lucky = b.forge(slot=slot_lost, staker_index=1, difficulty=1).header
    b.engine.check_stake(lucky, ctx, total, total)


# --- the difficulty adjustment when stake goes offline -----------------------------------------


def simulate(params: ChainParams, online: list[int], blocks: int, start: tuple[Header, Header | None],
             name: bytes) -> list[Header]:
    """Blocks produced by the `online` stakers (staker(i), stakes from params) on top of
    `start` = (parent, grandparent): each slot in turn, the first eligible online staker
    signs. The epoch seed changes every epoch (a hash of `name` and the epoch)."""
    engine = ProofOfStake(params)
    stakes = {a: s for a, s in params.stakes}
    total = sum(stakes.values())
    candidates = [(staker(i).public, stakes[staker(i).address]) for i in online]
    parent, grandparent = start
    out = []
    for _ in range(blocks):
        ctx = HeaderContext(parent, grandparent, (parent.timestamp_ms,))
        d = engine.next_difficulty(ctx)
        seed = sha256(name + (parent.height // params.epoch_length).to_bytes(8, "big"))
        slot = slot_of(parent.timestamp_ms, params.slot_ms) + 1
        while not any(eligible(seed, slot, pub, s, total, d) for pub, s in candidates):
            slot += 1
        header = Header(HEADER_VERSION, parent.height + 1, parent.hash, b"\x00" * 32, slot * params.slot_ms, d,
                        b"\x01" * 20)
        out.append(header)
        parent, grandparent = header, parent
    return out


def test_difficulty_halves_when_half_the_stake_goes_offline_and_the_interval_recovers():
    # Slots of 100 ms, a block every 10 s: difficulty 100 (ASERT moves it in steps of 1%, fine
    # enough not to bias the interval). Four equal stakers; two stop. Averaged over 12 runs
    # (independent seeds) so that single geometric solvetimes do not decide the outcome.
    params = make_pos_params(slot_ms=100, block_interval_ms=10_000, initial_difficulty=100, epoch_length=16)
    target = params.block_interval_ms
    steady, first_after, settled, later_intervals = [], [], [], []
    for run in range(12):
        name = b"run %d" % run
        warm = simulate(params, [0, 1, 2, 3], 60, (genesis_header(params), None), name)
        steady += [b.timestamp_ms - a.timestamp_ms for a, b in itertools.pairwise(warm[19:])]
        d_before = warm[-1].difficulty
        half = simulate(params, [0, 1], 60, (warm[-1], warm[-2]), name + b"/half")
        ts = [warm[-1].timestamp_ms] + [h.timestamp_ms for h in half]
        intervals = [b - a for a, b in itertools.pairwise(ts)]
        first_after += intervals[:3]
        settled.append(half[-1].difficulty / d_before)
        later_intervals += intervals[25:]
    # 40 intervals a run x 12: the mean of ~480 geometric solvetimes has a relative standard
    # deviation of ~5%; 15% is three of them.
    assert abs(statistics.mean(steady) / target - 1) < 0.15, statistics.mean(steady)
    # Right after half the stake stops, blocks come at about twice the interval (36 samples:
    # relative deviation ~17%, and ASERT has already started to lower the difficulty).
    assert 1.5 < statistics.mean(first_after) / target < 2.5, statistics.mean(first_after)
    # Then difficulty halves and the interval comes back to the target.
    assert 0.4 < statistics.mean(settled) < 0.62, settled
    assert abs(statistics.mean(later_intervals) / target - 1) < 0.15, statistics.mean(later_intervals)


def test_next_difficulty_is_asert_on_the_parent_solvetime():
    b = PosBuilder(make_pos_params(initial_difficulty=40, block_interval_ms=4000))
    blocks = b.produce_many(30)
    assert [blk.header.difficulty for blk in blocks[:2]] == [40, 40]  # blocks 1 and 2 start at the genesis one
    from chain.difficulty import asert_next

    p = b.params
    for grandparent, parent, child in zip(blocks, blocks[1:], blocks[2:]):
        solvetime = parent.header.timestamp_ms - grandparent.header.timestamp_ms
        expected = asert_next(parent.header.difficulty, solvetime, p.block_interval_ms, p.difficulty_half_life,
                              p.min_difficulty)
        assert child.header.difficulty == expected
    assert len({blk.header.difficulty for blk in blocks}) > 1  # it does move


# --- evidence of double signing ----------------------------------------------------------------


@pytest.fixture(scope="module")
def double_signed():
    b = PosBuilder()
    b.produce_many(2)
    block = b.produce(stakers=[2])
    return b, block.header, b.double_sign(block)


def test_two_headers_for_one_slot_by_one_key_convict_it(double_signed):
    b, first, second = double_signed
    payload = encode_evidence(first, second)
    assert payload == encode_evidence(second, first)  # canonical: lower hash first
    assert b.engine.check_evidence(payload) == Evidence(staker(2).address, b.slot(first))


def test_two_blocks_on_different_parents_in_one_slot_also_convict():
    b = PosBuilder()
    a1 = b.produce(stakers=[0])
    slot = b.slot(a1.header) + 50
    one = b.forge(parent=a1.hash, slot=slot, staker_index=3)
    other = b.forge(parent=a1.header.prev_hash, slot=slot, staker_index=3)
    assert b.engine.check_evidence(encode_evidence(one.header, other.header)) == Evidence(staker(3).address, slot)


def _payload(*raws: bytes, trailing: bytes = b"") -> bytes:
    w = Writer()
    for raw in raws:
        w.var_bytes(raw, MAX_HEADER_SIZE)
    return w.getvalue() + trailing


def test_each_wrong_form_of_evidence_is_refused(double_signed):
    b, first, second = double_signed
    low, high = sorted((first, second), key=lambda h: h.hash)
    net = b.params.network_id
    other_slot = sign_header(replace_ts(first, first.timestamp_ms + 5 * b.params.slot_ms), staker(2), net)
    other_key = sign_header(Header(*_fields(first, producer=staker(3).address)), staker(3), net)
    bad_sig = first.with_proof(first.proof[:-1] + bytes([first.proof[-1] ^ 1]))
    other_net = sign_header(replace_ts(first, first.timestamp_ms + 1), staker(2), sha256(b"elsewhere"))
    cases = {
        "same header twice": _payload(first.raw, first.raw),
        "different slots": encode_evidence(first, other_slot),
        "different keys": encode_evidence(first, other_key),
        "bad signature": encode_evidence(second, bad_sig),
        "signed for another network": encode_evidence(first, other_net),
        "wrong order": _payload(high.raw, low.raw),
        "trailing bytes": _payload(low.raw, high.raw, trailing=b"\x00"),
        "one header": _payload(low.raw),
        "three headers": _payload(low.raw, high.raw, high.raw),
        "truncated": _payload(low.raw, high.raw)[:-1],
        "empty": b"",
        "not headers": _payload(b"\x01" * 50, b"\x02" * 50),
    }
    assert b.engine.check_evidence(_payload(low.raw, high.raw)).offender == staker(2).address
    for name, payload in cases.items():
        assert code_of(b.engine.check_evidence, payload) == Code.BAD_EVIDENCE, name


def replace_ts(h: Header, timestamp_ms: int) -> Header:
    return Header(*_fields(h, timestamp_ms=timestamp_ms))


def _fields(h: Header, **changes: object) -> tuple:
    values = dict(version=h.version, height=h.height, prev_hash=h.prev_hash, merkle_root=h.merkle_root,
                  timestamp_ms=h.timestamp_ms, difficulty=h.difficulty, producer=h.producer, proof=b"")
    values.update(changes)
    return tuple(values.values())


# --- staking transactions in the state transition ----------------------------------------------


class Ledger:
    """A dict state on which blocks of staking transactions are applied at chosen heights."""

    def __init__(self, b: PosBuilder) -> None:
        self.b = b
        self.accounts = genesis_accounts(b.params)
        self.nonces: dict[bytes, int] = {}

    def get(self, address: bytes) -> Account:
        return self.accounts.get(address, EMPTY)

    def coins(self) -> int:
        return sum(a.balance + a.stake + a.unbonding for a in self.accounts.values())

    def total_stake(self) -> int:
        return sum(a.stake for a in self.accounts.values())

    def next_nonce(self, signer: SigningKey) -> int:
        return self.get(signer.address).nonce

    def apply(self, height: int, *txs, reward: int = 0):
        change = apply_block(self.accounts.get, txs, REWARD_TO, reward, self.b.tx_context(height))
        self.accounts.update(change.updated)
        return change

    def refused(self, height: int, *txs) -> Code:
        with pytest.raises(ChainError) as info:
            apply_block(self.accounts.get, txs, REWARD_TO, 0, self.b.tx_context(height))
        return info.value.code


@pytest.fixture
def ledger(double_signed) -> Ledger:
    return Ledger(double_signed[0])


def test_bond_moves_balance_into_stake(ledger):
    b, s = ledger.b, staker(1)
    before = ledger.get(s.address)
    ledger.apply(1, b.bond(s, 600, nonce=0, fee=2))
    assert ledger.get(s.address) == Account(before.balance - 602, 1, before.stake + 600)
    assert ledger.total_stake() == 4 * STAKE + 600
    assert ledger.refused(2, b.bond(s, INITIAL_BALANCE, nonce=1)) == Code.INSUFFICIENT_FUNDS


def test_unbonded_stake_is_spendable_only_from_the_unbonding_height(ledger):
    b, s, delay = ledger.b, staker(1), ledger.b.params.unbonding_delay
    balance = ledger.get(s.address).balance
    assert ledger.refused(10, b.unbond(s, STAKE + 1, nonce=0)) == Code.INSUFFICIENT_FUNDS
    ledger.apply(10, b.unbond(s, 400_000, nonce=0))
    assert ledger.get(s.address) == Account(balance - 1, 1, STAKE - 400_000, 400_000, 10 + delay)
    assert ledger.total_stake() == 4 * STAKE - 400_000
    assert spendable(ledger.get(s.address), 10 + delay - 1) == balance - 1
    assert spendable(ledger.get(s.address), 10 + delay) == balance - 1 + 400_000
    everything = balance - 1 + 400_000 - 1  # all it holds once released, less the fee
    spend_all = b.tx(s, nonce=1, amount=everything, recipient=key(5).address)
    for height in range(11, 10 + delay):
        assert ledger.refused(height, spend_all) == Code.INSUFFICIENT_FUNDS, height
    ledger.apply(10 + delay, spend_all)
    assert ledger.get(s.address) == Account(0, 2, STAKE - 400_000, 0, 0)
    assert ledger.get(key(5).address).balance == everything


def test_a_second_unbond_restarts_the_delay_for_everything_still_unbonding(ledger):
    b, s, delay = ledger.b, staker(1), ledger.b.params.unbonding_delay
    ledger.apply(10, b.unbond(s, 100, nonce=0))
    ledger.apply(12, b.unbond(s, 50, nonce=1))
    assert ledger.get(s.address).unbonding == 150 and ledger.get(s.address).unbonding_height == 12 + delay


def test_slashing_takes_stake_and_unbonding_pays_the_reporter_and_burns_the_rest(ledger, double_signed):
    b, first, second = double_signed
    offender = staker(2)
    ledger.apply(3, b.unbond(offender, 300_000, nonce=0))  # still unbonding at height 4: slashable too
    before = ledger.coins()
    reporter_before = ledger.get(REPORTER.address).balance
    offender_before = ledger.get(offender.address)
    stake_before = ledger.total_stake()
    producer_before = ledger.get(REWARD_TO).balance
    evidence = b.evidence(REPORTER, first, second, nonce=0, fee=7)
    change = ledger.apply(4, evidence, reward=50)
    slashed = STAKE  # 700,000 bonded + 300,000 unbonding
    reward = slashed * SLASH_REPORTER_PERCENT // 100
    assert change.burned == slashed - reward == 900_000
    assert ledger.get(offender.address) == Account(offender_before.balance, 1, 0, 0, 0, b.slot(first))
    assert ledger.get(REPORTER.address).balance == reporter_before + reward - 7
    assert ledger.get(REWARD_TO).balance == producer_before + 50 + 7
    assert ledger.coins() == before + 50 - change.burned
    assert ledger.total_stake() == stake_before - 700_000


def test_evidence_is_used_once_per_slot(ledger, double_signed):
    b, first, second = double_signed
    offender = staker(2)
    ledger.apply(4, b.evidence(REPORTER, first, second, nonce=0))
    # The same evidence again, even from another reporter: nothing left to take for that slot.
    assert ledger.refused(5, b.evidence(key(1), first, second, nonce=0)) == Code.DUPLICATE
    # The offender bonds again: the old evidence (and any for an earlier slot) still cannot touch it ...
    ledger.apply(6, b.bond(offender, 5000, nonce=ledger.next_nonce(offender)))
    assert ledger.get(offender.address).stake == 5000
    assert ledger.refused(7, b.evidence(key(1), first, second, nonce=0)) == Code.DUPLICATE
    early = b.forge(parent=b.genesis.hash, slot=b.slot(first) - 3, staker_index=2).header
    early2 = b.double_sign(Block(early, ()))
    assert ledger.refused(7, b.evidence(key(1), early, early2, nonce=0)) == Code.DUPLICATE
    # ... but signing twice again, in a later slot, is slashed again.
    late = b.forge(parent=first.hash, slot=b.slot(first) + 9, staker_index=2).header
    late2 = b.double_sign(Block(late, ()))
    change = ledger.apply(8, b.evidence(key(1), late, late2, nonce=0))
    assert ledger.get(offender.address).stake == 0 and change.burned == 4500


def test_evidence_against_a_key_without_stake_is_refused(ledger):
    b = ledger.b
    nobody = SigningKey.from_seed(sha256(b"never staked"))
    block = b.forge(parent=b.genesis.hash, slot=b.slot(b.genesis) + 4, signer=nobody)
    other = sign_header(replace_ts(block.header, block.header.timestamp_ms + 1), nobody, b.params.network_id)
    assert ledger.refused(2, b.evidence(REPORTER, block.header, other, nonce=0)) == Code.DUPLICATE


def test_invalid_evidence_refuses_the_whole_block(ledger, double_signed):
    b, first, _ = double_signed
    good = b.tx(REPORTER, nonce=0, amount=5, recipient=key(6).address)
    bad = b.tx(REPORTER, nonce=1, kind=EVIDENCE, payload=_payload(first.raw, first.raw))
    assert ledger.refused(3, good, bad) == Code.BAD_EVIDENCE
    assert ledger.get(key(6).address) == EMPTY


def test_stake_whose_unbonding_delay_passed_is_not_slashed(double_signed):
    # Regression: the offender's matured unbonding was slashed unless the offender itself
    # had sent a transaction since it matured (which moves it to the balance).
    b, first, second = double_signed
    offender, delay = staker(2), b.params.unbonding_delay
    for self_report in (False, True):
        ledger = Ledger(b)
        ledger.apply(2, b.unbond(offender, 300_000, nonce=0))
        balance = ledger.get(offender.address).balance
        reporter = offender if self_report else REPORTER
        nonce = ledger.next_nonce(reporter)
        change = ledger.apply(2 + delay, b.evidence(reporter, first, second, nonce=nonce, fee=1))
        got = ledger.get(offender.address)
        assert got.stake == 0 and got.unbonding == 0
        own_reward = 70_000 if self_report else 0
        assert got.balance == balance + 300_000 + own_reward - (1 if self_report else 0), self_report
        assert change.burned == 700_000 - 70_000


@given(st.integers(1, 10**15), st.integers(0, 10**15), st.integers(0, 50), st.booleans())
@settings(max_examples=60, deadline=None)
def test_slashing_conserves_coins_but_what_it_burns(stake, unbonding, reward, offender_reports):
    b = PosBuilder()
    offender = staker(2)
    slot = 10**9
    h1 = b.forge(parent=b.genesis.hash, slot=slot, staker_index=2).header
    h2 = b.double_sign(Block(h1, ()))
    accounts = genesis_accounts(b.params)
    accounts[offender.address] = Account(1000, 0, stake, unbonding, 10**6)
    before = sum(a.balance + a.stake + a.unbonding for a in accounts.values())
    reporter = offender if offender_reports else REPORTER
    tx = b.evidence(reporter, h1, h2, nonce=0, fee=3)
    change = apply_block(accounts.get, [tx], REWARD_TO, reward, b.tx_context(5))
    after = dict(accounts)
    after.update(change.updated)
    assert sum(a.balance + a.stake + a.unbonding for a in after.values()) == before + reward - change.burned
    slashed = stake + unbonding
    assert change.burned == slashed - slashed * SLASH_REPORTER_PERCENT // 100
    assert after[offender.address].stake == after[offender.address].unbonding == 0


def test_staking_kinds_are_refused_on_a_proof_of_work_network():
    pow_params = make_params()
    assert engine_for(pow_params).__class__.__name__ == "ProofOfWork"
    assert not hasattr(engine_for(pow_params), "check_evidence")
    accounts = genesis_accounts(pow_params)
    ctx = TxContext(1, pow_params.unbonding_delay, False, None)
    b = PosBuilder()
    first = b.produce(stakers=[1]).header
    second = b.double_sign(b.block(first.hash))
    for kind, amount, payload in ((BOND, 10, b""), (UNBOND, 10, b""), (EVIDENCE, 0, encode_evidence(first, second))):
        tx = sign_tx(key(0), pow_params.network_id, kind=kind, nonce=0, fee=1, amount=amount, payload=payload)
        with pytest.raises(ChainError) as info:
            apply_block(accounts.get, [tx], REWARD_TO, 0, ctx)
        assert info.value.code == Code.BAD_BLOCK, kind
    transfer = sign_tx(key(0), pow_params.network_id, kind=TRANSFER, nonce=0, fee=1, amount=10,
                       recipient=key(1).address)
    apply_block(accounts.get, [transfer], REWARD_TO, 0, ctx)
