"""The notifications PUB socket of a real transport: frames, sequences, bounds, binding."""

from __future__ import annotations

import socket
import time

import pytest
import zmq

from tests.transport.helpers import wait_until
from transport.loop import TransportError


@pytest.fixture
def subscriber():
    """subscriber(port) -> a SUB socket connected to 127.0.0.1:port and subscribed to everything."""
    ctx = zmq.Context()
    sockets = []

    def make(port: int) -> zmq.Socket:
        sub = ctx.socket(zmq.SUB)
        sub.linger = 0
        sub.rcvtimeo = 5000
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(f"tcp://127.0.0.1:{port}")
        sockets.append(sub)
        return sub

    yield make
    for sub in sockets:
        sub.close(linger=0)
    ctx.term()


def joined(transport, sub: zmq.Socket) -> None:
    """Publish probes until the subscriber gets one (zmq drops what a PUB sends before the
    subscription reaches it), then drain."""
    def got_probe() -> bool:
        transport.publish(b"probe", b"")
        try:
            return sub.recv_multipart(zmq.NOBLOCK)[0] == b"probe"
        except zmq.Again:
            return False

    wait_until(got_probe, what="the subscription to reach the publisher")
    time.sleep(0.05)
    while True:
        try:
            sub.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return


def receive(sub: zmq.Socket, topic: bytes | None):
    """The next message on `topic` (others skipped): (body, sequence); with topic None, the
    next message whatever its topic: (topic, body, sequence)."""
    while True:
        frames = sub.recv_multipart()
        assert len(frames) == 3, frames
        assert len(frames[2]) == 8
        sequence = int.from_bytes(frames[2], "little")
        if topic is None:
            return frames[0], frames[1], sequence
        if frames[0] == topic:
            return frames[1], sequence


def test_three_frames_and_one_sequence_per_topic_from_zero(make_node, subscriber):
    node = make_node(publish_listen=("127.0.0.1", 0))
    port = node.transport.publish_port
    assert port
    sub = subscriber(port)
    joined(node.transport, sub)
    for i in range(5):
        assert node.transport.publish(b"block", f"b{i}".encode())
        assert node.transport.publish(b"tx", f"t{i}".encode())
    frames = [receive(sub, None) for _ in range(10)]
    assert [(t, body, seq) for t, body, seq in frames if t == b"block"] == [(b"block", f"b{i}".encode(), i) for i in range(5)]
    assert [(t, body, seq) for t, body, seq in frames if t == b"tx"] == [(b"tx", f"t{i}".encode(), i) for i in range(5)]
    # the loop counts a frame just after sending it
    def counted() -> bool:
        published = node.transport.stats().published
        return published.get("block") == 5 and published.get("tx") == 5

    wait_until(counted, what="five blocks and five txs counted as published")


def test_a_full_queue_drops_counts_and_leaves_a_gap(make_node, subscriber):
    node = make_node(publish_listen=("127.0.0.1", 0), publish_queue_size=3, start=False)
    results = [node.transport.publish(b"tx", b"early") for _ in range(5)]  # the loop is not running yet
    assert results == [True, True, True, False, False]
    assert node.transport.stats().drops["publish_queue_full"] == 2
    node.transport.start()
    sub = subscriber(node.transport.publish_port)
    joined(node.transport, sub)
    assert node.transport.publish(b"tx", b"late")
    assert receive(sub, b"tx") == (b"late", 5)  # 3 and 4 were dropped: the subscriber sees the gap


def test_without_notifications_nothing_is_published(make_node):
    node = make_node()
    assert node.transport.publish_port is None
    assert node.transport.publish(b"block", b"x") is False


def test_publish_bind_conflict_names_the_address(make_node):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        with pytest.raises(TransportError, match=f"cannot publish notifications on 127.0.0.1:{port}"):
            make_node(publish_listen=("127.0.0.1", port))
    finally:
        taken.close()
