"""Proof of Work: SHA-256d below a target, with per-block difficulty adjustment.

Difficulty is the expected number of hashes per block: a header is valid when its hash,
read as a 256-bit number, is below 2**256 // difficulty. Cumulative work is the sum of
difficulties.

Difficulty is adjusted every block by chain.difficulty (ASERT), as on Proof of Stake.
"""

from __future__ import annotations

import hashlib
import struct

from chain.block import Header
from chain.consensus import HeaderContext
from chain.difficulty import next_difficulty
from chain.errors import ChainError, Code
from chain.params import ChainParams

NONCE_SIZE = 8
_NONCE = struct.Struct(">Q")


def target_for(difficulty: int) -> int:
    return (2**256) // difficulty


def meets_target(block_hash: bytes, difficulty: int) -> bool:
    return int.from_bytes(block_hash, "big") < target_for(difficulty)


class ProofOfWork:
    def __init__(self, params: ChainParams) -> None:
        self.params = params

    def next_difficulty(self, ctx: HeaderContext) -> int:
        return next_difficulty(self.params, ctx)

    def precheck(self, header: Header) -> None:
        self.check_proof(header, None)

    def check_proof(self, header: Header, ctx: HeaderContext | None) -> None:
        if len(header.proof) != NONCE_SIZE:
            raise ChainError(Code.BAD_PROOF, "a Proof of Work header carries an 8-byte nonce")
        if not meets_target(header.hash, header.difficulty):
            raise ChainError(Code.BAD_PROOF, "header hash is not below its target")

    def block_weight(self, header: Header) -> int:
        return header.difficulty


def search_nonce(prefix: bytes, difficulty: int, start: int, count: int) -> int | None:
    """Try nonces start..start+count-1 after `prefix` (the header up to its proof).

    Runs in worker processes. The prefix is hashed once; each nonce costs one copy of
    that midstate, the 8 nonce bytes and a second SHA-256.
    """
    limit = (target_for(difficulty) - 1).to_bytes(32, "big") if difficulty > 1 else b"\xff" * 32
    base = hashlib.sha256(prefix)
    sha256 = hashlib.sha256
    pack = _NONCE.pack
    for nonce in range(start, min(start + count, 2**64)):
        h = base.copy()
        h.update(pack(nonce))
        if sha256(h.digest()).digest() <= limit:
            return nonce
    return None


def nonce_proof(nonce: int) -> bytes:
    return _NONCE.pack(nonce)
