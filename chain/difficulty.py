"""Difficulty adjustment, shared by Proof of Work and Proof of Stake: ASERT, every block.

ASERT (Bitcoin Cash's aserti3-2d) in its relative form: each block's difficulty is its
parent's scaled by 2**((interval - parent_solvetime) / half_life). A block found twice as
fast as the interval raises difficulty, a slow one lowers it, so the rate follows hash power
(or online stake) within a few blocks as Pis join and leave. The exponent telescopes over
blocks, so a lying timestamp is cancelled by the next honest one; the arithmetic is
integer-only so every node computes the same value.
"""

from __future__ import annotations

from chain.consensus import HeaderContext
from chain.params import ChainParams

MAX_DIFFICULTY = 2**62


def next_difficulty(params: ChainParams, ctx: HeaderContext) -> int:
    """The difficulty a child of ctx.parent must carry."""
    # Blocks 1 and 2 start from the genesis difficulty. The genesis timestamp is the one
    # written in the genesis spec, not a produced time: a network launched a day after its
    # spec would otherwise see a day-long solvetime at block 2.
    if ctx.grandparent is None or ctx.grandparent.height == 0:
        return params.initial_difficulty
    solvetime = ctx.parent.timestamp_ms - ctx.grandparent.timestamp_ms
    return asert_next(ctx.parent.difficulty, solvetime, params.block_interval_ms, params.difficulty_half_life,
                      params.min_difficulty)


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


