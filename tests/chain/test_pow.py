"""Proof of Work: ASERT difficulty that follows hash power, proofs that miners and validators
agree on, and the contextual header rules (height, time, difficulty, parent)."""

from __future__ import annotations

import random
import statistics
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chain.block import HEADER_VERSION, Header
from chain.consensus import HeaderContext, better_tip, check_header_context, engine_for
from chain.encoding import sha256, sha256d
from chain.errors import ChainError, Code
from chain.difficulty import MAX_DIFFICULTY, asert_next
from chain.pow import (
    ProofOfWork,
    meets_target,
    nonce_proof,
    search_nonce,
    target_for,
)
from tests.chainbuilder import ChainBuilder, make_params

INTERVAL = 10_000  # ms
HALF_LIFE = 6  # blocks


def nxt(d: int, solvetime: int, minimum: int = 1) -> int:
    return asert_next(d, solvetime, INTERVAL, HALF_LIFE, minimum)


# --- ASERT -------------------------------------------------------------------------------------


@pytest.mark.parametrize("d", [1, 2, 3, 7, 16, 1000, 2**20, 2**40, MAX_DIFFICULTY])
def test_on_target_solvetime_keeps_difficulty(d):
    assert nxt(d, INTERVAL) == d


@pytest.mark.parametrize("d", [1, 2, 5, 16, 100, 2**20, 2**40])
def test_faster_raises_slower_lowers(d):
    assert nxt(d, INTERVAL // 2) > d
    assert nxt(d, 1) > d
    assert nxt(d, INTERVAL * 2) < d or d == 1
    assert nxt(d, INTERVAL - 1000) >= d  # never moves the wrong way
    assert nxt(d, INTERVAL + 1000) <= d


def test_one_half_life_of_lateness_halves_and_of_earliness_doubles():
    d = 2**30
    # a block HALF_LIFE intervals late halves the difficulty (exponent -1 exactly); with a
    # half life of 3 blocks that lateness is inside the clamp of 6 intervals
    assert asert_next(d, INTERVAL + 3 * INTERVAL, INTERVAL, 3, 1) == d // 2
    # 2**(1/6) for a block found instantly, within the cubic's 0.013%
    assert nxt(d, 0) == pytest.approx(d * 2 ** (1 / HALF_LIFE), rel=2e-4)


@given(st.integers(1, MAX_DIFFICULTY), st.integers(-10**7, 10**7), st.integers(-10**7, 10**7))
def test_monotonic_in_solvetime(d, t1, t2):
    a, b = sorted((t1, t2))
    assert nxt(d, a) >= nxt(d, b)


@given(st.integers(1, 2**40), st.integers(0, 65535))
def test_fixed_point_power_of_two_is_accurate(d, frac):
    # exponent frac/65536 between 0 and 1: compare with floating point
    solvetime = INTERVAL - frac * INTERVAL * HALF_LIFE // 65536
    exact = d * 2 ** (((INTERVAL - solvetime) * 65536 // (INTERVAL * HALF_LIFE)) / 65536)
    assert abs(nxt(d, solvetime) - exact) <= 1 + exact * 2e-4  # integer rounding + the cubic


def test_solvetime_is_clamped_to_six_intervals():
    # However late a block, it counts as 6 intervals: the difficulty falls by at most
    # 2**(-5/6) a block, so a cluster back from an hour-long stall gets no burst of free blocks.
    d = 2**30
    assert nxt(d, 10**9) == nxt(d, 6 * INTERVAL) == pytest.approx(d * 2 ** (-5 / 6), rel=2e-4)
    assert nxt(d, -(10**9)) == nxt(d, -6 * INTERVAL) == pytest.approx(d * 2 ** (7 / 6), rel=2e-4)


def test_clamps_at_min_and_max():
    assert nxt(1, 10**9) == 1  # far too slow: down to the minimum, never 0
    assert nxt(2, 10**9) == 1
    assert nxt(55, 10**9, minimum=50) == 50
    assert nxt(MAX_DIFFICULTY, 0) == MAX_DIFFICULTY
    assert nxt(MAX_DIFFICULTY // 2, -(10**6)) == MAX_DIFFICULTY


def test_absurd_negative_solvetime_is_cheap():
    # A parent stamped long before its grandparent (allowed: the rule is median time past)
    # must not make the node build a gigantic integer before clamping.
    import time

    start = time.perf_counter()
    assert asert_next(1, -(2**62), 100, 1, 1) == 2**7  # clamped to -6 intervals: exponent 7
    assert asert_next(2**40, 2**62, 100, 1, 1) == 2**35  # +6 intervals: exponent -5
    assert asert_next(MAX_DIFFICULTY // 2, -(2**62), 100, 1, 1) == MAX_DIFFICULTY
    assert time.perf_counter() - start < 0.5


def simulate(d: int, hashrate: float, blocks: int, rnd: random.Random | None = None) -> tuple[list[int], list[int]]:
    """Mine `blocks` blocks at `hashrate` (hashes per second); solvetimes are the expected ones
    (difficulty / hashrate), or exponentially distributed when `rnd` is given."""
    diffs, times = [], []
    for _ in range(blocks):
        seconds = rnd.expovariate(hashrate / d) if rnd else d / hashrate
        solvetime = max(1, round(seconds * 1000))
        d = nxt(d, solvetime)
        diffs.append(d)
        times.append(solvetime)
    return diffs, times


def blocks_to_settle(diffs: list[int], target: float, tolerance: float = 0.2) -> int:
    """Blocks until the difficulty is within `tolerance` of `target` and stays there."""
    for i in range(len(diffs)):
        if all(abs(d / target - 1) <= tolerance for d in diffs[i:]):
            return i + 1
    raise AssertionError("never settled")


D0 = 2**24  # about 1.7 M hashes/s at 10 s blocks: a few Raspberry Pis
H0 = D0 / (INTERVAL / 1000)


@pytest.mark.parametrize(
    "factor,bound",
    [
        (2.0, 14),  # hash power doubles: 12 blocks measured
        (0.5, 11),  # halves: 9 blocks measured
        (10.0, 35),  # ten times: 31 blocks measured
        (0.1, 16),  # a tenth: 13 blocks measured
    ],
)
def test_difficulty_follows_hash_power(factor, bound):
    diffs, _ = simulate(D0, H0 * factor, 200)
    assert blocks_to_settle(diffs, D0 * factor) <= bound


@pytest.mark.parametrize("factor", [2.0, 0.5])
def test_block_interval_returns_to_target_with_random_solvetimes(factor):
    # With real (exponential) solvetimes, the average interval after the change is on
    # target: ASERT's exponent telescopes, so rounding and noise do not accumulate.
    for seed in range(5):
        diffs, times = simulate(D0, H0 * factor, 600, random.Random(seed))
        assert statistics.mean(times[50:]) == pytest.approx(INTERVAL, rel=0.05)
        # the noisy difficulty reaches the new hash power within 40 blocks (at worst 31 for
        # doubling and 26 for halving over 100 seeds)
        assert any(abs(d / (D0 * factor) - 1) <= 0.2 for d in diffs[:40])


def test_a_stall_costs_at_most_one_clamped_step():
    # The whole cluster was off for a long time. The block after the stall lowers the
    # difficulty by at most 2**(-5/6); miners coming back with the same hash power are at
    # their difficulty within a few blocks, instead of climbing back from the minimum
    # through a burst of nearly free blocks.
    d = nxt(D0, 500 * INTERVAL)
    assert d == pytest.approx(D0 * 2 ** (-5 / 6), rel=2e-4)
    diffs, _ = simulate(d, H0, 100)
    assert blocks_to_settle(diffs, D0) <= 12  # 10 measured; meanwhile blocks come at ~0.6-0.8 T


def test_last_miner_standing_gets_the_rate_back():
    # 99% of the hash power leaves: the difficulty falls 2**(-5/6) per block until blocks
    # are on time again.
    diffs, times = simulate(D0, H0 / 100, 200)
    assert blocks_to_settle(diffs, D0 / 100) <= 20  # 18 measured
    assert sum(times[:18]) <= 260 * INTERVAL  # 242 intervals measured: the first block alone takes 100


@pytest.mark.parametrize("d", range(1, 20))
def test_small_difficulties_can_rise(d):
    # a block found at once must raise any difficulty, however small
    assert nxt(d, 1) > d


# --- the engine's next_difficulty ----------------------------------------------------------


def header_at(height: int, timestamp: int, difficulty: int, prev: bytes = bytes(32)) -> Header:
    return Header(HEADER_VERSION, height, prev, bytes(32), timestamp, difficulty, bytes(20), b"\x00" * 8)


def test_first_blocks_use_the_initial_difficulty_even_when_launched_late():
    # The genesis timestamp is written in the genesis spec, not mined: a network started a
    # day after its spec was written must not see a day-long "solvetime" at block 2.
    params = make_params(difficulty=1000, block_interval_ms=INTERVAL)
    engine = ProofOfWork(params)
    genesis = header_at(0, params.genesis_time_ms, 1000)
    block1 = header_at(1, params.genesis_time_ms + 86_400_000, 1000, genesis.hash)
    as_documented = HeaderContext(block1, genesis, (block1.timestamp_ms, genesis.timestamp_ms))
    as_storage_builds_it = HeaderContext(block1, None, (block1.timestamp_ms, genesis.timestamp_ms))
    assert engine.next_difficulty(HeaderContext(genesis, None, (genesis.timestamp_ms,))) == 1000
    assert engine.next_difficulty(as_documented) == engine.next_difficulty(as_storage_builds_it) == 1000
    block2 = header_at(2, block1.timestamp_ms + INTERVAL // 2, 1000, block1.hash)
    assert engine.next_difficulty(HeaderContext(block2, block1, (block2.timestamp_ms,))) == nxt(1000, INTERVAL // 2)


def test_engine_for_selects_pow_and_weight_is_difficulty():
    params = make_params()
    engine = engine_for(params)
    assert isinstance(engine, ProofOfWork)
    assert engine.block_weight(header_at(1, 0, 12345)) == 12345
    assert better_tip(11, 10) and not better_tip(10, 10) and not better_tip(9, 10)


def test_engine_for_picks_the_genesis_consensus():
    from chain.pos import ProofOfStake
    from chain.pow import ProofOfWork

    assert isinstance(engine_for(make_params()), ProofOfWork)
    assert isinstance(engine_for(make_params(consensus="pos", stakes=((b"\x01" * 20, 10),), unbonding_delay=100)), ProofOfStake)


# --- proofs ------------------------------------------------------------------------------


@pytest.mark.parametrize("difficulty", [1, 2, 3, 8, 16])
def test_search_nonce_finds_a_valid_nonce(difficulty):
    template = header_at(5, 1_000, difficulty)
    nonce = search_nonce(template.without_proof(), difficulty, 0, 10_000)
    assert nonce is not None
    header = template.with_proof(nonce_proof(nonce))
    assert meets_target(header.hash, difficulty)
    ProofOfWork(make_params()).check_proof(header, None)
    # it is the first one: every earlier nonce fails
    for earlier in range(nonce):
        assert not meets_target(template.with_proof(nonce_proof(earlier)).hash, difficulty)


@settings(max_examples=300)
@given(st.binary(max_size=120), st.integers(1, 2**62), st.integers(0, 2**64 - 1))
def test_miner_and_validator_agree(prefix, difficulty, nonce):
    found = search_nonce(prefix, difficulty, nonce, 1)
    valid = meets_target(sha256d(prefix + struct.pack(">Q", nonce)), difficulty)
    assert (found == nonce) == valid and found in (None, nonce)


@given(st.integers(1, 2**62))
def test_target_boundary(difficulty):
    target = target_for(difficulty)
    assert meets_target((target - 1).to_bytes(32, "big"), difficulty)
    if target < 2**256:
        assert not meets_target(target.to_bytes(32, "big"), difficulty)


def test_search_nonce_gives_up_and_stays_in_range():
    assert search_nonce(b"x" * 100, 2**40, 0, 200) is None
    assert search_nonce(b"x", 1, 2**64 - 1, 10) == 2**64 - 1
    assert search_nonce(b"x", 2**62, 2**64 - 1, 10) is None  # does not wrap past 2**64 - 1


@pytest.fixture(scope="module")
def hard_header():
    difficulty = 2**14  # a tampered header passes by chance once in 16384
    template = Header(HEADER_VERSION, 7, sha256(b"parent"), sha256(b"root"), 123_456, difficulty, b"\x09" * 20,
                      b"\x00" * 8)
    nonce = search_nonce(template.without_proof(), difficulty, 0, 2**24)
    return template.with_proof(nonce_proof(nonce))


def test_tampered_header_fails_its_proof(hard_header):
    engine = ProofOfWork(make_params())
    engine.check_proof(hard_header, None)
    h = hard_header
    tampered = [
        Header(h.version, h.height + 1, h.prev_hash, h.merkle_root, h.timestamp_ms, h.difficulty, h.producer, h.proof),
        Header(h.version, h.height, sha256(b"other"), h.merkle_root, h.timestamp_ms, h.difficulty, h.producer, h.proof),
        Header(h.version, h.height, h.prev_hash, sha256(b"x"), h.timestamp_ms, h.difficulty, h.producer, h.proof),
        Header(h.version, h.height, h.prev_hash, h.merkle_root, h.timestamp_ms + 1, h.difficulty, h.producer, h.proof),
        Header(h.version, h.height, h.prev_hash, h.merkle_root, h.timestamp_ms, h.difficulty, b"\x08" * 20, h.proof),
        Header(h.version, h.height, h.prev_hash, h.merkle_root, h.timestamp_ms, h.difficulty * 2, h.producer, h.proof),
        h.with_proof(nonce_proof(int.from_bytes(h.proof, "big") + 1)),
    ]
    for bad in tampered:
        with pytest.raises(ChainError) as err:
            engine.check_proof(bad, None)
        assert err.value.code is Code.BAD_PROOF and err.value.code.penalise


@pytest.mark.parametrize("proof", [b"", b"\x00" * 7, b"\x00" * 9])
def test_proof_must_be_an_eight_byte_nonce(proof):
    header = header_at(1, 0, 1).with_proof(proof)  # difficulty 1: any hash meets it
    with pytest.raises(ChainError) as err:
        ProofOfWork(make_params()).check_proof(header, None)
    assert err.value.code is Code.BAD_PROOF


def test_precheck_is_the_context_free_proof_check(hard_header):
    engine = ProofOfWork(make_params())
    engine.precheck(hard_header)
    with pytest.raises(ChainError):
        engine.precheck(hard_header.with_proof(b"\x00" * 8))


# --- check_header_context ------------------------------------------------------------------


@pytest.fixture(scope="module")
def chain():
    b = ChainBuilder(make_params(difficulty=16))
    b.mine_many(12)
    return b


def child(b: ChainBuilder, **changes) -> Header:
    """A validly mined child of the tip, with `changes` applied before mining."""
    parent = b.tip
    fields = dict(
        version=HEADER_VERSION,
        height=parent.height + 1,
        prev_hash=parent.hash,
        merkle_root=sha256(b"no txs needed here"),
        timestamp_ms=parent.timestamp_ms + b.params.block_interval_ms,
        difficulty=b.engine.next_difficulty(b.context(parent.hash)),
        producer=b"\x07" * 20,
        proof=b"\x00" * 8,
    )
    fields.update(changes)
    template = Header(**fields)
    nonce = search_nonce(template.without_proof(), template.difficulty, 0, 2**20)
    return template.with_proof(nonce_proof(nonce))


def check(b: ChainBuilder, header: Header, now_ms: int | None = None) -> None:
    now = header.timestamp_ms if now_ms is None else now_ms
    check_header_context(b.engine, header, b.context(b.tip.hash), now)


def expect(code: Code, b: ChainBuilder, header: Header, now_ms: int | None = None) -> ChainError:
    with pytest.raises(ChainError) as err:
        check(b, header, now_ms)
    assert err.value.code is code, err.value
    return err.value


def test_valid_child(chain):
    check(chain, child(chain))


def test_wrong_parent(chain):
    expect(Code.UNKNOWN_PARENT, chain, child(chain, prev_hash=sha256(b"elsewhere")))


@pytest.mark.parametrize("delta", [0, 2, -5])
def test_wrong_height(chain, delta):
    expect(Code.BAD_HEIGHT, chain, child(chain, height=chain.tip.height + delta))


def test_time_not_after_median_time_past(chain):
    ctx = chain.context(chain.tip.hash)
    assert len(ctx.recent_timestamps) == chain.params.median_time_span == 11
    mtp = ctx.median_time_past
    assert mtp == chain.tip.timestamp_ms - 5 * chain.params.block_interval_ms
    check(chain, child(chain, timestamp_ms=mtp + 1), now_ms=chain.tip.timestamp_ms)
    err = expect(Code.TIME_TOO_OLD, chain, child(chain, timestamp_ms=mtp), now_ms=chain.tip.timestamp_ms)
    assert err.code.penalise
    expect(Code.TIME_TOO_OLD, chain, child(chain, timestamp_ms=mtp - 1), now_ms=chain.tip.timestamp_ms)


def test_time_too_far_in_the_future_is_not_penalised(chain):
    header = child(chain)
    limit = chain.params.max_future_ms
    check(chain, header, now_ms=header.timestamp_ms - limit)  # exactly at the limit: fine
    err = expect(Code.TIME_TOO_NEW, chain, header, now_ms=header.timestamp_ms - limit - 1)
    assert not err.code.penalise  # our clock may be the one that is behind


def test_wrong_difficulty(chain):
    right = chain.engine.next_difficulty(chain.context(chain.tip.hash))
    for wrong in (right - 1, right + 1, right * 2, 1):
        expect(Code.BAD_DIFFICULTY, chain, child(chain, difficulty=wrong))


def test_bad_proof(chain):
    header = child(chain)
    bad_nonce = next(n for n in range(1000) if not meets_target(header.with_proof(nonce_proof(n)).hash, header.difficulty))
    expect(Code.BAD_PROOF, chain, header.with_proof(nonce_proof(bad_nonce)))


def test_a_header_without_work_is_penalised_whatever_its_time(chain):
    # TIME_TOO_NEW is not penalised and may be retried later; a header that also lacks its
    # proof of work must not hide behind it, or junk headers would cost their sender nothing.
    header = child(chain)
    bad_nonce = next(n for n in range(1000) if not meets_target(header.with_proof(nonce_proof(n)).hash, header.difficulty))
    junk = header.with_proof(nonce_proof(bad_nonce))
    err = expect(Code.BAD_PROOF, chain, junk, now_ms=junk.timestamp_ms - 10**9)
    assert err.code.penalise
    wrong_difficulty = child(chain, difficulty=1)
    expect(Code.BAD_DIFFICULTY, chain, wrong_difficulty, now_ms=wrong_difficulty.timestamp_ms - 10**9)


def test_median_time_past_uses_the_middle_timestamp():
    ctx = HeaderContext(header_at(1, 0, 1), None, (50, 10, 40, 30, 20))
    assert ctx.median_time_past == 30
    assert HeaderContext(header_at(1, 0, 1), None, (7,)).median_time_past == 7
    # an even count (the first blocks of a chain) takes the upper middle: a consensus rule
    assert HeaderContext(header_at(1, 0, 1), None, (40, 10, 30, 20)).median_time_past == 30
    assert HeaderContext(header_at(1, 0, 1), None, (5, 9)).median_time_past == 9
