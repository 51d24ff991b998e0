"""Proof of Stake: stake-weighted leader election per time slot, blocks signed by the staker.

Time is cut into slots of `slot_ms`; a header's slot is its timestamp divided by that, and a
chain holds at most one block per slot. A staker with key K is eligible in slot s when

    H(epoch seed | s | K) * difficulty * total_stake  <  2**256 * stake(K)

so, summed over all stake, one slot in `difficulty` has a producer. The epoch seed is the
hash of the first block of the previous epoch (`epoch_seed_height`; genesis for the first
two epochs): fixed at least `epoch_length` blocks before it is used, so that a staker cannot
grind it by reshuffling the block it is producing. Difficulty is
adjusted every block by chain.difficulty, exactly as in Proof of Work: when
stakers go offline, blocks come later, difficulty falls and the rest keep the configured
interval. Fork choice is by cumulative difficulty, like cumulative work.

A block's proof is the staker's public key and its Ed25519 signature over the header with
the signature left out (tag | network id | header with proof = key), and its producer field
must be the staker's address, which receives reward and fees. Eligibility depends on stake,
which is chain state: it is checked when the block is connected (`check_stake`); everything
else is checked from the header alone.

Double signing (two different headers for one slot by one key) is provable by anyone with
the two headers: an EVIDENCE transaction carrying them slashes the offender's stake.

Simplifications, stated: stake is read from the state at the parent block (not from an
epoch snapshot); headers received ahead of their blocks are checked for signature and slot
but not for eligibility until their blocks connect.
"""

from __future__ import annotations

from chain.block import MAX_HEADER_SIZE, Header, decode_header
from chain.consensus import HeaderContext
from chain.difficulty import next_difficulty
from chain.encoding import Reader, Writer, sha256
from chain.errors import ChainError, Code, DecodeError
from chain.keys import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, SigningKey, address_of, verify
from chain.params import ChainParams
from chain.state import Evidence

PROOF_SIZE = PUBLIC_KEY_SIZE + SIGNATURE_SIZE
SIGNING_TAG = b"peerledger/block/v1"
_SPACE = 2**256


def slot_of(timestamp_ms: int, slot_ms: int) -> int:
    return timestamp_ms // slot_ms


def epoch_seed_height(height: int, epoch_length: int) -> int:
    """Height of the block whose hash seeds eligibility for a block at `height`."""
    return max(0, (height // epoch_length - 1) * epoch_length)


def eligible(seed: bytes, slot: int, public: bytes, stake: int, total_stake: int, difficulty: int) -> bool:
    if stake <= 0 or total_stake <= 0:
        return False
    draw = int.from_bytes(sha256(b"peerledger/slot" + seed + slot.to_bytes(8, "big") + public), "big")
    return draw * difficulty * total_stake < _SPACE * stake


def _signing_message(network_id: bytes, header: Header) -> bytes:
    return SIGNING_TAG + network_id + header.with_proof(header.proof[:PUBLIC_KEY_SIZE]).raw


def sign_header(template: Header, key: SigningKey, network_id: bytes) -> Header:
    """Seal a header template (any proof) with the staker's key."""
    unsigned = template.with_proof(key.public)
    return unsigned.with_proof(key.public + key.sign(SIGNING_TAG + network_id + unsigned.raw))


def header_signer(header: Header, network_id: bytes) -> bytes:
    """The public key that validly signed this header; ChainError otherwise."""
    if len(header.proof) != PROOF_SIZE:
        raise ChainError(Code.BAD_PROOF, f"a Proof of Stake header carries a {PROOF_SIZE}-byte key and signature")
    public, signature = header.proof[:PUBLIC_KEY_SIZE], header.proof[PUBLIC_KEY_SIZE:]
    if not verify(public, _signing_message(network_id, header), signature):
        raise ChainError(Code.BAD_PROOF, "the block signature is invalid")
    return public


def encode_evidence(first: Header, second: Header) -> bytes:
    """The payload of an EVIDENCE transaction: the two headers, lower hash first (canonical)."""
    a, b = sorted((first, second), key=lambda h: h.hash)
    return Writer().var_bytes(a.raw, MAX_HEADER_SIZE).var_bytes(b.raw, MAX_HEADER_SIZE).getvalue()


class ProofOfStake:
    def __init__(self, params: ChainParams) -> None:
        self.params = params

    def next_difficulty(self, ctx: HeaderContext) -> int:
        return next_difficulty(self.params, ctx)

    def precheck(self, header: Header) -> None:
        public = header_signer(header, self.params.network_id)
        if header.producer != address_of(public):
            raise ChainError(Code.BAD_PROOF, "the producer is not the address of the signing staker")

    def check_proof(self, header: Header, ctx: HeaderContext) -> None:
        self.precheck(header)
        slot_ms = self.params.slot_ms
        if ctx.parent.height > 0 and slot_of(header.timestamp_ms, slot_ms) <= slot_of(ctx.parent.timestamp_ms, slot_ms):
            raise ChainError(Code.BAD_PROOF, "a block in the same slot as its parent (one block per slot)")

    def check_stake(self, header: Header, ctx: HeaderContext, stake: int, total_stake: int) -> None:
        """Eligibility, against the stake the state at the parent gives the staker."""
        public = header.proof[:PUBLIC_KEY_SIZE]
        slot = slot_of(header.timestamp_ms, self.params.slot_ms)
        if not eligible(ctx.epoch_seed, slot, public, stake, total_stake, header.difficulty):
            raise ChainError(Code.BAD_PROOF, f"the staker is not eligible in slot {slot}")

    def block_weight(self, header: Header) -> int:
        return header.difficulty

    def check_evidence(self, payload: bytes) -> Evidence:
        """Two validly signed, different headers by one key for one slot convict that key."""
        try:
            r = Reader(payload, "evidence")
            first, second = decode_header(r.var_bytes(MAX_HEADER_SIZE)), decode_header(r.var_bytes(MAX_HEADER_SIZE))
            r.done()
        except DecodeError as e:
            raise ChainError(Code.BAD_EVIDENCE, f"evidence does not hold two headers: {e.message}") from None
        if not first.hash < second.hash:
            raise ChainError(Code.BAD_EVIDENCE, "evidence headers must differ and come lower hash first")
        try:
            signer = header_signer(first, self.params.network_id)
            other = header_signer(second, self.params.network_id)
        except ChainError as e:
            raise ChainError(Code.BAD_EVIDENCE, f"evidence header: {e.message}") from None
        if other != signer:
            raise ChainError(Code.BAD_EVIDENCE, "evidence headers were signed by different keys")
        slot = slot_of(first.timestamp_ms, self.params.slot_ms)
        if slot_of(second.timestamp_ms, self.params.slot_ms) != slot:
            raise ChainError(Code.BAD_EVIDENCE, "evidence headers are for different slots")
        return Evidence(address_of(signer), slot)
