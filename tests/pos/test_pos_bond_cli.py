"""A staker bonds and unbonds with the wallet commands, as an operator would.

The node's default wallet holds a balance and a genesis stake; `peerledger wallet bond`
moves part of the balance into stake and `wallet unbond` starts returning stake, which the
account shows as unbonding until `unbonding_delay` blocks have passed.
"""

from __future__ import annotations

from chain.keys import address_to_text
from peerledger import keyfiles
from tests.pos.posnet import STAKE, add_stakers

BALANCE = 5_000_000_000  # units in the staker's default wallet besides its stake
FEE = 1000


def test_bond_and_unbond_with_the_wallet_commands(nodes):
    (staker,) = add_stakers(nodes, 1)
    nodes.allocations[staker.wallet_address()] = BALANCE
    nodes.write_genesis()
    nodes.start(staker)
    staker.wait_for_height(1, 60)

    staker.cli("wallet", "bond", "--amount", "2000000000", "--fee", str(FEE), "--wait", "60")
    account = staker.client.account(staker.wallet_address())
    assert account["stake"] == STAKE + 2_000_000_000
    assert account["nonce"] == 1

    staker.cli("wallet", "unbond", "--amount", "500000000", "--fee", str(FEE), "--wait", "60")
    account = staker.client.account(staker.wallet_address())
    assert account["stake"] == STAKE + 1_500_000_000
    assert account["unbonding"] == 500_000_000
    assert account["unbonding_height"] > staker.height()  # not spendable yet
    assert account["nonce"] == 2


def test_bond_on_a_proof_of_work_network_is_refused(nodes):
    node = nodes.add_node({"producer": {"enabled": False}})
    node.key  # noqa: B018 - the data directory, as init would make it
    wallet = keyfiles.create_wallet(node.data_dir, keyfiles.DEFAULT_WALLET, None)
    nodes.allocations[address_to_text(wallet.address)] = BALANCE
    nodes.write_genesis()
    nodes.start(node)
    result = node.cli("wallet", "bond", "--amount", "1000", check=False)
    assert result.returncode == 1
    assert "not valid on this network" in result.stderr, result.stderr
