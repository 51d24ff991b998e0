"""A real partition: two groups cut apart both mine; after healing every node follows the
heavier chain, and the transfer confirmed only on the losing branch is confirmed again.

Each node runs in its own network namespace (tests/netlab.py) and the cut is made by the
root namespace's firewall: packets between the groups are dropped, so open connections
neither close nor carry anything, exactly like a dead uplink between two sites. Group A is
a miner and a relay, group B a lone miner. Once B's branch holds B's transfer under two
more blocks, B's mining workers are frozen (the node itself runs on, connected to nothing
across the cut and retrying), and the cut is healed only when A's branch weighs more: so
which branch must win is known, and B must reorganise, put its transfer back in its
mempool and relay it to A's miner. Every process lives through the cut: the links come
back by the nodes' own redialling.
"""

from __future__ import annotations

import time

from peerledger.client import ApiClientError
from tests.helpers import wait_until
from tests.nodes import P2P, merge

HEAL_TIMEOUT_S = 120.0  # reconnect after the cut: TCP SYN retries (1, 2, 4... 32 s) and zmq's backoff


def test_partitioned_groups_mine_and_the_heavier_chain_wins_after_healing(netlab, nodes):
    hosts = netlab.add_hosts(3)
    a_miner, a_relay, b_miner = nodes.add_nodes(3, P2P, topology="mesh", places=[h.place for h in hosts])
    a_relay.config = merge(a_relay.config, {"producer": {"enabled": False}})
    a_relay.write_config()
    group_a, group_b = [a_miner, a_relay], [b_miner]
    everyone = [*group_a, *group_b]
    nodes.start(*everyone)
    for node in everyone:
        nodes.wait_ready_peers(node, [n for n in everyone if n is not node])
    nodes.wait_converged(everyone, 60, min_height=3)

    netlab.partition(hosts[:2], hosts[2:])
    cut_at = time.monotonic()
    for node in group_a:
        wait_until(lambda node=node: b_miner.node_id not in node.ready_peers(), 30, interval=0.2,
                   message=f"{node.name} to lose {b_miner.name} behind the cut")
    wait_until(lambda: not b_miner.ready_peers(), 30, interval=0.2, message=f"{b_miner.name} to lose group A")

    # Both sides confirm a transfer the other side never hears of.
    on_a = a_relay.submit(nodes.transfer(0, 0, amount=1111))
    on_b = b_miner.submit(nodes.transfer(1, 0, amount=2222))
    nodes.wait_confirmed(group_a, on_a, 60)
    nodes.wait_confirmed(group_b, on_b, 60)
    b_block = b_miner.client.tx(on_b)
    b_miner.wait_for_height(b_block["height"] + 2, 60)
    assert b_miner.tx_status(on_a) is None and a_miner.tx_status(on_b) is None, "the cut leaked"

    # B's miner stalls; A mines on until its branch is the heavier one, by a margin of two
    # of B's blocks (a nonce found just before the freeze may still land on B's branch).
    frozen = b_miner.pause_workers()
    assert frozen, f"{b_miner.name} has no mining workers to pause"

    def a_outweighs_b() -> tuple[dict, dict] | None:
        a, b = a_miner.status(), b_miner.status()
        margin = 2 * b_miner.client.block(b["tip"])["difficulty"]
        return (a, b) if int(a["cumulative_weight"]) > int(b["cumulative_weight"]) + margin else None

    a_tip_at_heal, b_status = wait_until(a_outweighs_b, 120, interval=0.2,
                                         message="group A's branch to outweigh group B's")
    print(f"cut for {time.monotonic() - cut_at:.1f} s: A at height {a_tip_at_heal['height']}, "
          f"B at height {b_status['height']} (transfer at {b_block['height']})")

    netlab.heal()
    healed_at = time.monotonic()
    wait_until(lambda: b_miner.client.block(a_tip_at_heal["tip"])["confirmations"] > 0, HEAL_TIMEOUT_S,
               interval=0.2, ignore=(ApiClientError,), message=f"{b_miner.name} to reorganise onto A's branch")
    print(f"{b_miner.name} on A's branch {time.monotonic() - healed_at:.1f} s after the heal")
    b_miner.resume_workers(frozen)  # B mines again, on the winning chain
    nodes.wait_confirmed(everyone, on_b, 60)  # back from B's mempool, mined again
    nodes.wait_confirmed(everyone, on_a, 30)
    common = nodes.wait_converged(everyone, 60, min_height=a_tip_at_heal["height"])
    print(f"healed: every node at height {common['height']} {time.monotonic() - healed_at:.1f} s after the heal")

    for node in everyone:
        assert node.client.block(a_tip_at_heal["tip"])["confirmations"] > 0, f"{node.name} left A's branch"
        assert node.client.tx(on_b)["block_hash"] != b_block["block_hash"]
    assert b_miner.client.block(b_status["tip"])["confirmations"] == 0, "B's old tip is still on its main chain"
    assert b_miner.client.block(b_block["block_hash"])["confirmations"] == 0
    assert not nodes.misbehaviour(everyone), "honest nodes penalised each other"
