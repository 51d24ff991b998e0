"""A peer that goes silent is dropped in time, the others keep going, and when it comes
back it reconnects, says hello again and catches up.

Silence here is SIGSTOP on the node's whole process group: its sockets stay open and the
kernel keeps accepting bytes for it, so nothing closes - only the peers' liveness checks
(ping after ping_interval_s of silence, drop after peer_timeout_s) can tell. Three nodes:
a miner, a follower, and the one that freezes.
"""

from __future__ import annotations

import time

from tests.helpers import wait_until
from tests.nodes import P2P, merge

SLACK_S = 6.0  # housekeeping runs once a second; a loaded machine delays it some more
BACK_TIMEOUT_S = 90.0  # reconnect after SIGCONT: zmq's backoff and handshake timers


def test_a_silent_peer_is_dropped_and_comes_back_cleanly(nodes):
    miner, follower, frozen = nodes.add_nodes(3, merge(P2P, {"producer": {"enabled": False}}), topology="mesh")
    miner.config = merge(miner.config, {"producer": {"enabled": True}})
    miner.write_config()
    nodes.start(miner, follower, frozen)
    for node in (miner, follower, frozen):
        nodes.wait_ready_peers(node, [n for n in (miner, follower, frozen) if n is not node])
    nodes.wait_converged([miner, follower, frozen], 60, min_height=3)
    peer_timeout = P2P["network"]["peer_timeout_s"]

    frozen.pause()
    paused_at = time.monotonic()
    for node in (miner, follower):
        wait_until(lambda node=node: frozen.node_id not in node.ready_peers(), peer_timeout + SLACK_S, interval=0.2,
                   message=f"{node.name} to drop the silent {frozen.name}")
    dropped_after = time.monotonic() - paused_at
    print(f"silent peer dropped by both after {dropped_after:.1f} s (peer_timeout_s = {peer_timeout:g})")
    assert dropped_after >= peer_timeout - 1.0, "dropped before it had been silent for peer_timeout_s"

    # The others keep going without it.
    height = miner.height()
    txid = follower.submit(nodes.transfer(0, 0))
    nodes.wait_confirmed([miner, follower], txid, 60)
    miner.wait_for_height(height + 3, 60)
    nodes.wait_ready_peers(miner, [follower])

    frozen.resume()
    resumed_at = time.monotonic()
    for node in (miner, follower):
        nodes.wait_ready_peers(node, [frozen], BACK_TIMEOUT_S)
    nodes.wait_ready_peers(frozen, [miner, follower], BACK_TIMEOUT_S)
    back_after = time.monotonic() - resumed_at
    print(f"back in {back_after:.1f} s after SIGCONT")

    # A new session (a new hello), not the old one carried on.
    for node in (miner, follower):
        (entry,) = [p for p in node.peers() if p["node_id"] == frozen.node_id and "connected_s" in p]
        assert entry["connected_s"] <= time.monotonic() - resumed_at + 1.0, entry

    common = nodes.wait_converged([miner, follower, frozen], 60, min_height=height + 3)
    assert frozen.tx_status(txid) == "confirmed"
    assert frozen.running and not frozen.paused
    # Silence is no misbehaviour, and neither is talking into a session the other side reset.
    assert not nodes.misbehaviour([miner, follower, frozen]), "honest nodes penalised each other"
    print(f"all three at height {common['height']}")
