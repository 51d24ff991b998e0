"""Fixtures that start real transports on 127.0.0.1 and always stop them, even on failure."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import pytest

from tests.transport.helpers import EventLog
from transport.keys import generate_node_keypair
from transport.loop import Transport

MAGIC = bytes.fromhex("5eed0001")
STOP_TIMEOUT = 2.0

# Fast timers so link loss and reconnects show within a test's patience.
FAST = dict(
    heartbeat_ivl_ms=200,
    heartbeat_timeout_ms=1000,
    heartbeat_ttl_ms=1000,
    reconnect_ivl_ms=50,
    reconnect_ivl_max_ms=200,
)


@dataclass
class Node:
    transport: Transport
    log: EventLog
    public: bytes
    secret: bytes

    @property
    def port(self) -> int:
        return self.transport.bound_port

    def dial(self, other: Node) -> bool:
        return self.transport.dial(other.public, "127.0.0.1", other.port)


@pytest.fixture
def make_node():
    """make_node(keypair=None, port=0, start=True, **transport_options) -> Node."""
    nodes: list[Node] = []
    before = set(threading.enumerate())

    def make(keypair=None, port=0, start=True, **options) -> Node:
        public, secret = keypair or generate_node_keypair()
        log = EventLog()
        settings = dict(FAST, network_magic=MAGIC, host="127.0.0.1", port=port)
        settings.update(options)
        transport = Transport(public_key=public, secret_key=secret, on_event=log, **settings)
        node = Node(transport, log, public, secret)
        nodes.append(node)
        if start:
            transport.start()
        return node

    yield make
    stopped = [node.transport.stop(STOP_TIMEOUT) for node in nodes]
    assert all(stopped), "a transport did not stop within its timeout"
    leaked = [t for t in set(threading.enumerate()) - before if t.is_alive()]
    assert not leaked, f"threads left behind: {leaked}"
