"""A private chain deeper than max_reorg_depth is refused by running nodes, which log it and
go on serving and producing on their own chain.

The scenario finality exists for: a staker holding most of the stake (3 of 5 parts) is cut
off from the others from the start and builds its own chain, heavier than theirs because
it holds more stake (a chain's weight grows with the stake that produces it). When it comes
back and offers that chain, following it would rewrite every block the others made - far
more than max_reorg_depth (5 here) - so they refuse it: their blocks are final.
The returning staker in turn keeps its own (heavier) chain: the two sides stay apart,
which is the documented price of finality (configs/genesis-pos.toml).
"""

from __future__ import annotations

from chain.keys import address_to_text
from tests.helpers import wait_until
from tests.nodes import FUNDED
from tests.pos.posnet import STAKE, add_stakers

LIMIT = 5


def test_a_private_chain_deeper_than_the_limit_is_refused_and_the_node_keeps_serving(nodes):
    a0, a1, lone = add_stakers(nodes, 3, stakes=[STAKE, STAKE, 3 * STAKE], topology="none",
                               genesis={"max_reorg_depth": LIMIT})
    a1.dial(a0)  # the lone staker dials nobody and nobody dials it
    nodes.start(a0, a1, lone)
    nodes.wait_ready_peers(a0, [a1])

    def apart_and_heavier() -> bool:
        a, x = a0.status(), lone.status()
        return (a["height"] > LIMIT + 2 and x["height"] > LIMIT + 2
                and int(x["cumulative_weight"]) > int(a["cumulative_weight"]))

    wait_until(apart_and_heavier, 90, interval=0.2, message="both chains past the limit, the lone one heavier")
    assert lone.client.block(1)["hash"] != a0.client.block(1)["hash"]
    ours = a0.client.block(1)["hash"]

    # The lone staker comes back, dialling a0: a0 and a1 are offered the heavier private chain.
    lone.stop()
    lone.dial(a0)
    lone.start()
    refused = "refusing a reorganisation of depth"
    wait_until(lambda: refused in a0.log_text() and refused in a1.log_text(), 60, interval=0.2,
               message="a0 and a1 to refuse the private chain")
    height = a0.height()

    # They keep serving and producing on their own chain, and take transactions.
    txid = a1.submit(nodes.transfer(0, 0, amount=4242))
    nodes.wait_confirmed([a0, a1], txid, 60)
    a0.wait_for_height(height + 3, 60)
    for node in (a0, a1):
        node.assert_running()
        assert node.client.block(1)["hash"] == ours, f"{node.name} followed the private chain"
        assert node.client.account(address_to_text(FUNDED[0].address))["nonce"] == 1
    assert lone.client.block(1)["hash"] != ours
    line = next(l for l in a0.log_text().splitlines() if refused in l)
    print(f"a0 at height {a0.height()}, lone staker at {lone.height()}; a0 logged: {line}")
