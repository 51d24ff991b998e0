"""Notifications of a real node to a real zmq subscriber, as configs/subscriber_example.py reads them.

A subscriber connected to a mining node that takes transfers gets every block (height by
height, each the block the API shows) and every accepted transaction (in the order they
were submitted), with gap-free sequence numbers per topic. When the node restarts, its
sequences start again at 0, and the example's gap check says so.
"""

from __future__ import annotations

import importlib.util
import json
import select
import subprocess
import sys
import time

import pytest
import zmq

from tests.helpers import wait_until
from tests.nodes import REPO_ROOT, free_ports

EXAMPLE = REPO_ROOT / "configs" / "subscriber_example.py"
TRANSFERS = 20


def load_example():
    spec = importlib.util.spec_from_file_location("subscriber_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Subscriber:
    """A SUB socket and what it received, checked with the example's gap logic."""

    def __init__(self, port: int, gap) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.linger = 0
        for topic in (b"block", b"tx", b"reorg"):
            self.sock.setsockopt(zmq.SUBSCRIBE, topic)
        self.sock.connect(f"tcp://127.0.0.1:{port}")
        self.gap = gap
        self.last: dict[bytes, int] = {}
        self.received: list[tuple[str, dict, int, str | None]] = []  # topic, body, sequence, gap verdict

    def pump(self, timeout: float = 0.05) -> None:
        """Take every message waiting (or arriving within `timeout`)."""
        while self.sock.poll(int(timeout * 1000)):
            frames = self.sock.recv_multipart()
            assert len(frames) == 3 and len(frames[2]) == 8, frames
            topic, body, raw_sequence = frames
            sequence = int.from_bytes(raw_sequence, "little")
            verdict = self.gap(self.last, topic, sequence)
            self.received.append((topic.decode(), json.loads(body), sequence, verdict))
            timeout = 0

    def wait_for(self, predicate, timeout: float, message: str):
        def check():
            self.pump()
            return predicate()

        return wait_until(check, timeout, interval=0, message=message)

    def of(self, topic: str, since: int = 0) -> list[tuple[dict, int, str | None]]:
        return [(body, seq, verdict) for t, body, seq, verdict in self.received[since:] if t == topic]

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


@pytest.fixture
def example():
    return load_example()


def test_subscriber_gets_every_block_and_tx_in_order_and_sees_the_restart(nodes, example):
    (port,) = free_ports(1)
    node = nodes.add_node({"network": {"enabled": True}, "notifications": {"enabled": True, "listen": f"127.0.0.1:{port}"}})
    node.init()
    node.start()
    sub = Subscriber(port, example.gap)
    try:
        # zmq drops what a PUB sends before a subscription reaches it: wait for a first block.
        sub.wait_for(lambda: sub.of("block"), 30, "a first block notification")

        submitted = []
        for nonce in range(TRANSFERS):
            submitted.append(node.submit(nodes.transfer(0, nonce, amount=1000 + nonce)))
            sub.pump(0.02)
        nodes.wait_confirmed([node], submitted[-1], 60)
        final = node.status()
        sub.wait_for(lambda: sub.of("block") and sub.of("block")[-1][0]["height"] >= final["height"], 20,
                     f"block notifications up to height {final['height']}")
        sub.wait_for(lambda: len(sub.of("tx")) >= TRANSFERS, 20, "every transaction's notification")
        # Enough blocks that the restarted node's first ones cannot pass for the next ones.
        sub.wait_for(lambda: len(sub.of("block")) >= 10, 30, "ten block notifications")

        # Every tx, in the order submitted, sequence 0, 1, 2... (the subscriber was there first).
        txs = sub.of("tx")
        assert [body["id"] for body, _, _ in txs] == submitted
        assert [seq for _, seq, _ in txs] == list(range(TRANSFERS))
        assert all(body["fee"] == 1000 and body["size"] > 0 for body, _, _ in txs)
        # Every block from the first seen on, height by height, with gap-free sequences.
        blocks = sub.of("block")
        assert all(verdict is None for _, _, verdict in blocks + txs), sub.received
        first_seq = blocks[0][1]
        assert [seq for _, seq, _ in blocks] == list(range(first_seq, first_seq + len(blocks)))
        heights = [body["height"] for body, _, _ in blocks]
        assert heights == list(range(heights[0], heights[0] + len(blocks))), heights
        assert not sub.of("reorg"), "a lone node never reorganises"
        for body, _, _ in blocks[-12:]:  # each is the block the API shows at that height
            shown = node.client.block(body["height"])
            assert (shown["hash"], shown["prev_hash"], len(shown["txs"]), shown["timestamp_ms"]) == (
                body["hash"], body["prev_hash"], body["tx_count"], body["timestamp_ms"])
        confirmed = {tx["id"] for body, _, _ in blocks for tx in node.client.block(body["height"])["txs"]}
        assert set(submitted) <= confirmed, "a confirmed transaction is in a block that was not notified"
        assert len(blocks) >= 3

        # Restart: the sequences start again at 0, and the example's check says "restart".
        assert node.stop() == 0
        quiet = time.monotonic()
        while time.monotonic() - quiet < 1.0:  # what the node published before it stopped, all of it
            count = len(sub.received)
            sub.pump(0.1)
            if len(sub.received) != count:
                quiet = time.monotonic()
        blocks = sub.of("block")
        assert all(verdict is None for _, _, verdict in blocks), blocks
        before = len(sub.received)
        last_block_seq = blocks[-1][1]
        node.start()
        sub.wait_for(lambda: sub.of("block", before), 30, "a block notification after the restart")
        after_blocks = sub.of("block", before)
        assert after_blocks[0][1] < last_block_seq + 1 and after_blocks[0][2] == "restart", after_blocks[0]
        txid = node.submit(nodes.transfer(1, 0))
        sub.wait_for(lambda: sub.of("tx", before), 20, "a tx notification after the restart")
        (body, seq, verdict), *_ = sub.of("tx", before)
        assert (body["id"], seq, verdict) == (txid, 0, "restart")
    finally:
        sub.close()
    metrics = node.http("GET", "/metrics")[1]
    assert 'peerledger_notifications_total{topic="tx"} 1' in metrics  # counted since the restart
    print(f"\nnotifications: {len(blocks)} blocks and {len(txs)} txs in order before the restart, "
          f"then block seq {after_blocks[0][1]} and tx seq 0 seen as a restart")


def test_example_gap_logic():
    gap = load_example().gap
    last: dict[bytes, int] = {}
    assert [gap(last, b"block", s) for s in (4, 5, 6)] == [None, None, None]  # joined late: fine
    assert gap(last, b"tx", 0) is None  # topics count apart
    assert gap(last, b"block", 9) == "lost 2"
    assert gap(last, b"block", 10) is None
    assert gap(last, b"block", 0) == "restart"
    assert gap(last, b"block", 1) is None


def test_example_script_runs_and_prints_a_block(nodes):
    """The example as a user runs it: `python configs/subscriber_example.py host:port`."""
    (port,) = free_ports(1)
    node = nodes.add_node({"network": {"enabled": True}, "notifications": {"enabled": True, "listen": f"127.0.0.1:{port}"}})
    node.init()
    node.start()
    proc = subprocess.Popen([sys.executable, str(EXAMPLE), f"127.0.0.1:{port}"], stdout=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 30)  # mining is on: a block comes
        assert ready, "the example printed nothing within 30 s"
        topic, body = proc.stdout.readline().split(" ", 1)
        assert topic == "block" and json.loads(body)["height"] >= 1, (topic, body)
    finally:
        proc.kill()
        proc.wait(5)
