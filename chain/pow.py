"""Proof of Work: SHA-256d below a target, with per-block difficulty adjustment.

Difficulty is the expected number of hashes per block: a header is valid when its hash,
read as a 256-bit number, is below 2**256 // difficulty. Cumulative work is the sum of
difficulties.

Adjustment is ASERT (Bitcoin Cash's aserti3-2d) in its relative form: each block's
difficulty is its parent's scaled by 2**((interval - parent_solvetime) / half_life). A
block found twice as fast as the interval raises difficulty, a slow one lowers it, so the
rate follows hash power within a few blocks as Pis join and leave. The exponent telescopes
over blocks, so a lying timestamp is cancelled by the next honest one; the arithmetic is
integer-only so every node computes the same value.
"""

from __future__ import annotations

import hashlib
import struct

from chain.block import Header
from chain.consensus import HeaderContext
from chain.errors import ChainError, Code
from chain.params import ChainParams

NONCE_SIZE = 8
_NONCE = struct.Struct(">Q")
MAX_DIFFICULTY = 2**62


def target_for(difficulty: int) -> int:
    return (2**256) // difficulty


def meets_target(block_hash: bytes, difficulty: int) -> bool:
    return int.from_bytes(block_hash, "big") < target_for(difficulty)


def _pow2_fixed16(frac: int) -> int:
    """2**(frac/65536) * 65536 for 0 <= frac < 65536, by aserti3-2d's cubic (error < 0.013%)."""
    return 65536 + (
        (195766423245049 * frac + 971821376 * frac * frac + 5127 * frac * frac * frac + 2**47) >> 48
    )


MAX_SOLVETIME_INTERVALS = 6  # a solvetime counts as at most 6 intervals either way


def asert_next(parent_difficulty: int, solvetime_ms: int, interval_ms: int, half_life_blocks: int,
               min_difficulty: int) -> int:
    # Clamped (as LWMA does): when a whole cluster was off for an hour, one long solvetime
    # must not drop the difficulty to the floor, or the miners coming back would get a burst
    # of nearly free blocks while it climbs back. A lying timestamp is still bounded by the
    # median-time and future rules well inside the clamp, so the exponent still telescopes.
    bound = MAX_SOLVETIME_INTERVALS * interval_ms
    solvetime_ms = max(-bound, min(bound, solvetime_ms))
    exponent = ((interval_ms - solvetime_ms) * 65536) // (interval_ms * half_life_blocks)
    shifts, frac = exponent >> 16, exponent & 0xFFFF
    if shifts >= 63:  # at least parent * 2**63: clamped to MAX_DIFFICULTY below in any case,
        return MAX_DIFFICULTY  # without first building an integer of `shifts` bits
    value = parent_difficulty * _pow2_fixed16(frac)
    value = value << shifts if shifts >= 0 else value >> -shifts
    # Round away from the parent: up when the exponent raises the difficulty, down when it
    # lowers it. A floor in both directions swallowed every rise smaller than 1, so with a
    # half-life of 6 blocks a difficulty below about 9 could never rise again, and a network
    # whose difficulty fell to min_difficulty during a stall stayed there for good.
    value = -(-value >> 16) if exponent > 0 else value >> 16
    return max(min_difficulty, min(MAX_DIFFICULTY, value))


class ProofOfWork:
    def __init__(self, params: ChainParams) -> None:
        self.params = params

    def next_difficulty(self, ctx: HeaderContext) -> int:
        p = self.params
        # Blocks 1 and 2 start from the genesis difficulty. The genesis timestamp is the one
        # written in the genesis spec, not a mined time: a network launched a day after its
        # spec would otherwise see a day-long solvetime at block 2. Callers may pass genesis
        # as the grandparent or None (storage does); both give the same answer.
        if ctx.grandparent is None or ctx.grandparent.height == 0:
            return p.initial_difficulty
        solvetime = ctx.parent.timestamp_ms - ctx.grandparent.timestamp_ms
        return asert_next(ctx.parent.difficulty, solvetime, p.block_interval_ms, p.difficulty_half_life,
                          p.min_difficulty)

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
