"""Headers, blocks and the merkle root: one encoding per block, bounded decoding, and a root
that no reordering, duplication or truncation of the transaction list can reproduce."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chain.block import (
    HEADER_VERSION,
    MAX_HEADER_SIZE,
    MAX_PROOF,
    Block,
    Header,
    check_block_shape,
    decode_block,
    decode_header,
    decode_header_at,
    encode_block,
    merkle_root,
)
from chain.encoding import sha256, sha256d
from chain.errors import ChainError, Code, DecodeError
from chain.keys import ZERO_ADDRESS
from chain.tx import MAX_AMOUNT, TRANSFER, Transaction
from tests.chainbuilder import ChainBuilder

LAYOUT = struct.Struct(">IQ32s32sQQ20sH")  # written out independently of chain.block

hashes = st.binary(min_size=32, max_size=32)


@st.composite
def headers(draw):
    return Header(
        HEADER_VERSION,
        draw(st.integers(0, MAX_AMOUNT)),
        draw(hashes),
        draw(hashes),
        draw(st.integers(0, MAX_AMOUNT)),
        draw(st.integers(1, MAX_AMOUNT)),
        draw(st.binary(min_size=20, max_size=20)),
        draw(st.binary(max_size=MAX_PROOF)),
    )


@st.composite
def txs(draw):
    n = draw(st.integers(0, 4))
    return tuple(
        Transaction(TRANSFER, draw(st.binary(min_size=32, max_size=32)), i, 1, b"\x07" * 20,
                    draw(st.integers(1, MAX_AMOUNT)), b"", draw(st.binary(min_size=64, max_size=64)))
        for i in range(n)
    )


@st.composite
def blocks(draw):
    body = draw(txs())
    h = draw(headers())
    h = Header(h.version, h.height, h.prev_hash, merkle_root([t.id for t in body]), h.timestamp_ms,
               h.difficulty, h.producer, h.proof)
    return Block(h, body)


def raw_header(version=HEADER_VERSION, height=1, prev=b"\x01" * 32, root=b"\x02" * 32, ts=1000, difficulty=1,
               producer=b"\x03" * 20, proof=b"\x04" * 8, proof_len=None) -> bytes:
    n = len(proof) if proof_len is None else proof_len
    return LAYOUT.pack(version, height, prev, root, ts, difficulty, producer, n) + proof


# --- round trips ---------------------------------------------------------------------------


@given(headers())
def test_header_round_trip(h):
    data = h.raw
    assert data == raw_header(h.version, h.height, h.prev_hash, h.merkle_root, h.timestamp_ms, h.difficulty,
                              h.producer, h.proof)
    back = decode_header(data)
    assert back == h and back.raw == data
    assert back.hash == h.hash == sha256d(data)
    assert h.without_proof() == data[: LAYOUT.size]
    assert h.with_proof(h.proof) == h and h.with_proof(h.proof).hash == h.hash


@given(headers(), st.binary(max_size=MAX_PROOF))
def test_the_block_hash_commits_to_the_proof(h, proof):
    other = h.with_proof(proof)
    assert (other.hash == h.hash) == (proof == h.proof)


@given(blocks())
def test_block_round_trip(block):
    data = block.raw
    assert data == encode_block(block) == block.header.raw + struct.pack(">I", len(block.txs)) + b"".join(
        t.raw for t in block.txs)
    back = decode_block(data)
    assert back == block and back.raw == data and back.hash == block.hash
    assert [t.id for t in back.txs] == [t.id for t in block.txs]
    check_block_shape(back, len(data), max(1, len(block.txs)))


def _canonical_or_refused(decode, data: bytes) -> None:
    try:
        value = decode(data)
    except DecodeError:
        return
    if isinstance(value, Header):
        rebuilt = Header(value.version, value.height, value.prev_hash, value.merkle_root, value.timestamp_ms,
                         value.difficulty, value.producer, value.proof)
    else:
        rebuilt = Block(value.header, value.txs)
    assert rebuilt.raw == data


@st.composite
def mutated(draw, source):
    data = bytearray(draw(source).raw)
    for _ in range(draw(st.integers(0, 3))):
        if data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    action = draw(st.sampled_from(["keep", "cut", "extend"]))
    if action == "cut":
        data = data[: draw(st.integers(0, len(data)))]
    elif action == "extend":
        data += draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


@settings(max_examples=300)
@given(st.one_of(st.binary(max_size=MAX_HEADER_SIZE + 4), mutated(headers())))
def test_arbitrary_header_bytes_canonical_or_refused(data):
    _canonical_or_refused(decode_header, data)


@settings(max_examples=300)
@given(st.one_of(st.binary(max_size=600), mutated(blocks())))
def test_arbitrary_block_bytes_canonical_or_refused(data):
    _canonical_or_refused(decode_block, data)


# --- rejections ----------------------------------------------------------------------------


def _refused(decode, data, code=Code.BAD_ENCODING, match=None):
    with pytest.raises(DecodeError, match=match) as err:
        decode(data)
    assert err.value.code is code


def test_header_baseline_is_valid():
    assert decode_header(raw_header()).height == 1


def test_header_trailing_and_truncation():
    data = raw_header()
    _refused(decode_header, data + b"\x00", match="trailing")
    for cut in range(len(data)):
        _refused(decode_header, data[:cut], match="truncated")


def test_oversize_proof_refused_from_its_length_alone():
    _refused(decode_header, raw_header(proof=b"", proof_len=MAX_PROOF + 1), Code.OVERSIZE)
    _refused(decode_header, raw_header(proof=b"p" * (MAX_PROOF + 1)), Code.OVERSIZE)
    assert len(decode_header(raw_header(proof=b"p" * MAX_PROOF)).raw) == MAX_HEADER_SIZE
    with pytest.raises(DecodeError):
        Header(HEADER_VERSION, 1, ZERO_ADDRESS + bytes(12), bytes(32), 0, 1, ZERO_ADDRESS, b"p" * (MAX_PROOF + 1))


@pytest.mark.parametrize(
    "fields",
    [
        dict(version=0),
        dict(version=2),
        dict(difficulty=0),
        dict(difficulty=MAX_AMOUNT + 1),
        dict(height=MAX_AMOUNT + 1),
        dict(ts=2**64 - 1),
    ],
)
def test_header_field_rules(fields):
    _refused(decode_header, raw_header(**fields))


def test_block_trailing_truncation_and_count():
    body = (Transaction(TRANSFER, b"\x05" * 32, 0, 1, b"\x06" * 20, 9),)
    header = Header(HEADER_VERSION, 1, bytes(32), merkle_root([body[0].id]), 5, 1, bytes(20), b"\x00" * 8)
    data = Block(header, body).raw
    assert decode_block(data).txs == body
    _refused(decode_block, data + b"\x00", match="trailing")
    for cut in range(len(data)):
        _refused(decode_block, data[:cut], match="truncated")
    # a count larger than what follows is a truncation; an extra count is trailing
    more = data[: len(header.raw)] + struct.pack(">I", 2) + body[0].raw
    _refused(decode_block, more, match="truncated")
    none = data[: len(header.raw)] + struct.pack(">I", 0) + body[0].raw
    _refused(decode_block, none, match="trailing")


def test_block_count_over_maximum_refused_before_decoding():
    header = raw_header()
    # nothing follows the count: it is refused for its value, not found truncated later
    with pytest.raises(DecodeError) as err:
        decode_block(header + struct.pack(">I", 11), max_txs=10)
    assert err.value.code is Code.OVERSIZE
    _refused(decode_block, header + struct.pack(">I", 2**32 - 1), Code.OVERSIZE)


# --- merkle root ---------------------------------------------------------------------------

ids = st.lists(hashes, max_size=20)


@given(ids, ids)
def test_different_lists_give_different_roots(a, b):
    assert (merkle_root(a) == merkle_root(b)) == (a == b)


@given(st.lists(hashes, min_size=2, max_size=20, unique=True), st.randoms(use_true_random=False))
def test_reordering_changes_the_root(a, rnd):
    b = list(a)
    rnd.shuffle(b)
    assert (merkle_root(a) == merkle_root(b)) == (a == b)


def test_duplicated_last_id_changes_the_root_cve_2012_2459():
    a, b, c, d, e, f = (sha256(bytes([i])) for i in range(6))
    assert merkle_root([a, b, c]) != merkle_root([a, b, c, c])
    assert merkle_root([a, b, c, d, e]) != merkle_root([a, b, c, d, e, e])
    # Bitcoin's other form: the last two of six repeated ([1..6] vs [1..6,5,6])
    assert merkle_root([a, b, c, d, e, f]) != merkle_root([a, b, c, d, e, f, e, f])
    assert merkle_root([a]) != merkle_root([a, a])


@given(st.lists(hashes, min_size=1, max_size=17), st.integers(1, 8))
def test_repeating_a_tail_always_changes_the_root(a, k):
    tail = a[-k:]
    assert merkle_root(a) != merkle_root(a + tail)


def test_leaves_and_inner_nodes_cannot_be_confused():
    a, b = sha256(b"a"), sha256(b"b")
    inner = sha256(b"\x01" + sha256(b"\x00" + a) + sha256(b"\x00" + b))
    assert merkle_root([inner]) != merkle_root([a, b])
    assert merkle_root([a]) != a and merkle_root([]) != merkle_root([bytes(32)])


def test_merkle_root_is_pinned():
    # A change of the tree changes every block id: consensus. Pin one value.
    leaves = [sha256(bytes([i])) for i in range(3)]
    level = [sha256(b"\x00" + x) for x in leaves]
    top = sha256(b"\x01" + sha256(b"\x01" + level[0] + level[1]) + level[2])
    assert merkle_root(leaves) == sha256(b"\x02" + struct.pack(">I", 3) + top)


# --- check_block_shape ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def built():
    b = ChainBuilder()
    return b, b.mine(transfers=[(0, 1, 10), (0, 2, 20), (1, 3, 5)])


def _with_txs(block, body, root=None):
    h = block.header
    root = merkle_root([t.id for t in body]) if root is None else root
    return Block(Header(h.version, h.height, h.prev_hash, root, h.timestamp_ms, h.difficulty, h.producer, h.proof),
                 tuple(body))


def test_shape_of_a_valid_block(built):
    b, block = built
    check_block_shape(block, b.params.max_block_bytes, b.params.max_block_txs)
    check_block_shape(block, block.size, len(block.txs))  # limits are inclusive


def test_shape_refuses_duplicates_even_with_a_matching_root(built):
    _, block = built
    dup = _with_txs(block, block.txs + block.txs[-1:])
    with pytest.raises(ChainError) as err:
        check_block_shape(dup, 10**6, 100)
    assert err.value.code is Code.BAD_BLOCK


def test_shape_refuses_a_wrong_root(built):
    _, block = built
    for body, root in [
        (block.txs, sha256(b"other")),
        (block.txs[:-1], block.header.merkle_root),  # a transaction dropped
        (block.txs[::-1], block.header.merkle_root),  # reordered
    ]:
        bad = _with_txs(block, body, root)
        with pytest.raises(ChainError) as err:
            check_block_shape(bad, 10**6, 100)
        assert err.value.code is Code.BAD_MERKLE_ROOT


def test_shape_refuses_oversize(built):
    _, block = built
    with pytest.raises(ChainError) as err:
        check_block_shape(block, block.size - 1, 100)
    assert err.value.code is Code.OVERSIZE
    with pytest.raises(ChainError) as err:
        check_block_shape(block, 10**6, len(block.txs) - 1)
    assert err.value.code is Code.OVERSIZE
