"""The wire codec: envelope, one schema per message type, and the size limit of each.

Frame layout (one zmq frame per message, big-endian, see chain.encoding):

    protocol_version u8 | network_magic 4 bytes | msg_type u8 | payload

`network_magic` is the first four bytes of the 32-byte network id, so frames of another
network (or a testnet node dialled by mistake) are dropped before their payload is read.
The payload layouts are written on each message class. Lists carry a u16 count, strings a
u8 length (utf-8), raw chain objects a u16 length (a block: u32); every count and length is
checked against its maximum before anything is read or allocated, and a decoder must
consume the whole payload. Decoding builds only the classes of `REGISTRY`, chosen by the
numeric type; nothing is unpickled or evaluated.

Transactions, blocks and headers stay raw bytes here: the chain codec decodes (and
validates) them later, in the actors. This module checks only their size.

Files that change together: a new message needs a `MessageType` id (never reuse one), a
class below, an entry in `MAX_PAYLOAD_SIZE` and a round-trip and rejection test in
tests/transport/test_transport_messages.py.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import ClassVar

from chain.block import MAX_HEADER_SIZE
from chain.encoding import Reader, Writer
from chain.errors import Code, DecodeError
from chain.tx import MAX_TX_SIZE

PROTOCOL_VERSION = 1  # first byte of every frame; bump on any incompatible wire change
MAGIC_SIZE = 4  # bytes of the network id carried in every frame
NETWORK_ID_SIZE = 32
HASH_SIZE = 32
KEY_SIZE = 32  # a node id: its CURVE public key

_ENVELOPE = struct.Struct(">B4sB")
ENVELOPE_SIZE = _ENVELOPE.size  # 6

MAX_INV_ITEMS = 1000  # Bitcoin's MAX_INV_SZ is 50000; our blocks and mempool are smaller
MAX_TXS = 1000  # transactions in one TXS message
MAX_LOCATOR = 64  # hashes in a block locator (log2 of any chain we will see, with room)
MAX_HEADERS = 2000  # headers in one HEADERS reply (Bitcoin: MAX_HEADERS_RESULTS)
MAX_ADDRS = 1000  # entries in one ADDR message (Bitcoin: MAX_ADDR_TO_SEND)
MAX_BLOCK_MESSAGE = 8 * 1024 * 1024  # raw block bytes in one BLOCK message
MAX_ADDRESS_TEXT = 128  # "host:port", utf-8 bytes
MAX_USER_AGENT = 64  # utf-8 bytes

_WEIGHT_SIZE = 32  # HELLO best_weight: 256-bit unsigned, big-endian
MAX_WEIGHT = 2 ** (8 * _WEIGHT_SIZE) - 1


class MessageType(enum.IntEnum):
    """Stable numeric ids on the wire. Never renumber or reuse one."""

    HELLO = 1
    PING = 2
    PONG = 3
    INV = 4
    GETDATA = 5
    NOTFOUND = 6
    TXS = 7
    BLOCK = 8
    GETHEADERS = 9
    HEADERS = 10
    GETADDR = 11
    ADDR = 12


_MESSAGE_TYPES = {int(t): t for t in MessageType}


class InvKind(enum.IntEnum):
    """What an inventory hash names."""

    TX = 1
    BLOCK = 2


class RejectReason(enum.Enum):
    """Why an inbound frame was dropped. The value is the stable text used in counters."""

    TOO_SHORT = "too_short"  # shorter than the envelope
    WRONG_VERSION = "wrong_version"
    WRONG_NETWORK = "wrong_network"
    UNKNOWN_TYPE = "unknown_type"
    OVERSIZE = "oversize"  # over its type's limit, or a count/length over its maximum
    MALFORMED = "malformed"  # truncated, trailing bytes, bad utf-8, bad enum value...
    # Set by the socket loop, not by the codec:
    MULTIPART = "multipart"  # we send exactly one frame per message
    SPOOFED = "spoofed_routing_id"  # routing id differs from the CURVE-authenticated key

    def __str__(self) -> str:
        return self.value


class FrameError(DecodeError):
    """An inbound frame that is not a valid message. The peer is at fault.

    `reason` says which check failed; `code` is OVERSIZE for size violations and
    BAD_ENCODING otherwise, so the network actor can score the peer from the code alone.
    """

    def __init__(self, reason: RejectReason, message: str) -> None:
        code = Code.OVERSIZE if reason is RejectReason.OVERSIZE else Code.BAD_ENCODING
        super().__init__(f"{reason.value}: {message}", code)
        self.reason = reason


# --- bounded field helpers -----------------------------------------------------------------


def _read_count(r: Reader, max_count: int, what: str) -> int:
    n = r.u16()
    if n > max_count:
        raise FrameError(RejectReason.OVERSIZE, f"{what}: {n} items exceed the maximum of {max_count}")
    return n


def _read_var(r: Reader, max_len: int, width: int, what: str) -> bytes:
    size = r.u8() if width == 1 else r.u16() if width == 2 else r.u32()
    if size > max_len:
        raise FrameError(RejectReason.OVERSIZE, f"{what}: {size} bytes exceed the maximum of {max_len}")
    return r.fixed(size)


def _read_text(r: Reader, max_len: int, what: str) -> str:
    raw = _read_var(r, max_len, 1, what)
    try:
        return raw.decode("utf-8")  # strict: one text has exactly one encoding
    except UnicodeDecodeError as exc:
        raise FrameError(RejectReason.MALFORMED, f"{what}: not utf-8 ({exc.reason})") from None


def _write_count(w: Writer, items: tuple, max_count: int, what: str) -> None:
    if len(items) > max_count:
        raise ValueError(f"{what}: {len(items)} items exceed the maximum of {max_count}")
    w.u16(len(items))


def _write_text(w: Writer, text: str, max_len: int, what: str) -> None:
    raw = text.encode("utf-8")
    if len(raw) > max_len:
        raise ValueError(f"{what}: {len(raw)} utf-8 bytes exceed the maximum of {max_len}")
    w.u8(len(raw)).raw(raw)


def _tuple(obj: object, name: str) -> None:
    """Store a sequence field as a tuple, so a frozen message is immutable all the way down."""
    value = getattr(obj, name)
    if not isinstance(value, tuple):
        object.__setattr__(obj, name, tuple(value))


# --- messages ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """First message on every link (and again after every reconnect).

    protocol_version u16 | network_id 32 | node_id 32 | best_hash 32 | best_height u64
    | best_weight 32 (unsigned big-endian) | listen_address u8-len utf-8 | time_ms u64
    | user_agent u8-len utf-8
    """

    TYPE: ClassVar[MessageType] = MessageType.HELLO
    protocol_version: int
    network_id: bytes
    node_id: bytes
    best_hash: bytes
    best_height: int
    best_weight: int
    listen_address: str  # "host:port" a peer can dial us on, or "" (not reachable)
    time_ms: int
    user_agent: str

    def encode_payload(self, w: Writer) -> None:
        if not 0 <= self.best_weight <= MAX_WEIGHT:
            raise ValueError(f"best_weight {self.best_weight} does not fit in {_WEIGHT_SIZE} bytes")
        w.u16(self.protocol_version).fixed(self.network_id, NETWORK_ID_SIZE).fixed(self.node_id, KEY_SIZE)
        w.fixed(self.best_hash, HASH_SIZE).u64(self.best_height)
        w.raw(self.best_weight.to_bytes(_WEIGHT_SIZE, "big"))
        _write_text(w, self.listen_address, MAX_ADDRESS_TEXT, "listen_address")
        w.u64(self.time_ms)
        _write_text(w, self.user_agent, MAX_USER_AGENT, "user_agent")

    @classmethod
    def decode_payload(cls, r: Reader) -> Hello:
        return cls(
            protocol_version=r.u16(),
            network_id=r.fixed(NETWORK_ID_SIZE),
            node_id=r.fixed(KEY_SIZE),
            best_hash=r.fixed(HASH_SIZE),
            best_height=r.u64(),
            best_weight=int.from_bytes(r.fixed(_WEIGHT_SIZE), "big"),
            listen_address=_read_text(r, MAX_ADDRESS_TEXT, "listen_address"),
            time_ms=r.u64(),
            user_agent=_read_text(r, MAX_USER_AGENT, "user_agent"),
        )


@dataclass(frozen=True, slots=True)
class Ping:
    """nonce u64. Answered by a PONG with the same nonce (liveness and round-trip time)."""

    TYPE: ClassVar[MessageType] = MessageType.PING
    nonce: int

    def encode_payload(self, w: Writer) -> None:
        w.u64(self.nonce)

    @classmethod
    def decode_payload(cls, r: Reader) -> Ping:
        return cls(r.u64())


@dataclass(frozen=True, slots=True)
class Pong:
    """nonce u64, echoing a PING."""

    TYPE: ClassVar[MessageType] = MessageType.PONG
    nonce: int

    def encode_payload(self, w: Writer) -> None:
        w.u64(self.nonce)

    @classmethod
    def decode_payload(cls, r: Reader) -> Pong:
        return cls(r.u64())


@dataclass(frozen=True, slots=True)
class InvItem:
    """kind u8 (1 tx, 2 block) | hash 32"""

    kind: InvKind
    hash: bytes


# Inventories carry thousands of items a second under load: the items are packed and
# unpacked in one pass, and enum members are looked up in a table (calling an enum class
# costs more than the rest of an item).
_INV_ITEM = struct.Struct(">B32s")
_INV_KINDS = {int(k): k for k in InvKind}


def _encode_items(w: Writer, items: tuple[InvItem, ...]) -> None:
    _write_count(w, items, MAX_INV_ITEMS, "inventory")
    for item in items:
        if item.kind not in _INV_KINDS:
            raise ValueError(f"inventory kind {item.kind!r} is not 1 (tx) or 2 (block)")
        if len(item.hash) != HASH_SIZE:
            raise ValueError(f"inventory hash of {len(item.hash)} bytes, expected {HASH_SIZE}")
    w.raw(b"".join([_INV_ITEM.pack(item.kind, item.hash) for item in items]))


def _decode_items(r: Reader) -> tuple[InvItem, ...]:
    n = _read_count(r, MAX_INV_ITEMS, "inventory")
    items = []
    for kind, item_hash in _INV_ITEM.iter_unpack(r.fixed(n * _INV_ITEM.size)):
        member = _INV_KINDS.get(kind)
        if member is None:
            raise FrameError(RejectReason.MALFORMED, f"inventory kind {kind} is not 1 (tx) or 2 (block)")
        items.append(InvItem(member, item_hash))
    return tuple(items)


@dataclass(frozen=True, slots=True)
class Inv:
    """Announces objects we have. count u16 | count * (kind u8 | hash 32)"""

    TYPE: ClassVar[MessageType] = MessageType.INV
    items: tuple[InvItem, ...]

    def __post_init__(self) -> None:
        _tuple(self, "items")

    def encode_payload(self, w: Writer) -> None:
        _encode_items(w, self.items)

    @classmethod
    def decode_payload(cls, r: Reader) -> Inv:
        return cls(_decode_items(r))


@dataclass(frozen=True, slots=True)
class GetData:
    """Asks for announced objects (answered by TXS, BLOCK or NOTFOUND). Layout as INV."""

    TYPE: ClassVar[MessageType] = MessageType.GETDATA
    items: tuple[InvItem, ...]

    def __post_init__(self) -> None:
        _tuple(self, "items")

    def encode_payload(self, w: Writer) -> None:
        _encode_items(w, self.items)

    @classmethod
    def decode_payload(cls, r: Reader) -> GetData:
        return cls(_decode_items(r))


@dataclass(frozen=True, slots=True)
class NotFound:
    """The requested objects we do not have, so the asker retries elsewhere at once."""

    TYPE: ClassVar[MessageType] = MessageType.NOTFOUND
    items: tuple[InvItem, ...]

    def __post_init__(self) -> None:
        _tuple(self, "items")

    def encode_payload(self, w: Writer) -> None:
        _encode_items(w, self.items)

    @classmethod
    def decode_payload(cls, r: Reader) -> NotFound:
        return cls(_decode_items(r))


@dataclass(frozen=True, slots=True)
class Txs:
    """Raw transactions. count u16 | count * (len u16 | tx bytes <= chain.tx.MAX_TX_SIZE)"""

    TYPE: ClassVar[MessageType] = MessageType.TXS
    txs: tuple[bytes, ...]

    def __post_init__(self) -> None:
        _tuple(self, "txs")

    def encode_payload(self, w: Writer) -> None:
        _write_count(w, self.txs, MAX_TXS, "txs")
        for raw in self.txs:
            w.var_bytes(raw, MAX_TX_SIZE, 2)

    @classmethod
    def decode_payload(cls, r: Reader) -> Txs:
        n = _read_count(r, MAX_TXS, "txs")
        return cls(tuple(_read_var(r, MAX_TX_SIZE, 2, "tx") for _ in range(n)))


@dataclass(frozen=True, slots=True)
class Block:
    """One raw block. len u32 | block bytes <= MAX_BLOCK_MESSAGE"""

    TYPE: ClassVar[MessageType] = MessageType.BLOCK
    block: bytes

    def encode_payload(self, w: Writer) -> None:
        w.var_bytes(self.block, MAX_BLOCK_MESSAGE, 4)

    @classmethod
    def decode_payload(cls, r: Reader) -> Block:
        return cls(_read_var(r, MAX_BLOCK_MESSAGE, 4, "block"))


@dataclass(frozen=True, slots=True)
class GetHeaders:
    """Headers-first sync. count u16 | count * hash 32 (locator, newest first) | stop_hash 32

    A zero stop_hash means "as many as fit in one HEADERS reply".
    """

    TYPE: ClassVar[MessageType] = MessageType.GETHEADERS
    locator: tuple[bytes, ...]
    stop_hash: bytes = bytes(HASH_SIZE)

    def __post_init__(self) -> None:
        _tuple(self, "locator")

    def encode_payload(self, w: Writer) -> None:
        _write_count(w, self.locator, MAX_LOCATOR, "locator")
        for h in self.locator:
            w.fixed(h, HASH_SIZE)
        w.fixed(self.stop_hash, HASH_SIZE)

    @classmethod
    def decode_payload(cls, r: Reader) -> GetHeaders:
        n = _read_count(r, MAX_LOCATOR, "locator")
        locator = tuple(r.fixed(HASH_SIZE) for _ in range(n))
        return cls(locator, r.fixed(HASH_SIZE))


@dataclass(frozen=True, slots=True)
class Headers:
    """Raw headers in chain order. count u16 | count * (len u16 | header bytes)"""

    TYPE: ClassVar[MessageType] = MessageType.HEADERS
    headers: tuple[bytes, ...]

    def __post_init__(self) -> None:
        _tuple(self, "headers")

    def encode_payload(self, w: Writer) -> None:
        _write_count(w, self.headers, MAX_HEADERS, "headers")
        for raw in self.headers:
            w.var_bytes(raw, MAX_HEADER_SIZE, 2)

    @classmethod
    def decode_payload(cls, r: Reader) -> Headers:
        n = _read_count(r, MAX_HEADERS, "headers")
        return cls(tuple(_read_var(r, MAX_HEADER_SIZE, 2, "header") for _ in range(n)))


@dataclass(frozen=True, slots=True)
class GetAddr:
    """Asks for known peer addresses. Empty payload."""

    TYPE: ClassVar[MessageType] = MessageType.GETADDR

    def encode_payload(self, w: Writer) -> None:
        pass

    @classmethod
    def decode_payload(cls, r: Reader) -> GetAddr:
        return cls()


@dataclass(frozen=True, slots=True)
class AddrEntry:
    """node_id 32 | address u8-len utf-8 ("host:port") | last_seen_ms u64"""

    node_id: bytes
    address: str
    last_seen_ms: int


@dataclass(frozen=True, slots=True)
class Addr:
    """Peer exchange. count u16 | count * AddrEntry"""

    TYPE: ClassVar[MessageType] = MessageType.ADDR
    entries: tuple[AddrEntry, ...]

    def __post_init__(self) -> None:
        _tuple(self, "entries")

    def encode_payload(self, w: Writer) -> None:
        _write_count(w, self.entries, MAX_ADDRS, "addr")
        for e in self.entries:
            w.fixed(e.node_id, KEY_SIZE)
            _write_text(w, e.address, MAX_ADDRESS_TEXT, "address")
            w.u64(e.last_seen_ms)

    @classmethod
    def decode_payload(cls, r: Reader) -> Addr:
        n = _read_count(r, MAX_ADDRS, "addr")
        return cls(
            tuple(AddrEntry(r.fixed(KEY_SIZE), _read_text(r, MAX_ADDRESS_TEXT, "address"), r.u64()) for _ in range(n))
        )


Message = Hello | Ping | Pong | Inv | GetData | NotFound | Txs | Block | GetHeaders | Headers | GetAddr | Addr

# The one registry from wire id to class. decode_message builds nothing else.
REGISTRY: dict[MessageType, type] = {
    cls.TYPE: cls for cls in (Hello, Ping, Pong, Inv, GetData, NotFound, Txs, Block, GetHeaders, Headers, GetAddr, Addr)
}
assert len(REGISTRY) == len(MessageType), "every MessageType needs exactly one class"

_INV_LIMIT = 2 + MAX_INV_ITEMS * (1 + HASH_SIZE)

# Largest valid payload of each type, derived from its schema. A frame over its type's
# limit is rejected as OVERSIZE before a byte of its payload is parsed.
MAX_PAYLOAD_SIZE: dict[MessageType, int] = {
    MessageType.HELLO: 2 + NETWORK_ID_SIZE + KEY_SIZE + HASH_SIZE + 8 + _WEIGHT_SIZE
    + (1 + MAX_ADDRESS_TEXT) + 8 + (1 + MAX_USER_AGENT),
    MessageType.PING: 8,
    MessageType.PONG: 8,
    MessageType.INV: _INV_LIMIT,
    MessageType.GETDATA: _INV_LIMIT,
    MessageType.NOTFOUND: _INV_LIMIT,
    MessageType.TXS: 2 + MAX_TXS * (2 + MAX_TX_SIZE),
    MessageType.BLOCK: 4 + MAX_BLOCK_MESSAGE,
    MessageType.GETHEADERS: 2 + MAX_LOCATOR * HASH_SIZE + HASH_SIZE,
    MessageType.HEADERS: 2 + MAX_HEADERS * (2 + MAX_HEADER_SIZE),
    MessageType.GETADDR: 0,
    MessageType.ADDR: 2 + MAX_ADDRS * (KEY_SIZE + 1 + MAX_ADDRESS_TEXT + 8),
}
assert set(MAX_PAYLOAD_SIZE) == set(MessageType)

MAX_FRAME_SIZE = ENVELOPE_SIZE + max(MAX_PAYLOAD_SIZE.values())  # largest valid frame


def network_magic(network_id: bytes) -> bytes:
    """The 4 bytes of a 32-byte network id that every frame carries."""
    if len(network_id) != NETWORK_ID_SIZE:
        raise ValueError(f"network id must be {NETWORK_ID_SIZE} bytes, got {len(network_id)}")
    return bytes(network_id[:MAGIC_SIZE])


def _check_magic(magic: bytes) -> None:
    if len(magic) != MAGIC_SIZE:
        raise ValueError(f"network magic must be {MAGIC_SIZE} bytes, got {len(magic)}")


def encode_message(magic: bytes, msg: Message) -> bytes:
    """The frame for `msg`. A ValueError means the message itself breaks a limit (our bug)."""
    _check_magic(magic)
    cls = REGISTRY.get(getattr(type(msg), "TYPE", None))
    if cls is not type(msg):
        raise TypeError(f"{type(msg).__name__} is not a wire message")
    w = Writer()
    w.raw(_ENVELOPE.pack(PROTOCOL_VERSION, magic, msg.TYPE))
    try:
        msg.encode_payload(w)
    except struct.error as exc:  # an integer field out of its range
        raise ValueError(f"{type(msg).__name__}: {exc}") from None
    frame = w.getvalue()
    if len(frame) - ENVELOPE_SIZE > MAX_PAYLOAD_SIZE[msg.TYPE]:  # unreachable unless a limit is wrong
        raise ValueError(f"{type(msg).__name__}: {len(frame)} bytes exceed the limit of its type")
    return frame


def peek_type(frame: bytes) -> MessageType | None:
    """The message type of a frame, if the envelope names a known one (for counters)."""
    if len(frame) < ENVELOPE_SIZE:
        return None
    return _MESSAGE_TYPES.get(frame[ENVELOPE_SIZE - 1])


def decode_message(magic: bytes, frame: bytes) -> Message:
    """The message in `frame`, or FrameError saying which check failed. Never anything else."""
    _check_magic(magic)
    if len(frame) < ENVELOPE_SIZE:
        raise FrameError(RejectReason.TOO_SHORT, f"{len(frame)} bytes, the envelope alone is {ENVELOPE_SIZE}")
    version, frame_magic, type_id = _ENVELOPE.unpack_from(frame)
    if version != PROTOCOL_VERSION:
        raise FrameError(RejectReason.WRONG_VERSION, f"protocol version {version}, expected {PROTOCOL_VERSION}")
    if frame_magic != magic:
        raise FrameError(RejectReason.WRONG_NETWORK, f"network magic {frame_magic.hex()}, expected {magic.hex()}")
    mtype = _MESSAGE_TYPES.get(type_id)
    if mtype is None:
        raise FrameError(RejectReason.UNKNOWN_TYPE, f"message type {type_id}")
    size = len(frame) - ENVELOPE_SIZE
    if size > MAX_PAYLOAD_SIZE[mtype]:
        limit = MAX_PAYLOAD_SIZE[mtype]
        raise FrameError(RejectReason.OVERSIZE, f"{mtype.name} payload of {size} bytes exceeds {limit}")
    r = Reader(memoryview(frame)[ENVELOPE_SIZE:], mtype.name)
    try:
        msg = REGISTRY[mtype].decode_payload(r)
        r.done()
    except FrameError:
        raise
    except DecodeError as exc:  # truncated or trailing bytes, from chain.encoding.Reader
        raise FrameError(RejectReason.MALFORMED, exc.message) from None
    return msg


__all__ = [
    "Addr",
    "AddrEntry",
    "Block",
    "FrameError",
    "GetAddr",
    "GetData",
    "GetHeaders",
    "Headers",
    "Hello",
    "Inv",
    "InvItem",
    "InvKind",
    "Message",
    "MessageType",
    "NotFound",
    "Ping",
    "Pong",
    "RejectReason",
    "Txs",
    "decode_message",
    "encode_message",
    "network_magic",
    "peek_type",
]
