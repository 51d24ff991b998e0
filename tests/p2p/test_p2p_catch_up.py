"""A node stopped while the others add 200+ blocks catches up by itself after a restart.

Three nodes: one miner, one follower that keeps relaying (its peer list follows the miner's
height), and the node that is stopped with SIGTERM (as a service manager stops it) and
started again. Transactions confirmed while it was away must be in the chain it syncs, so
the state hash it ends with is the ledger replayed block by block, not just a matching tip.
Blocks come every ~100 ms, so 200 of them take well under a minute.
"""

from __future__ import annotations

import time

from tests.nodes import P2P, merge

GENESIS = {"block_interval_ms": 100, "initial_difficulty": 100_000}
MISSED_BLOCKS = 200
MINE_TIMEOUT_S = 120.0  # 200 blocks at ~0.1 s; generous for a loaded machine
CATCH_UP_TIMEOUT_S = 90.0


def test_a_stopped_node_catches_up_200_blocks_after_restart(nodes):
    nodes.genesis.update(GENESIS)
    nodes.write_genesis()
    miner, follower, sleeper = nodes.add_nodes(3, merge(P2P, {"producer": {"enabled": False}}), topology="mesh")
    miner.config = merge(miner.config, {"producer": {"enabled": True}})
    miner.write_config()
    nodes.start(miner, follower, sleeper)
    nodes.wait_ready_peers(sleeper, [miner, follower])
    nodes.wait_converged([miner, follower, sleeper], 60, min_height=3)

    assert sleeper.stop() == 0
    stopped_height = follower.height()

    # While it is away: blocks, and transfers that change the state it must rebuild.
    txids = [follower.submit(nodes.transfer(0, nonce, amount=1000 + nonce)) for nonce in range(5)]
    target = stopped_height + MISSED_BLOCKS
    miner.wait_for_height(target, MINE_TIMEOUT_S)
    nodes.wait_confirmed([miner, follower], txids[-1], 60)

    started = time.monotonic()
    sleeper.start()  # its store holds the chain up to where it stopped, 200+ blocks behind
    behind = miner.height() - stopped_height
    sleeper.wait_for_height(target, CATCH_UP_TIMEOUT_S)
    caught_up = time.monotonic() - started
    common = nodes.wait_converged([miner, follower, sleeper], CATCH_UP_TIMEOUT_S, min_height=target)
    print(f"caught up {behind} blocks in {caught_up:.1f} s; all three at height {common['height']}")

    for txid in txids:
        assert sleeper.tx_status(txid) == "confirmed"
    # The follower shook hands with the miner near height 0 and has had 200+ blocks from it
    # since: its peer list shows where the miner is now, not where it was at the handshake.
    (seen,) = [p["height"] for p in follower.peers() if p["node_id"] == miner.node_id and p.get("ready")]
    assert seen >= target, f"the follower lists the miner at height {seen}, below {target}"
    assert not nodes.misbehaviour([miner, follower, sleeper]), "honest nodes penalised each other"
