"""The operator's commands against real nodes: `status` (one screen, live with --watch),
`peers` (a table), `config check` (its warnings); and how the screens render states that
are hard to hold still on a live node (catching up, bans).
"""

from __future__ import annotations

import json
import queue
import re
import signal
import subprocess
import threading
import time

from peerledger import console
from tests.nodes import P2P, PYTHON, merge


def fields(screen: str) -> dict[str, str]:
    """`label  value` lines of a screen, by label."""
    return dict(line.split(None, 1) for line in screen.splitlines() if line.strip())


def test_status_and_peers_describe_a_two_node_network(nodes):
    miner, follower = nodes.add_nodes(2, merge(P2P, {"producer": {"enabled": False}}), topology="mesh")
    miner.config = merge(miner.config, {"producer": {"enabled": True}})
    miner.write_config()
    nodes.start(miner, follower)
    nodes.wait_ready_peers(follower, [miner])
    nodes.wait_ready_peers(miner, [follower])
    common = nodes.wait_converged([miner, follower], 60, min_height=3)

    shown = fields(follower.cli("status").stdout)
    assert int(shown["height"]) >= common["height"]
    assert shown["sync"] == "in sync with its peers", shown
    assert shown["peers"] == "1 connected (1 out, 0 in)", shown
    assert shown["producing"] == "no (following only)"
    assert shown["mempool"] == "0 txs, 0 B"
    assert re.fullmatch(r"[+-]\d+ ms .*", shown["clock"].removeprefix("offset ")), shown["clock"]
    assert re.match(r"\d+ hashes/s, \d+ blocks", fields(miner.cli("status").stdout)["producing"])
    status = json.loads(follower.cli("status", "--json").stdout)
    assert status["best_header_height"] >= common["height"] and status["best_peer_height"] is not None

    table = follower.cli("peers").stdout.splitlines()
    assert table[0].split() == ["NODE", "ID", "ADDRESS", "DIR", "READY", "HEIGHT", "LATENCY", "SCORE", "BAN"]
    (row,) = [line for line in table[1:] if line.startswith(miner.node_id[:16])]
    cells = row.split()
    assert cells[1] == miner.listen and cells[2:4] == ["out", "yes"], row
    assert cells[-2:] == ["0", "-"], row  # no misbehaviour, no ban
    (inbound,) = [line for line in miner.cli("peers").stdout.splitlines() if line.startswith(follower.node_id[:16])]
    assert inbound.split()[2] == "in", inbound
    assert {p["node_id"] for p in json.loads(follower.cli("peers", "--json").stdout)} == {miner.node_id}


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def test_status_watch_redraws_until_ctrl_c(nodes):
    node = nodes.start_node()
    watch = subprocess.Popen([PYTHON, "-m", "peerledger", "status", "--watch", "0.2", "--config", str(node.config_path)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                             # as from a terminal: SIGINT with its default action and not
                             # blocked, whatever the test process had (an ignored or blocked
                             # SIGINT is inherited, and Python then never raises KeyboardInterrupt)
                             preexec_fn=_default_sigint)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in watch.stdout], daemon=True).start()
    screens, deadline = 0, time.monotonic() + 30
    try:
        while screens < 3 and time.monotonic() < deadline:  # every screen is flushed as drawn
            try:
                screens += lines.get(timeout=max(0.01, deadline - time.monotonic())).startswith("height ")
            except queue.Empty:
                break
        watch.send_signal(signal.SIGINT)
        try:
            watch.wait(10)
        except subprocess.TimeoutExpired:  # say what it had done (two clean-clone CI runs saw this)
            watch.kill()
            watch.wait(5)
            raise AssertionError(f"no exit 10 s after Ctrl-C; {screens} screens drawn; "
                                 f"stderr: {watch.stderr.read()[-2000:]}") from None
        err = watch.stderr.read()
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait(5)
    assert screens == 3, f"{screens} screens; stderr: {err}"
    assert watch.returncode == 0, err
    assert "Traceback" not in err, err


def test_config_check_warns_about_a_cluster_that_cannot_connect(nodes):
    node = nodes.add_node()
    node.cli("init", "--keys-only")
    other = "ab" * 32
    node.config = merge(node.config, {
        "network": {"enabled": True, "seeds": [f"{'cd' * 32}@127.0.0.1:9999"], "allow_list": [other]},
        "api": {"listen": "0.0.0.0:0"},
    })
    node.write_config()
    result = node.cli("config", "check")
    assert result.returncode == 0 and ": ok (network" in result.stdout
    warnings = result.stderr.splitlines()
    assert any("seeds" in w and "not in allow_list" in w for w in warnings), warnings
    assert any("own id" in w and node.node_id[:16] in w for w in warnings), warnings
    assert any("[api] listen" in w and "other machines" in w for w in warnings), warnings
    assert all(w.startswith("warning: ") for w in warnings), warnings


# --------------------------------------------------------------------------- screens


STATUS = {
    "network": "field-cluster", "consensus": "pos", "network_id": "ab" * 32, "node_id": "cd" * 32,
    "name": "pi3", "version": "0.1.0", "height": 250, "tip": "00" * 32, "tip_time_ms": 1_000_000,
    "state_hash": "ef" * 32, "tx_count": 12, "peers": 2, "syncing": True, "best_header_height": 1000,
    "best_peer_height": 990, "mempool_size": 3, "mempool_bytes": 3 * 1024, "clock_offset_ms": -120,
    "producing": True, "hash_rate": 0, "blocks_produced": 4,
}
PEERS = [
    {"node_id": "11" * 32, "address": "192.168.1.11:9700", "direction": "outbound", "ready": True, "height": 990,
     "latency_ms": 3.2, "score": 0},
    {"node_id": "22" * 32, "address": "192.168.1.12:9700", "direction": "inbound", "ready": True, "height": 985,
     "latency_ms": None, "score": 20},
    {"node_id": "33" * 32, "banned_until_ms": 1_000_000 + 42 * 60_000, "ready": False},
]


def test_the_status_screen_shows_catching_up_with_a_progress_bar():
    shown = fields(console.status_screen(STATUS, PEERS, now_ms=1_065_000))
    assert shown["sync"] == f"catching up {console.bar(250, 1000)}  250/1000, 750 blocks to go"
    assert "[" + "#" * 8 + "-" * 22 + "]  25.0%" in shown["sync"]
    assert shown["peers"] == "2 connected (1 out, 1 in), 1 banned"
    assert shown["tip"].endswith("(made 1 min 5 s ago)")
    assert shown["mempool"] == "3 txs, 3.0 KiB"
    assert shown["clock"].startswith("offset -120 ms")
    assert shown["producing"] == "staking, 4 blocks since start"
    in_sync = dict(STATUS, height=1000, syncing=False)
    assert fields(console.status_screen(in_sync, PEERS, 1_000_000))["sync"] == "in sync with its peers"


def test_the_peers_table_lists_sessions_then_bans():
    lines = console.peers_table(PEERS, now_ms=1_000_000).splitlines()
    assert [line.split()[0] for line in lines[1:]] == ["1111111111111111", "2222222222222222", "3333333333333333"]
    assert lines[1].split()[2:] == ["out", "yes", "990", "3", "ms", "0", "-"]
    assert lines[2].split()[2:] == ["in", "yes", "985", "-", "20", "-"]
    assert lines[3].split()[1:] == ["-", "-", "no", "-", "-", "-", "banned", "42", "min", "0", "s"]
    assert console.peers_table([], 0) == "no peers"
