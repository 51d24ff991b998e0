"""Notifications of a real in-process node (real store, actors, transport and PUB socket)
through a reorganisation: the reorg message, then the blocks of the new branch, each topic
with its own gap-free sequence; and the reorg counted for the metrics."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import zmq

from actors.messages import BlockReceived
from actors.node import Node
from chain.block import Block
from tests.actors.test_node import MINER, PARAMS, WAIT_S, node_settings
from tests.chainbuilder import ChainBuilder, key
from tests.helpers import wait_until
from transport.keys import generate_node_keypair

LOOPBACK_ANY_PORT = "127.0.0.1:0"


@pytest.fixture
def node(tmp_path: Path):
    """A node with the network on (no peers) and notifications, both on free loopback ports."""
    settings = node_settings(tmp_path, "node", producer=False, sections={
        "network": {"enabled": True, "listen": LOOPBACK_ANY_PORT},
        "notifications": {"enabled": True, "listen": LOOPBACK_ANY_PORT},
    })
    node = Node(settings, PARAMS, reward_address=MINER, node_keys=generate_node_keypair())
    try:
        node.start()
        yield node
    finally:
        node.stop()


@pytest.fixture
def sub_socket():
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.linger = 0
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    yield sock
    sock.close(linger=0)
    ctx.term()


def test_a_reorganisation_is_published_before_the_blocks_of_the_new_branch(node: Node, sub_socket: zmq.Socket) -> None:
    assert node.transport is not None and node.transport.publish_port
    sub_socket.connect(f"tcp://127.0.0.1:{node.transport.publish_port}")

    def probe() -> bool:  # until the subscription has reached the PUB socket
        node.transport.publish(b"probe", b"")
        return sub_socket.poll(20) and sub_socket.recv_multipart()[0] == b"probe"

    wait_until(probe, WAIT_S, interval=0, message="the subscriber to join")
    time.sleep(0.1)
    while sub_socket.poll(0):
        sub_socket.recv_multipart()

    builder = ChainBuilder(PARAMS)

    def feed(*blocks: Block) -> None:
        for block in blocks:
            node.refs.validation.tell(BlockReceived(block.raw, b"peer-1"))
        wait_until(lambda: node.store.tip().hash == blocks[-1].hash, WAIT_S, message="the blocks to connect")

    pay = builder.transfer(0, 1, 100, nonce=0, fee=2)
    node.submit_tx(pay.raw)
    a1 = builder.mine([pay])
    a2 = builder.mine()
    feed(a1, a2)
    other = key(9).address
    b = [builder.mine(parent=builder.genesis.hash, producer=other)]
    for _ in range(2):
        b.append(builder.mine(parent=b[-1].hash, producer=other))
    feed(*b)

    got = []
    deadline = time.monotonic() + WAIT_S
    while len(got) < 7 and time.monotonic() < deadline:
        if sub_socket.poll(100):
            topic, body, sequence = sub_socket.recv_multipart()
            if topic != b"probe":
                got.append((topic.decode(), json.loads(body), int.from_bytes(sequence, "little")))
    assert [(topic, seq) for topic, _, seq in got] == [
        ("tx", 0), ("block", 0), ("block", 1), ("reorg", 0), ("block", 2), ("block", 3), ("block", 4)
    ], got
    assert got[0][1] == {"id": pay.id.hex(), "fee": 2, "size": pay.size}
    assert [body["hash"] for topic, body, _ in got if topic == "block"] == [x.hash.hex() for x in (a1, a2, *b)]
    assert got[1][1] == {"hash": a1.hash.hex(), "height": 1, "prev_hash": builder.genesis.hash.hex(),
                         "timestamp_ms": a1.header.timestamp_ms, "tx_count": 1, "size": a1.size}
    assert got[3][1] == {
        "old_tip": a2.hash.hex(), "old_height": 2, "new_tip": b[2].hash.hex(), "new_height": 3, "depth": 2,
        "disconnected": [a2.hash.hex(), a1.hash.hex()], "connected": [x.hash.hex() for x in b],
    }

    stats = node.actor_stats()
    assert stats["storage"]["reorgs"] == 1 and stats["storage"]["blocks_disconnected"] == 2
    assert stats["storage"]["reorg_depth"]["count"] == 1 and stats["storage"]["reorg_depth"]["sum"] == 2
    assert stats["notifier"] == {"published": {"tx": 1, "block": 5, "reorg": 1}, "dropped": 0}
    assert all(figures is not None for figures in stats.values()), stats

