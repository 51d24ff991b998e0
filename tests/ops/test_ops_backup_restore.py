"""Hot backup of a running, mining node; restore into a new node that starts at the backed-up
height and syncs on; the admin cookie that guards the backup; a damaged store.

The running node holds an exclusive lock on its data directory, so `peerledger backup` goes
through the node: it reads the admin token from <data_dir>/api.cookie and asks
POST /admin/backup, and the node copies its ledger from one read snapshot while it keeps
mining. `peerledger restore` works on a stopped node's directory.
"""

from __future__ import annotations

import http.client
import json
import os
import stat

from tests.helpers import wait_until
from tests.nodes import P2P, merge

BACKUP_BODY = {"Content-Type": "application/json"}


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_backup_of_a_running_miner_restores_into_a_new_node_that_syncs(nodes):
    source, target = nodes.add_nodes(2, P2P, topology="none")
    target.config = merge(target.config, {"producer": {"enabled": False}})
    target.dial(source)  # written now, used when the target first starts, after its restore
    nodes.start(source)
    txid = source.submit(nodes.transfer(0, 0, amount=12345))
    nodes.wait_confirmed([source], txid, 60)
    source.wait_for_height(5, 60)

    dest = nodes.root / "backups" / "source-1"
    dest.parent.mkdir()
    result = source.cli("backup", str(dest), "--json")
    info = json.loads(result.stdout)
    assert info["height"] >= 5 and info["network"] == "peerledger-e2e", info
    assert json.loads((dest / "backup.json").read_text())["tip"] == info["tip"]
    assert mode(dest) == 0o700
    assert (dest / "data.mdb").stat().st_size == info["bytes"]
    source.wait_for_height(info["height"] + 2, 30)  # it kept mining, and still does

    # A backup never overwrites: the node refuses a directory that is not empty.
    again = source.cli("backup", str(dest), check=False)
    assert again.returncode == 1 and "not an empty directory" in again.stderr, again.stderr

    # The target: keys and a genesis-only ledger (`init`), never started.
    target.init()
    restored = target.cli("restore", str(dest))
    assert f"at height {info['height']}" in restored.stdout, restored.stdout
    with target.open_store() as store:
        tip = store.tip()
        assert (tip.height, tip.hash.hex(), tip.state_hash) == (info["height"], info["tip"], info["state_hash"])
        assert store.load_peers() == {}, "the source's peer book came along"
    # Its ledger now holds blocks: a second restore must be forced.
    refused = target.cli("restore", str(dest), check=False)
    assert refused.returncode == 1 and "--force" in refused.stderr, refused.stderr
    target.cli("restore", "--force", str(dest))

    target.start()
    assert target.status()["height"] >= info["height"]
    # Never into a running node, even forced.
    running = target.cli("restore", "--force", str(dest), check=False)
    assert running.returncode == 1 and "Stop the node" in running.stderr, running.stderr
    common = nodes.wait_converged([source, target], 60, min_height=info["height"] + 3)
    assert target.tx_status(txid) == "confirmed"
    print(f"backup at height {info['height']} ({info['bytes']} bytes in {info['seconds']} s); "
          f"restored node converged with the source at {common['height']}")
    assert not nodes.misbehaviour([source, target])


def test_admin_routes_need_the_cookie_which_is_private_and_new_at_each_start(nodes):
    node = nodes.start_node({"producer": {"enabled": False}})
    cookie = node.data_dir / "api.cookie"
    assert mode(cookie) == 0o600
    token = cookie.read_text().strip()
    assert len(token) == 64 and int(token, 16) >= 0
    dest = nodes.root / "b"
    body = json.dumps({"path": str(dest)}).encode()

    for headers in ({}, {"Authorization": "Bearer " + "0" * 64}, {"Authorization": token},
                    {"Authorization": f"Basic {token}"}, {"Authorization": f"Bearer {token[:-1]}"}):
        status, answer = node.http("POST", "/admin/backup", body, {**BACKUP_BODY, **headers})
        assert status == 401 and answer["error"]["code"] == "unauthorized", (headers, status, answer)
        # Unauthenticated callers learn nothing about routes either.
        status, answer = node.http("GET", "/admin/anything", None, headers)
        assert status == 401, (headers, status, answer)
    assert not dest.exists()
    connection = http.client.HTTPConnection(*node.api_address, timeout=10)
    try:
        connection.request("GET", "/admin/backup")
        response = connection.getresponse()
        response.read()
        assert (response.status, response.getheader("WWW-Authenticate")) == (401, 'Bearer realm="peerledger admin"')
    finally:
        connection.close()

    admin = {**BACKUP_BODY, "Authorization": f"Bearer {token}"}
    assert node.http("GET", "/admin/backup", None, admin)[0] == 405
    assert node.http("POST", "/admin/other", body, admin)[0] == 404
    for bad in (b"not json", b'{"dest": "/x"}', json.dumps({"path": "relative/dir"}).encode()):
        status, answer = node.http("POST", "/admin/backup", bad, admin)
        assert status == 400 and answer["error"]["code"] == "bad_request", (bad, answer)
    status, answer = node.http("POST", "/admin/backup", json.dumps({"path": "/nonexistent/dir/b"}).encode(), admin)
    assert status == 422 and answer["error"]["code"] == "backup_failed", answer
    status, answer = node.http("POST", "/admin/backup", body, admin)
    assert status == 200 and answer["height"] == 0 and (dest / "backup.json").exists(), answer

    node.restart()
    new_token = cookie.read_text().strip()
    assert new_token != token and mode(cookie) == 0o600
    status, _ = node.http("POST", "/admin/backup", body, admin)
    assert status == 401, "the token of the previous run still works"
    assert node.stop() == 0
    assert not cookie.exists(), "the cookie outlived the node"
    # The CLI says what is wrong when there is no node to ask.
    result = node.cli("backup", str(nodes.root / "c"), check=False)
    assert result.returncode == 1 and "is the node running" in result.stderr, result.stderr


def test_a_damaged_store_stops_the_node_with_advice_and_a_backup_repairs_it(nodes):
    node = nodes.start_node()
    node.wait_for_height(3, 30)
    dest = nodes.root / "good"
    info = json.loads(node.cli("backup", str(dest), "--json").stdout)
    assert node.stop() == 0

    # Both meta pages overwritten (a card that lost its first sectors): not an LMDB file any more.
    data = node.data_dir / "ledger" / "data.mdb"
    with open(data, "r+b") as f:
        f.write(os.urandom(8192))
    result = node.cli("run", check=False, timeout=30)
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert "damaged" in result.stderr and "peerledger restore" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr

    refused = node.cli("restore", str(dest), check=False)  # it cannot tell what it would replace
    assert refused.returncode == 1 and "--force" in refused.stderr, refused.stderr
    node.cli("restore", "--force", str(dest))
    node.start()
    status = wait_until(lambda: node.status()["height"] >= info["height"] and node.status(), 10,
                        message="the restored node to serve its ledger")
    node.wait_for_height(status["height"] + 2, 30)  # and to mine on it
