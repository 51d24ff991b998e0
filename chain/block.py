"""Headers and blocks: encoding, ids, merkle root, and the checks that need no context.

Header layout (big-endian, 114 bytes + proof):

    version u32 | height u64 | prev_hash 32 | merkle_root 32 | timestamp_ms u64
    | difficulty u64 | producer 20 | proof_len u16 | proof

`proof` is what the consensus engine needs: an 8-byte nonce for Proof of Work, a slot, key
and signature for Proof of Stake. It comes last so that a miner hashes a fixed prefix and
varies only the trailing nonce. The block id is double SHA-256 of the header.

Block layout: header | tx_count u32 | transactions (each self-delimiting).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from chain.encoding import sha256, sha256d
from chain.errors import ChainError, Code, DecodeError
from chain.keys import ADDRESS_SIZE
from chain.tx import MAX_AMOUNT, Transaction, decode_tx_at

HEADER_VERSION = 1
MAX_PROOF = 256
HASH_SIZE = 32
ZERO_HASH = bytes(HASH_SIZE)

_HEADER = struct.Struct(">IQ32s32sQQ20sH")
MAX_HEADER_SIZE = _HEADER.size + MAX_PROOF
_COUNT = struct.Struct(">I")


@dataclass(frozen=True, slots=True)
class Header:
    version: int
    height: int
    prev_hash: bytes
    merkle_root: bytes
    timestamp_ms: int
    difficulty: int
    producer: bytes  # address credited with the reward and fees
    proof: bytes = b""
    raw: bytes = field(default=b"", compare=False, repr=False)
    hash: bytes = field(default=b"", compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.raw:
            object.__setattr__(self, "raw", encode_header(self))
        if not self.hash:
            object.__setattr__(self, "hash", sha256d(self.raw))

    def without_proof(self) -> bytes:
        """The encoding up to and including the proof length: what a miner hashes first."""
        return self.raw[: _HEADER.size]

    def with_proof(self, proof: bytes) -> Header:
        return Header(
            self.version,
            self.height,
            self.prev_hash,
            self.merkle_root,
            self.timestamp_ms,
            self.difficulty,
            self.producer,
            proof,
        )


def check_header_fields(h: Header) -> None:
    if h.version != HEADER_VERSION:
        raise DecodeError(f"header version {h.version} is not {HEADER_VERSION}")
    if len(h.prev_hash) != HASH_SIZE or len(h.merkle_root) != HASH_SIZE or len(h.producer) != ADDRESS_SIZE:
        raise DecodeError("header field of the wrong size")
    if len(h.proof) > MAX_PROOF:
        raise DecodeError(f"header proof of {len(h.proof)} bytes exceeds {MAX_PROOF}", Code.OVERSIZE)
    for name, value in (("height", h.height), ("timestamp", h.timestamp_ms), ("difficulty", h.difficulty)):
        if not isinstance(value, int) or value < 0 or value > MAX_AMOUNT:
            raise DecodeError(f"header {name} {value!r} is out of range")
    if h.difficulty < 1:
        raise DecodeError("header difficulty must be at least 1")


def encode_header(h: Header) -> bytes:
    check_header_fields(h)
    return (
        _HEADER.pack(
            h.version, h.height, h.prev_hash, h.merkle_root, h.timestamp_ms, h.difficulty, h.producer, len(h.proof)
        )
        + h.proof
    )


def decode_header_at(data: bytes, offset: int) -> tuple[Header, int]:
    if len(data) - offset < _HEADER.size:
        raise DecodeError("header: truncated")
    version, height, prev, root, ts, difficulty, producer, proof_len = _HEADER.unpack_from(data, offset)
    if proof_len > MAX_PROOF:
        raise DecodeError(f"header proof of {proof_len} bytes exceeds {MAX_PROOF}", Code.OVERSIZE)
    end = offset + _HEADER.size + proof_len
    if end > len(data):
        raise DecodeError("header: truncated")
    raw = bytes(data[offset:end])
    header = Header(version, height, prev, root, ts, difficulty, producer, raw[_HEADER.size :], raw, sha256d(raw))
    check_header_fields(header)
    return header, end


def decode_header(data: bytes) -> Header:
    header, end = decode_header_at(data, 0)
    if end != len(data):
        raise DecodeError(f"header: {len(data) - end} trailing bytes")
    return header


@dataclass(frozen=True, slots=True)
class Block:
    header: Header
    txs: tuple[Transaction, ...]
    raw: bytes = field(default=b"", compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.raw:
            object.__setattr__(self, "raw", encode_block(self))

    @property
    def hash(self) -> bytes:
        return self.header.hash

    @property
    def height(self) -> int:
        return self.header.height

    @property
    def size(self) -> int:
        return len(self.raw)


def encode_block(block: Block) -> bytes:
    return block.header.raw + _COUNT.pack(len(block.txs)) + b"".join(tx.raw for tx in block.txs)


def decode_block(data: bytes, max_txs: int = 1_000_000) -> Block:
    """Decode a whole block; `max_txs` bounds the work before any limit of the chain applies."""
    data = bytes(data)
    header, offset = decode_header_at(data, 0)
    if len(data) - offset < _COUNT.size:
        raise DecodeError("block: truncated")
    (count,) = _COUNT.unpack_from(data, offset)
    offset += _COUNT.size
    if count > max_txs:
        raise DecodeError(f"block: {count} transactions exceed the maximum of {max_txs}", Code.OVERSIZE)
    txs = []
    for _ in range(count):
        tx, offset = decode_tx_at(data, offset)
        txs.append(tx)
    if offset != len(data):
        raise DecodeError(f"block: {len(data) - offset} trailing bytes")
    return Block(header, tuple(txs), data)


def merkle_root(ids: list[bytes] | tuple[bytes, ...]) -> bytes:
    """Root over transaction ids that no reordering or duplication can forge.

    Leaves and inner nodes are hashed with different prefixes, an odd node is promoted
    unchanged instead of being paired with itself (the duplication behind Bitcoin's
    CVE-2012-2459), and the leaf count is committed in the final hash.
    """
    level = [sha256(b"\x00" + i) for i in ids]
    while len(level) > 1:
        paired = [sha256(b"\x01" + level[i] + level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    top = level[0] if level else ZERO_HASH
    return sha256(b"\x02" + _COUNT.pack(len(ids)) + top)


def check_block_shape(block: Block, max_block_bytes: int, max_block_txs: int) -> None:
    """Rules every valid block meets whatever chain it is on: size, count, root, duplicates."""
    if block.size > max_block_bytes:
        raise ChainError(Code.OVERSIZE, f"block of {block.size} bytes exceeds {max_block_bytes}")
    if len(block.txs) > max_block_txs:
        raise ChainError(Code.OVERSIZE, f"block of {len(block.txs)} transactions exceeds {max_block_txs}")
    ids = [tx.id for tx in block.txs]
    if len(set(ids)) != len(ids):
        raise ChainError(Code.BAD_BLOCK, "block contains the same transaction twice")
    if merkle_root(ids) != block.header.merkle_root:
        raise ChainError(Code.BAD_MERKLE_ROOT, "merkle root does not match the transactions")
