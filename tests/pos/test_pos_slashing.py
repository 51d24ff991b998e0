"""Double signing, proven through the API, slashes the staker on every node.

The test holds a staker's key (its node's default wallet), signs two different headers for
one slot with it - what a staker running two copies of its node would do - and submits the
pair as an EVIDENCE transaction to another node (POST /txs), from a funded wallet. Once it
is confirmed, every node shows the offender's stake at 0 (GET /accounts), the reporter
holds 10% of it more (less the fee), the same evidence is refused as a duplicate, and the
offender, still running, produces no more blocks.
"""

from __future__ import annotations

import pytest

from chain.block import HEADER_VERSION, Header, merkle_root
from chain.keys import address_to_text
from chain.pos import encode_evidence, sign_header
from chain.state import SLASH_REPORTER_PERCENT
from chain.tx import EVIDENCE, sign_tx
from peerledger.client import ApiClientError
from tests.helpers import wait_until
from tests.nodes import ALLOCATION, FUNDED
from tests.pos.posnet import STAKE, add_stakers, producers, staking_key

FEE = 1000


def test_double_sign_evidence_submitted_through_the_api_slashes_the_stake(nodes):
    stakers = add_stakers(nodes, 3)
    nodes.start(*stakers)
    tip = nodes.wait_converged(stakers, 60, min_height=2)
    offender, reporter_node = stakers[2], stakers[0]
    key = staking_key(offender)
    params = nodes.params
    assert offender.client.account(offender.wallet_address())["stake"] == STAKE

    # Two blocks for the slot after the tip's, on the tip, differing in their timestamp.
    parent = offender.client.block(tip["height"])
    slot = parent["timestamp_ms"] // params.slot_ms + 1
    headers = [
        sign_header(Header(HEADER_VERSION, parent["height"] + 1, bytes.fromhex(parent["hash"]), merkle_root([]),
                           slot * params.slot_ms + offset, parent["difficulty"], key.address), key, params.network_id)
        for offset in (0, 1)
    ]
    reporter = FUNDED[0]
    evidence = sign_tx(reporter, params.network_id, kind=EVIDENCE, nonce=0, fee=FEE, amount=0,
                       payload=encode_evidence(*headers))
    txid = reporter_node.submit(evidence.raw)
    nodes.wait_confirmed(stakers, txid, 60)
    confirmed_at = reporter_node.client.tx(txid)["height"]

    reward = STAKE * SLASH_REPORTER_PERCENT // 100
    for node in stakers:
        account = node.client.account(offender.wallet_address())
        assert account["stake"] == 0 and account["unbonding"] == 0, node.name
        assert node.client.account(address_to_text(reporter.address))["balance"] == ALLOCATION - FEE + reward

    again = sign_tx(reporter, params.network_id, kind=EVIDENCE, nonce=1, fee=FEE, amount=0,
                   payload=encode_evidence(*headers))
    with pytest.raises(ApiClientError) as refused:
        reporter_node.submit(again.raw)
    assert refused.value.code == "duplicate"

    # The offender's node runs on but is never eligible again: the next blocks are the others'.
    target = confirmed_at + 8
    reporter_node.wait_for_height(target, 60)
    made = producers(reporter_node, confirmed_at + 1, target)
    assert offender.wallet_address() not in made, made
    wait_until(lambda: offender.height() >= target, 30, message=f"{offender.name} to follow the chain")
    nodes.wait_converged(stakers, 30, min_height=target)


def test_the_same_evidence_from_two_reporters_slashes_once_and_blocks_go_on(nodes):
    """Two reporters may send the same proof: each is valid on its own against the tip, only
    one can be in the chain. A block holding both would be invalid, so a producer that took
    both from its mempool would waste every slot it wins while they wait there."""
    stakers = add_stakers(nodes, 2)
    nodes.start(*stakers)
    tip = nodes.wait_converged(stakers, 60, min_height=2)
    offender, node = stakers[1], stakers[0]
    key = staking_key(offender)
    params = nodes.params
    parent = node.client.block(tip["height"])
    slot = parent["timestamp_ms"] // params.slot_ms + 1
    headers = [
        sign_header(Header(HEADER_VERSION, parent["height"] + 1, bytes.fromhex(parent["hash"]), merkle_root([]),
                           slot * params.slot_ms + offset, parent["difficulty"], key.address), key, params.network_id)
        for offset in (0, 1)
    ]
    txids = [node.submit(sign_tx(FUNDED[i], params.network_id, kind=EVIDENCE, nonce=0, fee=FEE + i, amount=0,
                                 payload=encode_evidence(*headers)).raw) for i in (0, 1)]
    height = node.height()
    node.wait_for_height(height + 4, 60)
    confirmed = [t for t in txids if node.tx_status(t) == "confirmed"]
    assert len(confirmed) == 1, [node.tx_status(t) for t in txids]
    assert node.client.account(offender.wallet_address())["stake"] == 0
    assert "rejected" not in node.log_text(), "a producer built an invalid block"
    nodes.wait_converged(stakers, 30, min_height=height + 4)
