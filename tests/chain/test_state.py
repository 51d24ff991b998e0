"""The state transition: checked against a small independent model of the ledger.

For random blocks of valid and invalid transactions from a few accounts, `apply_block`
either refuses the block with the code the model predicts, or returns exactly the accounts
the model computes; coins are conserved (fees move to the producer, only the reward is new);
undoing a block restores the exact state and state digest; and the incremental digest always
equals the digest recomputed from scratch.

Signatures are not part of the state transition (they are checked before), so these
transactions carry none and the tests stay fast.
"""

from __future__ import annotations

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from chain.errors import ChainError, Code, DecodeError
from chain.keys import ZERO_ADDRESS, address_of
from chain.state import (
    ACCOUNT_SIZE,
    EMPTY,
    Account,
    TxContext,
    apply_block,
    apply_tx,
    decode_account,
    decode_undo,
    digest_undo,
    digest_update,
    encode_account,
    encode_undo,
    state_digest,
    state_hash_hex,
)
from chain.tx import BOND, EVIDENCE, MAX_AMOUNT, TRANSFER, UNBOND, Transaction

# Four senders (fixed public keys; no private key is needed here), plus a bystander and a producer.
PUBLICS = [bytes([i + 1]) * 32 for i in range(4)]
ADDRS = [address_of(p) for p in PUBLICS]
BYSTANDER = b"\xbb" * 20
PRODUCER = b"\xcc" * 20
ALL_ADDRS = ADDRS + [BYSTANDER, PRODUCER]
DELAY = 3


def tx(sender: int, nonce: int, amount: int, *, to: bytes | None = None, fee: int = 1, kind: int = TRANSFER,
       payload: bytes = b"") -> Transaction:
    recipient = (ADDRS[(sender + 1) % 4] if to is None else to) if kind == TRANSFER else ZERO_ADDRESS
    return Transaction(kind, PUBLICS[sender], nonce, fee, recipient, amount, payload)


def total(state: dict[bytes, Account]) -> int:
    return sum(a.balance + a.stake + a.unbonding for a in state.values())


# --- the model ---------------------------------------------------------------------------


class Refused(Exception):
    def __init__(self, code: Code) -> None:
        self.code = code


def model_apply(state: dict[bytes, Account], txs, producer: bytes, reward: int, height: int,
                staking: bool) -> dict[bytes, Account]:
    """The ledger's rules written plainly, on mutable copies; raises Refused(code)."""
    s = {a: [acc.balance, acc.nonce, acc.stake, acc.unbonding, acc.unbonding_height] for a, acc in state.items()}

    def get(a):
        return s.setdefault(a, [0, 0, 0, 0, 0])

    def add(x, y):
        if x + y > MAX_AMOUNT:
            raise Refused(Code.BAD_AMOUNT)
        return x + y

    fees = 0
    for t in txs:
        me = address_of(t.sender)
        acc = list(get(me))
        if t.nonce != acc[1]:
            raise Refused(Code.WRONG_NONCE)
        if acc[3] and height >= acc[4]:  # unbonded stake is released
            acc[0], acc[3], acc[4] = add(acc[0], acc[3]), 0, 0
        cost = t.amount + t.fee if t.kind in (TRANSFER, BOND) else t.fee
        if cost > MAX_AMOUNT:
            raise Refused(Code.BAD_AMOUNT)
        if cost > acc[0]:
            raise Refused(Code.INSUFFICIENT_FUNDS)
        acc[0] -= cost
        acc[1] += 1
        if t.kind == TRANSFER:
            if t.recipient == me:
                acc[0] += t.amount
            else:
                get(t.recipient)[0] = add(get(t.recipient)[0], t.amount)
        elif not staking:
            raise Refused(Code.BAD_BLOCK)
        elif t.kind == BOND:
            acc[2] = add(acc[2], t.amount)
        elif t.kind == UNBOND:
            if t.amount > acc[2]:
                raise Refused(Code.INSUFFICIENT_FUNDS)
            acc[2] -= t.amount
            acc[3] = add(acc[3], t.amount)
            acc[4] = height + DELAY
        else:
            raise Refused(Code.BAD_BLOCK)
        s[me] = acc
        fees += t.fee
    if reward + fees:
        get(producer)[0] = add(get(producer)[0], reward + fees)
    return {a: Account(*v) for a, v in s.items() if a in state or v != [0, 0, 0, 0, 0]}


# --- strategies --------------------------------------------------------------------------

balances = st.one_of(
    st.integers(0, 10_000),
    st.integers(1_000, 10_000),
    st.integers(MAX_AMOUNT - 10_000, MAX_AMOUNT),
    st.integers(0, MAX_AMOUNT),
)
# Most blocks are plausible (small amounts and fees, right nonces), some hostile (amounts and
# fees near the maximum, wrong nonces), so that both acceptance and every refusal are common.
BENIGN = dict(offset=st.just(0), amount=st.integers(1, 300), fee=st.integers(0, 3))
HOSTILE = dict(
    offset=st.sampled_from([0, 0, 0, -1, 1]),
    amount=st.one_of(st.integers(1, 12_000), st.integers(MAX_AMOUNT - 12_000, MAX_AMOUNT), st.integers(1, MAX_AMOUNT)),
    fee=st.one_of(st.integers(0, 5), st.integers(MAX_AMOUNT - 5, MAX_AMOUNT)),
)


@st.composite
def initial_states(draw):
    state = {}
    for a in ALL_ADDRS:
        if draw(st.booleans()) or a in ADDRS[:2]:
            state[a] = Account(draw(balances), draw(st.integers(0, 3)), draw(st.sampled_from([0, 0, 500, MAX_AMOUNT // 2])))
    return state


@st.composite
def tx_specs(draw, staking, hostile):
    """(sender, nonce offset, amount, recipient, fee, kind); offset 0 is the right nonce."""
    kinds = [TRANSFER] * 6 + ([BOND, UNBOND] if staking else [BOND] * hostile)
    source = HOSTILE if hostile else BENIGN
    return (
        draw(st.integers(0, 3)),
        draw(source["offset"]),
        draw(source["amount"]),
        draw(st.sampled_from(ALL_ADDRS)),
        draw(source["fee"]),
        draw(st.sampled_from(kinds)),
    )


def build_block(state, specs):
    """Turn specs into transactions, giving nonces relative to what each sender expects."""
    expected = {a: (state.get(a) or EMPTY).nonce for a in ADDRS}
    txs = []
    for sender, offset, amount, to, fee, kind in specs:
        nonce = max(0, expected[ADDRS[sender]] + offset)
        txs.append(tx(sender, nonce, amount, to=to, fee=fee, kind=kind))
        if offset == 0:
            expected[ADDRS[sender]] += 1
    return txs


def apply_to_dict(state, change):
    new = dict(state)
    new.update(change.updated)
    return new


def undo_into_dict(state, previous):
    new = dict(state)
    for address, old in previous.items():
        if old is None:
            del new[address]
        else:
            new[address] = old
    return new


# --- the properties ----------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    initial_states(),
    st.booleans(),
    st.lists(st.integers(0, 8), min_size=1, max_size=5),
    st.data(),
)
def test_blocks_agree_with_the_model_conserve_coins_and_undo_exactly(state, staking, block_sizes, data):
    history = [(dict(state), state_digest(state.items()))]
    digest = history[0][1]
    applied = []
    for height, n_txs in enumerate(block_sizes, start=1):
        hostile = data.draw(st.booleans())
        specs = [data.draw(tx_specs(staking, hostile)) for _ in range(n_txs)]
        reward = data.draw(st.sampled_from([0, 50, 50, MAX_AMOUNT] if hostile else [0, 50]))
        txs = build_block(state, specs)
        before = dict(state)
        try:
            expected = model_apply(state, txs, PRODUCER, reward, height, staking)
            expected_code = None
        except Refused as refused:
            expected, expected_code = None, refused.code
        ctx = TxContext(height, DELAY, staking)
        try:
            change = apply_block(state.get, txs, PRODUCER, reward, ctx)
        except ChainError as err:
            event(f"refused: {err.code.text}")
            assert expected_code is not None, f"refused a block the model accepts: {err}"
            assert err.code is expected_code, f"refused with {err.code}, model says {expected_code}"
            assert state == before  # nothing written on refusal
            continue
        assert expected_code is None, f"accepted a block the model refuses with {expected_code}"
        event(f"accepted a block of {len(txs)} transactions" if txs else "accepted an empty block")
        assert state == before  # apply_block only reads
        new_state = apply_to_dict(state, change)
        assert new_state == expected
        # coins are conserved: only the reward is new, fees move to the producer
        assert total(new_state) == total(state) + reward
        assert change.fees == sum(t.fee for t in txs) and change.minted == reward
        # the undo record names every touched account, with its value before the block
        assert set(change.previous) == set(change.updated)
        assert all(change.previous[a] == state.get(a) for a in change.previous)
        assert decode_undo(encode_undo(change.previous)) == dict(change.previous)
        digest = digest_update(digest, change.previous, change.updated)
        assert digest == state_digest(new_state.items()), "incremental digest differs from a full recount"
        state = new_state
        applied.append(change)
        history.append((dict(state), digest))
    # undo every block, newest first: each step restores the exact state and digest before it
    for change in reversed(applied):
        history.pop()
        state = undo_into_dict(state, decode_undo(encode_undo(change.previous)))
        digest = digest_undo(digest, change.previous, change.updated)
        assert (state, digest) == history[-1]
        assert digest == state_digest(state.items())


# --- focused cases -----------------------------------------------------------------------


def funded(balance=1_000, nonce=0, **more):
    return {ADDRS[0]: Account(balance, nonce, **more), ADDRS[1]: Account(50)}


CTX = TxContext(height=1)


def refused(state, txs, code, reward=10, producer=PRODUCER, ctx=CTX):
    with pytest.raises(ChainError) as err:
        apply_block(state.get, txs, producer, reward, ctx)
    assert err.value.code is code
    return err.value


def test_simple_transfer():
    state = funded()
    change = apply_block(state.get, [tx(0, 0, 300, fee=2)], PRODUCER, 10, CTX)
    assert change.updated[ADDRS[0]] == Account(698, 1)
    assert change.updated[ADDRS[1]] == Account(350)
    assert change.updated[PRODUCER] == Account(12)
    assert change.previous == {ADDRS[0]: Account(1_000), ADDRS[1]: Account(50), PRODUCER: None}


def test_double_spend_same_nonce_in_one_block():
    state = funded()
    first = tx(0, 0, 100)
    second = tx(0, 0, 200, to=BYSTANDER)
    apply_block(state.get, [first], PRODUCER, 10, CTX)
    apply_block(state.get, [second], PRODUCER, 10, CTX)
    refused(state, [first, second], Code.WRONG_NONCE)
    refused(state, [second, first], Code.WRONG_NONCE)


def test_double_spend_over_the_balance_in_one_block():
    state = funded(balance=1_000)
    a = tx(0, 0, 600, fee=0)
    b = tx(0, 1, 600, fee=0, to=BYSTANDER)
    apply_block(state.get, [a], PRODUCER, 0, CTX)
    refused(state, [a, b], Code.INSUFFICIENT_FUNDS)
    # the fee counts too: 999 + 1 fits, 999 + 2 does not
    apply_block(state.get, [tx(0, 0, 999, fee=1)], PRODUCER, 0, CTX)
    refused(state, [tx(0, 0, 999, fee=2)], Code.INSUFFICIENT_FUNDS)


def test_same_transaction_twice_is_a_wrong_nonce():
    state = funded()
    t = tx(0, 0, 1)
    refused(state, [t, t], Code.WRONG_NONCE)


def test_replay_of_a_confirmed_transaction_fails():
    state = funded()
    t = tx(0, 0, 5)
    state = apply_to_dict(state, apply_block(state.get, [t], PRODUCER, 0, CTX))
    refused(state, [t], Code.WRONG_NONCE)


def test_unknown_sender_has_nothing():
    refused({}, [tx(2, 0, 1, fee=0)], Code.INSUFFICIENT_FUNDS)
    refused({}, [tx(2, 1, 1)], Code.WRONG_NONCE)


@pytest.mark.parametrize("amount,fee", [(MAX_AMOUNT, 1), (1, MAX_AMOUNT), (MAX_AMOUNT, MAX_AMOUNT)])
def test_amount_plus_fee_overflow(amount, fee):
    state = {ADDRS[0]: Account(MAX_AMOUNT)}
    refused(state, [tx(0, 0, amount, fee=fee)], Code.BAD_AMOUNT)


def test_recipient_overflow():
    state = {ADDRS[0]: Account(100), ADDRS[1]: Account(MAX_AMOUNT - 5)}
    apply_block(state.get, [tx(0, 0, 5, fee=0)], PRODUCER, 0, CTX)
    refused(state, [tx(0, 0, 6, fee=0)], Code.BAD_AMOUNT)


def test_producer_overflow():
    state = {ADDRS[0]: Account(100), PRODUCER: Account(MAX_AMOUNT - 10)}
    apply_block(state.get, [tx(0, 0, 5, fee=4)], PRODUCER, 6, CTX)
    refused(state, [tx(0, 0, 5, fee=5)], Code.BAD_AMOUNT, reward=6)


def test_transfer_to_self_costs_only_the_fee():
    state = funded()
    change = apply_block(state.get, [tx(0, 0, 400, to=ADDRS[0], fee=3)], PRODUCER, 0, CTX)
    assert change.updated[ADDRS[0]] == Account(997, 1)
    refused(state, [tx(0, 0, 1_000, to=ADDRS[0], fee=1)], Code.INSUFFICIENT_FUNDS)


def test_empty_block_mints_the_reward_only():
    change = apply_block({}.get, [], PRODUCER, 50, CTX)
    assert change.updated == {PRODUCER: Account(50)} and change.previous == {PRODUCER: None}
    empty = apply_block({}.get, [], PRODUCER, 0, CTX)
    assert empty.updated == {} and empty.previous == {}


def test_producer_is_also_a_sender():
    state = funded()
    change = apply_block(state.get, [tx(0, 0, 100, fee=7)], ADDRS[0], 10, CTX)
    assert change.updated[ADDRS[0]] == Account(1_000 - 107 + 17, 1)
    assert total(apply_to_dict(state, change)) == total(state) + 10


def test_staking_transactions_refused_without_staking():
    state = funded()
    refused(state, [tx(0, 0, 10, kind=BOND)], Code.BAD_BLOCK)
    refused(state, [tx(0, 0, 10, kind=UNBOND)], Code.BAD_BLOCK)
    refused(state, [tx(0, 0, 0, kind=EVIDENCE, payload=b"x")], Code.BAD_BLOCK)


def test_bond_unbond_and_release_after_the_delay():
    ctx = TxContext(height=10, unbonding_delay=DELAY, staking=True)
    state = funded(balance=1_000)
    state = apply_to_dict(state, apply_block(state.get, [tx(0, 0, 400, kind=BOND)], PRODUCER, 0, ctx))
    assert state[ADDRS[0]] == Account(599, 1, 400)
    refused(state, [tx(0, 1, 401, kind=UNBOND)], Code.INSUFFICIENT_FUNDS, ctx=ctx)
    state = apply_to_dict(state, apply_block(state.get, [tx(0, 1, 150, kind=UNBOND)], PRODUCER, 0, ctx))
    assert state[ADDRS[0]] == Account(598, 2, 250, 150, 10 + DELAY)
    # before the release height the unbonding coins cannot be spent ...
    early = TxContext(height=10 + DELAY - 1, unbonding_delay=DELAY, staking=True)
    refused(state, [tx(0, 2, 598, fee=1)], Code.INSUFFICIENT_FUNDS, ctx=early)
    # ... from it they can
    late = TxContext(height=10 + DELAY, unbonding_delay=DELAY, staking=True)
    change = apply_block(state.get, [tx(0, 2, 700, fee=1, to=BYSTANDER)], PRODUCER, 0, late)
    assert change.updated[ADDRS[0]] == Account(47, 3, 250, 0, 0)
    assert total(apply_to_dict(state, change)) == total(state)


def test_evidence_is_not_handled_by_the_state_transition():
    ctx = TxContext(height=1, staking=True)
    refused(funded(), [tx(0, 0, 0, kind=EVIDENCE, payload=b"x")], Code.BAD_BLOCK, ctx=ctx)


def test_apply_tx_returns_only_touched_accounts():
    state = funded()
    assert set(apply_tx(state.get, tx(0, 0, 1), CTX)) == {ADDRS[0], ADDRS[1]}


# --- digests ----------------------------------------------------------------------------------

accounts = st.builds(
    Account,
    st.integers(0, MAX_AMOUNT),
    st.integers(0, 2**64 - 1),
    st.integers(0, MAX_AMOUNT),
    st.integers(0, MAX_AMOUNT),
    st.integers(0, 2**64 - 1),
)
addresses = st.binary(min_size=20, max_size=20)


@given(st.dictionaries(addresses, accounts, max_size=8), st.dictionaries(addresses, accounts, max_size=8))
def test_digest_update_and_undo_match_recount(base, updates):
    previous = {a: base.get(a) for a in updates}
    after = {**base, **updates}
    d0 = state_digest(base.items())
    d1 = digest_update(d0, previous, updates)
    assert d1 == state_digest(after.items())
    assert digest_undo(d1, previous, updates) == d0
    assert len(state_hash_hex(d1)) == 64


@given(st.dictionaries(addresses, accounts, min_size=2, max_size=6))
def test_digest_ignores_order_and_sees_every_field(state):
    items = list(state.items())
    assert state_digest(items) == state_digest(reversed(items))
    a, acc = items[0]
    changed = Account(acc.balance, acc.nonce ^ 1, acc.stake, acc.unbonding, acc.unbonding_height)
    assert state_digest({**state, a: changed}.items()) != state_digest(items)


def test_empty_account_differs_from_absent_account():
    # an account stored as all zeros is a different state from no account at all
    assert state_digest([(BYSTANDER, Account())]) != state_digest([])


# --- encodings --------------------------------------------------------------------------------


@given(accounts)
def test_account_round_trip(account):
    data = encode_account(account)
    assert len(data) == ACCOUNT_SIZE
    assert decode_account(data) == account


def test_account_decode_refusals():
    good = encode_account(Account(5, 1, 2, 3, 4))
    for bad in (good[:-1], good + b"\x00", b""):
        with pytest.raises(DecodeError):
            decode_account(bad)
    for field in (0, 2, 3):  # balance, stake, unbonding
        raw = bytearray(good)
        raw[field * 8] = 0x80  # 2**63 + ...: above MAX_AMOUNT
        with pytest.raises(DecodeError):
            decode_account(bytes(raw))


undo_records = st.dictionaries(addresses, st.one_of(st.none(), accounts), max_size=8)


@given(undo_records)
def test_undo_round_trip(previous):
    data = encode_undo(previous)
    assert decode_undo(data) == previous
    assert encode_undo(decode_undo(data)) == data  # one encoding per record


def test_undo_decode_refusals():
    record = {b"\x01" * 20: Account(5), b"\x02" * 20: None}
    data = encode_undo(record)
    assert decode_undo(data) == record
    with pytest.raises(DecodeError):
        decode_undo(data + b"\x00")
    for cut in range(len(data)):
        with pytest.raises(DecodeError):
            decode_undo(data[:cut])
    with pytest.raises(DecodeError):
        decode_undo(b"\xff\xff\xff\xff")  # a count far beyond the maximum


def test_undo_decode_refuses_non_canonical_records():
    # A damaged record must be detected, not silently read as something else.
    one = b"\x01" * 20 + b"\x01" + encode_account(Account(5))
    two = b"\x02" * 20 + b"\x00"
    assert decode_undo(b"\x00\x00\x00\x02" + one + two)
    for bad in (
        b"\x00\x00\x00\x01" + b"\x01" * 20 + b"\x02" + encode_account(Account(5)),  # flag neither 0 nor 1
        b"\x00\x00\x00\x02" + two + one,  # addresses out of order
        b"\x00\x00\x00\x02" + two + two,  # the same address twice
    ):
        with pytest.raises(DecodeError):
            decode_undo(bad)
