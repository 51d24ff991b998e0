"""A small deterministic Proof of Stake chain builder for tests: valid PoS chains in milliseconds.

    from tests.posbuilder import PosBuilder, staker

    b = PosBuilder()                               # stakers 0..3 staked at genesis, keys 0..3 funded
    b1 = b.produce()                               # the first eligible (slot, staker) after the parent
    b2 = b.produce(transfers=[(0, 1, 500)])        # funded key 0 pays key 1 500 (fee 1)
    b3 = b.produce(stakers=[2])                    # only staker 2 may sign it (first slot it is eligible)
    side = b.produce(parent=b1.hash, stakers=[3])  # a competing block at height 2
    bad = b.forge(slot=..., staker=1)              # any header, checked by nothing: for refusals
    store.add_block(b2, now_ms=b2.header.timestamp_ms)

To build block h, the builder walks the slots after the parent's and, in each, asks every
allowed staker (in index order) whether it is eligible with the stake and total stake of the
state at the parent and the epoch seed of the branch (`chain.pos.eligible`, exactly what
`ProofOfStake.check_stake` asks); the first eligible one signs with `chain.pos.sign_header`
a header stamped at the start of that slot. Keys come from fixed seeds (`staker(i)`,
`tests.chainbuilder.key(i)` for funded wallets), so the same calls build the same hashes.

Every block `produce` returns passed `check_header_context`, `check_stake`,
`check_block_shape` and `apply_block` (with staking on and evidence checked by the
engine). The state after every built block is kept: `state(hash)`, `total_stake(hash)`.
`replay_accounts(store)` recomputes a store's state from genesis along its main chain with
the same rules (evidence included), the reference for storage tests.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence

from chain.block import HEADER_VERSION, Block, Header, check_block_shape, merkle_root
from chain.consensus import HeaderContext, check_header_context
from chain.encoding import sha256
from chain.keys import SigningKey
from chain.params import POS, ChainParams, genesis_accounts, genesis_header
from chain.pos import (
    ProofOfStake,
    eligible,
    encode_evidence,
    epoch_seed_height,
    sign_header,
    slot_of,
)
from chain.state import EMPTY, Account, TxContext, apply_block
from chain.tx import BOND, EVIDENCE, TRANSFER, UNBOND, Transaction, sign_tx
from tests.chainbuilder import GENESIS_TIME_MS, INITIAL_BALANCE, key

STAKERS = 4
STAKE = 1_000_000
MAX_SLOTS = 100_000  # a search for an eligible slot that goes beyond this is a bug in the test


@functools.cache
def staker(index: int) -> SigningKey:
    """The key of staker `index`, the same on every run (distinct from chainbuilder keys)."""
    return SigningKey.from_seed(sha256(b"peerledger/tests/staker/%d" % index))


def make_pos_params(
    *,
    stakes: Sequence[int] = (STAKE,) * STAKERS,
    funded: int = 4,
    balance: int = INITIAL_BALANCE,
    **overrides: object,
) -> ChainParams:
    """PoS params: staker(i) holds stakes[i] at genesis (and `balance`, to pay fees); keys
    0..funded-1 hold `balance`. Slots of 100 ms, a block every 400 ms (difficulty 4)."""
    allocations = [(key(i).address, balance) for i in range(funded)]
    allocations += [(staker(i).address, balance) for i in range(len(stakes))]
    fields: dict[str, object] = dict(
        name="peerledger-pos-test",
        consensus=POS,
        genesis_time_ms=GENESIS_TIME_MS,
        block_interval_ms=400,
        slot_ms=100,
        initial_difficulty=4,
        block_reward=50,
        max_block_bytes=1_000_000,
        max_block_txs=1_000,
        epoch_length=8,
        unbonding_delay=10,
        max_reorg_depth=10,
        allocations=tuple(allocations),
        stakes=tuple((staker(i).address, s) for i, s in enumerate(stakes) if s),
    )
    fields.update(overrides)
    return ChainParams(**fields)  # type: ignore[arg-type]


class PosBuilder:
    """Builds valid PoS blocks on any branch, keeping the state after each block."""

    def __init__(self, params: ChainParams | None = None, stakers: int | None = None) -> None:
        self.params = params or make_pos_params()
        self.engine = ProofOfStake(self.params)
        self.genesis = genesis_header(self.params)
        # Stakers this builder can sign for: staker(0..n-1) (those without stake are never eligible).
        self.stakers = stakers if stakers is not None else max(STAKERS, len(self.params.stakes))
        self._headers: dict[bytes, Header] = {self.genesis.hash: self.genesis}
        self._blocks: dict[bytes, Block] = {}
        self._states: dict[bytes, dict[bytes, Account]] = {self.genesis.hash: genesis_accounts(self.params)}
        self.tip: Header = self.genesis

    # --- reading -------------------------------------------------------------------------

    def header(self, block_hash: bytes) -> Header:
        return self._headers[block_hash]

    def block(self, block_hash: bytes) -> Block:
        return self._blocks[block_hash]

    def state(self, block_hash: bytes) -> dict[bytes, Account]:
        return dict(self._states[block_hash])

    def account(self, block_hash: bytes, address: bytes) -> Account:
        return self._states[block_hash].get(address, EMPTY)

    def total_stake(self, block_hash: bytes) -> int:
        return sum(a.stake for a in self._states[block_hash].values())

    def slot(self, header: Header) -> int:
        return slot_of(header.timestamp_ms, self.params.slot_ms)

    def chain(self, tip_hash: bytes) -> list[Block]:
        """The blocks from height 1 to `tip_hash`, in order."""
        out = []
        while tip_hash != self.genesis.hash:
            out.append(self._blocks[tip_hash])
            tip_hash = self._headers[tip_hash].prev_hash
        return out[::-1]

    def epoch_seed(self, parent_hash: bytes) -> bytes:
        parent = self._headers[parent_hash]
        target = epoch_seed_height(parent.height + 1, self.params.epoch_length)
        header = parent
        while header.height > target:
            header = self._headers[header.prev_hash]
        return header.hash

    def context(self, parent_hash: bytes) -> HeaderContext:
        """The HeaderContext of a child of `parent_hash`, as the store builds it."""
        chain = [self._headers[parent_hash]]
        while len(chain) < max(self.params.median_time_span, 2) and chain[-1].height > 0:
            chain.append(self._headers[chain[-1].prev_hash])
        grandparent = chain[1] if len(chain) > 1 and chain[1].height > 0 else None
        timestamps = tuple(h.timestamp_ms for h in chain[: self.params.median_time_span])
        return HeaderContext(chain[0], grandparent, timestamps, self.epoch_seed(parent_hash))

    def is_eligible(self, parent_hash: bytes, slot: int, index: int, difficulty: int | None = None) -> bool:
        """Whether staker(index) may sign a child of `parent_hash` in `slot`."""
        ctx = self.context(parent_hash)
        state = self._states[parent_hash]
        stake = state.get(staker(index).address, EMPTY).stake
        d = self.engine.next_difficulty(ctx) if difficulty is None else difficulty
        return eligible(ctx.epoch_seed, slot, staker(index).public, stake, self.total_stake(parent_hash), d)

    def next_eligible(self, parent_hash: bytes, stakers: Iterable[int] | None = None,
                      after_slot: int | None = None) -> tuple[int, int]:
        """(slot, staker index): the first slot after the parent's (and `after_slot`) in which one
        of `stakers` (default all) is eligible; the lowest index wins a shared slot."""
        ctx = self.context(parent_hash)
        state = self._states[parent_hash]
        total = self.total_stake(parent_hash)
        difficulty = self.engine.next_difficulty(ctx)
        candidates = [(i, staker(i), state.get(staker(i).address, EMPTY).stake)
                      for i in (range(self.stakers) if stakers is None else stakers)]
        slot = max(self.slot(ctx.parent), -1 if after_slot is None else after_slot) + 1  # never the parent's
        for _ in range(MAX_SLOTS):
            for index, k, stake in candidates:
                if eligible(ctx.epoch_seed, slot, k.public, stake, total, difficulty):
                    return slot, index
            slot += 1
        raise AssertionError(f"none of stakers {[c[0] for c in candidates]} is eligible in {MAX_SLOTS} slots")

    # --- transactions --------------------------------------------------------------------

    def nonce(self, block_hash: bytes, signer: SigningKey) -> int:
        return self.account(block_hash, signer.address).nonce

    def tx(self, signer: SigningKey, *, nonce: int, kind: int = TRANSFER, amount: int = 0, fee: int = 1,
           recipient: bytes | None = None, payload: bytes = b"") -> Transaction:
        from chain.keys import ZERO_ADDRESS

        return sign_tx(signer, self.params.network_id, kind=kind, nonce=nonce, fee=fee,
                       recipient=ZERO_ADDRESS if recipient is None else recipient, amount=amount, payload=payload)

    def bond(self, signer: SigningKey, amount: int, *, nonce: int, fee: int = 1) -> Transaction:
        return self.tx(signer, nonce=nonce, kind=BOND, amount=amount, fee=fee)

    def unbond(self, signer: SigningKey, amount: int, *, nonce: int, fee: int = 1) -> Transaction:
        return self.tx(signer, nonce=nonce, kind=UNBOND, amount=amount, fee=fee)

    def evidence(self, signer: SigningKey, first: Header, second: Header, *, nonce: int, fee: int = 1) -> Transaction:
        return self.tx(signer, nonce=nonce, kind=EVIDENCE, payload=encode_evidence(first, second), fee=fee)

    def double_sign(self, block: Block) -> Header:
        """A second header for `block`'s slot signed by the same staker key: same parent and
        slot, different content (another timestamp in the slot, or another merkle root)."""
        h = block.header
        index = self.staker_index(h)
        ts = h.timestamp_ms + 1 if (h.timestamp_ms + 1) // self.params.slot_ms == self.slot(h) else h.timestamp_ms - 1
        template = Header(h.version, h.height, h.prev_hash, h.merkle_root, ts, h.difficulty, h.producer)
        other = sign_header(template, staker(index), self.params.network_id)
        assert other.hash != h.hash and self.slot(other) == self.slot(h)
        return other

    def staker_index(self, header: Header) -> int:
        for i in range(self.stakers):
            if staker(i).public == header.proof[:32]:
                return i
        raise KeyError("header not signed by a builder staker")

    # --- building ------------------------------------------------------------------------

    def produce(
        self,
        txs: Sequence[Transaction] = (),
        *,
        transfers: Iterable[tuple[int, int | bytes, int]] = (),
        parent: bytes | None = None,
        stakers: Iterable[int] | None = None,
        after_slot: int | None = None,
    ) -> Block:
        """A valid block on `parent` (default: the tip) holding `txs`, then `transfers`
        ((funded key, recipient key or address, amount), fee 1, nonces from the parent's
        state), signed by the first of `stakers` eligible in a slot after the parent's."""
        parent_hash = self.tip.hash if parent is None else parent
        slot, index = self.next_eligible(parent_hash, stakers, after_slot)
        return self._seal(parent_hash, slot, index, txs, transfers, check=True)

    def forge(
        self,
        txs: Sequence[Transaction] = (),
        *,
        parent: bytes | None = None,
        slot: int | None = None,
        staker_index: int = 0,
        timestamp_ms: int | None = None,
        difficulty: int | None = None,
        signer: SigningKey | None = None,
        producer: bytes | None = None,
    ) -> Block:
        """A well-formed, signed block that nothing has checked: every field is what a valid
        block would carry unless overridden, so that a test breaks exactly one rule. It is
        remembered (children may be built on it) but gets no state."""
        parent_hash = self.tip.hash if parent is None else parent
        ctx = self.context(parent_hash)
        if slot is None:
            slot = self.slot(ctx.parent) + 1
        signer = signer or staker(staker_index)
        template = Header(
            HEADER_VERSION,
            ctx.parent.height + 1,
            parent_hash,
            merkle_root([tx.id for tx in txs]),
            slot * self.params.slot_ms if timestamp_ms is None else timestamp_ms,
            self.engine.next_difficulty(ctx) if difficulty is None else difficulty,
            signer.address if producer is None else producer,
        )
        header = sign_header(template, signer, self.params.network_id)
        block = Block(header, tuple(txs))
        self._headers[header.hash] = header
        self._blocks[header.hash] = block
        return block

    def _seal(self, parent_hash: bytes, slot: int, index: int, txs: Sequence[Transaction],
              transfers: Iterable[tuple[int, int | bytes, int]], *, check: bool) -> Block:
        on_tip = parent_hash == self.tip.hash
        base = self._states.get(parent_hash)
        if base is None:
            raise ValueError("cannot build on a block without state (forged or invalid)")
        all_txs = list(txs)
        nonces: dict[int, int] = {}
        for sender, recipient, amount in transfers:
            if sender not in nonces:
                nonces[sender] = base.get(key(sender).address, EMPTY).nonce + sum(
                    1 for t in all_txs if t.sender == key(sender).public)
            to = recipient if isinstance(recipient, bytes) else key(recipient).address
            all_txs.append(self.tx(key(sender), nonce=nonces[sender], amount=amount, recipient=to))
            nonces[sender] += 1
        ctx = self.context(parent_hash)
        signer = staker(index)
        template = Header(
            HEADER_VERSION,
            ctx.parent.height + 1,
            parent_hash,
            merkle_root([t.id for t in all_txs]),
            max(slot * self.params.slot_ms, ctx.median_time_past + 1),
            self.engine.next_difficulty(ctx),
            signer.address,
        )
        header = sign_header(template, signer, self.params.network_id)
        block = Block(header, tuple(all_txs))
        if check:
            check_header_context(self.engine, header, ctx, now_ms=header.timestamp_ms)
            stake = base.get(signer.address, EMPTY).stake
            self.engine.check_stake(header, ctx, stake, self.total_stake(parent_hash))
            check_block_shape(block, self.params.max_block_bytes, self.params.max_block_txs)
        change = apply_block(base.get, block.txs, header.producer, self.params.block_reward,
                             self.tx_context(header.height))
        state = dict(base)
        state.update(change.updated)
        self._headers[header.hash] = header
        self._blocks[header.hash] = block
        self._states[header.hash] = state
        if on_tip:
            self.tip = header
        return block

    def tx_context(self, height: int) -> TxContext:
        return TxContext(height, self.params.unbonding_delay, True, self.engine.check_evidence)

    def produce_many(self, count: int, **kwargs: object) -> list[Block]:
        """`count` empty blocks on the tip (or on `parent`, each on the previous one)."""
        blocks = []
        parent = kwargs.pop("parent", None)
        for _ in range(count):
            block = self.produce(parent=parent, **kwargs)  # type: ignore[arg-type]
            blocks.append(block)
            parent = block.hash
        return blocks


def replay_accounts(store) -> dict[bytes, Account]:
    """Every account after replaying the main chain of a PoS `store` from genesis, with the
    rules of `apply_block` (staking on, evidence checked by the engine)."""
    params = store.params
    engine = ProofOfStake(params)
    accounts = genesis_accounts(params)
    tip = store.tip()
    for height in range(1, tip.height + 1):
        block = store.block(store.hash_at(height))
        assert block is not None and block.height == height
        assert block.header.prev_hash == store.hash_at(height - 1), f"main chain broken at height {height}"
        change = apply_block(accounts.get, block.txs, block.header.producer, params.block_reward,
                             TxContext(height, params.unbonding_delay, True, engine.check_evidence))
        accounts.update(change.updated)
    return accounts
