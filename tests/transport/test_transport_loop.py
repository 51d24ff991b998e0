"""Real transports on loopback: links both ways, reconnects, hostile peers, allow-lists, stop."""

from __future__ import annotations

import os
import socket
import sys
import threading
import time

import pytest
import zmq

from tests.transport.conftest import MAGIC
from tests.transport.helpers import RawPeer, StallingProxy, wait_until
from transport.events import AuthRefused, LinkUp, Received, Rejected
from transport.keys import generate_node_keypair
from transport.loop import (
    RTO_MAX_MS,
    TCP_RTO_MAX_MS,
    TCP_THIN_LINEAR_TIMEOUTS,
    Transport,
    TransportError,
)
from transport.messages import (
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
    RejectReason,
    Txs,
    encode_message,
)

H = bytes(range(32))


def hello_from(node) -> Hello:
    return Hello(1, MAGIC + bytes(28), node.public, H, 7, 99, f"127.0.0.1:{node.port}", 1, "test")


def linked_pair(make_node, **options):
    """A dials B and the link is up (B never dials A)."""
    a, b = make_node(**options), make_node(**options)
    assert a.dial(b)
    a.log.link_up(b.public, outbound=True)
    return a, b


def test_one_dialled_link_carries_messages_both_ways(make_node):
    a, b = linked_pair(make_node)
    assert a.transport.send(b.public, hello_from(a))
    b.log.received(a.public, hello_from(a))
    up = b.log.link_up(a.public, outbound=False)
    assert up.address == "127.0.0.1"
    events = b.log.snapshot()
    assert events.index(up) < next(i for i, e in enumerate(events) if isinstance(e, Received))

    # B answers over its ROUTER: it never dialled A.
    assert b.transport.send(a.public, Pong(5))
    a.log.received(b.public, Pong(5))
    assert not b.log.of_type(AuthRefused) and not [e for e in b.log.snapshot() if isinstance(e, LinkUp) and e.outbound]

    # B's loop counts its send just after handing the frame to zmq: A may be faster.
    wait_until(lambda: b.transport.stats().messages_out == {"PONG": 1}, what="B to count its send")
    stats_a, stats_b = a.transport.stats(), b.transport.stats()
    assert stats_a.messages_out == {"HELLO": 1} and stats_a.messages_in == {"PONG": 1}
    assert stats_b.messages_in == {"HELLO": 1} and stats_b.messages_out == {"PONG": 1}
    assert stats_b.bytes_in["HELLO"] == b.log.of_type(Received)[0].size
    assert (stats_a.links_out, stats_a.links_in, stats_b.links_out, stats_b.links_in) == (1, 0, 0, 1)


def test_every_message_type_crosses_the_wire(make_node):
    a, b = linked_pair(make_node)
    messages = [
        hello_from(a), Ping(1), Pong(2),
        Inv([InvItem(InvKind.TX, H)]), GetData([InvItem(InvKind.BLOCK, H)]), NotFound([]),
        Txs([b"t" * 200] * 10), Block(b"B" * 2_000_000), GetHeaders([H], bytes(32)),
        Headers([b"h" * 120] * 100), GetAddr(), Addr([AddrEntry(H, "10.0.0.1:9000", 3)]),
    ]
    assert {m.TYPE for m in messages} == set(MessageType)
    for message in messages:
        assert a.transport.send(b.public, message)
    b.log.received(a.public, messages[-1])
    got = [e.message for e in b.log.of_type(Received)]
    assert got == messages  # one link keeps the order
    assert b.transport.send_many([a.public, b"\x09" * 32], Ping(3)) == 2
    a.log.received(b.public, Ping(3))
    wait_until(lambda: b.transport.stats().drops.get("no_route") == 1, what="the unroutable copy to be counted")


def test_both_dial_each_other(make_node):
    a, b = linked_pair(make_node)
    assert b.dial(a)
    b.log.link_up(a.public, outbound=True)
    assert a.transport.send(b.public, Ping(1)) and b.transport.send(a.public, Ping(2))
    b.log.received(a.public, Ping(1))
    a.log.received(b.public, Ping(2))


def test_peer_restart_gives_link_down_then_link_up_again(make_node):
    a, b = linked_pair(make_node)
    port, keys = b.port, (b.public, b.secret)
    assert b.transport.stop(2.0)
    down = a.log.link_down(b.public, outbound=True)
    assert down.reason == "disconnected"
    assert a.transport.stats().links_out == 0

    mark = len(a.log.snapshot())
    b2 = make_node(keypair=keys, port=port)
    a.log.link_up(b.public, outbound=True, after=mark)  # zmq reconnected by itself
    assert a.transport.send(b.public, Ping(9))
    b2.log.received(a.public, Ping(9))
    b2.log.link_up(a.public, outbound=False)


def test_inbound_link_down_when_the_dialler_goes_away(make_node):
    a, b = linked_pair(make_node)
    a.transport.send(b.public, Ping(1))
    b.log.link_up(a.public, outbound=False)
    assert a.transport.stop(2.0)
    down = b.log.link_down(a.public, outbound=False)
    assert down.reason == "disconnected"
    assert b.transport.send(a.public, Ping(2))
    wait_until(lambda: b.transport.stats().drops.get("no_route") == 1, what="send to a gone peer to drop")


def test_a_stalled_link_is_found_dead_by_heartbeats_and_comes_back(make_node):
    a, b = make_node(), make_node()
    proxy = StallingProxy(b.port)
    try:
        assert a.transport.dial(b.public, "127.0.0.1", proxy.port)
        a.log.link_up(b.public, outbound=True)
        a.transport.send(b.public, Ping(1))
        b.log.received(a.public, Ping(1))

        proxy.stalled.set()  # TCP stays open, nothing gets through
        started = time.monotonic()
        assert a.log.link_down(b.public, outbound=True).reason == "disconnected"
        assert time.monotonic() - started < 3.0  # heartbeat timeout is 1 s in these tests
        b.log.link_down(a.public, outbound=False)  # B's heartbeats give up on A too

        mark = len(a.log.snapshot())
        proxy.stalled.clear()
        a.log.link_up(b.public, outbound=True, after=mark)
        a.transport.send(b.public, Ping(2))
        b.log.received(a.public, Ping(2))
    finally:
        proxy.close()


def test_a_peer_that_does_not_read_costs_drops_not_a_stall(make_node):
    a, b = linked_pair(make_node, sndhwm=4)
    a.transport.send(b.public, Ping(0))  # gives B its route back to A
    b.log.link_up(a.public, outbound=False)
    sloth = RawPeer(b.public, b.port, rcvhwm=1)
    try:
        sloth.send(encode_message(MAGIC, Ping(1)))
        b.log.received(sloth.public, Ping(1))
        block = Block(b"x" * 256 * 1024)
        for _ in range(100):  # 25 MiB to a peer that reads nothing
            assert b.transport.send(sloth.public, block)
        for i in range(20):  # meanwhile A is served
            b.transport.send(a.public, Pong(i))
            a.log.received(b.public, Pong(i))
        def settled():
            s = b.transport.stats()
            return s.send_queue == 0 and s.messages_out.get("BLOCK", 0) + s.drops.get("hwm", 0) == 100 and s

        stats = wait_until(settled, what="every block to be sent or dropped")
        assert stats.drops["hwm"] > 0
    finally:
        sloth.close()


def test_many_threads_can_send_at_once(make_node):
    a, b = linked_pair(make_node)
    per_thread, threads = 200, 4

    def worker(t: int) -> None:
        for i in range(per_thread):
            assert a.transport.send(b.public, Ping(t * 1_000_000 + i))

    workers = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(5.0)
    wait_until(lambda: len(b.log.of_type(Received)) == per_thread * threads, what="every ping")
    nonces = [e.message.nonce for e in b.log.of_type(Received)]
    for t in range(threads):  # each thread's messages arrive in the order it sent them
        mine = [n for n in nonces if n // 1_000_000 == t]
        assert mine == sorted(mine) and len(mine) == per_thread


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback here")
def test_ipv6(make_node):
    a, b = make_node(host="::1"), make_node(host="::1")
    assert a.transport.dial(b.public, "::1", b.port)
    assert a.log.link_up(b.public, outbound=True).address == f"[::1]:{b.port}"
    a.transport.send(b.public, Ping(6))
    b.log.received(a.public, Ping(6))


def test_hang_up_closes_the_outbound_link(make_node):
    a, b = linked_pair(make_node)
    a.transport.send(b.public, Ping(1))
    b.log.link_up(a.public, outbound=False)
    assert a.transport.hang_up(b.public)
    assert a.log.link_down(b.public, outbound=True).reason == "hung up"
    b.log.link_down(a.public, outbound=False)
    assert a.transport.send(b.public, Ping(2))
    wait_until(lambda: a.transport.stats().drops.get("no_route") == 1, what="send after hang-up to drop")
    # and it can be dialled again
    assert a.dial(b)
    a.log.link_up(b.public, outbound=True, after=len(a.log.snapshot()) - 1)


def test_hostile_frames_are_rejected_while_an_honest_peer_is_served(make_node):
    a, b = linked_pair(make_node, max_message_bytes=64 * 1024)
    raw = RawPeer(b.public, b.port)
    try:
        raw.wait_event(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        bad = [
            (b"\x01\x02", RejectReason.TOO_SHORT),
            (b"\x07" + MAGIC + b"\x02" + bytes(8), RejectReason.WRONG_VERSION),
            (encode_message(b"\xde\xad\xbe\xef", Ping(1)), RejectReason.WRONG_NETWORK),
            (b"\x01" + MAGIC + b"\x63" + bytes(8), RejectReason.UNKNOWN_TYPE),
            (b"\x01" + MAGIC + b"\x02" + bytes(5000), RejectReason.OVERSIZE),  # a PING over its limit
            (encode_message(MAGIC, Ping(1)) + b"\x00", RejectReason.OVERSIZE),
            (encode_message(MAGIC, Inv([InvItem(InvKind.TX, H)]))[:-1], RejectReason.MALFORMED),
            (bytes(range(256)) * 4, RejectReason.WRONG_VERSION),
        ]
        for round_ in range(3):  # interleave garbage with honest traffic
            for frame, _ in bad:
                raw.send(frame)
            assert a.transport.send(b.public, Ping(round_))
            b.log.received(a.public, Ping(round_))
        raw.send(encode_message(MAGIC, Ping(1)), b"second part")
        for _, reason in bad + [(None, RejectReason.MULTIPART)]:
            b.log.rejected(raw.public, reason)
        wait_until(lambda: b.transport.stats().rejected.get("too_short") == 3, what="all garbage to be counted")
        assert sum(b.transport.stats().rejected.values()) == 3 * len(bad) + 1
        from_raw = [e for e in b.log.snapshot() if getattr(e, "peer", None) == raw.public]
        assert not [e for e in from_raw if isinstance(e, (Received, LinkUp))]

        # A frame over MAXMSGSIZE: zmq drops the connection itself; nothing reaches the loop.
        raw.send(b"\x01" + MAGIC + b"\x08" + bytes(100 * 1024))
        raw.wait_event(zmq.EVENT_DISCONNECTED)
        assert a.transport.send(b.public, Pong(7))
        b.log.received(a.public, Pong(7))
        b.transport.send(a.public, Pong(8))
        a.log.received(b.public, Pong(8))
        assert not [e for e in b.log.of_type(Rejected) if e.size > 64 * 1024]
    finally:
        raw.close()


def test_a_raw_client_with_valid_frames_is_a_peer(make_node):
    b = make_node()
    raw = RawPeer(b.public, b.port)
    try:
        raw.send(encode_message(MAGIC, Ping(11)))
        b.log.received(raw.public, Ping(11))
        b.transport.send(raw.public, Pong(11))
        assert raw.recv() == encode_message(MAGIC, Pong(11))
    finally:
        raw.close()


def test_spoofed_routing_id_is_rejected(make_node):
    a, b = linked_pair(make_node)
    a.transport.send(b.public, Ping(1))
    b.log.received(a.public, Ping(1))
    spoofer = RawPeer(b.public, b.port, routing_id=a.public)  # claims to be A, holds another key
    try:
        spoofer.send(encode_message(MAGIC, Ping(666)))
        rejected = b.log.rejected(spoofer.public, RejectReason.SPOOFED)
        assert rejected.peer == spoofer.public  # blame lands on the key that was proven
        assert Ping(666) not in [e.message for e in b.log.of_type(Received)]
        # ROUTER_HANDOVER gave A's routing id to the spoofer: B stops routing to "A" there.
        b.log.link_down(a.public, outbound=False)
    finally:
        spoofer.close()
    # A's own link recovers: its DEALER reconnects and takes its routing id back.
    wait_until(lambda: a.transport.send(b.public, Ping(2)) and any(
        e.message == Ping(2) for e in b.log.of_type(Received)), what="A to be heard again")


def test_allow_list_keeps_unlisted_nodes_out_both_ways(make_node):
    a_keys, c_keys = generate_node_keypair(), generate_node_keypair()
    b = make_node(allow_list=frozenset({a_keys[0]}))
    a, c = make_node(keypair=a_keys), make_node(keypair=c_keys)

    assert c.dial(b)
    refused = b.log.wait_for(lambda e: isinstance(e, AuthRefused))
    assert (refused.peer, refused.outbound, refused.address) == (c.public, False, "127.0.0.1")
    told = c.log.wait_for(lambda e: isinstance(e, AuthRefused))
    assert told.peer == b.public and told.outbound and "refused" in told.reason
    assert c.transport.send(b.public, Ping(1))
    wait_until(lambda: c.transport.stats().drops.get("no_route") == 1, what="C's send to drop")
    assert not b.transport.dial(c.public, "127.0.0.1", c.port)  # B will not dial C either
    assert b.transport.stats().drops["dial_not_allowed"] == 1

    assert a.dial(b)
    a.log.link_up(b.public, outbound=True)
    a.transport.send(b.public, Ping(2))
    b.log.received(a.public, Ping(2))
    assert not [e for e in b.log.snapshot() if getattr(e, "peer", None) == c.public and not isinstance(e, AuthRefused)]
    assert not [e for e in c.log.snapshot() if isinstance(e, LinkUp)]
    assert b.transport.stats().events["auth_refused_inbound"] >= 1


def test_a_ban_cuts_a_peer_off_until_it_is_lifted(make_node):
    a, b = linked_pair(make_node)
    assert b.dial(a)
    b.log.link_up(a.public, outbound=True)
    a.transport.send(b.public, Ping(1))
    b.log.link_up(a.public, outbound=False)

    assert b.transport.ban(a.public, 60)
    assert b.log.link_down(a.public, outbound=True).reason == "banned"
    assert b.log.link_down(a.public, outbound=False).reason == "banned"
    assert b.transport.is_banned(a.public)
    a.transport.send(b.public, Ping(2))  # over A's connection that predates the ban
    wait_until(lambda: b.transport.stats().events.get("dropped_from_banned"), what="the banned ping to drop")
    assert not b.transport.dial(a.public, "127.0.0.1", a.port)
    assert b.transport.stats().drops["dial_banned"] == 1

    a.transport.hang_up(b.public)
    a.log.link_down(b.public, outbound=True)
    mark = len(a.log.snapshot())
    a.dial(b)  # a new connection is refused by ZAP
    refused = b.log.wait_for(lambda e: isinstance(e, AuthRefused))
    assert refused.peer == a.public and refused.reason == "key is banned"
    a.log.wait_for(lambda e: isinstance(e, AuthRefused) and e.outbound, after=mark)
    assert Ping(2) not in [e.message for e in b.log.of_type(Received)]

    assert b.transport.ban(a.public, 0)  # lifted
    assert not b.transport.is_banned(a.public)
    a.transport.hang_up(b.public)
    mark = len(a.log.snapshot())
    a.dial(b)
    a.log.link_up(b.public, outbound=True, after=mark)
    a.transport.send(b.public, Ping(3))
    b.log.received(a.public, Ping(3))


def test_bans_expire_and_are_bounded(make_node, monkeypatch):
    import transport.loop as loop_module

    a = make_node(start=False)
    key = b"\x05" * 32
    assert a.transport.ban(key, 0.05)
    assert a.transport.is_banned(key)
    wait_until(lambda: not a.transport.is_banned(key), timeout=2.0, what="the ban to expire")
    monkeypatch.setattr(loop_module, "MAX_BANS", 2)
    assert a.transport.ban(b"\x01" * 32, 60) and a.transport.ban(b"\x02" * 32, 60)
    assert not a.transport.ban(b"\x03" * 32, 60)
    assert a.transport.stats().drops["ban_table_full"] == 1


def test_wrong_server_key_fails_the_handshake(make_node):
    a, b = make_node(), make_node()
    impostor_key = generate_node_keypair()[0]
    assert a.transport.dial(impostor_key, "127.0.0.1", b.port)  # B cannot prove that key
    failed = a.log.wait_for(lambda e: isinstance(e, AuthRefused))
    assert failed.peer == impostor_key and failed.outbound and "handshake failed" in failed.reason
    assert not a.log.of_type(LinkUp) and not b.log.of_type(LinkUp)


def test_dial_refuses_itself_and_bad_addresses(make_node):
    a = make_node()
    assert not a.transport.dial(a.public, "127.0.0.1", a.port)
    with pytest.raises(ValueError):
        a.transport.dial(b"\x01" * 32, "no such host!", 1)
    with pytest.raises(ValueError):
        a.transport.dial(b"\x01" * 32, "127.0.0.1", 0)
    with pytest.raises(ValueError):
        a.transport.dial(b"short", "127.0.0.1", 1)


def test_send_queue_is_bounded_and_never_blocks(make_node):
    a = make_node(start=False, send_queue_size=5)
    started = time.monotonic()
    results = [a.transport.send(b"\x01" * 32, Ping(i)) for i in range(8)]
    assert time.monotonic() - started < 0.5
    assert results == [True] * 5 + [False] * 3
    assert a.transport.stats().drops["queue_full"] == 3
    assert a.transport.stats().send_queue == 5


def test_encoding_errors_reach_the_caller(make_node):
    a = make_node()
    with pytest.raises(ValueError):
        a.transport.send(b"\x01" * 32, Ping(-1))


def test_callback_exceptions_do_not_stop_the_loop(make_node):
    a, b = make_node(), make_node()
    seen = []

    def flaky(event):
        seen.append(event)
        raise RuntimeError("an actor bug")

    b.transport._on_event = flaky  # swapped before any event can happen
    assert a.dial(b)
    a.log.link_up(b.public, outbound=True)
    for i in range(3):
        a.transport.send(b.public, Ping(i))
    wait_until(lambda: sum(isinstance(e, Received) for e in seen) == 3, what="all pings despite raising callbacks")


def test_stop_from_inside_the_callback_does_not_deadlock(make_node):
    a, b = make_node(), make_node()
    results = []
    b.transport._on_event = lambda event: results.append(b.transport.stop())
    assert a.dial(b)
    a.log.link_up(b.public, outbound=True)
    a.transport.send(b.public, Ping(1))  # B's first event makes it stop itself
    wait_until(lambda: results, what="the callback to run")
    assert set(results) == {False}  # LinkUp and Received came in the same turn: both asked
    assert b.transport.stop(2.0)


def test_bind_conflict_names_the_address(make_node):
    a = make_node()
    with pytest.raises(TransportError, match=f"127.0.0.1:{a.port}"):
        make_node(port=a.port)


def test_stop_is_prompt_and_final(make_node):
    nodes = [make_node() for _ in range(3)]
    for other in nodes[1:]:
        nodes[0].dial(other)
    nodes[0].log.link_up(nodes[2].public, outbound=True)
    for node in nodes:
        started = time.monotonic()
        assert node.transport.stop(timeout=2.0)
        assert time.monotonic() - started < 2.0
    assert not [t for t in threading.enumerate() if t.name.startswith("transport-")]
    assert not nodes[0].transport.send(nodes[1].public, Ping(1))
    assert nodes[0].transport.stats().drops["not_running"] == 1
    assert nodes[0].transport.stop()  # twice is fine
    with pytest.raises(TransportError):
        nodes[0].transport.start()


def test_constructor_checks_its_arguments():
    public, secret = generate_node_keypair()
    other_public, _ = generate_node_keypair()
    base = dict(public_key=public, secret_key=secret, network_magic=MAGIC, on_event=print)
    with pytest.raises(ValueError, match="does not belong"):
        Transport(**{**base, "public_key": other_public})
    with pytest.raises(ValueError, match="magic"):
        Transport(**{**base, "network_magic": b"abc"})
    with pytest.raises(ValueError, match="allow-list"):
        Transport(**base, allow_list=frozenset({b"short"}))
    with pytest.raises(ValueError, match="bounded"):
        Transport(**base, sndhwm=0)
    with pytest.raises(ValueError):
        Transport(**base, host="not a host")
    assert Transport(**base).stop()  # never started: nothing to do


def _tcp_connections_to(port: int) -> list[tuple[socket.socket, bool]]:
    """This process's TCP sockets on 127.0.0.1 with `port` at one end: (socket, is the
    listener's end). Duplicates of the descriptors: the caller closes them."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            sock = socket.fromfd(int(name), socket.AF_INET, socket.SOCK_STREAM)
        except OSError:
            continue
        try:
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) == socket.SOCK_STREAM:
                local, remote = sock.getsockname(), sock.getpeername()
                if port in (local[1], remote[1]):
                    found.append((sock, local[1] == port))
                    continue
        except OSError:
            pass
        sock.close()
    return found


def _kernel_caps_rto() -> bool:
    with socket.socket() as probe:
        try:
            probe.setsockopt(socket.IPPROTO_TCP, TCP_RTO_MAX_MS, RTO_MAX_MS)
        except OSError:
            return False
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the lossy-link options are Linux's")
def test_peer_connections_bound_their_retransmission_backoff(make_node):
    # Both ends of a dialled link (the DEALER's and the ROUTER's) retransmit linearly while
    # thin and, where the kernel can (6.15+), at least once a second: a few lost packets in
    # a row on a radio link cost a second or two, not 10-30 s of exponential back-off.
    a, b = linked_pair(make_node)
    assert a.transport.send(b.public, hello_from(a))
    b.log.link_up(a.public, outbound=False)
    rto_max = RTO_MAX_MS if _kernel_caps_rto() else None

    def options(sock):
        linear = sock.getsockopt(socket.IPPROTO_TCP, TCP_THIN_LINEAR_TIMEOUTS)
        return linear, sock.getsockopt(socket.IPPROTO_TCP, TCP_RTO_MAX_MS) if rto_max else None

    def ends():
        conns = _tcp_connections_to(b.port)
        try:
            return sorted((listener, *options(s)) for s, listener in conns)
        finally:
            for s, _ in conns:
                s.close()

    wait_until(lambda: ends() == [(False, 1, rto_max), (True, 1, rto_max)], what=f"both ends tuned; saw {ends()}")
