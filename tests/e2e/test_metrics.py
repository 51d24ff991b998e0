"""GET /metrics of real nodes, read with prometheus_client's parser (the reference for the
text format): every family parses, the figures match the API, and they move as blocks and
transactions arrive."""

from __future__ import annotations

import http.client
import json
import re

from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import wait_until
from tests.nodes import P2P, REPO_ROOT, free_ports

DASHBOARD = REPO_ROOT / "configs" / "grafana-dashboard.json"


def scrape(node) -> dict[str, dict]:
    """{family name: {"type": ..., "samples": {(sample name, sorted labels): value}}}."""
    status, text = node.http("GET", "/metrics")
    assert status == 200, text
    families = {}
    for family in text_string_to_metric_families(text):
        assert family.type != "unknown", f"{family.name} has no # TYPE"
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}
        assert family.name not in families, f"{family.name} twice"
        families[family.name] = {"type": family.type, "samples": samples}
    return families


def value(families, name: str, **labels) -> float:
    """A sample's value; counters are families without _total (the parser's naming)."""
    family = families[name.removesuffix("_total")] if name.endswith("_total") else families[name]
    return family["samples"][(name, tuple(sorted(labels.items())))]


def histogram_count(families, name: str, default: float | None = None, **labels) -> float:
    samples = families[name]["samples"]
    key = (f"{name}_count", tuple(sorted(labels.items())))
    return samples[key] if default is None else samples.get(key, default)


def test_metrics_parse_and_move_with_the_chain(nodes):
    miner, follower = nodes.add_nodes(2, P2P)
    follower.config["producer"]["enabled"] = False
    follower.write_config()
    miner.config["notifications"] = {"enabled": True, "listen": f"127.0.0.1:{free_ports(1)[0]}"}
    miner.write_config()
    nodes.start(miner, follower)
    nodes.wait_ready_peers(follower, [miner])
    nodes.wait_ready_peers(miner, [follower])

    first = scrape(follower)
    names = set(first)
    expected = {
        "peerledger_info", "peerledger_height", "peerledger_best_header_height", "peerledger_peer_best_height",
        "peerledger_syncing", "peerledger_peers", "peerledger_peers_banned", "peerledger_bans",
        "peerledger_mempool_transactions", "peerledger_mempool_bytes", "peerledger_block_validation_seconds",
        "peerledger_tx_validation_seconds", "peerledger_reorgs", "peerledger_reorg_depth",
        "peerledger_transport_messages", "peerledger_transport_bytes", "peerledger_resident_memory_bytes",
        "peerledger_blocks_connected", "peerledger_actor_up",
    }
    assert expected <= names, expected - names
    assert first["peerledger_block_validation_seconds"]["type"] == "histogram"
    assert first["peerledger_transport_messages"]["type"] == "counter"
    assert all(v == 1 for v in first["peerledger_actor_up"]["samples"].values()), first["peerledger_actor_up"]
    assert value(first, "peerledger_peers", direction="outbound") == 1  # the follower dialled the miner
    assert value(first, "peerledger_peers", direction="inbound") == 0
    assert value(scrape(miner), "peerledger_peers", direction="inbound") == 1
    assert value(first, "peerledger_resident_memory_bytes") > 10 * 2**20
    assert value(first, "peerledger_reorgs_total") == 0

    # Blocks arrive from the miner; a transfer goes through the follower.
    start_height = int(value(first, "peerledger_height"))
    txid = follower.submit(nodes.transfer(0, 0))
    nodes.wait_confirmed([follower], txid, 60)
    wait_until(lambda: follower.height() >= start_height + 3, 60, message="three more blocks")
    shown_before = follower.height()
    later = scrape(follower)
    shown_after = follower.height()
    assert shown_before <= value(later, "peerledger_height") <= shown_after  # the tip the API shows
    assert value(later, "peerledger_height") >= start_height + 3
    assert value(later, "peerledger_best_header_height") >= value(later, "peerledger_height")
    assert value(later, "peerledger_blocks_connected_total") > value(first, "peerledger_blocks_connected_total")
    for stage in ("verify", "connect"):
        before = histogram_count(first, "peerledger_block_validation_seconds", 0, stage=stage)
        after = histogram_count(later, "peerledger_block_validation_seconds", stage=stage)
        assert after >= before + 3, (stage, before, after)
    for stage in ("verify", "admit"):
        assert histogram_count(later, "peerledger_tx_validation_seconds", stage=stage) >= 1
    assert value(later, "peerledger_mempool_accepted_total") >= 1
    received = value(later, "peerledger_transport_messages_total", type="block", direction="in")
    assert received >= 3 and value(later, "peerledger_transport_bytes_total", type="block", direction="in") > received * 80
    assert value(later, "peerledger_transport_messages_total", type="txs", direction="out") >= 1  # relayed to the miner
    info = next(iter(later["peerledger_info"]["samples"]))
    assert dict(info[1])["node_id"] == follower.node_id

    # The dashboard shipped with the node asks only for metrics the nodes have.
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    assert exprs
    known = set(later) | set(scrape(miner))
    for expr in exprs:
        used = {re.sub(r"_(total|bucket|sum|count)$", "", word) for word in _identifiers(expr)
                if word.startswith("peerledger_")}
        assert used and used <= known, (expr, used - known)


def _identifiers(expr: str) -> set[str]:
    return set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr))


def test_metrics_content_type_and_methods(nodes):
    node = nodes.start_node()
    connection = http.client.HTTPConnection(*node.api_address, timeout=10)
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        body = response.read().decode()
        assert response.getheader("Content-Type") == "text/plain; version=0.0.4; charset=utf-8"
        assert "peerledger_height " in body
    finally:
        connection.close()
    status, error = node.http("POST", "/metrics", b"x")
    assert status == 405 and error["error"]["code"] == "method_not_allowed"
    # Without the network there are no peer or transport figures, and no error either.
    families = scrape(node)
    assert "peerledger_transport_messages" not in families and "peerledger_height" in families
