"""Hypothesis against the decoders the other property tests leave out: every one takes
arbitrary and mutated bytes and either answers a value that encodes back to the same bytes
or raises its own decoding error - never anything else (no IndexError, struct.error,
UnicodeDecodeError, MemoryError from a length that lies).

Already fuzzed elsewhere (see tests/faults/test_faults_hostile.py for the list): the wire
codec, transactions, headers, blocks, the canonical encoding, addresses. Here: accounts and
undo records (read back from the store), the peer book's records (read back from the store
at start), and peer addresses (from the configuration and from peers' ADDR messages).
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from actors.peerbook import PeerRecord
from chain.errors import ChainError
from chain.state import Account, decode_account, decode_undo, encode_account, encode_undo
from transport.keys import parse_host_port, parse_peer_address

FUZZ = settings(max_examples=300, deadline=None)
accounts = st.builds(Account, st.integers(0, 2**62), st.integers(0, 2**62), st.integers(0, 2**62),
                     st.integers(0, 2**62), st.integers(0, 2**62))


def mutated(raw: bytes, data) -> bytes:
    kind = data.draw(st.sampled_from(["flip", "cut", "junk"]))
    if kind == "flip" and raw:
        i = data.draw(st.integers(0, len(raw) - 1))
        return raw[:i] + bytes([raw[i] ^ data.draw(st.integers(1, 255))]) + raw[i + 1:]
    if kind == "cut":
        return raw[: data.draw(st.integers(0, max(0, len(raw) - 1)))]
    return raw + data.draw(st.binary(min_size=1, max_size=16))


def decodes_canonically_or_refuses(decode, encode, raw: bytes) -> None:
    try:
        value = decode(raw)
    except (ChainError, ValueError):
        return
    assert encode(value) == raw


@FUZZ
@given(st.one_of(st.binary(max_size=120), st.builds(lambda a: encode_account(a), accounts)), st.data())
def test_account_records(raw, data):
    for candidate in (raw, mutated(raw, data)):
        decodes_canonically_or_refuses(decode_account, encode_account, candidate)


@FUZZ
@given(st.dictionaries(st.binary(min_size=20, max_size=20), st.one_of(st.none(), accounts), max_size=4), st.data())
def test_undo_records(undo, data):
    raw = encode_undo(undo)
    assert decode_undo(raw) == undo
    for candidate in (raw, mutated(raw, data), data.draw(st.binary(max_size=200))):
        decodes_canonically_or_refuses(decode_undo, encode_undo, candidate)


@FUZZ
@given(st.binary(max_size=300))
def test_peer_book_records(raw):
    try:
        record = PeerRecord.decode(raw)
    except (ChainError, ValueError):
        return
    assert isinstance(record.address, str)


@FUZZ
@given(st.text(max_size=120))
def test_peer_addresses(text):
    for parse in (parse_host_port, parse_peer_address):
        try:
            parse(text)
        except ValueError:
            pass
