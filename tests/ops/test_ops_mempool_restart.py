"""Pending transactions survive a restart: a clean stop (SIGTERM) and a crash (kill -9) once
the mempool has been persisted (it is written at most a second behind), and are confirmed
when the node mines again. A pending transaction keeps its age across the restart, so one
that expired while the node was down is dropped.
"""

from __future__ import annotations

import time

import pytest

from chain.keys import address_to_text
from tests.helpers import wait_until
from tests.nodes import FUNDED, merge

NOT_MINING = {"producer": {"enabled": False}}
PERSISTED_AFTER_S = 3.0  # written within ~1 s (the mempool's tick, then one storage commit); slack for a busy box
RESTORE_TIMEOUT_S = 20.0  # verified again and admitted after start


def pending_everywhere(node, txids) -> bool:
    return all(node.tx_status(txid) == "pending" for txid in txids)


@pytest.mark.parametrize("how", ["sigterm", "kill-9"])
def test_pending_transactions_survive_a_restart_and_are_confirmed(nodes, how):
    node = nodes.start_node(NOT_MINING)
    # Three senders with runs of three nonces each (the mempool keeps runs gap-free, so they
    # must come back in order), fees that differ.
    txids = [node.submit(nodes.transfer(sender, nonce, amount=100 + nonce, fee=1000 + 7 * sender))
             for sender in range(3) for nonce in range(3)]
    assert pending_everywhere(node, txids)

    if how == "sigterm":
        assert node.stop() == 0
    else:
        time.sleep(PERSISTED_AFTER_S)
        node.kill()
    node.start()
    wait_until(lambda: pending_everywhere(node, txids), RESTORE_TIMEOUT_S, interval=0.1,
               message="the persisted transactions to be pending again")
    assert node.status()["mempool_size"] == len(txids)
    for sender in range(3):
        assert node.client.account(address_to_text(FUNDED[sender].address))["next_nonce"] == 3
    assert "mempool restored kept=9 dropped=0" in node.log_text(), node.describe()

    node.config = merge(node.config, {"producer": {"enabled": True}})
    node.write_config()
    node.restart()
    nodes.wait_confirmed([node], txids[-1], 60)
    for txid in txids:
        assert node.tx_status(txid) == "confirmed", txid
    assert node.status()["mempool_size"] == 0


def test_a_transaction_that_expired_while_the_node_was_down_is_dropped(nodes):
    node = nodes.start_node(merge(NOT_MINING, {"mempool": {"expiry_s": 3}}))
    old = node.submit(nodes.transfer(0, 0))
    assert node.stop() == 0
    time.sleep(4)  # past its expiry, counted from when it first came, not from the restart
    node.start()
    wait_until(lambda: "mempool restoring txs=0 expired=1" in node.log_text(), 10, interval=0.1,
               message="the node to read its persisted mempool")
    assert node.tx_status(old) is None
    fresh = node.submit(nodes.transfer(0, 0))  # its nonce is free again
    assert node.tx_status(fresh) == "pending"
