"""A slow honest peer is not a hostile one.

On a lossy link TCP keeps retransmitting, so the answer to a transaction request can arrive
long after the node stopped waiting for it (TX_REQUEST_TIMEOUT_MS). The fault suite's 50%
packet loss found nodes banning each other for "unrequested transactions" that were only
late. A late answer to a request the node gave up on is taken without penalty; a transaction
nobody asked for still costs points (tests/p2p/test_p2p_hostile_peer.py). Blocks the same:
every time the node asks a peer for a block, that peer may answer once, however late, and a
copy of a block the node already has costs nothing (blocks are also pushed unasked).
"""

from __future__ import annotations

import time

from actors.network import TX_REQUEST_TIMEOUT_MS
from actors.sync import BLOCK_TIMEOUT_MS
from chain.tx import sign_tx
from tests.helpers import wait_until
from tests.nodes import FUNDED, P2P, SHIPPED_LIVENESS, merge
from tests.p2p.hostile import block_on_genesis, join, score_of
from transport.messages import Block as BlockMessage
from transport.messages import GetData, Inv, InvItem, InvKind, Txs


def test_a_late_answer_to_a_transaction_request_is_taken_without_penalty(nodes):
    # Shipped timeouts: the client stays silent longer than P2P's 6 s peer timeout.
    victim = nodes.add_node(merge(P2P, SHIPPED_LIVENESS), name="victim")
    nodes.start(victim)
    params = nodes.params
    client = join(victim, params)
    try:
        tx = sign_tx(FUNDED[2], params.network_id, nonce=0, fee=1000, recipient=FUNDED[3].address, amount=7)
        client.send(Inv((InvItem(InvKind.TX, tx.id),)))
        client.expect(GetData, lambda m: any(i.hash == tx.id for i in m.items))

        time.sleep(TX_REQUEST_TIMEOUT_MS / 1000 + 3)  # the victim gives up on its request
        client.send(Txs((tx.raw,)))

        wait_until(lambda: victim.tx_status(tx.id.hex()) is not None, 15, interval=0.1,
                   message="the victim to take the late transaction")
        assert score_of(victim, client.node_id) == 0, "a late answer was punished as unrequested"
        assert client.node_id not in victim.banned()
    finally:
        client.close()


def test_every_request_for_a_block_may_be_answered_once_however_late(nodes):
    victim = nodes.add_node(merge(merge(P2P, SHIPPED_LIVENESS), {"producer": {"enabled": False}}), name="victim")
    nodes.start(victim)
    params = nodes.params
    block = block_on_genesis(params)
    announce = Inv((InvItem(InvKind.BLOCK, block.hash),))
    asks_for_it = lambda m: any(i.hash == block.hash for i in m.items)  # noqa: E731
    client = join(victim, params)
    try:
        # Asked, not answered in time, announced again: three times (TCP under heavy loss).
        for attempt in range(3):
            client.send(announce)
            client.expect(GetData, asks_for_it)
            if attempt < 2:
                time.sleep(BLOCK_TIMEOUT_MS / 1000 + 2)

        for _ in range(3):
            client.send(BlockMessage(block.raw))  # the answers to the three requests, late
        wait_until(lambda: victim.height() == 1, 10, interval=0.1, message="the victim to take the block")
        time.sleep(1.0)
        assert score_of(victim, client.node_id) == 0, "an answer to a request was punished as unrequested"

        client.send(BlockMessage(block.raw))  # a fourth copy, never asked for: ignored, as a duplicate push
        time.sleep(1.0)
        assert score_of(victim, client.node_id) == 0, "a copy of a block the victim has was punished"
        assert victim.height() == 1
    finally:
        client.close()
