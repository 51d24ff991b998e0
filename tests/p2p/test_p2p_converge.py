"""Five nodes wired in a line converge on one chain, and a transaction submitted at one node
is confirmed on every node.

Only the two end nodes mine, so every block crosses three relays to reach the other end
and the two miners' blocks compete (forks are settled by fork choice). Seeds form a line
(node i dials node i-1); peer exchange may add shortcuts, which is fine: the claim is that
five independent processes end with the same tip and the same state hash.
"""

from __future__ import annotations

import itertools
import time

from tests.nodes import P2P, merge

# One block a second with two miners on a shared 2-core machine: forks happen, and blocks
# are far enough apart that all five nodes agree most of the time once relay is done.
GENESIS = {"block_interval_ms": 1000, "initial_difficulty": 600_000}
MINER = merge(P2P, {"producer": {"enabled": True}})
RELAY = merge(P2P, {"producer": {"enabled": False}})
CONVERGE_TIMEOUT_S = 90.0
CONFIRM_TIMEOUT_S = 90.0


def test_five_nodes_converge_and_confirm_a_transaction_everywhere(nodes):
    nodes.genesis.update(GENESIS)
    nodes.write_genesis()
    line = nodes.add_nodes(5, RELAY, topology="line")
    for miner in (line[0], line[-1]):
        miner.config = merge(miner.config, MINER)
        miner.write_config()
    nodes.start(*line)
    for left, right in itertools.pairwise(line):
        nodes.wait_ready_peers(right, [left])

    common = nodes.wait_converged(line, CONVERGE_TIMEOUT_S, min_height=5)
    assert common["height"] >= 5

    middle = line[2]  # not a miner: the transaction must be relayed to one to be mined
    started = time.monotonic()
    txid = middle.submit(nodes.transfer(0, 0, amount=4242))
    assert middle.tx_status(txid) == "pending"
    nodes.wait_confirmed(line, txid, CONFIRM_TIMEOUT_S)
    print(f"transaction confirmed on all 5 nodes {time.monotonic() - started:.1f} s after submission")

    final = nodes.wait_converged(line, CONVERGE_TIMEOUT_S)
    blocks = {node.client.tx(txid)["block_hash"] for node in line}
    assert len(blocks) == 1, f"the transaction sits in different blocks: {blocks}"
    assert final["height"] >= common["height"]
    assert not nodes.misbehaviour(line), "honest nodes penalised each other"
