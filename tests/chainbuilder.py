"""A small deterministic chain builder for tests: valid PoW chains in milliseconds.

    from tests.chainbuilder import ChainBuilder

    b = ChainBuilder()                      # 4 funded keys, PoW at difficulty 4
    b1 = b.mine()                           # an empty block on the tip
    b2 = b.mine(transfers=[(0, 1, 500)])    # key 0 pays key 1 500 coins (fee 1)
    side = b.mine(parent=b1.hash)           # a competing block at height 2
    b.state(b2.hash)[b.address(1)].balance  # accounts after any built block
    store.add_block(b2, now_ms=b2.header.timestamp_ms)

Everything is deterministic: keys come from fixed seeds, block i of a branch is stamped
exactly `block_interval_ms` after its parent (so the difficulty stays at the initial one,
1..16: a nonce is found in a few dozen hashes), and the same calls build the same hashes.
Every block `mine` returns has passed `check_header_context`, `check_block_shape` and
`apply_block`; pass `allow_invalid=True` to get a well-formed block whose transactions break
a state rule (it then has no state, and nothing can be mined on top of it).
Signatures are real (signed for `params.network_id`).

`tip` moves to each valid block mined on the tip; blocks mined on another parent build a
side branch and leave it alone. The API is deliberately small: `make_params`, `key`, and
`ChainBuilder` with `mine`, `mine_many`, `transfer`, `state`, `context`, `header`, `block`,
`tip`, `address`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence

from chain.block import HEADER_VERSION, Block, Header, check_block_shape, merkle_root
from chain.consensus import HeaderContext, check_header_context
from chain.encoding import sha256
from chain.keys import SigningKey
from chain.params import POW, ChainParams, genesis_accounts, genesis_header
from chain.pow import ProofOfWork, nonce_proof, search_nonce
from chain.state import Account, TxContext, apply_block
from chain.tx import TRANSFER, Transaction, sign_tx

GENESIS_TIME_MS = 1_700_000_000_000
FUNDED_KEYS = 4
INITIAL_BALANCE = 1_000_000


@functools.lru_cache(maxsize=None)
def key(index: int) -> SigningKey:
    """The test key number `index` (any int), the same on every run. Key -1 is the miner."""
    return SigningKey.from_seed(sha256(b"peerledger/tests/key/%d" % index))


def make_params(
    *,
    funded: int = FUNDED_KEYS,
    balance: int = INITIAL_BALANCE,
    difficulty: int = 4,
    **overrides: object,
) -> ChainParams:
    """PoW params with keys 0..funded-1 holding `balance` each; any field can be overridden."""
    fields: dict[str, object] = dict(
        name="peerledger-test",
        consensus=POW,
        genesis_time_ms=GENESIS_TIME_MS,
        block_interval_ms=1_000,
        initial_difficulty=difficulty,
        block_reward=50,
        max_block_bytes=1_000_000,
        max_block_txs=1_000,
        allocations=tuple((key(i).address, balance) for i in range(funded)),
    )
    fields.update(overrides)
    return ChainParams(**fields)  # type: ignore[arg-type]


class ChainBuilder:
    """Builds valid blocks on any branch of one chain, keeping the state after each block."""

    def __init__(self, params: ChainParams | None = None) -> None:
        self.params = params or make_params()
        self.engine = ProofOfWork(self.params)
        self.genesis = genesis_header(self.params)
        self._headers: dict[bytes, Header] = {self.genesis.hash: self.genesis}
        self._blocks: dict[bytes, Block] = {}
        self._states: dict[bytes, dict[bytes, Account]] = {self.genesis.hash: genesis_accounts(self.params)}
        self.tip: Header = self.genesis  # moves to each valid block mined on the tip

    # --- reading -------------------------------------------------------------------------

    @staticmethod
    def address(index: int) -> bytes:
        return key(index).address

    def header(self, block_hash: bytes) -> Header:
        return self._headers[block_hash]

    def block(self, block_hash: bytes) -> Block:
        return self._blocks[block_hash]

    def state(self, block_hash: bytes) -> dict[bytes, Account]:
        """A copy of every account after the block `block_hash` (genesis included)."""
        return dict(self._states[block_hash])

    def context(self, parent_hash: bytes) -> HeaderContext:
        """The HeaderContext of a child of `parent_hash` (grandparent None when parent is genesis)."""
        chain = [self._headers[parent_hash]]
        while len(chain) < max(self.params.median_time_span, 2) and chain[-1].height > 0:
            chain.append(self._headers[chain[-1].prev_hash])
        grandparent = chain[1] if len(chain) > 1 else None
        timestamps = tuple(h.timestamp_ms for h in chain[: self.params.median_time_span])
        return HeaderContext(chain[0], grandparent, timestamps)

    # --- building ------------------------------------------------------------------------

    def transfer(self, sender: int, recipient: int | bytes, amount: int, *, nonce: int, fee: int = 1) -> Transaction:
        """A transfer signed by key `sender` to key `recipient` (or a 20-byte address)."""
        to = recipient if isinstance(recipient, bytes) else self.address(recipient)
        return sign_tx(key(sender), self.params.network_id, kind=TRANSFER, nonce=nonce, fee=fee, recipient=to,
                       amount=amount)

    def mine(
        self,
        txs: Sequence[Transaction] = (),
        *,
        transfers: Iterable[tuple[int, int | bytes, int]] = (),
        parent: bytes | None = None,
        timestamp_ms: int | None = None,
        producer: bytes | None = None,
        allow_invalid: bool = False,
    ) -> Block:
        """Mine a block on `parent` (default: the tip) holding `txs`, then `transfers`.

        `transfers` are (sender key, recipient key or address, amount) with fee 1 and the
        nonces the parent's state (plus earlier transfers of this block) expects.
        """
        on_tip = parent is None or parent == self.tip.hash
        parent_header = self._headers[self.tip.hash if parent is None else parent]
        base = self._states.get(parent_header.hash)
        if base is None:
            raise ValueError("cannot build on a block that broke a state rule")
        all_txs = list(txs)
        nonces: dict[int, int] = {}
        for sender, recipient, amount in transfers:
            if sender not in nonces:
                nonces[sender] = (base.get(self.address(sender)) or Account()).nonce + sum(
                    1 for tx in all_txs if tx.sender == key(sender).public
                )
            all_txs.append(self.transfer(sender, recipient, amount, nonce=nonces[sender]))
            nonces[sender] += 1
        ctx = self.context(parent_header.hash)
        stamp = parent_header.timestamp_ms + self.params.block_interval_ms if timestamp_ms is None else timestamp_ms
        template = Header(
            HEADER_VERSION,
            parent_header.height + 1,
            parent_header.hash,
            merkle_root([tx.id for tx in all_txs]),
            stamp,
            self.engine.next_difficulty(ctx),
            key(-1).address if producer is None else producer,
            nonce_proof(0),
        )
        nonce = search_nonce(template.without_proof(), template.difficulty, 0, 2**32)
        assert nonce is not None
        header = template.with_proof(nonce_proof(nonce))
        block = Block(header, tuple(all_txs))
        check_header_context(self.engine, header, ctx, now_ms=header.timestamp_ms)
        check_block_shape(block, self.params.max_block_bytes, self.params.max_block_txs)
        self._headers[header.hash] = header
        self._blocks[header.hash] = block
        try:
            change = apply_block(
                base.get, block.txs, header.producer, self.params.block_reward,
                TxContext(header.height, self.params.unbonding_delay, False),
            )
        except Exception:
            if not allow_invalid:
                raise
            return block
        state = dict(base)
        state.update(change.updated)
        self._states[header.hash] = state
        if on_tip:
            self.tip = header
        return block

    def mine_many(self, count: int) -> list[Block]:
        """`count` empty blocks on the tip."""
        return [self.mine() for _ in range(count)]
