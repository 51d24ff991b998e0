"""A private cluster: with [network] allow_list set to the members' keys, a node with any
other key cannot connect or inject anything, while the members work as usual - and a node
whose key is added to the list later gets in by itself.

Members: the victim (not mining) and a member that mines and dials it; both list exactly
their two keys. The outsider is a real node (it mines its own chain and takes a transfer)
whose seeds are both members, plus a bare CURVE client with a key of its own. The outsider's
transfer would be valid on the members' chain too, so only the allow-list keeps it out.
"""

from __future__ import annotations

from tests.helpers import wait_until
from tests.nodes import P2P, merge
from tests.p2p.hostile import HostileClient

JOIN_TIMEOUT_S = 60.0  # a seed that refused us is asked again within 30 s (capped backoff)


def test_only_listed_keys_take_part(nodes):
    quiet = merge(P2P, {"producer": {"enabled": False}})
    victim = nodes.add_node(quiet, name="victim")
    member = nodes.add_node(P2P, name="member")
    outsider = nodes.add_node(P2P, name="outsider")
    members = [victim.node_id, member.node_id]
    for node in (victim, member):
        node.config = merge(node.config, {"network": {"allow_list": members}})
        node.write_config()
    member.dial(victim)
    outsider.dial(victim, member)
    nodes.start(victim, member, outsider)
    nodes.wait_ready_peers(victim, [member])

    # The outsider mines its own chain and confirms its own transfer; nobody hears of either.
    from_outsider = outsider.submit(nodes.transfer(1, 0, amount=5555))
    nodes.wait_confirmed([outsider], from_outsider, 60)
    outsider_tip = outsider.status()["tip"]
    outsider_wallet = outsider.wallet_address()
    for node in (victim, member):  # it did try (its log says so): the members refused it
        refused = f"connection refused direction=outbound address={node.listen} "
        wait_until(lambda refused=refused: refused in outsider.log_text(), 30, interval=0.2,
                   message=f"the outsider to be refused by {node.name}")

    # A bare client with an unknown key is refused at the CURVE handshake.
    host, port = victim.listen_address
    stranger = HostileClient(victim.key, host, port, nodes.params.network_magic)
    try:
        assert stranger.handshake() == "refused"
    finally:
        stranger.close()

    # The members work: a transfer submitted at the miner is confirmed at the victim. It was
    # submitted after the outsider's was confirmed, so by now that one would have arrived.
    from_member = member.submit(nodes.transfer(0, 0, amount=4444))
    nodes.wait_confirmed([member, victim], from_member, 60)
    for node in (victim, member):
        assert node.tx_status(from_outsider) is None, f"{node.name} has the outsider's transfer"
        status, _ = node.http("GET", f"/blocks/{outsider_tip}")
        assert status == 404, f"{node.name} has the outsider's tip"
        assert outsider.node_id not in {p["node_id"] for p in node.peers()}
        assert node.ready_peers() == {m for m in members if m != node.node_id}
        height = node.height()
        producers = {node.client.block(h)["producer"] for h in range(1, height + 1)}
        assert outsider_wallet not in producers, f"{node.name} holds a block the outsider mined"
    assert outsider.ready_peers() == set()

    # The cluster lets the outsider in: its key is added to the victim's list (a restart
    # reads it). The outsider, refused until now, must get in without being touched.
    victim.stop()
    victim.config["network"]["allow_list"] = [*members, outsider.node_id]
    victim.write_config()
    victim.start()
    nodes.wait_ready_peers(victim, [member, outsider], JOIN_TIMEOUT_S)
    nodes.wait_ready_peers(outsider, [victim], JOIN_TIMEOUT_S)
    assert member.node_id not in outsider.ready_peers()  # the member still refuses it
