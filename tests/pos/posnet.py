"""Real-node Proof of Stake networks for tests/pos.

    stakers = add_stakers(nodes, 5)             # 5 nodes, each staking with its default wallet
    nodes.start(*stakers)                       # `peerledger init` keeps the wallet made here
    key = staking_key(stakers[0])               # the key that signs its blocks

On a PoS network the genesis spec must list the stakers' addresses, and a node stakes with
its default wallet; so, as `peerledger devnet` prepare() does, each node's default wallet is
made in its data directory before the genesis spec is written and before `peerledger init`
(which keeps an existing wallet).

The genesis (POS_GENESIS) has slots of 100 ms and a block every second: difficulty 10 is
"one slot in ten has a producer". Not the 250 ms / difficulty 4 of devnet: ASERT moves the
(integer) difficulty in whole steps, which at 4 are 25% each and hold the mean interval about
25% above the target (simulated with chain.difficulty.asert_next: 1.25 s for a 1 s target, and a
60-block mean beyond +35% in ~12% of runs); at 10 the bias is ~7%.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from chain.keys import SigningKey, address_to_text
from peerledger import keyfiles
from tests.nodes import P2P, Network, NodeProcess, merge

STAKE = 1_000_000_000_000  # units each staker holds bonded at genesis (10,000 coins)
POS_GENESIS: dict[str, Any] = {
    "consensus": "pos",
    "slot_ms": 100,
    "block_interval_ms": 1000,
    "initial_difficulty": 10,
    "epoch_length": 16,
    "unbonding_delay": 100,  # at least max_reorg_depth (the default 100), as PoS requires
}


def add_stakers(network: Network, count: int, config: Mapping[str, Any] | None = None, *,
                stakes: Sequence[int] | None = None, genesis: Mapping[str, Any] | None = None,
                topology: str = "mesh", places: Sequence[tuple[str, str | None]] | None = None) -> list[NodeProcess]:
    """`count` new nodes (not started) wired by `topology`, each with a default wallet whose
    address holds stakes[i] (default STAKE) at genesis; the network's genesis spec becomes
    POS_GENESIS (merged with `genesis`) and is rewritten. Call before any node is initialised."""
    stakes = list(stakes) if stakes is not None else [STAKE] * count
    if len(stakes) != count:
        raise ValueError(f"{count} stakers but {len(stakes)} stakes")
    added = network.add_nodes(count, merge(P2P, config or {}), topology=topology, places=places)
    entries = list(network.genesis.get("stakes", []))
    for node, stake in zip(added, stakes):
        node.key  # noqa: B018 - makes the data directory (mode 0700) and the node key, as init would
        wallet = keyfiles.create_wallet(node.data_dir, keyfiles.DEFAULT_WALLET, None)
        if stake:
            entries.append({"address": address_to_text(wallet.address), "amount": stake})
    network.genesis.update(merge(POS_GENESIS, genesis or {}))
    network.genesis["stakes"] = entries
    network.write_genesis()
    return added


def staking_key(node: NodeProcess) -> SigningKey:
    """The key `node` signs its blocks with (its default wallet, unencrypted here)."""
    return keyfiles.load_wallet(node.data_dir, keyfiles.DEFAULT_WALLET, None)


def block_timestamps(node: NodeProcess, start: int, end: int) -> list[int]:
    """Timestamps (ms) of `node`'s main-chain blocks start..end inclusive (GET /blocks/{h})."""
    return [node.client.block(h)["timestamp_ms"] for h in range(start, end + 1)]


def producers(node: NodeProcess, start: int, end: int) -> list[str]:
    return [node.client.block(h)["producer"] for h in range(start, end + 1)]
