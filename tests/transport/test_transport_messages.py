"""The wire codec: every message round-trips, and every kind of bad frame is refused."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chain.block import MAX_HEADER_SIZE
from chain.errors import Code, DecodeError
from chain.tx import MAX_TX_SIZE
from transport.messages import (
    ENVELOPE_SIZE,
    MAX_ADDRESS_TEXT,
    MAX_ADDRS,
    MAX_BLOCK_MESSAGE,
    MAX_FRAME_SIZE,
    MAX_HEADERS,
    MAX_INV_ITEMS,
    MAX_LOCATOR,
    MAX_PAYLOAD_SIZE,
    MAX_TXS,
    MAX_USER_AGENT,
    MAX_WEIGHT,
    PROTOCOL_VERSION,
    REGISTRY,
    Addr,
    AddrEntry,
    Block,
    FrameError,
    GetAddr,
    GetData,
    GetHeaders,
    Headers,
    Hello,
    Inv,
    InvItem,
    InvKind,
    MessageType,
    NotFound,
    Ping,
    Pong,
    RejectReason,
    Txs,
    decode_message,
    encode_message,
    network_magic,
    peek_type,
)

MAGIC = bytes.fromhex("c0ffee01")
OTHER_MAGIC = bytes.fromhex("c0ffee02")
H = bytes(range(32))


def hello(**changes):
    fields = dict(
        protocol_version=1,
        network_id=MAGIC + bytes(28),
        node_id=bytes([7]) * 32,
        best_hash=H,
        best_height=12345,
        best_weight=2**200 + 17,
        listen_address="[2001:db8::1]:9000",
        time_ms=1_700_000_000_000,
        user_agent="peerledger/0.1 ünïcode",
    )
    fields.update(changes)
    return Hello(**fields)


EXAMPLES = {
    MessageType.HELLO: hello(),
    MessageType.PING: Ping(2**64 - 1),
    MessageType.PONG: Pong(0),
    MessageType.INV: Inv([InvItem(InvKind.TX, H), InvItem(InvKind.BLOCK, bytes(32))]),
    MessageType.GETDATA: GetData((InvItem(InvKind.BLOCK, H),)),
    MessageType.NOTFOUND: NotFound(()),
    MessageType.TXS: Txs([b"\x01" * 143, b"\x02" * MAX_TX_SIZE, b""]),
    MessageType.BLOCK: Block(b"\xab" * 1000),
    MessageType.GETHEADERS: GetHeaders([H, bytes(32)], H),
    MessageType.HEADERS: Headers([b"\x03" * 114, b"\x04" * MAX_HEADER_SIZE]),
    MessageType.GETADDR: GetAddr(),
    MessageType.ADDR: Addr([AddrEntry(H, "node-1.local:9000", 5), AddrEntry(bytes(32), "", 0)]),
}


def frame_of(mtype: MessageType, payload: bytes, *, version=PROTOCOL_VERSION, magic=MAGIC) -> bytes:
    return bytes([version]) + magic + bytes([mtype]) + payload


def reason_of(frame: bytes) -> RejectReason:
    with pytest.raises(FrameError) as info:
        decode_message(MAGIC, frame)
    return info.value.reason


# --- registry and limits -----------------------------------------------------------------


def test_every_type_has_one_class_and_a_limit():
    assert set(REGISTRY) == set(MessageType) == set(MAX_PAYLOAD_SIZE) == set(EXAMPLES)
    for mtype, cls in REGISTRY.items():
        assert cls.TYPE is mtype
        assert cls.__dataclass_params__.frozen
        assert hasattr(cls, "__slots__")


def test_type_ids_are_stable():
    # Changing one of these breaks every deployed node: they are part of the protocol.
    assert {t.name: int(t) for t in MessageType} == {
        "HELLO": 1, "PING": 2, "PONG": 3, "INV": 4, "GETDATA": 5, "NOTFOUND": 6,
        "TXS": 7, "BLOCK": 8, "GETHEADERS": 9, "HEADERS": 10, "GETADDR": 11, "ADDR": 12,
    }


def test_envelope_layout():
    frame = encode_message(MAGIC, Ping(0x0102030405060708))
    assert frame == bytes([1]) + MAGIC + bytes([2]) + bytes.fromhex("0102030405060708")
    assert ENVELOPE_SIZE == 6
    assert peek_type(frame) is MessageType.PING
    assert peek_type(b"\x01") is None


def test_network_magic_is_the_first_four_bytes_of_the_network_id():
    assert network_magic(bytes(range(32))) == bytes([0, 1, 2, 3])
    with pytest.raises(ValueError):
        network_magic(b"short")


def largest(mtype: MessageType):
    """The biggest valid message of each type: its encoding must hit the limit exactly."""
    text = "x" * MAX_ADDRESS_TEXT
    return {
        MessageType.HELLO: hello(listen_address=text, user_agent="y" * MAX_USER_AGENT, best_weight=MAX_WEIGHT),
        MessageType.PING: Ping(1),
        MessageType.PONG: Pong(1),
        MessageType.INV: Inv([InvItem(InvKind.TX, H)] * MAX_INV_ITEMS),
        MessageType.GETDATA: GetData([InvItem(InvKind.TX, H)] * MAX_INV_ITEMS),
        MessageType.NOTFOUND: NotFound([InvItem(InvKind.TX, H)] * MAX_INV_ITEMS),
        MessageType.TXS: Txs([b"t" * MAX_TX_SIZE] * MAX_TXS),
        MessageType.BLOCK: Block(b"b" * MAX_BLOCK_MESSAGE),
        MessageType.GETHEADERS: GetHeaders([H] * MAX_LOCATOR, H),
        MessageType.HEADERS: Headers([b"h" * MAX_HEADER_SIZE] * MAX_HEADERS),
        MessageType.GETADDR: GetAddr(),
        MessageType.ADDR: Addr([AddrEntry(H, text, 2**64 - 1)] * MAX_ADDRS),
    }[mtype]


@pytest.mark.parametrize("mtype", list(MessageType), ids=lambda t: t.name)
def test_limits_are_exact(mtype):
    msg = largest(mtype)
    frame = encode_message(MAGIC, msg)
    assert len(frame) == ENVELOPE_SIZE + MAX_PAYLOAD_SIZE[mtype]
    assert decode_message(MAGIC, frame) == msg
    assert len(frame) <= MAX_FRAME_SIZE


# --- round trips -------------------------------------------------------------------------


@pytest.mark.parametrize("mtype", list(MessageType), ids=lambda t: t.name)
def test_round_trip(mtype):
    msg = EXAMPLES[mtype]
    frame = encode_message(MAGIC, msg)
    decoded = decode_message(MAGIC, frame)
    assert decoded == msg
    assert type(decoded) is type(msg)
    assert encode_message(MAGIC, decoded) == frame


def test_lists_are_stored_as_tuples():
    msg = Inv([InvItem(InvKind.TX, H)])
    assert isinstance(msg.items, tuple)
    assert hash(msg) == hash(Inv((InvItem(InvKind.TX, H),)))
    assert isinstance(decode_message(MAGIC, encode_message(MAGIC, msg)).items[0].kind, InvKind)


hashes = st.binary(min_size=32, max_size=32)
u64 = st.integers(0, 2**64 - 1)
text128 = st.text(max_size=40).filter(lambda s: len(s.encode()) <= MAX_ADDRESS_TEXT)
items = st.builds(InvItem, st.sampled_from(list(InvKind)), hashes)

MESSAGES = st.one_of(
    st.builds(
        Hello,
        st.integers(0, 2**16 - 1), hashes, hashes, hashes, u64, st.integers(0, MAX_WEIGHT),
        text128, u64, st.text(max_size=20).filter(lambda s: len(s.encode()) <= MAX_USER_AGENT),
    ),
    st.builds(Ping, u64),
    st.builds(Pong, u64),
    st.builds(Inv, st.lists(items, max_size=20)),
    st.builds(GetData, st.lists(items, max_size=20)),
    st.builds(NotFound, st.lists(items, max_size=20)),
    st.builds(Txs, st.lists(st.binary(max_size=MAX_TX_SIZE), max_size=5)),
    st.builds(Block, st.binary(max_size=5000)),
    st.builds(GetHeaders, st.lists(hashes, max_size=MAX_LOCATOR), hashes),
    st.builds(Headers, st.lists(st.binary(max_size=MAX_HEADER_SIZE), max_size=5)),
    st.just(GetAddr()),
    st.builds(Addr, st.lists(st.builds(AddrEntry, hashes, text128, u64), max_size=10)),
)


@given(MESSAGES)
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_round_trip_property(msg):
    frame = encode_message(MAGIC, msg)
    assert decode_message(MAGIC, frame) == msg


def check_canonical(frame: bytes) -> None:
    """Either a message whose encoding is exactly `frame`, or a DecodeError: nothing else."""
    try:
        msg = decode_message(MAGIC, frame)
    except DecodeError as exc:
        assert isinstance(exc, FrameError)
        assert exc.code in (Code.BAD_ENCODING, Code.OVERSIZE)
        return
    assert encode_message(MAGIC, msg) == frame


@given(st.binary(max_size=300))
@settings(max_examples=500)
def test_arbitrary_bytes_decode_canonically_or_fail_cleanly(data):
    check_canonical(data)


@given(st.sampled_from(list(MessageType)), st.binary(max_size=400))
@settings(max_examples=1000)
def test_arbitrary_payloads_decode_canonically_or_fail_cleanly(mtype, payload):
    check_canonical(frame_of(mtype, payload))


@given(MESSAGES, st.data())
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_frames_decode_canonically_or_fail_cleanly(msg, data):
    frame = bytearray(encode_message(MAGIC, msg))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(frame) - 1))
        frame[i] = data.draw(st.integers(0, 255))
    check_canonical(bytes(frame))


# --- rejections --------------------------------------------------------------------------


@pytest.mark.parametrize("mtype", list(MessageType), ids=lambda t: t.name)
def test_trailing_bytes_are_rejected(mtype):
    frame = encode_message(MAGIC, EXAMPLES[mtype]) + b"\x00"
    fixed_size = mtype in (MessageType.PING, MessageType.PONG, MessageType.GETADDR)
    expected = RejectReason.OVERSIZE if fixed_size else RejectReason.MALFORMED
    assert reason_of(frame) is expected  # one byte more puts a fixed-size type over its limit


@pytest.mark.parametrize("mtype", [t for t in MessageType if t is not MessageType.GETADDR], ids=lambda t: t.name)
def test_truncated_frames_are_rejected(mtype):
    frame = encode_message(MAGIC, EXAMPLES[mtype])
    for cut in sorted({ENVELOPE_SIZE, ENVELOPE_SIZE + 1, len(frame) // 2, len(frame) - 1}):
        if ENVELOPE_SIZE <= cut < len(frame):
            assert reason_of(frame[:cut]) is RejectReason.MALFORMED, cut


@pytest.mark.parametrize("size", [0, 1, 5])
def test_too_short(size):
    assert reason_of(encode_message(MAGIC, GetAddr())[:size]) is RejectReason.TOO_SHORT


@pytest.mark.parametrize("version", [0, 2, 255])
def test_wrong_version(version):
    frame = frame_of(MessageType.PING, bytes(8), version=version)
    assert reason_of(frame) is RejectReason.WRONG_VERSION


def test_wrong_network():
    frame = encode_message(OTHER_MAGIC, Ping(1))
    error = pytest.raises(FrameError, decode_message, MAGIC, frame).value
    assert error.reason is RejectReason.WRONG_NETWORK
    assert error.code is Code.BAD_ENCODING


@pytest.mark.parametrize("type_id", [0, 13, 200, 255])
def test_unknown_type(type_id):
    assert reason_of(bytes([PROTOCOL_VERSION]) + MAGIC + bytes([type_id]) + bytes(8)) is RejectReason.UNKNOWN_TYPE


@pytest.mark.parametrize("mtype", list(MessageType), ids=lambda t: t.name)
def test_payload_over_the_type_limit_is_rejected_before_parsing(mtype):
    frame = frame_of(mtype, bytes(MAX_PAYLOAD_SIZE[mtype] + 1))
    error = pytest.raises(FrameError, decode_message, MAGIC, frame).value
    assert error.reason is RejectReason.OVERSIZE
    assert error.code is Code.OVERSIZE


def u16(n: int) -> bytes:
    return n.to_bytes(2, "big")


@pytest.mark.parametrize(
    "mtype, payload",
    [
        (MessageType.INV, u16(MAX_INV_ITEMS + 1)),
        (MessageType.GETDATA, u16(0xFFFF)),
        (MessageType.NOTFOUND, u16(MAX_INV_ITEMS + 1)),
        (MessageType.TXS, u16(MAX_TXS + 1)),
        (MessageType.TXS, u16(1) + u16(MAX_TX_SIZE + 1)),
        (MessageType.BLOCK, (MAX_BLOCK_MESSAGE + 1).to_bytes(4, "big")),
        (MessageType.GETHEADERS, u16(MAX_LOCATOR + 1)),
        (MessageType.HEADERS, u16(MAX_HEADERS + 1)),
        (MessageType.HEADERS, u16(1) + u16(MAX_HEADER_SIZE + 1)),
        (MessageType.ADDR, u16(MAX_ADDRS + 1)),
        (MessageType.ADDR, u16(1) + H + bytes([MAX_ADDRESS_TEXT + 1])),
    ],
    ids=lambda v: v.name if isinstance(v, MessageType) else None,
)
def test_counts_and_lengths_over_their_maximum_are_oversize(mtype, payload):
    # The claimed length alone is refused: nothing behind it is read or allocated.
    assert reason_of(frame_of(mtype, payload)) is RejectReason.OVERSIZE


def test_hello_strings_over_their_maximum_are_oversize():
    good = encode_message(MAGIC, hello(listen_address="", user_agent=""))
    fixed = 2 + 32 + 32 + 32 + 8 + 32
    payload = good[ENVELOPE_SIZE:]
    long_address = payload[:fixed] + bytes([MAX_ADDRESS_TEXT + 1]) + b"a" * (MAX_ADDRESS_TEXT + 1)
    assert reason_of(frame_of(MessageType.HELLO, long_address)) is RejectReason.OVERSIZE
    long_agent = payload[: fixed + 1 + 8] + bytes([MAX_USER_AGENT + 1]) + b"u" * (MAX_USER_AGENT + 1)
    assert reason_of(frame_of(MessageType.HELLO, long_agent)) is RejectReason.OVERSIZE


def test_bad_utf8_is_malformed():
    frame = encode_message(MAGIC, Addr([AddrEntry(H, "ab", 1)]))
    assert reason_of(frame.replace(b"ab", b"\xff\xfe")) is RejectReason.MALFORMED
    # An overlong encoding of "/" would give a second encoding of the same text.
    assert reason_of(frame.replace(b"\x02ab", b"\x02\xc0\xaf")) is RejectReason.MALFORMED


@pytest.mark.parametrize("kind", [0, 3, 255])
def test_unknown_inventory_kind_is_malformed(kind):
    assert reason_of(frame_of(MessageType.INV, u16(1) + bytes([kind]) + H)) is RejectReason.MALFORMED


def test_frame_errors_are_chain_decode_errors_with_a_code():
    error = pytest.raises(DecodeError, decode_message, MAGIC, b"").value
    assert isinstance(error, FrameError)
    assert error.code is Code.BAD_ENCODING and error.code.penalise


# --- encoding refuses what decoding would refuse ------------------------------------------


@pytest.mark.parametrize(
    "msg",
    [
        Inv([InvItem(InvKind.TX, H)] * (MAX_INV_ITEMS + 1)),
        Inv([InvItem(3, H)]),
        Inv([InvItem(InvKind.TX, b"short")]),
        Txs([b"t" * (MAX_TX_SIZE + 1)]),
        Block(b"b" * (MAX_BLOCK_MESSAGE + 1)),
        GetHeaders([H] * (MAX_LOCATOR + 1)),
        Headers([b"h" * (MAX_HEADER_SIZE + 1)]),
        Addr([AddrEntry(H, "x" * (MAX_ADDRESS_TEXT + 1), 0)]),
        Ping(2**64),
        Ping(-1),
        hello(best_weight=MAX_WEIGHT + 1),
        hello(user_agent="u" * (MAX_USER_AGENT + 1)),
        hello(network_id=b"short"),
    ],
    ids=lambda m: type(m).__name__,
)
def test_encoding_an_invalid_message_raises_value_error(msg):
    with pytest.raises(ValueError):
        encode_message(MAGIC, msg)


def test_encoding_needs_a_wire_message_and_a_4_byte_magic():
    with pytest.raises(TypeError):
        encode_message(MAGIC, InvItem(InvKind.TX, H))
    with pytest.raises(ValueError):
        encode_message(b"abc", Ping(1))
