"""A real partition: two groups cut apart both mine; after healing every node follows the
heavier chain, and the transfer confirmed only on the losing branch is confirmed again.

Each node runs in its own network namespace (tests/netlab.py) and the cut is made by the
root namespace's firewall: packets between the groups are dropped, so open connections
neither close nor carry anything, exactly like a dead uplink between two sites. Group A is
a miner and a relay, group B a lone miner. B stops mining (a restart without its producer)
once its branch holds B's transfer under two more blocks, and the cut is healed only when
A's branch weighs more: so which branch must win is known, and B must reorganise, put its
transfer back in its mempool and relay it to A's miner.
"""

from __future__ import annotations

import time

from tests.helpers import wait_until
from tests.nodes import P2P, merge

HEAL_TIMEOUT_S = 120.0  # reconnect after the cut: TCP SYN retries and zmq's backoff (cap 30 s)


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

    # B stops mining (its chain is kept); A mines on until its branch is the heavier one.
    b_miner.stop()
    b_miner.config = merge(b_miner.config, {"producer": {"enabled": False}})
    b_miner.write_config()
    b_miner.start()
    b_status = b_miner.status()
    wait_until(lambda: int(a_miner.status()["cumulative_weight"]) > int(b_status["cumulative_weight"]), 120,
               interval=0.2, message="group A's branch to outweigh group B's")
    a_tip_at_heal = a_miner.status()
    print(f"cut for {time.monotonic() - cut_at:.1f} s: A at height {a_tip_at_heal['height']}, "
          f"B at height {b_status['height']} (transfer at {b_block['height']})")

    netlab.heal()
    healed_at = time.monotonic()
    nodes.wait_confirmed(everyone, on_b, HEAL_TIMEOUT_S)  # back from B's mempool, mined by A
    nodes.wait_confirmed(everyone, on_a, 30)
    common = nodes.wait_converged(everyone, 60, min_height=a_tip_at_heal["height"])
    print(f"healed: every node at height {common['height']} {time.monotonic() - healed_at:.1f} s after the heal")

    for node in everyone:
        assert node.client.block(a_tip_at_heal["tip"])["confirmations"] > 0, f"{node.name} left A's branch"
        assert node.client.tx(on_b)["block_hash"] != b_block["block_hash"]
    assert b_miner.client.block(b_status["tip"])["confirmations"] == 0, "B's old tip is still on its main chain"
    assert b_miner.client.block(b_block["block_hash"])["confirmations"] == 0
    assert not nodes.misbehaviour(everyone), "honest nodes penalised each other"
