"""A node fetches each transaction once, not once per peer that announces it.

Every peer announces every transaction it takes in. A node fetches one it lacks from the
first announcer; the others' announcements must not make it fetch the same transaction again
while that copy is still being verified and admitted, nor after a block has confirmed it.
Under load both happened: at 1,000 tx/s on five nodes, a node whose transaction pipeline
lagged its blocks fetched, verified and refused ("nonce already used") every transaction
once per peer, lagged further for it, and refused twice as many transactions as the
network carried.
"""

from __future__ import annotations

from chain.tx import sign_tx
from tests.helpers import wait_until
from tests.nodes import FUNDED, P2P, merge
from tests.p2p.hostile import join
from transport.messages import GetData, Inv, InvItem, InvKind, Txs

BATCH = 300  # verified in the node process at ~5,000/s: the batch is in validation for tens of ms


def _asks_for(ids: set[bytes]):
    return lambda m: any(item.hash in ids for item in m.items)


def _fetches_news_from(client, params) -> None:
    """The control: the victim reads this client's announcements (a transaction new to it is fetched)."""
    fresh = sign_tx(FUNDED[1], params.network_id, nonce=0, fee=1000, recipient=FUNDED[3].address, amount=1)
    client.send(Inv((InvItem(InvKind.TX, fresh.id),)))
    client.expect(GetData, _asks_for({fresh.id}))


def test_a_transaction_being_validated_is_not_fetched_again_from_another_announcer(nodes):
    victim = nodes.add_node(merge(P2P, {"producer": {"enabled": False}, "mempool": {"max_per_sender": BATCH}}),
                            name="victim")
    nodes.start(victim)
    params = nodes.params
    txs = [sign_tx(FUNDED[2], params.network_id, nonce=n, fee=1000, recipient=FUNDED[3].address, amount=1)
           for n in range(BATCH)]
    ids = {tx.id for tx in txs}
    first, second = join(victim, params), join(victim, params)
    try:
        first.send(Inv(tuple(InvItem(InvKind.TX, tx.id) for tx in txs)))
        first.expect(GetData, _asks_for(ids))
        # The answer, and at once the same announcement from another peer: the victim
        # reads the second while it is still verifying the batch.
        first.send(Txs(tuple(tx.raw for tx in txs)))
        second.send(Inv(tuple(InvItem(InvKind.TX, tx.id) for tx in txs)))

        wait_until(lambda: victim.status()["mempool_size"] == BATCH, 15, interval=0.1,
                   message="the victim to admit the batch")
        assert second.nothing_for(2.0, GetData, _asks_for(ids)), \
            "the victim fetched transactions it was already validating from a second peer"
        _fetches_news_from(second, params)
    finally:
        first.close()
        second.close()


def test_a_confirmed_transaction_is_not_fetched_again(nodes):
    victim = nodes.add_node(P2P, name="victim")  # mines: the transaction gets confirmed
    nodes.start(victim)
    params = nodes.params
    tx = sign_tx(FUNDED[2], params.network_id, nonce=0, fee=1000, recipient=FUNDED[3].address, amount=1)
    announce = Inv((InvItem(InvKind.TX, tx.id),))
    client = join(victim, params)
    try:
        client.send(announce)
        client.expect(GetData, _asks_for({tx.id}))
        client.send(Txs((tx.raw,)))
        wait_until(lambda: victim.tx_status(tx.id.hex()) == "confirmed", 30, interval=0.2,
                   message="the victim to confirm the transaction")

        late = join(victim, params)  # a peer that announces it only now
        try:
            late.send(announce)
            assert late.nothing_for(2.0, GetData, _asks_for({tx.id})), \
                "the victim fetched a transaction it had confirmed"
            _fetches_news_from(late, params)
        finally:
            late.close()
    finally:
        client.close()
