"""A hostile peer for multi-node scenarios: pyzmq directly, no peerledger transport.

`HostileClient` is a CURVE DEALER with its own keypair (or a stolen one: any keypair it is
given) that dials a real node the way a node does - routing id = its public key - and
then sends whatever the test wants: well-formed messages encoded with the real wire codec
(transport.messages), or frames that break it. It answers the node's PINGs while it waits
for something, so that it is judged on what it sends, not dropped for being silent.

The `frames` helpers build the broken frames, and `blocks` the invalid blocks (bad proof
of work, a bad signature inside an otherwise valid block) a hostile node would offer.
`connect` dials a victim node, `join` dials it and completes the handshake,
`offer_block` hands it a block the way a peer does (INV, GETDATA, BLOCK), and `peer_entry`,
`score_of` and `scored_or_banned` read what the victim holds against a client (GET /peers).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import zmq
from zmq.utils.monitor import recv_monitor_message

from chain.block import HEADER_VERSION, Block, Header, merkle_root
from chain.consensus import HeaderContext
from chain.keys import ZERO_ADDRESS
from chain.params import ChainParams, genesis_header
from chain.pow import ProofOfWork, meets_target, nonce_proof, search_nonce
from chain.tx import Transaction
from transport.keys import generate_node_keypair, tcp_endpoint
from transport.messages import (
    PROTOCOL_VERSION,
    FrameError,
    GetData,
    Hello,
    Inv,
    InvItem,
    InvKind,
    Message,
    MessageType,
    Ping,
    Pong,
    decode_message,
    encode_message,
)
from transport.messages import Block as BlockMessage

if TYPE_CHECKING:
    from tests.nodes import NodeProcess

WAIT_S = 10.0  # default bound of every wait for the node's answer

_HANDSHAKE_EVENTS = {
    zmq.EVENT_HANDSHAKE_SUCCEEDED: "ok",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "refused",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "failed",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "failed",
}


class HostileClient:
    """One CURVE connection to a node, driven by the test."""

    def __init__(self, server_key: bytes, host: str, port: int, magic: bytes, *,
                 keypair: tuple[bytes, bytes] | None = None) -> None:
        self.public, self.secret = keypair or generate_node_keypair()
        self.magic = magic
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.sndhwm = self.sock.rcvhwm = 10_000
        self.sock.curve_publickey = self.public
        self.sock.curve_secretkey = self.secret
        self.sock.curve_serverkey = server_key
        self.sock.routing_id = self.public
        self.sock.reconnect_ivl = 100
        self.monitor = self.sock.get_monitor_socket(zmq.EVENT_ALL)
        self.monitor.linger = 0
        self.events: list[int] = []
        self.received: list[Message] = []
        self.sock.connect(tcp_endpoint(host, port))

    @property
    def keypair(self) -> tuple[bytes, bytes]:
        return self.public, self.secret

    @property
    def node_id(self) -> str:
        return self.public.hex()

    # --- connection state -----------------------------------------------------------------

    def _drain_monitor(self, timeout_ms: int = 0) -> list[int]:
        got = []
        while self.monitor.poll(timeout_ms):
            got.append(recv_monitor_message(self.monitor)["event"])
            timeout_ms = 0
        self.events += got
        return got

    def handshake(self, timeout: float = WAIT_S) -> str:
        """"ok" when the CURVE handshake succeeded, "refused" when the node's ZAP handler
        refused our key, "failed" for another handshake failure; AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        seen = list(self.events)
        while True:
            for event in seen:
                if event in _HANDSHAKE_EVENTS:
                    return _HANDSHAKE_EVENTS[event]
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no handshake outcome within {timeout:g} s (events {self.events})")
            seen = self._drain_monitor(int(left * 1000) + 1)

    def wait_disconnected(self, timeout: float = WAIT_S) -> None:
        deadline = time.monotonic() + timeout
        while zmq.EVENT_DISCONNECTED not in self.events:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"the node did not close the connection within {timeout:g} s")
            self._drain_monitor(int(left * 1000) + 1)
        self.events.remove(zmq.EVENT_DISCONNECTED)

    # --- sending ---------------------------------------------------------------------------

    def send(self, message: Message, magic: bytes | None = None) -> None:
        self.send_frame(encode_message(magic or self.magic, message))

    def send_frame(self, *parts: bytes) -> None:
        self.sock.send_multipart(list(parts), zmq.NOBLOCK)

    def hello(self, params: ChainParams, *, network_id: bytes | None = None, node_id: bytes | None = None) -> None:
        """Our HELLO (genesis as best block, not reachable), and wait for the node's."""
        genesis = genesis_header(params)
        self.send(Hello(PROTOCOL_VERSION, network_id or params.network_id, node_id or self.public, genesis.hash, 0,
                        0, "", int(time.time() * 1000), "hostile/0.1"))
        if network_id is None and node_id is None:
            self.expect(Hello)

    # --- receiving -------------------------------------------------------------------------

    def recv(self, timeout: float) -> Message | None:
        """The next message from the node (PINGs answered on the way), or None after `timeout`."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not self.sock.poll(int(left * 1000) + 1):
                break
            frame = self.sock.recv(zmq.NOBLOCK)
            try:
                message = decode_message(self.magic, frame)
            except FrameError as e:
                raise AssertionError(f"the node sent a frame its own codec rejects: {e}") from None
            self.received.append(message)
            if isinstance(message, Ping):
                self.send(Pong(message.nonce))
                continue
            return message
        return None

    def expect(self, cls: type, predicate: Callable[[Message], bool] = lambda m: True,
               timeout: float = WAIT_S) -> Message:
        """Wait for a message of type `cls` matching `predicate`, dropping others."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            message = self.recv(left)
            if isinstance(message, cls) and predicate(message):
                return message
        raise AssertionError(f"no {cls.__name__} from the node within {timeout:g} s")

    def nothing_for(self, seconds: float, cls: type, predicate: Callable[[Message], bool] = lambda m: True) -> bool:
        """True if no message of type `cls` matching `predicate` arrives within `seconds`."""
        try:
            self.expect(cls, predicate, seconds)
        except AssertionError:
            return True
        return False

    def drain(self) -> None:
        while self.recv(0.05) is not None:
            pass

    def close(self) -> None:
        try:
            self.sock.disable_monitor()
        except zmq.ZMQError:
            pass
        self.monitor.close(linger=0)
        self.sock.close(linger=0)
        self.ctx.term()


def connect(victim: NodeProcess, params: ChainParams, keypair: tuple[bytes, bytes] | None = None) -> HostileClient:
    """A HostileClient dialling `victim`'s peer port (its own fresh key unless `keypair`)."""
    host, port = victim.listen_address
    return HostileClient(victim.key, host, port, params.network_magic, keypair=keypair)


def join(victim: NodeProcess, params: ChainParams) -> HostileClient:
    """A client that dialled `victim`, said hello, and that `victim` lists as a peer (GET /peers)."""
    client = connect(victim, params)
    try:
        assert client.handshake() == "ok"
        client.hello(params)
        deadline = time.monotonic() + WAIT_S
        while score_of(victim, client.node_id) is None:
            assert time.monotonic() < deadline, f"{victim.name} did not list the client as a peer within {WAIT_S:g} s"
            time.sleep(0.05)
    except BaseException:
        client.close()
        raise
    return client


def offer_block(client: HostileClient, block: Block) -> None:
    """Announce `block`, wait for the victim to ask for it, and give it."""
    client.send(Inv((InvItem(InvKind.BLOCK, block.hash),)))
    client.expect(GetData, lambda m: any(i.hash == block.hash for i in m.items))
    client.send(BlockMessage(block.raw))


# --- what the victim holds against a client (GET /peers) ------------------------------------


def peer_entry(node: NodeProcess, node_id: str) -> dict | None:
    """The victim's session entry for `node_id` (with its score), if it has one now."""
    for entry in node.peers():
        if entry["node_id"] == node_id and "score" in entry:
            return entry
    return None


def score_of(node: NodeProcess, node_id: str) -> int | None:
    entry = peer_entry(node, node_id)
    return None if entry is None else entry["score"]


def scored_or_banned(victim: NodeProcess, client: HostileClient, before: int) -> bool:
    if client.node_id in victim.banned():
        return True
    score = score_of(victim, client.node_id)
    return score is not None and score > before


# --- broken frames ---------------------------------------------------------------------------


def envelope(magic: bytes, type_id: int, payload: bytes = b"", version: int = PROTOCOL_VERSION) -> bytes:
    """A frame with any version, magic, type id and payload, valid or not."""
    return struct.pack(">B4sB", version, magic, type_id) + payload


def malformed_frames(magic: bytes) -> list[tuple[str, tuple[bytes, ...]]]:
    """(label, frame parts) of frames the codec or the socket loop must reject (each one
    costs the sender a little; none is oversized or of another network)."""
    ping = MessageType.PING
    return [
        ("empty frame", (b"",)),
        ("shorter than the envelope", (b"\x01\x02\x03",)),
        ("truncated payload", (envelope(magic, ping, b"\x00\x01\x02"),)),
        ("trailing bytes", (envelope(magic, MessageType.INV, b"\x00\x00" + b"junk"),)),  # 0 items, then junk
        ("unknown message type", (envelope(magic, 250, b"\x00"),)),
        ("inventory of an unknown kind", (envelope(magic, MessageType.INV, b"\x00\x01\x09" + bytes(32)),)),
        ("text that is not utf-8", (envelope(magic, MessageType.ADDR, b"\x00\x01" + bytes(32) + b"\x02\xff\xfe"
                                             + bytes(8)),)),
        ("two parts", (encode_message(magic, Ping(1)), b"extra part")),
    ]


def oversized_frames(magic: bytes) -> list[tuple[str, tuple[bytes, ...]]]:
    """Frames over their type's limit (the codec rejects them before parsing)."""
    return [
        ("PING with a 100-byte payload", (envelope(magic, MessageType.PING, bytes(100)),)),
        ("INV claiming 60000 items", (envelope(magic, MessageType.INV, struct.pack(">H", 60000) + bytes(33)),)),
        ("HEADERS over its limit", (envelope(magic, MessageType.HEADERS, bytes(2_000_000)),)),
    ]


# --- invalid blocks ----------------------------------------------------------------------------


def block_on_genesis(params: ChainParams, txs: tuple[Transaction, ...] = (), *, valid_work: bool = True,
                     producer: bytes = ZERO_ADDRESS) -> Block:
    """A block at height 1 on the network's genesis, stamped now, carrying `txs`: with a
    proof of work at the difficulty the chain requires, or (valid_work=False) a nonce that
    misses its target."""
    genesis = genesis_header(params)
    engine = ProofOfWork(params)
    ctx = HeaderContext(genesis, None, (genesis.timestamp_ms,))
    template = Header(HEADER_VERSION, 1, genesis.hash, merkle_root([tx.id for tx in txs]), int(time.time() * 1000),
                      engine.next_difficulty(ctx), producer, nonce_proof(0))
    if valid_work:
        nonce = search_nonce(template.without_proof(), template.difficulty, 0, 2**40)
        assert nonce is not None
    else:
        nonce = 0
        while meets_target(template.with_proof(nonce_proof(nonce)).hash, template.difficulty):
            nonce += 1
    return Block(template.with_proof(nonce_proof(nonce)), tuple(txs))


def with_bad_signature(tx: Transaction) -> Transaction:
    """The same transaction with one bit of its signature flipped (a new id, same fields)."""
    signature = bytes([tx.signature[0] ^ 0x01]) + tx.signature[1:]
    return Transaction(tx.kind, tx.sender, tx.nonce, tx.fee, tx.recipient, tx.amount, tx.payload, signature)
