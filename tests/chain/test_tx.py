"""Transactions: one encoding per transaction, every malformed form refused with a
DecodeError (never another exception), and signatures that bind every byte and the network."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chain.encoding import sha256
from chain.errors import ChainError, Code, DecodeError
from chain.keys import ZERO_ADDRESS, verify
from chain.tx import (
    BOND,
    EVIDENCE,
    MAX_AMOUNT,
    MAX_PAYLOAD,
    MAX_TX_SIZE,
    MIN_TX_SIZE,
    SIGNING_TAG,
    TRANSFER,
    UNBOND,
    Transaction,
    check_signature,
    decode_tx,
    decode_tx_at,
    encode_tx,
    sign_tx,
)
from tests.chainbuilder import key

NET_A = sha256(b"network A")
NET_B = sha256(b"network B")

# The layout written out here, independently of chain.tx, so that a change of the encoder
# that silently changes the wire format fails these tests.
LAYOUT = struct.Struct(">B32sQQ20sQH")


def raw_tx(kind=TRANSFER, sender=b"\x11" * 32, nonce=0, fee=1, recipient=b"\x22" * 20, amount=5,
           payload=b"", signature=b"\x33" * 64, payload_len=None) -> bytes:
    n = len(payload) if payload_len is None else payload_len
    return LAYOUT.pack(kind, sender, nonce, fee, recipient, amount, n) + payload + signature


amounts = st.integers(0, MAX_AMOUNT)
positive = st.integers(1, MAX_AMOUNT)
addresses = st.binary(min_size=20, max_size=20)
publics = st.binary(min_size=32, max_size=32)
signatures = st.binary(min_size=64, max_size=64)


@st.composite
def transactions(draw, kinds=(TRANSFER, BOND, UNBOND, EVIDENCE)):
    kind = draw(st.sampled_from(kinds))
    recipient, amount, payload = ZERO_ADDRESS, draw(positive), b""
    if kind == TRANSFER:
        recipient = draw(addresses)
    elif kind == EVIDENCE:
        amount, payload = 0, draw(st.binary(min_size=1, max_size=MAX_PAYLOAD))
    return Transaction(kind, draw(publics), draw(amounts), draw(amounts), recipient, amount, payload,
                       draw(signatures))


# --- round trips ---------------------------------------------------------------------------


@given(transactions())
def test_round_trip_every_kind(tx):
    data = tx.raw
    assert data == encode_tx(tx)
    assert len(data) == MIN_TX_SIZE + len(tx.payload) <= MAX_TX_SIZE
    back = decode_tx(data)
    assert back == tx
    assert back.raw == data
    assert back.id == tx.id == sha256(data)
    # decoding again (or re-encoding the decoded value) gives the very same id
    assert decode_tx(encode_tx(back)).id == tx.id


@given(transactions())
def test_layout_is_the_documented_one(tx):
    assert tx.raw == raw_tx(tx.kind, tx.sender, tx.nonce, tx.fee, tx.recipient, tx.amount, tx.payload, tx.signature)


@given(st.lists(transactions(), min_size=1, max_size=5), st.binary(max_size=10))
def test_transactions_are_self_delimiting(txs, prefix):
    data = prefix + b"".join(tx.raw for tx in txs)
    offset = len(prefix)
    for tx in txs:
        back, offset = decode_tx_at(data, offset)
        assert back == tx and back.id == tx.id
    assert offset == len(data)


@given(transactions(), transactions())
def test_distinct_transactions_have_distinct_ids(a, b):
    assert (a == b) == (a.id == b.id)


# --- arbitrary bytes: canonical or DecodeError ----------------------------------------------


def _decode_is_canonical_or_refused(data: bytes) -> None:
    try:
        tx = decode_tx(data)
    except DecodeError:
        return
    # Anything accepted has exactly this encoding: no second byte string for the same tx.
    assert encode_tx(tx) == data
    assert tx.raw == data and tx.id == sha256(data)
    assert Transaction(tx.kind, tx.sender, tx.nonce, tx.fee, tx.recipient, tx.amount, tx.payload,
                       tx.signature).raw == data


@st.composite
def mutated(draw):
    """A valid encoding, then a few bytes overwritten, cut off or appended."""
    data = bytearray(draw(transactions()).raw)
    for _ in range(draw(st.integers(0, 3))):
        where = draw(st.integers(0, len(data) - 1))
        data[where] = draw(st.integers(0, 255))
    action = draw(st.sampled_from(["keep", "cut", "extend"]))
    if action == "cut":
        data = data[: draw(st.integers(0, len(data)))]
    elif action == "extend":
        data += draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


@settings(max_examples=400)
@given(st.one_of(st.binary(max_size=MAX_TX_SIZE + 10), mutated()))
def test_arbitrary_bytes_decode_canonically_or_raise_decode_error(data):
    _decode_is_canonical_or_refused(data)


@settings(max_examples=300)
@given(
    st.integers(0, 255), st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1),
    st.sampled_from([ZERO_ADDRESS, b"\x01" * 20]), st.binary(max_size=8),
)
def test_every_field_combination_canonical_or_refused(kind, nonce, fee, amount, recipient, payload):
    _decode_is_canonical_or_refused(raw_tx(kind, nonce=nonce, fee=fee, amount=amount, recipient=recipient,
                                           payload=payload))


# --- every malformed form ------------------------------------------------------------------


def _refused(data: bytes, code: Code = Code.BAD_ENCODING, match: str | None = None) -> None:
    with pytest.raises(DecodeError, match=match) as err:
        decode_tx(data)
    assert err.value.code is code


def test_valid_baseline():
    # the helper's defaults form a valid transfer, so each test below breaks exactly one rule
    assert decode_tx(raw_tx()).amount == 5


@pytest.mark.parametrize("extra", [b"\x00", b"\xff" * 64])
def test_trailing_bytes(extra):
    _refused(raw_tx() + extra, match="trailing")


@pytest.mark.parametrize("payload", [b"", b"x" * 10])
def test_every_truncation(payload):
    kind = TRANSFER if not payload else EVIDENCE
    fields = dict(kind=kind, payload=payload, recipient=ZERO_ADDRESS if payload else b"\x22" * 20,
                  amount=0 if payload else 5)
    data = raw_tx(**fields)
    decode_tx(data)
    for cut in range(len(data)):
        _refused(data[:cut], match="truncated")


@pytest.mark.parametrize("kind", [4, 5, 127, 255])
def test_unknown_kind(kind):
    _refused(raw_tx(kind=kind), match="unknown transaction kind")


@pytest.mark.parametrize("field", ["nonce", "fee", "amount"])
@pytest.mark.parametrize("value", [MAX_AMOUNT + 1, 2**64 - 1])
def test_out_of_range_numbers(field, value):
    _refused(raw_tx(**{field: value}), Code.BAD_AMOUNT, match=field)
    # MAX_AMOUNT itself is allowed
    assert getattr(decode_tx(raw_tx(**{field: MAX_AMOUNT})), field) == MAX_AMOUNT


def test_zero_amount_transfer():
    _refused(raw_tx(amount=0), Code.BAD_AMOUNT)


@pytest.mark.parametrize("kind", [BOND, UNBOND])
def test_zero_bond_and_unbond(kind):
    _refused(raw_tx(kind=kind, recipient=ZERO_ADDRESS, amount=0), Code.BAD_AMOUNT)


def test_payload_on_a_transfer():
    _refused(raw_tx(payload=b"hi"), match="payload")


@pytest.mark.parametrize("kind", [BOND, UNBOND])
def test_recipient_or_payload_on_bond_and_unbond(kind):
    decode_tx(raw_tx(kind=kind, recipient=ZERO_ADDRESS))
    _refused(raw_tx(kind=kind, recipient=b"\x01" + bytes(19)))
    _refused(raw_tx(kind=kind, recipient=ZERO_ADDRESS, payload=b"x"))


@pytest.mark.parametrize(
    "fields",
    [
        dict(recipient=ZERO_ADDRESS, amount=0, payload=b""),  # no evidence
        dict(recipient=ZERO_ADDRESS, amount=1, payload=b"e"),  # an amount
        dict(recipient=b"\x05" * 20, amount=0, payload=b"e"),  # a recipient
    ],
)
def test_malformed_evidence(fields):
    _refused(raw_tx(kind=EVIDENCE, **fields))


def test_oversize_payload_is_refused_from_its_length_alone():
    # The declared length is checked before the payload is read: no payload follows here.
    _refused(raw_tx(kind=EVIDENCE, recipient=ZERO_ADDRESS, amount=0, payload_len=MAX_PAYLOAD + 1)[:LAYOUT.size]
             + bytes(64), Code.OVERSIZE)
    _refused(raw_tx(kind=EVIDENCE, recipient=ZERO_ADDRESS, amount=0, payload=b"e" * (MAX_PAYLOAD + 1)),
             Code.OVERSIZE)
    at_max = raw_tx(kind=EVIDENCE, recipient=ZERO_ADDRESS, amount=0, payload=b"e" * MAX_PAYLOAD)
    assert len(decode_tx(at_max).raw) == MAX_TX_SIZE


@pytest.mark.parametrize(
    "fields,code",
    [
        (dict(kind=9), Code.BAD_ENCODING),
        (dict(sender=b"\x01" * 31), Code.BAD_ENCODING),
        (dict(recipient=b"\x01" * 21), Code.BAD_ENCODING),
        (dict(signature=b"\x01" * 63), Code.BAD_ENCODING),
        (dict(amount=-1), Code.BAD_AMOUNT),
        (dict(fee=MAX_AMOUNT + 1), Code.BAD_AMOUNT),
        (dict(payload=b"x"), Code.BAD_ENCODING),
    ],
)
def test_constructor_refuses_what_decode_refuses(fields, code):
    base = dict(kind=TRANSFER, sender=b"\x11" * 32, nonce=0, fee=1, recipient=b"\x22" * 20, amount=5)
    base.update(fields)
    with pytest.raises(DecodeError) as err:
        Transaction(**base)
    assert err.value.code is code


def test_empty_input_and_offset_past_the_end():
    with pytest.raises(DecodeError):
        decode_tx(b"")
    with pytest.raises(DecodeError):
        decode_tx_at(raw_tx(), len(raw_tx()) + 5)


# --- signatures ----------------------------------------------------------------------------

SIGNER = key(1000)


@pytest.fixture(scope="module")
def signed():
    return {
        TRANSFER: sign_tx(SIGNER, NET_A, nonce=7, fee=3, recipient=key(1001).address, amount=1234),
        BOND: sign_tx(SIGNER, NET_A, kind=BOND, nonce=0, fee=1, amount=10),
        UNBOND: sign_tx(SIGNER, NET_A, kind=UNBOND, nonce=1, fee=1, amount=10),
        EVIDENCE: sign_tx(SIGNER, NET_A, kind=EVIDENCE, nonce=2, fee=1, amount=0, payload=b"two headers"),
    }


@pytest.mark.parametrize("kind", [TRANSFER, BOND, UNBOND, EVIDENCE])
def test_sign_and_verify(signed, kind):
    tx = signed[kind]
    assert tx.sender == SIGNER.public and tx.sender_address == SIGNER.address
    check_signature(tx, NET_A)
    back = decode_tx(tx.raw)
    check_signature(back, NET_A)
    assert verify(tx.sender, SIGNING_TAG + NET_A + tx.raw[:-64], tx.signature)
    # signing is deterministic (RFC 8032): the same transaction has the same id
    again = sign_tx(SIGNER, NET_A, kind=tx.kind, nonce=tx.nonce, fee=tx.fee, recipient=tx.recipient,
                    amount=tx.amount, payload=tx.payload)
    assert again.raw == tx.raw and again.id == tx.id


@pytest.mark.parametrize("kind", [TRANSFER, EVIDENCE])
def test_every_flipped_bit_breaks_the_transaction(signed, kind):
    tx = signed[kind]
    data = tx.raw
    for bit in range(len(data) * 8):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        try:
            other = decode_tx(bytes(flipped))
        except DecodeError:
            continue
        with pytest.raises(ChainError) as err:
            check_signature(other, NET_A)
        assert err.value.code is Code.BAD_SIGNATURE, f"bit {bit} flipped and the signature still holds"
        assert other.id != tx.id


@pytest.mark.parametrize("kind", [TRANSFER, BOND, UNBOND, EVIDENCE])
def test_no_cross_network_replay(signed, kind):
    tx = signed[kind]
    check_signature(tx, NET_A)
    with pytest.raises(ChainError) as err:
        check_signature(tx, NET_B)
    assert err.value.code is Code.BAD_SIGNATURE and err.value.code.penalise


def test_signature_of_another_key_fails(signed):
    tx = signed[TRANSFER]
    forged = Transaction(tx.kind, key(1001).public, tx.nonce, tx.fee, tx.recipient, tx.amount, tx.payload, tx.signature)
    with pytest.raises(ChainError):
        check_signature(forged, NET_A)


def test_unsigned_transaction_fails(signed):
    tx = signed[TRANSFER]
    unsigned = Transaction(tx.kind, tx.sender, tx.nonce, tx.fee, tx.recipient, tx.amount)
    with pytest.raises(ChainError):
        check_signature(unsigned, NET_A)


def test_signature_with_s_plus_group_order_is_refused(signed):
    # Ed25519's S is reduced mod L. S + L is the same scalar; a verifier that accepted it
    # would let anyone change a transaction's bytes, hence its id, without the key.
    L = 2**252 + 27742317777372353535851937790883648493
    tx = signed[TRANSFER]
    s = int.from_bytes(tx.signature[32:], "little")
    malleated = tx.signature[:32] + (s + L).to_bytes(32, "little")
    other = Transaction(tx.kind, tx.sender, tx.nonce, tx.fee, tx.recipient, tx.amount, tx.payload, malleated)
    assert other.id != tx.id
    with pytest.raises(ChainError):
        check_signature(other, NET_A)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(transactions(), st.integers(0, 3))
def test_signed_round_trip_property(tx, signer):
    k = key(2000 + signer)
    s = sign_tx(k, NET_A, kind=tx.kind, nonce=tx.nonce, fee=tx.fee, recipient=tx.recipient, amount=tx.amount,
                payload=tx.payload)
    back = decode_tx(s.raw)
    assert back == s and back.id == s.id
    check_signature(back, NET_A)
    with pytest.raises(ChainError):
        check_signature(back, NET_B)
