"""What every consensus engine shares: the header context, the timestamp rules, the
engine interface, and fork choice by cumulative weight.

An engine sees the chain only through a `HeaderContext` built by the caller from stored
headers, so it works the same on the main chain and on a side branch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from chain.block import Header
from chain.errors import ChainError, Code
from chain.params import ChainParams


@dataclass(frozen=True, slots=True)
class HeaderContext:
    """The ancestors a new header is judged against."""

    parent: Header
    grandparent: Header | None  # None when the parent is genesis
    recent_timestamps: tuple[int, ...]  # up to median_time_span timestamps ending at parent's
    epoch_seed: bytes = b""  # Proof of Stake: hash seeding eligibility for the child (see chain.pos)

    @property
    def median_time_past(self) -> int:
        ordered = sorted(self.recent_timestamps)
        return ordered[len(ordered) // 2]


class ConsensusEngine(Protocol):
    """The rules that differ between Proof of Work and Proof of Stake."""

    params: ChainParams

    def next_difficulty(self, ctx: HeaderContext) -> int:
        """The difficulty a child of ctx.parent must carry."""

    def precheck(self, header: Header) -> None:
        """The part of the proof that needs no context: a cheap filter run before any
        signature of the block is verified, so junk blocks cost their sender, not us."""

    def check_proof(self, header: Header, ctx: HeaderContext) -> None:
        """Raise ChainError unless the header's proof is valid (work done, or slot won)."""

    def block_weight(self, header: Header) -> int:
        """What this block adds to its branch's cumulative weight for fork choice."""


def check_header_context(engine: ConsensusEngine, header: Header, ctx: HeaderContext, now_ms: int) -> None:
    """Rules of a header against its parent and the clock: height, difficulty, proof, time.

    `now_ms` is network-adjusted time. A header too far in the future is refused with a
    code that does not penalise the sender, since it is our clock that may be behind. That
    rule comes last: a header must show its work before "maybe later" can excuse it,
    otherwise junk headers stamped in the future would cost their sender nothing.
    """
    parent = ctx.parent
    if header.prev_hash != parent.hash:
        raise ChainError(Code.UNKNOWN_PARENT, "header does not extend the given parent")
    if header.height != parent.height + 1:
        raise ChainError(Code.BAD_HEIGHT, f"height {header.height} after parent at {parent.height}")
    expected = engine.next_difficulty(ctx)
    if header.difficulty != expected:
        raise ChainError(Code.BAD_DIFFICULTY, f"difficulty {header.difficulty}, expected {expected}")
    engine.check_proof(header, ctx)
    if header.timestamp_ms <= ctx.median_time_past:
        raise ChainError(Code.TIME_TOO_OLD, "timestamp not after the median time of the last blocks")
    if header.timestamp_ms > now_ms + future_limit_ms(engine.params):
        raise ChainError(
            Code.TIME_TOO_NEW, f"timestamp {header.timestamp_ms - now_ms} ms ahead of network time"
        )


def future_limit_ms(params: ChainParams) -> int:
    """How far ahead of network time a block may be stamped.

    Proof of Stake allows at most two slots: a staker that may stamp its block further
    ahead claims slots that have not come yet, and honest stakers cannot use any slot up to
    its tip's; with the 15 s of a Proof of Work network, a small staker could keep the chain
    ahead of the clock and take nearly every block.
    """
    from chain.params import POS

    if params.consensus == POS:
        return min(params.max_future_ms, 2 * params.slot_ms)
    return params.max_future_ms


def better_tip(candidate_weight: int, current_weight: int) -> bool:
    """Fork choice: strictly more cumulative weight wins; ties keep the first seen."""
    return candidate_weight > current_weight


def engine_for(params: ChainParams) -> ConsensusEngine:
    from chain.params import POS, POW

    if params.consensus == POW:
        from chain.pow import ProofOfWork

        return ProofOfWork(params)
    if params.consensus == POS:
        from chain.pos import ProofOfStake

        return ProofOfStake(params)
    raise ChainError(Code.BAD_GENESIS, f"consensus {params.consensus!r} is not available in this version")
