"""A user's journey with one real node: init, run, status, wallets, payments, mistakes.

Everything goes through what a user has: `python -m peerledger ...` as a subprocess, the
node's HTTP API, its files and its exit status.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import time

import pytest

from chain.keys import SigningKey, address_to_text
from chain.tx import sign_tx
from tests.helpers import wait_until
from tests.nodes import (
    ALLOCATION,
    CLI_TIMEOUT_S,
    FUNDED,
    P2P,
    NodeProcess,
    children_of,
    peerledger,
    session_processes,
    toml_text,
)

A, B = FUNDED[0], FUNDED[1]
NOT_MINING = {"producer": {"enabled": False}}


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def balance(node: NodeProcess, wallet: str) -> tuple[int, int]:
    """(balance, nonce) of a local wallet, as `peerledger wallet balance --json` prints them."""
    account = json.loads(node.cli("wallet", "balance", "--name", wallet, "--json").stdout)
    return account["balance"], account["nonce"]


def wait_confirmed(node: NodeProcess, txid: str, timeout: float = 30.0) -> dict:
    def confirmed() -> dict | None:
        node.assert_running()
        status, body = node.http("GET", f"/txs/{txid}")
        return body if status == 200 and body["status"] == "confirmed" else None

    return wait_until(confirmed, timeout, interval=0.1, message=f"transaction {txid[:16]} to be confirmed")


# --------------------------------------------------------------------------- init


def test_init_creates_private_data_dir_and_keys_and_is_harmless_twice(nodes):
    node = nodes.add_node()
    first = node.init()
    data = node.data_dir
    assert data.is_dir() and mode(data) == 0o700
    for key_file in (data / "node.key", data / "wallets" / "default.pem"):
        assert mode(key_file) == 0o600, f"{key_file} has mode {mode(key_file):04o}"
    address = node.wallet_address("default")
    assert f"default wallet  {address}" in first.stdout
    node_id = re.search(r"node id\s+([0-9a-f]{64})", first.stdout)[1]
    keys_before = {p: p.read_bytes() for p in (data / "node.key", data / "wallets" / "default.pem")}

    second = node.init()
    assert "already initialised" in second.stdout
    assert re.search(r"node id\s+([0-9a-f]{64})", second.stdout)[1] == node_id
    assert {p: p.read_bytes() for p in keys_before} == keys_before, "a second init changed a key"
    assert mode(data) == 0o700

    node.start()  # and the initialised directory is what `run` needs
    assert node.status()["network_id"] == re.search(r"network\s+\S+ ([0-9a-f]{64})", first.stdout)[1]


# --------------------------------------------------------------------------- mining and paying


def test_mine_then_pay_with_the_wallet_commands(nodes):
    node = nodes.add_node()
    # A wallet made before the network exists, funded by the genesis spec every node shares.
    alice = node.cli("wallet", "new", "--name", "alice").stdout.strip()
    nodes.allocations[alice] = ALLOCATION
    nodes.write_genesis()
    node.init()
    node.start()

    node.wait_for_height(3, timeout=30)
    before = node.height()
    shown = node.cli("status").stdout
    after = node.height()
    height = int(re.search(r"^height\s+(\d+)$", shown, re.MULTILINE)[1])
    assert before <= height <= after, shown
    assert re.search(r"^producing\s+\d+ hashes/s", shown, re.MULTILINE), shown

    bob = node.cli("wallet", "new", "--name", "bob").stdout.strip()
    assert bob.startswith("pl") and len(bob) == 41
    assert node.cli("wallet", "address", "--name", "bob").stdout.strip() == bob
    assert balance(node, "bob") == (0, 0)

    sent = node.cli("wallet", "send", "--name", "alice", "--to", bob, "--amount", "250000", "--fee", "1500",
                    "--wait", "30")
    first_txid = sent.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", first_txid), sent.stdout
    assert "confirmed" in sent.stderr
    assert balance(node, "alice") == (ALLOCATION - 250_000 - 1500, 1)
    assert balance(node, "bob") == (250_000, 0)
    text = node.cli("wallet", "balance", "--name", "bob").stdout.strip()
    assert text == f"{bob}  balance 250000  nonce 0"

    # The second payment takes the next nonce by itself.
    second_txid = node.cli("wallet", "send", "--name", "alice", "--to", bob, "--amount", "1000", "--fee", "700",
                           "--wait", "30").stdout.strip()
    assert node.client.tx(second_txid)["nonce"] == 1
    assert node.client.tx(first_txid)["nonce"] == 0
    assert balance(node, "alice") == (ALLOCATION - 251_000 - 2200, 2)
    assert balance(node, "bob") == (251_000, 0)
    # Mining rewards went to the node's default wallet, not to the payers.
    assert balance(node, "default")[0] > 0

    # Bob pays back: a wallet made by `wallet new` signs too.
    node.cli("wallet", "send", "--name", "bob", "--to", alice, "--amount", "1", "--fee", "10", "--wait", "30")
    assert balance(node, "bob") == (251_000 - 11, 1)


def test_send_to_a_mistyped_address_is_refused_before_anything_is_signed(nodes):
    node = nodes.start_node(NOT_MINING)
    good = address_to_text(B.address)
    typo = good[:-1] + ("a" if good[-1] != "a" else "b")
    result = node.cli("wallet", "send", "--to", typo, "--amount", "5", check=False)
    assert result.returncode != 0
    assert "checksum" in result.stderr or "address" in result.stderr
    assert "Traceback" not in result.stderr
    assert node.status()["mempool_size"] == 0


# --------------------------------------------------------------------------- invalid transactions


def submit(node: NodeProcess, raw: bytes) -> tuple[int, dict]:
    return node.http("POST", "/txs", json.dumps({"tx": raw.hex()}).encode(), {"Content-Type": "application/json"})


def error_of(response: tuple[int, dict]) -> tuple[int, str]:
    status, body = response
    return status, (body or {}).get("error", {}).get("code", repr(body))


def ledger_view(node: NodeProcess, *keys: SigningKey) -> tuple:
    """What a rejected transaction must not change."""
    status = node.status()
    accounts = tuple(node.client.account(address_to_text(k.address)) for k in keys)
    return status["height"], status["tip"], status["state_hash"], accounts


def test_invalid_transactions_get_their_codes_and_change_nothing(nodes):
    node = nodes.start_node(NOT_MINING)  # a still ledger: any change would be the submissions'
    network_id = bytes.fromhex(node.status()["network_id"])
    to = B.address

    def tx(key: SigningKey = A, *, nonce: int = 0, fee: int = 1000, amount: int = 5000, network: bytes = network_id):
        return sign_tx(key, network, nonce=nonce, fee=fee, recipient=to, amount=amount).raw

    before = ledger_view(node, A, B, FUNDED[2])
    good = tx()
    flipped_signature = bytearray(good)
    flipped_signature[-1] ^= 0x01
    flipped_amount = bytearray(good)
    flipped_amount[100] ^= 0x01  # inside the signed fields: the signature no longer matches
    other_network = bytes(32) if network_id != bytes(32) else b"\x01" * 32
    stranger = SigningKey.from_seed(b"\x07" * 32)

    cases = {
        "garbage hex": (bytes.fromhex("00ff00ff"), 400, "bad_encoding"),
        "truncated": (good[:-1], 400, "bad_encoding"),
        "trailing byte": (good + b"\x00", 400, "bad_encoding"),
        "flipped signature byte": (bytes(flipped_signature), 422, "bad_signature"),
        "flipped amount byte": (bytes(flipped_amount), 422, "bad_signature"),
        "signed for another network": (tx(network=other_network), 422, "bad_signature"),
        "nonce from the future": (tx(nonce=5), 422, "wrong_nonce"),
        "more than the balance": (tx(amount=ALLOCATION), 422, "insufficient_funds"),
        "amount plus fee above the balance": (tx(amount=ALLOCATION - 999), 422, "insufficient_funds"),
        "unfunded sender": (tx(stranger), 422, "insufficient_funds"),
        "fee below min_fee": (tx(fee=0), 422, "fee_too_low"),
    }
    for label, (raw, status, code) in cases.items():
        assert error_of(submit(node, raw)) == (status, code), label
    assert ledger_view(node, A, B, FUNDED[2]) == before
    assert node.status()["mempool_size"] == 0

    # A good one is accepted once; the same bytes again are a duplicate.
    status, body = submit(node, good)
    assert status == 200, body
    txid = body["id"]
    assert error_of(submit(node, good)) == (409, "duplicate")
    assert node.client.tx(txid)["status"] == "pending"
    # Its nonce is now taken in the pool: a different transaction with nonce 0 needs a higher fee.
    assert error_of(submit(node, tx(amount=6000))) == (422, "fee_too_low")
    assert node.client.account(address_to_text(A.address))["next_nonce"] == 1
    view = ledger_view(node, A, B, FUNDED[2])
    assert view[:3] == before[:3], "a pending transaction changed the confirmed state"
    assert node.status()["mempool_size"] == 1

    # Non-hex and non-JSON bodies are the request's fault, raw bytes are decoded as a transaction.
    assert error_of(node.http("POST", "/txs", b'{"tx": "zz"}', {"Content-Type": "application/json"})) == (
        400, "bad_request")
    assert error_of(node.http("POST", "/txs", b"\x00\x01garbage", {"Content-Type": "application/octet-stream"})) == (
        400, "bad_encoding")
    assert node.status()["mempool_size"] == 1


# --------------------------------------------------------------------------- the API


def test_bad_api_requests_get_json_errors_and_change_nothing(nodes):
    node = nodes.start_node(merge_config(NOT_MINING, {"api": {"max_body_bytes": 2048}}))
    before = node.status()
    json_type = {"Content-Type": "application/json"}
    cases = [
        ("GET", "/nope", None, {}, 404, "not_found"),
        ("GET", "/static/nope.js", None, {}, 404, "not_found"),  # GET / is the status page
        ("POST", "/", b"{}", json_type, 405, "method_not_allowed"),
        ("POST", "/metrics", b"{}", json_type, 405, "method_not_allowed"),
        ("GET", "/blocks/999999", None, {}, 404, "not_found"),
        ("GET", "/blocks/" + "ab" * 32, None, {}, 404, "not_found"),
        ("GET", "/blocks/xyz", None, {}, 400, "bad_request"),
        ("GET", "/blocks/" + "ab" * 31, None, {}, 400, "bad_request"),
        ("GET", "/txs/abc", None, {}, 400, "bad_request"),
        ("GET", "/txs/" + "cd" * 32, None, {}, 404, "not_found"),
        ("GET", "/accounts/nobody", None, {}, 400, "bad_address"),
        ("GET", "/txs", None, {}, 405, "method_not_allowed"),
        ("GET", "/" + "a" * 600, None, {}, 414, "bad_request"),
        ("POST", "/status", b"{}", json_type, 405, "method_not_allowed"),
        ("POST", "/blocks/1", b"{}", json_type, 405, "method_not_allowed"),
        ("PUT", "/txs", b"{}", json_type, 405, "method_not_allowed"),
        ("DELETE", "/status", None, {}, 405, "method_not_allowed"),
        ("POST", "/txs", b"x" * 2049, json_type, 413, "body_too_large"),
        ("POST", "/txs", b"x" * 2048, json_type, 400, "bad_request"),  # at the limit: read, then refused as JSON
        ("POST", "/txs", None, {"Content-Length": "1000000000"}, 413, "body_too_large"),
        ("POST", "/txs", b'{"transaction": "00"}', json_type, 400, "bad_request"),
        ("POST", "/txs", b"[1, 2]", json_type, 400, "bad_request"),
        ("POST", "/txs", b"{not json", json_type, 400, "bad_request"),
        ("POST", "/txs", None, {}, 411, "bad_request"),
    ]
    for method, path, body, headers, status, code in cases:
        got = error_of(node.http(method, path, body, headers))
        assert got == (status, code), f"{method} {path[:40]} {body[:20] if body else body}: {got}"
    got = error_of(node.http("POST", "/txs", b'{"tx": "00"}', json_type, content_length=False))
    assert got == (411, "bad_request"), got
    for method in ("PATCH", "OPTIONS", "BREW"):
        assert error_of(node.http(method, "/status")) == (405, "method_not_allowed"), method
    assert node.http("HEAD", "/status") == (405, None)  # a HEAD answer has no body

    # What http.server itself refuses is JSON too.
    for request, status in [
        (b"GARBAGE\r\n\r\n", None),  # not even a request line (answered as HTTP/0.9: no status line)
        (b"GET /status HTTP/1.1\r\nX: " + b"a" * 70_000 + b"\r\n\r\n", 431),
        (b"GET /status HTTP/1.1\r\n" + b"X: a\r\n" * 200 + b"\r\n", 431),
    ]:
        head, body = raw_exchange(node, request)
        assert status is None or head.startswith(f"HTTP/1.1 {status} "), head
        assert json.loads(body)["error"]["code"] == "bad_request", body

    # A body refused before it was read closes the connection: on a kept-alive one, its
    # bytes would otherwise be taken for the next request.
    for refused in (
        b"POST /txs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"POST /status HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
        b"POST /txs HTTP/1.1\r\nHost: x\r\nContent-Length: 2049\r\n\r\n" + b"x" * 2049,
    ):
        head, body = raw_exchange(node, refused + b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
        assert "Connection: close" in head and body.count("{") == 2, (head, body)  # one error, nothing after
    # A body that was read leaves the connection usable.
    head, body = raw_exchange(node, b"POST /txs HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
                                    b"GET /peers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert body.endswith("[]"), body

    after = node.status()
    for field in ("height", "tip", "state_hash", "mempool_size", "mempool_bytes"):
        assert after[field] == before[field], field
    node.stop()  # and it is still a healthy node that stops cleanly


def raw_exchange(node: NodeProcess, request: bytes) -> tuple[str, str]:
    """Send raw bytes to the API; answers (head, body) of everything it sent back until it closed."""
    with socket.create_connection(node.api_address, timeout=10) as s:
        s.sendall(request)
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except ConnectionResetError:  # closed with our unread bytes in its buffer: keep what came first
            if not data:
                raise
    head, _, body = data.decode(errors="replace").partition("\r\n\r\n")
    return (head, body) if head.startswith("HTTP/") else ("", data.decode(errors="replace"))


def merge_config(*parts: dict) -> dict:
    out: dict = {}
    for part in parts:
        for section, values in part.items():
            out.setdefault(section, {}).update(values)
    return out


def test_api_lookups_return_blocks_transactions_and_accounts(nodes):
    node = nodes.start_node()
    status = node.status()
    for field in ("network_id", "height", "tip", "peers", "syncing", "mempool_size", "state_hash"):
        assert field in status, field
    assert status["peers"] == 0 and status["syncing"] is False and node.client.peers() == []

    network_id = bytes.fromhex(status["network_id"])
    tx = sign_tx(A, network_id, nonce=0, fee=2500, recipient=B.address, amount=777)
    txid = node.client.submit(tx.raw)
    assert txid == tx.id.hex()
    confirmed = wait_confirmed(node, txid)
    assert confirmed["from"] == address_to_text(A.address)
    assert confirmed["to"] == address_to_text(B.address)
    assert (confirmed["amount"], confirmed["fee"], confirmed["nonce"], confirmed["kind"]) == (777, 2500, 0, 0)
    assert confirmed["confirmations"] >= 1

    height = confirmed["height"]
    by_height = node.client.block(height)
    by_hash = node.client.block(confirmed["block_hash"])
    assert by_height["hash"] == by_hash["hash"] == confirmed["block_hash"]
    assert by_height["height"] == height
    assert txid in [t["id"] for t in by_height["txs"]]
    assert by_hash["confirmations"] >= 1
    assert by_height["prev_hash"] == node.client.block(height - 1)["hash"]
    assert by_height["producer"] == node.wallet_address("default")

    genesis = node.client.block(0)
    assert genesis["height"] == 0 and genesis["prev_hash"] == "00" * 32 and genesis["txs"] == []
    tip = node.status()
    assert node.client.block(tip["tip"])["height"] >= tip["height"]  # the tip may move on meanwhile

    sender = node.client.account(address_to_text(A.address))
    assert (sender["balance"], sender["nonce"], sender["next_nonce"]) == (ALLOCATION - 777 - 2500, 1, 1)
    recipient = node.client.account(address_to_text(B.address))
    assert (recipient["balance"], recipient["nonce"]) == (ALLOCATION + 777, 0)
    nobody = address_to_text(SigningKey.from_seed(b"\x09" * 32).address)
    assert node.client.account(nobody) == {
        "address": nobody, "balance": 0, "nonce": 0, "stake": 0, "unbonding": 0, "unbonding_height": 0,
        "next_nonce": 0,
    }


# --------------------------------------------------------------------------- bad configuration


def _typo(address: str) -> str:
    """One character changed: a checksum failure, the usual copy-paste accident."""
    middle = len(address) // 2
    return address[:middle] + ("b" if address[middle] != "b" else "c") + address[middle + 1 :]


BAD_CONFIGS = {
    # label: (how to spoil the node TOML or genesis, words the one-line message must contain)
    "syntax error": ("node", lambda cfg: toml_text(cfg) + "\n[producer\nworkers = 2\n", ["line"]),
    "unknown key": ("node", lambda cfg: toml_text(_with(cfg, "producer", "wrokers", 2)), ["[producer] wrokers",
                                                                                         "unknown key"]),
    "wrong type": ("node", lambda cfg: toml_text(_with(cfg, "storage", "map_size_mb", "big")),
                   ["[storage] map_size_mb", "integer"]),
    "mistyped reward address": (
        "node",
        lambda cfg: toml_text(_with(cfg, "producer", "reward_address", _typo(address_to_text(A.address)))),
        ["[producer] reward_address", "mistyped"],
    ),
    "mistyped genesis allocation": ("genesis", None, ["[[allocations]] entry", "address"]),
}


def _with(cfg: dict, section: str, key: str, value) -> dict:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in cfg.items()}
    out.setdefault(section, {})[key] = value
    return out


@pytest.mark.parametrize("label", list(BAD_CONFIGS))
def test_bad_config_files_are_refused_in_one_line_and_nothing_is_created(nodes, label):
    where, spoil, words = BAD_CONFIGS[label]
    node = nodes.add_node()
    if where == "node":
        node.config_path.write_text(spoil(node.config))
        bad_file = node.config_path
    else:
        genesis = nodes.genesis_path.read_text()
        good = address_to_text(A.address)
        nodes.genesis_path.write_text(genesis.replace(good, _typo(good)))
        bad_file = nodes.genesis_path
    before = sorted(p.name for p in node.dir.iterdir())

    for args in (["config", "check", str(node.config_path)], ["run", "--config", str(node.config_path)],
                 ["init", "--config", str(node.config_path)]):
        started = time.monotonic()
        result = peerledger(*args, cwd=node.dir, timeout=CLI_TIMEOUT_S)
        assert result.returncode == 2, (args, result.returncode, result.stderr)
        assert time.monotonic() - started < 15
        message = result.stderr.strip()
        assert "Traceback" not in result.stderr
        assert len(message.splitlines()) == 1, message
        assert str(bad_file) in message, message
        for word in words:
            assert word in message, (word, message)
        assert result.stdout == ""
        assert not node.data_dir.exists(), f"`peerledger {args[0]}` created {node.data_dir}"
        assert sorted(p.name for p in node.dir.iterdir()) == before


def test_config_check_accepts_a_good_file(nodes):
    node = nodes.add_node()
    result = peerledger("config", "check", str(node.config_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{node.config_path}: ok (network peerledger-e2e, consensus pow")
    assert not node.data_dir.exists()


# --------------------------------------------------------------------------- one data dir, one node


def test_a_second_node_on_the_same_data_dir_fails_fast_and_the_first_keeps_running(nodes):
    first = nodes.start_node()
    first.wait_for_height(1)
    second = nodes.add_node({"node": {"data_dir": str(first.data_dir)}})
    started = time.monotonic()
    result = second.cli("run", check=False, timeout=30)
    elapsed = time.monotonic() - started
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert elapsed < 10, f"took {elapsed:.1f} s to fail"
    assert "in use by another peerledger process" in result.stderr, result.stderr
    assert f"(pid {first.pid})" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr

    height = first.height()
    first.wait_for_height(height + 2)  # still mining, its store untouched
    assert first.stop() == 0
    # Once the first has stopped, the directory is free again.
    second.start()
    assert second.height() >= height + 2


def test_a_peer_port_taken_by_another_program_fails_in_one_line(nodes):
    node = nodes.add_node(P2P)
    node.cli("init")
    host, port = node.listen_address
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind((host, port))
        squatter.listen()
        result = node.cli("run", check=False, timeout=30)
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert f"cannot listen on {host}:{port}" in result.stderr, result.stderr
    assert "Address already in use" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr


# --------------------------------------------------------------------------- stopping


@pytest.mark.parametrize(
    "sig, to_group",
    [
        (signal.SIGINT, True),  # Ctrl-C in a terminal: the whole foreground process group
        (signal.SIGTERM, False),  # kill PID, or a service manager that signals the main process
        (signal.SIGTERM, True),  # systemd's default KillMode=control-group: every process
        (signal.SIGINT, False),
    ],
    ids=["SIGINT-group", "SIGTERM", "SIGTERM-group", "SIGINT"],
)
def test_signals_stop_a_mining_node_cleanly(nodes, sig, to_group):
    # Both worker pools run: mining, and signature checks (every batch goes to the pool).
    node = nodes.start_node({"validation": {"workers": 1, "batch_min": 1}})
    network_id = bytes.fromhex(node.status()["network_id"])
    node.client.submit(sign_tx(A, network_id, nonce=0, fee=1000, recipient=B.address, amount=5).raw)
    node.wait_for_height(2)
    # a mining worker and a validation worker
    workers = wait_until(lambda: len(children_of(node.pid)) >= 2 and children_of(node.pid), 10,
                         message="the node's worker processes")
    started = time.monotonic()
    if to_group:
        os.killpg(node.pid, sig)
        code = node.proc.wait(10)
        node.assert_nothing_left()
    else:
        code = node.stop(sig)
    elapsed = time.monotonic() - started
    assert code == 0, node.describe()
    assert elapsed < 5, f"stopped in {elapsed:.1f} s"
    log = node.log_text()
    assert f"received {signal.Signals(sig).name}" in log
    assert "Traceback" not in log
    assert "abandoning" not in log, node.describe()  # every actor stopped in time
    still_alive = [pid for pid, _ in session_processes(node.pid) if pid in workers]
    assert not still_alive, f"workers {still_alive} outlived the node"
    # And it starts again where it was.
    node.start()
    assert node.height() >= 2

