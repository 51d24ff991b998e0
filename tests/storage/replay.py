"""The state a store should hold, recomputed from scratch: the reference for storage tests.

`replay_state_digest(store)` applies every main-chain block from genesis to the tip, read
with `store.hash_at` and `store.block`, into a plain dict with `chain.state.apply_block`,
and answers `chain.state.state_digest` of the result. A store whose incremental digest (or
whose accounts) differ from this has connected, undone or recovered something wrongly.
The store must not be written to meanwhile (stop the node first, or reopen its store).
"""

from __future__ import annotations

from chain.consensus import engine_for
from chain.params import POS, genesis_accounts
from chain.state import Account, TxContext, apply_block, state_digest
from storage.store import Store


def replay_accounts(store: Store) -> dict[bytes, Account]:
    """Every account after replaying the main chain of `store` from genesis."""
    params = store.params
    accounts = genesis_accounts(params)
    staking = params.consensus == POS
    # The same rules the store applies, from chain/ alone: evidence is judged by the engine.
    ctx_args = (params.unbonding_delay, staking, engine_for(params).check_evidence if staking else None)
    tip = store.tip()
    assert store.hash_at(tip.height) == tip.hash, f"the tip is not the main-chain block at height {tip.height}"
    assert store.hash_at(tip.height + 1) is None, f"the main-chain index goes on past the tip at {tip.height}"
    for height in range(1, tip.height + 1):
        block_hash = store.hash_at(height)
        assert block_hash is not None, f"main-chain index has no block at height {height}"
        block = store.block(block_hash)
        assert block is not None, f"main-chain block at height {height} is missing"
        assert block.height == height, f"block at main-chain height {height} says it is at {block.height}"
        assert block.header.prev_hash == store.hash_at(height - 1), f"main chain broken at height {height}"
        change = apply_block(
            accounts.get,
            block.txs,
            block.header.producer,
            params.block_reward,
            TxContext(height, *ctx_args),
        )
        accounts.update(change.updated)
    return accounts


def replay_state_digest(store: Store) -> int:
    """`chain.state.state_digest` of the state replayed from genesis along the main chain."""
    return state_digest(replay_accounts(store).items())
