"""A node of a Proof of Stake network starts no mining processes.

Staking checks one hash per slot in the node process itself: even with [producer] workers
set (as in a config written for Proof of Work), the node's process group holds the node
process alone while it produces blocks. Validation workers are started only when a batch of
at least `batch_min` signatures arrives, which an idle network never sends.
"""

from __future__ import annotations

from tests.nodes import session_processes
from tests.pos.posnet import add_stakers


def test_a_staking_node_runs_no_worker_processes(nodes):
    (node,) = add_stakers(nodes, 1, {"producer": {"workers": 2}, "validation": {"workers": 2}})
    nodes.start(node)
    status = node.wait_for_height(5, 30)
    assert status["consensus"] == "pos" and status["producing"] and status["blocks_produced"] >= 5
    assert status["hash_rate"] == 0
    assert [pid for pid, _ in session_processes(node.pid)] == [node.pid]
    assert node.stop() == 0
