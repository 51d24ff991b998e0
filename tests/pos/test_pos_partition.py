"""A partition shorter than the finality depth heals onto one chain, and no transaction is
lost: those confirmed deeper than max_reorg_depth before the cut stay in their blocks, and
those confirmed on either side during the cut are confirmed everywhere after it.

Three stakers with equal stakes, each in its own network namespace (tests/netlab.py); the
root namespace's firewall cuts {a0, a1} from {b}. Both sides go on producing - Proof of
Stake needs no majority to make blocks, and b alone makes them at a third of the rate until
its difficulty falls. The cut lasts a few seconds, under the session timeouts (the
production defaults: ping every 10 s, a peer silent 30 s is dropped; zmq heartbeats after
15 s), like a flapping uplink: after the heal TCP delivers what was held back, the lighter
side reorganises (fewer blocks than max_reorg_depth) and its transaction returns to its
mempool and is produced again on the winning chain. Blocks every 0.5 s keep it short.
"""

from __future__ import annotations

import time

from tests.helpers import wait_until
from tests.pos.posnet import add_stakers

LIMIT = 20
GENESIS = {"slot_ms": 100, "block_interval_ms": 500, "initial_difficulty": 5, "max_reorg_depth": LIMIT}
SESSIONS = {"network": {"ping_interval_s": 10.0, "peer_timeout_s": 30.0}}


def test_a_short_partition_heals_onto_one_chain_and_no_transaction_is_lost(netlab, nodes):
    hosts = netlab.add_hosts(3)
    a0, a1, b = add_stakers(nodes, 3, SESSIONS, genesis=GENESIS, places=[h.place for h in hosts])
    everyone = [a0, a1, b]
    nodes.start(*everyone)
    for node in everyone:
        nodes.wait_ready_peers(node, [n for n in everyone if n is not node])

    # A transfer buried deeper than the limit before anything happens: final.
    deep = a0.submit(nodes.transfer(0, 0, amount=1001))
    nodes.wait_confirmed(everyone, deep, 60)
    nodes.wait_converged(everyone, 60, min_height=a0.client.tx(deep)["height"] + LIMIT + 1)
    # Read only now: a fork at the start can still move it into another block (seen in CI).
    deep_block = a0.client.tx(deep)["block_hash"]

    netlab.partition(hosts[:2], hosts[2:])
    cut_at = time.monotonic()
    cut_height = b.height()
    on_a = a1.submit(nodes.transfer(1, 0, amount=2002))
    on_b = b.submit(nodes.transfer(2, 0, amount=3003))
    nodes.wait_confirmed([a0, a1], on_a, 30)
    nodes.wait_confirmed([b], on_b, 30)
    wait_until(lambda: b.height() >= cut_height + 3 and a0.height() >= cut_height + 3, 30, interval=0.1,
               message="both sides to produce during the cut")
    assert b.tx_status(on_a) is None and a0.tx_status(on_b) is None, "the cut leaked"
    a_side, b_side = a0.status(), b.status()
    assert a_side["tip"] != b_side["tip"]
    # The lighter side will undo what it made since the cut (and what it makes until TCP has
    # delivered the other side's blocks after the heal): well under the limit, or it could not heal.
    a_heavier = int(a_side["cumulative_weight"]) > int(b_side["cumulative_weight"])
    undone = (b_side if a_heavier else a_side)["height"] - cut_height
    assert undone < LIMIT - 8, f"the lighter side made {undone} blocks during the cut: too close to the limit"

    netlab.heal()
    cut_for = time.monotonic() - cut_at
    common = nodes.wait_converged(everyone, 60, min_height=max(a_side["height"], b_side["height"]) + 1)
    for txid in (on_a, on_b):
        nodes.wait_confirmed(everyone, txid, 60)
    winner = "a0 and a1" if a_heavier else "b"
    print(f"cut for {cut_for:.1f} s at height {cut_height}: a went to {a_side['height']}, b to {b_side['height']}; "
          f"healed at {common['height']} (heavier side at the heal: {winner})")
    for node in everyone:
        located = node.client.tx(deep)
        assert located["block_hash"] == deep_block and located["confirmations"] > LIMIT, node.name
        assert "refusing a reorganisation" not in node.log_text(), node.name
    assert "reorganised" in (b.log_text() + a0.log_text())
