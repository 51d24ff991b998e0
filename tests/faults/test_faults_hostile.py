"""Hostile peers against a live node: a fuzzer over CURVE, and a peer that redials under its
own key; the node never crashes, the fuzzer is banned (and comes back with fresh keys), and
honest peers keep being served (the load's transactions keep confirming).

The decoders themselves are fuzzed offline by hypothesis: the wire codec in
tests/transport/test_transport_messages.py (arbitrary bytes, arbitrary payloads of every
type, mutated valid frames), transactions in tests/chain/test_tx.py, headers and blocks in
tests/chain/test_block.py, the canonical encoding in tests/chain/test_encoding.py,
addresses in tests/chain/test_keys.py, and what those leave out (accounts, undo records,
the store's index and peer records, peer addresses) in tests/faults/test_faults_decoders.py.

Here the fuzzer is a real client (tests/p2p/hostile.py: a pyzmq CURVE DEALER with its own
keypair) that shakes hands, then sends frames made from valid ones - every message type,
encoded by the real codec from the victim's own chain - with one mutation each: bit flips,
truncation, a length or count field that lies, the type byte swapped for another type's,
junk appended, the payload dropped, extra parts. The victim's ban threshold is raised so
that each key gets a hundred or so frames in before its ban; then the fuzzer takes a fresh
key, until the profile's number of frames has been sent while not banned.
"""

from __future__ import annotations

import random
import struct
import time

import pytest
import zmq

from chain.tx import sign_tx
from tests.faults.harness import Cluster, load_keys, metric_sum, metrics, running
from tests.p2p.hostile import HostileClient
from transport.messages import (
    PROTOCOL_VERSION,
    Addr,
    AddrEntry,
    Block,
    GetAddr,
    GetData,
    GetHeaders,
    Headers,
    Hello,
    Inv,
    InvItem,
    InvKind,
    MessageType,
    NotFound,
    Ping,
    Pong,
    Txs,
    encode_message,
)

FAMILY = "hostile"
BAN_THRESHOLD = 2_000  # the victim's: ~100 rejected frames per key (20 points each)
BURST = 25  # frames between two looks at the victim's ban list
SEED = 424242


@pytest.fixture(scope="module")
def cluster(module_dir, consensus, profile):
    c = Cluster.build(module_dir / consensus, consensus=consensus, finality=profile.finality[consensus],
                      size=5, lab=None,
                      config={"network": {"ban_threshold": BAN_THRESHOLD}})
    try:
        c.start()
        yield c
    finally:
        problems = c.stop()
        print(c.describe())
        assert not problems, problems


def corpus(cluster: Cluster) -> list[bytes]:
    """Valid frames of every message type, from the victim's own chain."""
    victim = cluster.nodes[0]
    params = cluster.network.params
    magic = params.network_magic
    victim.wait_for_height(3, 60)
    tip = victim.status()
    block = victim.client.block(max(1, tip["height"] - 1))
    blocks = [Block(bytes.fromhex(_raw_block(victim, h))) for h in (1, max(1, tip["height"] - 1))]
    headers = Headers(tuple(b.block[:_header_size(b.block)] for b in blocks))
    tx = sign_tx(load_keys()[0], params.network_id, nonce=10**6, fee=1000, recipient=load_keys()[1].address, amount=5)
    h32 = bytes.fromhex(block["hash"])
    messages = [
        Hello(PROTOCOL_VERSION, params.network_id, bytes(32), h32, block["height"], 1, "10.0.0.1:9000",
              int(time.time() * 1000), "fuzz/1"),
        Ping(7), Pong(8),
        Inv((InvItem(InvKind.TX, tx.id), InvItem(InvKind.BLOCK, h32))),
        GetData((InvItem(InvKind.BLOCK, h32), InvItem(InvKind.TX, tx.id))),
        NotFound((InvItem(InvKind.BLOCK, h32),)),
        Txs((tx.raw, tx.raw[:-1] + b"\x00")),
        *blocks,
        headers,
        GetHeaders((h32, bytes.fromhex(tip["tip"]))),
        GetAddr(),
        Addr((AddrEntry(bytes(range(32)), "10.1.2.3:4000", 1),)),
    ]
    return [encode_message(magic, m) for m in messages]


def _raw_block(node, height: int) -> str:
    """The raw bytes of a main-chain block (fetched by GETDATA from the node itself)."""
    from transport.messages import Block as BlockMessage
    params_magic = node.network.params.network_magic
    host, port = node.listen_address
    client = HostileClient(node.key, host, port, params_magic)
    try:
        assert client.handshake() == "ok"
        client.hello(node.network.params)
        client.send(GetData((InvItem(InvKind.BLOCK, bytes.fromhex(node.client.block(height)["hash"])),)))
        return client.expect(BlockMessage).block.hex()
    finally:
        client.close()


def _header_size(raw_block: bytes) -> int:
    from chain.block import decode_header_at

    _, end = decode_header_at(raw_block, 0)
    return end


TYPES = [int(t) for t in MessageType]


def mutate(frame: bytes, rng: random.Random) -> tuple[str, tuple[bytes, ...]]:
    """One mutation of a valid frame: (kind, frame parts)."""
    kind = rng.choice(["bitflip", "bitflip", "truncate", "length_lie", "length_lie", "type_swap", "junk",
                       "empty_payload", "multipart"])
    data = bytearray(frame)
    header = 6  # version, magic (4), type
    if kind == "bitflip":
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        data = data[: rng.randrange(len(data))]
    elif kind == "length_lie" and len(data) > header + 2:
        i = rng.randrange(header, len(data) - 1)
        lie = rng.choice([0, 1, 0xFF, 0xFFFF, rng.randrange(0x10000)])
        data[i:i + 2] = struct.pack(">H", lie)
    elif kind == "type_swap":
        data[5] = rng.choice([t for t in TYPES if t != data[5]] + [0, 99, 255])
    elif kind == "junk":
        data += bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    elif kind == "empty_payload":
        data = data[:header]
    elif kind == "multipart":
        return kind, (bytes(data), bytes(rng.randrange(256) for _ in range(8)))
    return kind, (bytes(data),)


def _send(client: HostileClient, parts: tuple[bytes, ...]) -> None:
    for _ in range(200):
        try:
            client.send_frame(*parts)
            return
        except zmq.Again:
            time.sleep(0.005)
    raise AssertionError("the victim stopped reading the fuzzer's frames")


def test_a_fuzzer_over_curve_is_banned_and_honest_peers_keep_being_served(cluster, profile, row, consensus):
    r = row("hostile: live fuzzer", consensus,
            f"{profile.fuzz_frames} mutated frames over CURVE (bit flips, truncation, length lies, type swaps, "
            f"junk, extra parts), ban threshold {BAN_THRESHOLD}")
    victim, honest = cluster.nodes[0], cluster.nodes[1:]
    rng = random.Random(SEED)
    params = cluster.network.params
    frames = corpus(cluster)
    host, port = victim.listen_address
    before = metric_sum(metrics(victim), "transport_rejected_total")
    kinds: dict[str, int] = {}
    sent = keys = 0
    started = time.monotonic()
    with running(cluster, r) as run:
        final = run.checkpoint()
        r.run()
        while sent < profile.fuzz_frames:
            client = HostileClient(victim.key, host, port, params.network_magic)
            keys += 1
            try:
                assert client.handshake() == "ok", "a fresh key was refused at the door"
                client.hello(params)
                banned = False
                while not banned and sent < profile.fuzz_frames:
                    for _ in range(BURST):
                        kind, parts = mutate(rng.choice(frames), rng)
                        _send(client, parts)
                        kinds[kind] = kinds.get(kind, 0) + 1
                        sent += 1
                    time.sleep(0.02)
                    victim.assert_running()
                    banned = client.node_id in victim.banned()
                if banned:
                    again = HostileClient(victim.key, host, port, params.network_magic, keypair=client.keypair)
                    try:
                        assert again.handshake() == "refused", "a banned key got in again"
                    finally:
                        again.close()
            finally:
                client.close()
        fuzz_s = time.monotonic() - started
        for node in cluster.nodes:
            node.assert_running()
        banned_now = victim.banned()
        assert banned_now, "no fuzzer key was banned"
        assert not ({n.node_id for n in honest} & banned_now), "an honest peer was banned"
        for node in honest:
            assert victim.node_id in node.ready_peers(), f"{node.name} lost the victim"
        run.after_heal(final)
    rejected = metric_sum(metrics(victim), "transport_rejected_total") - before
    r.note(f"{sent} frames from {keys} keys in {fuzz_s:.0f} s, {len(banned_now)} keys banned, "
           f"{rejected:.0f} frames rejected by the codec")
    r.note("mutations: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))


def test_a_peer_redialling_under_its_own_key_does_not_abort_the_node(cluster, row, consensus):
    """Two connections under one key: the second takes the routing id over (ROUTER_HANDOVER)
    while the first still sends, then the first closes. With ZMTP heartbeats on, libzmq
    4.3.5 aborted the node here (zeromq/libzmq#4364); it is what every healed partition does."""
    r = row("hostile: redial under the same key", consensus,
            "old link sends after a new one took its routing id, then closes; x5")
    victim = cluster.nodes[0]
    params = cluster.network.params
    host, port = victim.listen_address
    with running(cluster, r) as run:
        final = run.checkpoint()
        for _ in range(5):
            r.run()
            first = HostileClient(victim.key, host, port, params.network_magic)
            second = None
            try:
                assert first.handshake() == "ok"
                first.hello(params)
                second = HostileClient(victim.key, host, port, params.network_magic, keypair=first.keypair)
                assert second.handshake() == "ok"
                for i in range(200):
                    first.send(Ping(i))
            finally:
                first.close()
                if second is not None:
                    second.close()
            time.sleep(6.0)  # longer than the 5 s heartbeat interval the node used to have
            victim.assert_running()
        run.after_heal(final)
