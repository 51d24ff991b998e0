"""Chain parameters and the genesis block, all derived from one genesis spec.

Every consensus constant lives here, each with its meaning. The network id is the hash of
the canonical encoding of the whole spec, so nodes whose specs differ in any way (a
reward, an allocation, the name) have different network ids and never mix.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from chain.block import HEADER_VERSION, ZERO_HASH, Header, merkle_root
from chain.encoding import Writer, sha256
from chain.errors import ChainError, Code
from chain.keys import ADDRESS_SIZE, ZERO_ADDRESS
from chain.tx import MAX_AMOUNT

POW = "pow"
POS = "pos"


@dataclass(frozen=True, slots=True)
class ChainParams:
    name: str  # human name of the network, part of its identity
    consensus: str  # "pow" or "pos"
    genesis_time_ms: int  # timestamp of the genesis block (Unix ms)
    block_interval_ms: int  # target time between blocks (Bitcoin: nPowTargetSpacing)
    initial_difficulty: int  # expected hashes per block at the start (PoW) / slot target scale (PoS)
    block_reward: int  # new coins per block, to the producer (Bitcoin: nSubsidy, without halving)
    max_block_bytes: int  # encoded size limit of a block (Bitcoin: MAX_BLOCK_SERIALIZED_SIZE)
    max_block_txs: int  # transactions per block limit
    allocations: tuple[tuple[bytes, int], ...] = ()  # (address, amount) credited at genesis
    difficulty_half_life: int = 6  # blocks; PoW difficulty doubles/halves this fast (ASERT)
    min_difficulty: int = 1
    median_time_span: int = 11  # blocks in median-time-past (Bitcoin: 11)
    max_future_ms: int = 15_000  # a block may be this far ahead of network time
    max_reorg_depth: int = 100  # deeper reorganisations are refused: finality
    unbonding_delay: int = 20  # blocks between unbond and spendable (Proof of Stake)
    slot_ms: int = 1000  # Proof of Stake: time is cut into slots; at most one block per slot
    epoch_length: int = 32  # Proof of Stake: blocks per epoch; eligibility draws on an older epoch's hash
    stakes: tuple[tuple[bytes, int], ...] = ()  # (address, stake) bonded at genesis (PoS)
    network_id: bytes = field(default=b"", compare=False)

    def __post_init__(self) -> None:
        check_params(self)
        object.__setattr__(self, "network_id", sha256(encode_params(self)))

    @property
    def network_magic(self) -> bytes:
        """The first four bytes of the network id, carried by every wire message."""
        return self.network_id[:4]


def check_params(p: ChainParams) -> None:
    def bad(message: str) -> ChainError:
        return ChainError(Code.BAD_GENESIS, message)

    if not isinstance(p.name, str):
        raise bad(f"name must be a string of 1 to 64 bytes, got {p.name!r}")
    if not p.name or len(p.name.encode()) > 64:
        raise bad("name must be 1 to 64 bytes")
    if p.consensus not in (POW, POS):
        raise bad(f"consensus must be 'pow' or 'pos', not {p.consensus!r}")
    checks = [
        ("genesis_time_ms", p.genesis_time_ms, 0, MAX_AMOUNT),
        ("block_interval_ms", p.block_interval_ms, 100, 86_400_000),
        ("initial_difficulty", p.initial_difficulty, 1, 2**62),
        ("block_reward", p.block_reward, 0, MAX_AMOUNT),
        ("max_block_bytes", p.max_block_bytes, 1_000, 64_000_000),
        ("max_block_txs", p.max_block_txs, 1, 1_000_000),
        ("difficulty_half_life", p.difficulty_half_life, 1, 100_000),
        ("min_difficulty", p.min_difficulty, 1, 2**62),
        ("median_time_span", p.median_time_span, 1, 1_000),
        ("max_future_ms", p.max_future_ms, 0, 86_400_000),
        ("max_reorg_depth", p.max_reorg_depth, 1, 1_000_000),
        ("unbonding_delay", p.unbonding_delay, 0, 1_000_000),
        ("slot_ms", p.slot_ms, 100, 3_600_000),
        ("epoch_length", p.epoch_length, 1, 100_000),
    ]
    for name, value, low, high in checks:
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise bad(f"{name} must be an integer in {low}..{high}, got {value!r}")
    if p.initial_difficulty < p.min_difficulty:
        raise bad("initial_difficulty is below min_difficulty")
    for label, entries in (("allocations", p.allocations), ("stakes", p.stakes)):
        if not isinstance(entries, (tuple, list)):
            raise bad(f"{label}: expected a sequence of (address, amount) pairs, got {type(entries).__name__}")
        seen = set()
        for entry in entries:
            if not isinstance(entry, (tuple, list)) or len(entry) != 2:
                raise bad(f"{label}: {entry!r} is not an (address, amount) pair")
            address, amount = entry
            if not isinstance(address, bytes) or len(address) != ADDRESS_SIZE or address == ZERO_ADDRESS:
                raise bad(f"{label}: invalid address")
            if address in seen:
                raise bad(f"{label}: address listed twice")
            seen.add(address)
            if not isinstance(amount, int) or isinstance(amount, bool) or not 0 < amount <= MAX_AMOUNT:
                raise bad(f"{label}: amount {amount!r} out of range")
    if sum(a for _, a in p.allocations) + sum(s for _, s in p.stakes) > MAX_AMOUNT:
        raise bad("allocations exceed the maximum supply")
    if p.consensus == POS and not p.stakes:
        raise bad("stakes: a Proof of Stake network needs at least one genesis stake")
    if p.consensus == POS and p.unbonding_delay < p.max_reorg_depth:
        raise bad(
            f"unbonding_delay ({p.unbonding_delay}) must be at least max_reorg_depth ({p.max_reorg_depth}): "
            "stake must stay slashable for as long as a reorganisation can rewrite what it signed"
        )


def encode_params(p: ChainParams) -> bytes:
    w = Writer().var_bytes(b"peerledger/genesis/v1", 64, 1)
    w.var_bytes(p.name.encode(), 64, 1).var_bytes(p.consensus.encode(), 8, 1)
    for value in (
        p.genesis_time_ms,
        p.block_interval_ms,
        p.initial_difficulty,
        p.block_reward,
        p.max_block_bytes,
        p.max_block_txs,
        p.difficulty_half_life,
        p.min_difficulty,
        p.median_time_span,
        p.max_future_ms,
        p.max_reorg_depth,
        p.unbonding_delay,
        p.slot_ms,
        p.epoch_length,
    ):
        w.u64(value)
    for entries in (p.allocations, p.stakes):
        w.u32(len(entries))
        for address, amount in sorted(entries):
            w.fixed(address, ADDRESS_SIZE).u64(amount)
    return w.getvalue()


def genesis_header(p: ChainParams) -> Header:
    """Height 0. Its proof is the network id, so its hash differs on every network."""
    return Header(
        HEADER_VERSION,
        0,
        ZERO_HASH,
        merkle_root([]),
        p.genesis_time_ms,
        p.initial_difficulty,
        ZERO_ADDRESS,
        p.network_id,
    )


def genesis_accounts(p: ChainParams) -> dict[bytes, "Account"]:
    """The state before block 1: allocations as balances, genesis stakes as stake."""
    from chain.state import Account

    accounts: dict[bytes, Account] = {a: Account(balance=amount) for a, amount in p.allocations}
    for address, stake in p.stakes:
        old = accounts.get(address, Account())
        accounts[address] = Account(old.balance, 0, stake)
    return accounts
