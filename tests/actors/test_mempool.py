"""The mempool's rules (actors.mempool.TxPool) on their own, over a plain dict of accounts.

Transactions are real and signed; the reference for "what a block may hold" is
chain.state.apply_block over the same accounts.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from actors.mempool import TxPool
from chain.errors import ChainError, Code
from chain.keys import address_of
from chain.state import Account, TxContext, apply_block, tx_cost
from chain.tx import BOND, EVIDENCE, TRANSFER, UNBOND, Transaction, sign_tx
from tests.chainbuilder import key

NETWORK = bytes(range(32))
PRODUCER = key(-1).address
TX_SIZE = 143  # a transfer: fixed part and signature, no payload


def tx(sender: int, nonce: int, fee: int = 1, amount: int = 10, to: int = 99) -> Transaction:
    return sign_tx(key(sender), NETWORK, kind=TRANSFER, nonce=nonce, fee=fee, recipient=key(to).address, amount=amount)


def addr(sender: int) -> bytes:
    return key(sender).address


class Ledger(dict):
    """Accounts by address; `get` is what the pool reads."""

    def fund(self, sender: int, balance: int = 1_000_000, nonce: int = 0) -> None:
        self[addr(sender)] = Account(balance=balance, nonce=nonce)


def make_pool(ledger: Ledger, **overrides: object) -> TxPool:
    options: dict[str, object] = {"max_bytes": 1_000_000, "min_fee": 1, "max_per_sender": 16, "expiry_ms": 60_000}
    options.update(overrides)
    return TxPool(ledger.get, **options)


def refused(pool: TxPool, transaction: Transaction, now_ms: int = 0) -> Code:
    """Add, expecting a refusal that changes nothing; answers the code."""
    before = (dict(pool.by_id), {s: list(r) for s, r in pool.by_sender.items()}, pool.bytes)
    with pytest.raises(ChainError) as info:
        pool.add(transaction, now_ms)
    assert (dict(pool.by_id), {s: list(r) for s, r in pool.by_sender.items()}, pool.bytes) == before
    return info.value.code


def pending(pool: TxPool) -> set[bytes]:
    return set(pool.by_id)


def check_invariants(pool: TxPool, ledger: Ledger) -> None:
    """What must hold after any sequence of operations."""
    entries = [e for run in pool.by_sender.values() for e in run]
    assert sorted(e.tx.id for e in entries) == sorted(pool.by_id)
    assert pool.bytes == sum(e.tx.size for e in entries) <= pool.max_bytes
    for sender, run in pool.by_sender.items():
        assert run, "an empty run is kept"
        account = ledger.get(sender) or Account()
        assert [e.tx.nonce for e in run] == list(range(account.nonce, account.nonce + len(run)))
        assert all(e.sender == sender == address_of(e.tx.sender) for e in run)
        assert sum(tx_cost(e.tx) for e in run) <= account.balance
        assert len(run) <= pool.max_per_sender
        assert all(e.tx.fee >= pool.min_fee for e in run)


def assert_block_valid(pool: TxPool, ledger: Ledger, txs: list[Transaction]) -> None:
    """`txs` (a selection) applied in order to the same accounts breaks no rule."""
    apply_block(ledger.get, txs, PRODUCER, 50, TxContext(1))
    seen: dict[bytes, int] = {}
    for t in txs:  # each sender's nonces in order, from its first pending one
        sender = address_of(t.sender)
        expected = seen.get(sender, (ledger.get(sender) or Account()).nonce)
        assert t.nonce == expected
        seen[sender] = expected + 1


# --- selection -------------------------------------------------------------------------------


def test_select_takes_the_best_fee_per_byte_first() -> None:
    ledger = Ledger()
    for sender in range(4):
        ledger.fund(sender)
    pool = make_pool(ledger)
    fees = {0: 10, 1: 1, 2: 5, 3: 7}
    for sender, fee in fees.items():
        pool.add(tx(sender, 0, fee=fee), 0)
    assert [t.fee for t in pool.select(1_000_000, 100)] == [10, 7, 5, 1]
    assert [t.fee for t in pool.select(1_000_000, 2)] == [10, 7]  # max_txs
    assert [t.fee for t in pool.select(2 * TX_SIZE + 10, 100)] == [10, 7]  # max_bytes
    assert pool.select(TX_SIZE - 1, 100) == []


def test_select_keeps_each_senders_nonce_order() -> None:
    ledger = Ledger()
    ledger.fund(0), ledger.fund(1)
    pool = make_pool(ledger)
    a0, a1, a2 = tx(0, 0, fee=1), tx(0, 1, fee=100), tx(0, 2, fee=50)
    b0 = tx(1, 0, fee=20)
    for t in (a0, a1, a2, b0):
        pool.add(t, 0)
    chosen = pool.select(1_000_000, 100)
    # a1 pays most but cannot come before a0; once a0 is in, a1 and a2 follow.
    assert chosen == [b0, a0, a1, a2]
    assert_block_valid(pool, ledger, chosen)
    # If a sender's next transaction does not fit, its later ones are not taken either.
    assert pool.select(2 * TX_SIZE, 100) == [b0, a0]


def test_select_leaves_out_transactions_younger_than_min_age() -> None:
    ledger = Ledger()
    ledger.fund(0), ledger.fund(1), ledger.fund(2)
    pool = make_pool(ledger)
    a0, a1 = tx(0, 0, fee=1), tx(0, 1, fee=100)
    b0 = tx(1, 0, fee=20)
    c0 = tx(2, 0, fee=5)
    pool.add(a0, 10_000)
    pool.add(b0, 10_000)
    pool.add(a1, 10_200)  # young: 100 ms old at 10,300
    pool.add(c0, 10_250)  # young
    assert pool.select(1_000_000, 100, now_ms=10_300, min_age_ms=300) == [b0, a0]
    # Exactly min_age old is old enough; the sender's later nonce follows once it is too.
    assert pool.select(1_000_000, 100, now_ms=10_500, min_age_ms=300) == [b0, a0, a1]
    assert pool.select(1_000_000, 100, now_ms=10_550, min_age_ms=300) == [b0, c0, a0, a1]
    # min_age 0 takes everything, as before.
    assert pool.select(1_000_000, 100, now_ms=10_300, min_age_ms=0) == [b0, c0, a0, a1]


def test_select_counts_a_transaction_from_before_a_clock_step_back_as_old() -> None:
    """A Pi whose clock is set back after boot must not hold its pending transactions out of
    blocks until the clock catches up with the time they came."""
    ledger = Ledger()
    ledger.fund(0)
    pool = make_pool(ledger)
    a0 = tx(0, 0)
    pool.add(a0, 5_000_000)
    assert pool.select(1_000_000, 100, now_ms=1_000, min_age_ms=300) == [a0]
    assert pool.select(1_000_000, 100, now_ms=5_000_100, min_age_ms=300) == []


# --- admission ------------------------------------------------------------------------------------


def test_nonce_gap_and_used_nonce_are_refused() -> None:
    ledger = Ledger()
    ledger.fund(0, nonce=3)
    pool = make_pool(ledger)
    assert refused(pool, tx(0, 4)) == Code.WRONG_NONCE  # gap: 3 is missing
    assert refused(pool, tx(0, 2)) == Code.WRONG_NONCE  # already used
    assert refused(pool, tx(0, 0)) == Code.WRONG_NONCE
    pool.add(tx(0, 3), 0)
    pool.add(tx(0, 4), 0)
    assert refused(pool, tx(0, 6)) == Code.WRONG_NONCE
    assert pool.next_nonce(addr(0)) == 5
    assert pool.next_nonce(addr(5)) == 0  # unknown account: nonce 0
    # An account the ledger does not know yet starts at nonce 0 with nothing to spend.
    assert refused(pool, tx(5, 0)) == Code.INSUFFICIENT_FUNDS


def test_duplicate_and_fee_below_minimum_are_refused() -> None:
    ledger = Ledger()
    ledger.fund(0)
    pool = make_pool(ledger, min_fee=3)
    assert refused(pool, tx(0, 0, fee=2)) == Code.FEE_TOO_LOW
    first = tx(0, 0, fee=3)
    pool.add(first, 0)
    assert refused(pool, first) == Code.DUPLICATE


def test_replacement_needs_a_higher_fee() -> None:
    ledger = Ledger()
    ledger.fund(0)
    pool = make_pool(ledger)
    old = tx(0, 0, fee=5, amount=10)
    nxt = tx(0, 1, fee=5)
    pool.add(old, 0), pool.add(nxt, 0)
    assert refused(pool, tx(0, 0, fee=5, amount=11)) == Code.FEE_TOO_LOW  # same fee
    assert refused(pool, tx(0, 0, fee=4, amount=12)) == Code.FEE_TOO_LOW  # lower fee
    new = tx(0, 0, fee=6, amount=13)
    assert pool.add(new, 0) == []
    assert pending(pool) == {new.id, nxt.id}
    assert [e.tx for e in pool.by_sender[addr(0)]] == [new, nxt]
    assert pool.bytes == new.size + nxt.size
    check_invariants(pool, ledger)


def test_replacement_may_not_strand_later_nonces() -> None:
    ledger = Ledger()
    ledger.fund(0, balance=1_000)
    pool = make_pool(ledger)
    pool.add(tx(0, 0, fee=1, amount=400), 0)
    pool.add(tx(0, 1, fee=1, amount=400), 0)
    # Paying 600 at nonce 0 would leave nonce 1 unaffordable: refused.
    assert refused(pool, tx(0, 0, fee=2, amount=600)) == Code.INSUFFICIENT_FUNDS
    pool.add(tx(0, 0, fee=2, amount=500), 0)
    check_invariants(pool, ledger)


def test_insufficient_funds_across_the_pending_run() -> None:
    ledger = Ledger()
    ledger.fund(0, balance=1_000)
    pool = make_pool(ledger)
    pool.add(tx(0, 0, fee=1, amount=600), 0)
    # Alone, 399 + 1 would do; after the 601 already pending it is two too many.
    assert refused(pool, tx(0, 1, fee=1, amount=400)) == Code.INSUFFICIENT_FUNDS
    pool.add(tx(0, 1, fee=1, amount=398), 0)  # exactly the balance
    assert sum(tx_cost(e.tx) for e in pool.by_sender[addr(0)]) == 1_000
    assert refused(pool, tx(0, 2, fee=1, amount=1)) == Code.INSUFFICIENT_FUNDS
    check_invariants(pool, ledger)


def test_max_per_sender() -> None:
    ledger = Ledger()
    ledger.fund(0), ledger.fund(1)
    pool = make_pool(ledger, max_per_sender=3)
    for nonce in range(3):
        pool.add(tx(0, nonce), 0)
    assert refused(pool, tx(0, 3)) == Code.MEMPOOL_FULL
    pool.add(tx(0, 2, fee=2), 0)  # a replacement does not add one: allowed at the cap
    pool.add(tx(1, 0), 0)  # the cap is per sender
    check_invariants(pool, ledger)


def test_transactions_no_block_could_hold_are_refused() -> None:
    # A pending transaction that breaks a block rule would make every template that includes
    # it invalid: the producer would mine invalid blocks until it expired.
    ledger = Ledger()
    ledger.fund(0)
    pool = make_pool(ledger)
    bond = sign_tx(key(0), NETWORK, kind=BOND, nonce=0, fee=1, amount=10)
    with pytest.raises(ChainError):
        apply_block(ledger.get, [bond], PRODUCER, 0, TxContext(1))  # a PoW block cannot hold it
    assert refused(pool, bond) == Code.BAD_BLOCK
    evidence = sign_tx(key(0), NETWORK, kind=EVIDENCE, nonce=0, fee=1, amount=0, payload=b"two headers")
    assert refused(pool, evidence) == Code.BAD_BLOCK

    # Where blocks hold staking transactions, the pool takes them, within the same rules.
    ledger[addr(1)] = Account(balance=1_000, stake=500)
    staking = make_pool(ledger, tx_context=lambda: TxContext(1, 10, staking=True))
    staking.add(bond, 0)
    unbond = sign_tx(key(1), NETWORK, kind=UNBOND, nonce=0, fee=1, amount=500)
    staking.add(unbond, 0)
    too_much = sign_tx(key(1), NETWORK, kind=UNBOND, nonce=1, fee=1, amount=1)  # the stake is gone
    assert refused(staking, too_much) == Code.INSUFFICIENT_FUNDS
    assert refused(staking, sign_tx(key(1), NETWORK, kind=UNBOND, nonce=0, fee=2, amount=501)) == (
        Code.INSUFFICIENT_FUNDS  # a replacement is judged the same way
    )
    after_bond = sign_tx(key(0), NETWORK, kind=EVIDENCE, nonce=1, fee=1, amount=0, payload=b"two headers")
    assert refused(staking, after_bond) == Code.BAD_BLOCK  # this network checks no evidence
    chosen = staking.select(1_000_000, 10)
    assert set(chosen) == {bond, unbond}
    apply_block(ledger.get, chosen, PRODUCER, 0, TxContext(1, 10, staking=True))


# --- the byte cap -----------------------------------------------------------------------------------


def test_full_pool_evicts_the_cheapest_tail_and_refuses_a_cheaper_newcomer() -> None:
    ledger = Ledger()
    for sender in range(6):
        ledger.fund(sender)
    pool = make_pool(ledger, max_bytes=4 * TX_SIZE)
    cheap = tx(0, 0, fee=2)
    others = [tx(1, 0, fee=5), tx(2, 0, fee=6), tx(3, 0, fee=7)]
    for t in (cheap, *others):
        pool.add(t, 0)
    assert pool.bytes == pool.max_bytes
    # Paying no more than the cheapest: refused, nothing moves.
    assert refused(pool, tx(4, 0, fee=2)) == Code.MEMPOOL_FULL
    assert refused(pool, tx(4, 0, fee=1)) == Code.MEMPOOL_FULL
    # Paying more: the cheapest goes.
    newcomer = tx(4, 0, fee=3)
    evicted = pool.add(newcomer, 0)
    assert [e.tx for e in evicted] == [cheap]
    assert pending(pool) == {newcomer.id, *(t.id for t in others)}
    assert pool.bytes == pool.max_bytes
    check_invariants(pool, ledger)


def test_eviction_never_takes_a_nonce_from_the_middle_of_a_run() -> None:
    ledger = Ledger()
    for sender in range(4):
        ledger.fund(sender)
    pool = make_pool(ledger, max_bytes=4 * TX_SIZE)
    a0, a1, a2 = tx(0, 0, fee=1), tx(0, 1, fee=50), tx(0, 2, fee=3)  # a0 is the cheapest of all
    b0 = tx(1, 0, fee=20)
    for t in (a0, a1, a2, b0):
        pool.add(t, 0)
    # The tails are a2 (3) and b0 (20). A newcomer paying 30 evicts a2 first...
    first = pool.add(tx(2, 0, fee=30), 0)
    assert [e.tx for e in first] == [a2]
    # ...then b0 (20), not a1 (50) and never a0 although it pays least: a0 is not a tail
    # while a1 follows it.
    second = pool.add(tx(3, 0, fee=30), 0)
    assert [e.tx for e in second] == [b0]
    assert [e.tx for e in pool.by_sender[addr(0)]] == [a0, a1]
    # Now the tails are a1 (50) and the two newcomers (30): one paying 29 outbids none of them,
    # and a0, cheaper but not a tail, does not count.
    ledger.fund(4)
    assert refused(pool, tx(4, 0, fee=29)) == Code.MEMPOOL_FULL
    check_invariants(pool, ledger)


def test_one_newcomer_may_evict_several_tail_transactions_of_one_sender() -> None:
    ledger = Ledger()
    for sender in range(3):
        ledger.fund(sender)
    pool = make_pool(ledger, max_bytes=3 * TX_SIZE)
    a0, a1 = tx(0, 0, fee=4), tx(0, 1, fee=2)
    b0 = tx(1, 0, fee=9)
    for t in (a0, a1, b0):
        pool.add(t, 0)
    pool.max_bytes = 2 * TX_SIZE  # as if the cap were lowered: the next admission must free two
    evicted = pool.add(tx(2, 0, fee=5), 0)
    assert [e.tx for e in evicted] == [a1, a0]  # the tail, then the new tail
    assert pending(pool) == {b0.id, pool.by_sender[addr(2)][0].tx.id}
    check_invariants(pool, ledger)


def test_a_sender_cannot_evict_its_own_run() -> None:
    ledger = Ledger()
    ledger.fund(0)
    pool = make_pool(ledger, max_bytes=2 * TX_SIZE)
    pool.add(tx(0, 0, fee=1), 0), pool.add(tx(0, 1, fee=1), 0)
    assert refused(pool, tx(0, 2, fee=100)) == Code.MEMPOOL_FULL


# --- expiry and rebuild ------------------------------------------------------------------------------


def test_expiry_removes_a_transaction_and_its_successors() -> None:
    ledger = Ledger()
    ledger.fund(0), ledger.fund(1)
    pool = make_pool(ledger, expiry_ms=10_000)
    a0, a1, a2 = tx(0, 0), tx(0, 1), tx(0, 2)
    b0 = tx(1, 0)
    pool.add(a0, 1_000), pool.add(a1, 6_000), pool.add(a2, 7_000), pool.add(b0, 6_000)
    assert pool.expire(11_000) == []  # exactly the expiry: still there
    expired = pool.expire(11_001)
    # a0 is too old; a1 and a2 are not, but without a0 they could never be mined.
    assert [e.tx for e in expired] == [a0, a1, a2]
    assert pending(pool) == {b0.id}
    assert pool.bytes == b0.size
    assert [e.tx for e in pool.expire(16_001)] == [b0]
    assert len(pool) == 0 and pool.bytes == 0 and pool.by_sender == {}


def test_rebuild_after_a_tip_change() -> None:
    ledger = Ledger()
    ledger.fund(0, balance=10_000), ledger.fund(1, balance=10_000), ledger.fund(2, balance=1_000)
    pool = make_pool(ledger)
    a = [tx(0, n, amount=100) for n in range(3)]
    c = [tx(2, n, amount=400) for n in range(2)]
    untouched = tx(3, 0)
    ledger.fund(3)
    for t in (*a, *c, untouched):
        pool.add(t, 500)

    # A block confirms a0 and a1, and a conflicting c0' (same nonce, bigger amount) from
    # sender 2; sender 1's b0 and b1 were in a block that is now disconnected.
    b = [tx(1, n, amount=100) for n in range(2)]
    ledger[addr(0)] = Account(balance=10_000 - 2 * 101, nonce=2)
    ledger[addr(2)] = Account(balance=1_000 - 901, nonce=1)
    kept, dropped = pool.rebuild({addr(0), addr(1), addr(2)}, b, now_ms=9_000)

    assert [e.tx for e in pool.by_sender[addr(0)]] == [a[2]]  # confirmed ones gone
    assert [e.tx for e in pool.by_sender[addr(1)]] == b  # returned, in nonce order
    assert addr(2) not in pool.by_sender  # c0 conflicts; c1 now needs 401 of 99: dropped
    assert untouched.id in pool  # other senders are left as they were
    assert (kept, dropped) == (3, 4)
    assert pool.by_id[a[2].id].added_ms == 500  # kept transactions keep their age
    assert pool.by_id[b[0].id].added_ms == 9_000
    check_invariants(pool, ledger)
    chosen = pool.select(1_000_000, 100)
    assert set(chosen) == {a[2], *b, untouched}
    assert_block_valid(pool, ledger, chosen)


def test_rebuild_prefers_the_higher_fee_of_two_with_the_same_nonce() -> None:
    ledger = Ledger()
    ledger.fund(0)
    pool = make_pool(ledger)
    pending_one = tx(0, 0, fee=3)
    pool.add(pending_one, 0)
    returned = tx(0, 0, fee=7, amount=11)  # from a disconnected block
    assert pool.rebuild({addr(0)}, [returned], 1) == (1, 1)
    assert [e.tx for e in pool.by_sender[addr(0)]] == [returned]


# --- random sequences keep every invariant -----------------------------------------------------------

SENDERS = 4
ADD = st.tuples(
    st.just("add"),
    st.integers(0, SENDERS - 1),  # sender
    st.sampled_from([0, 0, 0, 0, -1, -1, -2, 1]),  # nonce offset from the next free one; < 0 replaces
    st.sampled_from(range(31)),  # fee (0 is below the minimum)
    st.sampled_from(range(1, 301)),  # amount
)
ACTIONS = st.lists(
    st.one_of(
        ADD, ADD, ADD, ADD,  # mostly admissions
        st.tuples(st.just("expire"), st.integers(0, 20_000), st.just(0), st.just(0), st.just(0)),
        st.tuples(st.just("confirm"), st.integers(1, 5), st.just(0), st.just(0), st.just(0)),
    ),
    min_size=20,
    max_size=80,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    balances=st.lists(st.sampled_from([0, 500, 2_000, 10_000]), min_size=SENDERS, max_size=SENDERS),
    nonces=st.lists(st.integers(0, 3), min_size=SENDERS, max_size=SENDERS),
    max_txs=st.integers(2, 8),
    max_per_sender=st.integers(1, 6),
    actions=ACTIONS,
)
def test_random_admissions_keep_the_invariants(
    balances: list[int], nonces: list[int], max_txs: int, max_per_sender: int, actions: list[tuple]
) -> None:
    ledger = Ledger()
    for sender in range(SENDERS):
        ledger.fund(sender, balance=balances[sender], nonce=nonces[sender])
    pool = make_pool(ledger, max_bytes=max_txs * TX_SIZE, min_fee=1, max_per_sender=max_per_sender, expiry_ms=5_000)
    now = 0
    for action, a, b, c, d in actions:
        now += 100
        if action == "add":
            sender = addr(a)
            nonce = max(0, pool.next_nonce(sender) + b)
            try:
                evicted = pool.add(tx(a, nonce, fee=c, amount=d, to=(a + 1) % SENDERS), now)
            except ChainError as e:
                assert e.code in {
                    Code.WRONG_NONCE, Code.FEE_TOO_LOW, Code.INSUFFICIENT_FUNDS, Code.MEMPOOL_FULL, Code.DUPLICATE
                }
                event(f"refused: {e.code}")
            else:
                event("admitted, evicting others" if evicted else "admitted")
        elif action == "expire":
            if pool.expire(now + a - 10_000):
                event("expired some")
        else:  # a block with the best `a` transactions is connected
            chosen = pool.select(pool.max_bytes, a)
            change = apply_block(ledger.get, chosen, PRODUCER, 50, TxContext(1))
            ledger.update(change.updated)
            senders = {address_of(t.sender) for t in chosen}
            pool.rebuild(senders, [], now)
            assert not any(t.id in pool for t in chosen)
        check_invariants(pool, ledger)
        assert_block_valid(pool, ledger, pool.select(pool.max_bytes, 1_000))
        assert_block_valid(pool, ledger, pool.select(3 * TX_SIZE, 1_000))
