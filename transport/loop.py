"""The socket loop: one thread owns every zmq socket of a node.

Sockets, all in this Transport's own zmq.Context and all polled by one zmq.Poller:

- a ROUTER bound to the listen address (CURVE server with the node's secret key);
- one DEALER per dialled peer (CURVE client with our keypair, curve_serverkey = the peer's
  key, ROUTING_ID = our 32-byte public key, IMMEDIATE so nothing queues for a dead link);
- a REP bound to inproc://zeromq.zap.01: the ZAP handler, answered in this same loop (no
  ThreadAuthenticator thread). It accepts a CURVE client when there is no allow-list or its
  key is on it, and replies with user-id = the client key as 64 lowercase hex characters;
- a monitor PAIR for the ROUTER and for every DEALER (connection events);
- the read end of a wake-up pipe (see "command channel");
- optionally a PUB bound to the notifications address (see "notifications").

Threading rule. pyzmq sockets are not thread-safe, so no other thread touches them.
`start`, `stop`, `dial`, `hang_up`, `ban`, `send`, `send_many`, `publish`, `stats`,
`bound_port` and `publish_port` are safe from any thread; `send` encodes in the caller's thread and never blocks. `on_event` is
called in the loop thread (see transport.events): keep it cheap.

Command channel: two bounded queue.Queue objects (sends; dial/hang-up) plus a non-blocking
os.pipe registered in the poller as a wake-up. Chosen over thread-local inproc PUSH sockets
because (a) a socket per caller thread would have to be closed by that thread, and one
left open makes Context.term() hang at stop; (b) a queue bound is global and exact (a PUSH
HWM is per socket), `put_nowait` tells the caller at once that it is full, and the drop is
counted; (c) dial/hang-up have their own queue, so a flood of sends cannot delay a hang-up.
The wake-up byte is written only when the loop may be asleep (a flag coalesces them).

Routing of send(key, msg): the outbound DEALER to `key` if its link is up; otherwise the
ROUTER with routing id `key` if that peer has a live inbound link (it dialled us: a node
behind NAT that only dials out takes full part); otherwise the frame is dropped and counted.
Sends never raise in the loop: EAGAIN (high-water mark) and EHOSTUNREACH (ROUTER_MANDATORY:
the peer is gone) are counted as drops.

Inbound: every frame is decoded here. A frame that fails the codec, arrives as several
parts, or whose ROUTER routing id differs from its CURVE-authenticated key (the "User-Id"
property set by our ZAP reply) is dropped and reported as Rejected(peer=authenticated key).
Valid frames become Received. The first valid message from a key with no inbound link
gives LinkUp(inbound) just before it; the ROUTER monitor's DISCONNECTED (matched to the
key by the connection's file descriptor) gives LinkDown(inbound).

Bans: `ban(key, seconds)` gives the network actor's timed bans teeth below the actor: while
a key is banned, ZAP refuses its handshakes, its frames on a connection that is already
open are dropped before decoding (counted, no event), and it is not dialled.

Notifications: `publish(topic, body)` hands the loop one message for the PUB socket, as
bitcoind's -zmqpub* do, through its own bounded queue (a burst of notifications never
delays peer traffic, and never blocks the caller: a full queue drops and counts). Each
message is three frames: [topic, body, sequence], the sequence an unsigned 64-bit
little-endian integer counting the messages of that topic from 0 at start. It is taken
when `publish` is called, so a message dropped here or by the PUB socket's high-water
mark (zmq drops silently for a slow subscriber) leaves a gap the subscriber can see, and a
restarted node starts again at 0. The PUB is plaintext: it belongs on loopback.

Dead links: found by the kernel, not by ZMTP heartbeats. libzmq 4.3.5 aborts the whole
process (`Assertion failed: !_io_error (stream_engine_base.cpp)`, zeromq/libzmq#4364) when a
heartbeat timer fires on a connection whose input had stopped and that then failed: exactly
what ROUTER_HANDOVER produces when a peer redials while its old connection still carries
data and that old connection then closes - every partition that heals, and a peer can do it
on purpose. So heartbeats are off by default (heartbeat_ivl_ms=0) and every connection has
TCP keepalive (idle TCP_KEEPALIVE_IDLE_S, then TCP_KEEPALIVE_COUNT probes
TCP_KEEPALIVE_INTVL_S apart) and a TCP user timeout (TCP_MAXRT_MS: data unacknowledged
that long aborts the connection): a dead inbound connection goes away by itself, and a
dead outbound one is redialled. Peers that stop answering are dropped by the network
actor's own ping and peer timeout, whatever TCP does.

Lossy links: a node's links carry few packets at a time, and under heavy loss (a radio
link in the field) the kernel's exponential retransmission back-off leaves a link silent
for 10-30 s after a few losses in a row, while the data waits in its send queue. Two
options bound that silence on every peer connection, set on its descriptor as soon as its
monitor reports it (zmq exposes neither): TCP_RTO_MAX_MS (Linux 6.15+) caps the
retransmission timeout at RTO_MAX_MS, so a lost packet is sent again at least once a second;
TCP_THIN_LINEAR_TIMEOUTS (any Linux; what the sysctl net.ipv4.tcp_thin_linear_timeouts
does for every socket) keeps the first six retransmissions of a connection with fewer than
four packets in flight one timeout apart. Neither touches congestion control. Other
systems, and older kernels for the first option, keep the default back-off.

Reconnect: zmq reconnects an outbound DEALER by itself with capped exponential backoff
(RECONNECT_IVL doubling up to RECONNECT_IVL_MAX). Every successful handshake gives LinkUp
again and every disconnect LinkDown, because messages in flight are lost and a reconnected
peer must be sent HELLO again. Exception (libzmq behaviour): when the remote's ZAP handler
refuses our key, zmq ends that connection for good; we report AuthRefused and the caller
decides when to hang_up and dial again. On the inbound side ROUTER_HANDOVER lets a
reconnecting peer take its routing id over from its stale, not yet timed-out connection.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import queue
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import zmq
from zmq.utils.monitor import recv_monitor_message

from transport.events import AuthRefused, Event, LinkDown, LinkUp, Received, Rejected
from transport.keys import KEY_SIZE, format_host_port, is_ipv6, public_key_of, tcp_endpoint
from transport.messages import (
    MAGIC_SIZE,
    MAX_FRAME_SIZE,
    FrameError,
    Message,
    MessageType,
    RejectReason,
    decode_message,
    encode_message,
)

log = logging.getLogger(__name__)

DEFAULT_HOST = "0.0.0.0"
DEFAULT_PORT = 0  # 0 = the OS picks a free port; read it back from Transport.bound_port
# MAXMSGSIZE is checked on the encrypted wire frame; CURVE adds ~40 bytes (command name,
# nonce, MAC). Anything bigger than the largest valid frame plus that drops the connection.
CURVE_OVERHEAD = 1024
MAX_MESSAGE_BYTES = MAX_FRAME_SIZE + CURVE_OVERHEAD
HWM = 1000  # messages queued per connection in each direction (SNDHWM / RCVHWM)
HEARTBEAT_IVL_MS = 0  # ZMTP heartbeats off: they can abort the process (see "Dead links")
HEARTBEAT_TIMEOUT_MS = 15_000  # (when heartbeats are turned on) no traffic this long: dead
HEARTBEAT_TTL_MS = 20_000  # (when heartbeats are turned on) the remote end drops us after this
TCP_KEEPALIVE_IDLE_S = 10  # an idle connection is probed after this long...
TCP_KEEPALIVE_INTVL_S = 2  # ...every this often...
TCP_KEEPALIVE_COUNT = 3  # ...and is dead after this many unanswered probes (~16 s)
TCP_MAXRT_MS = 20_000  # data unacknowledged this long: the connection is dead (TCP_USER_TIMEOUT)
# Retransmission on lossy links (see "Lossy links"); option numbers from linux/tcp.h
TCP_THIN_LINEAR_TIMEOUTS = getattr(socket, "TCP_THIN_LINEAR_TIMEOUTS", 16)
TCP_RTO_MAX_MS = getattr(socket, "TCP_RTO_MAX_MS", 44)  # Linux 6.15+
RTO_MAX_MS = 1000  # the smallest cap Linux allows
RECONNECT_IVL_MS = 500  # first reconnect delay after a drop...
RECONNECT_IVL_MAX_MS = 30_000  # ...doubling on every failed attempt up to this cap
SEND_QUEUE_SIZE = 10_000  # frames waiting for the loop, all peers together
CONTROL_QUEUE_SIZE = 1_000  # dial / hang-up commands waiting for the loop
PUBLISH_QUEUE_SIZE = 10_000  # notifications waiting for the loop
PUBLISH_HWM = 1000  # notifications queued per subscriber by the PUB socket
POLL_TIMEOUT_MS = 100  # the loop wakes at least this often, so stop() is prompt
BATCH = 500  # frames taken from one socket or queue per turn, so none starves the others
START_TIMEOUT_S = 5.0  # start() waits this long for the loop to bind
AUTH_REPORT_INTERVAL_S = 60.0  # an inbound key refused by ZAP is reported at most this often
MAX_BANS = 10_000  # banned keys remembered at once (bounded like every other table)
ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # fixed by RFC 27; one handler per context
ZAP_DOMAIN = b"peerledger"
USER_ID = "User-Id"  # message property carrying our ZAP reply's user-id (hex key)

_DEALER_EVENTS = (
    zmq.EVENT_CONNECTED
    | zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)
_ROUTER_EVENTS = (
    zmq.EVENT_ACCEPTED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)
_HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


def _bound_retransmission_backoff(fd: int) -> None:
    """Set the lossy-link options on one TCP connection (see "Lossy links").

    The descriptor comes from a monitor event and may be closed, or even reused, by the
    time the event is read: the options are then refused (not a TCP socket) or land on
    another of our connections, which wants them too. Either way nothing is raised."""
    if not sys.platform.startswith("linux"):
        return
    try:
        sock = socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM)  # a duplicate: ours to close
    except OSError:
        return
    try:
        for option, value in ((TCP_THIN_LINEAR_TIMEOUTS, 1), (TCP_RTO_MAX_MS, RTO_MAX_MS)):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
            except OSError:  # not a TCP socket any more, or a kernel without the option
                pass
    finally:
        sock.close()


def _is_generated_routing_id(routing_id: bytes) -> bool:
    """A routing id libzmq's ROUTER made itself (a zero byte and a 32-bit counter): what a
    connection is renamed to when ROUTER_HANDOVER gives its id to a newer one. Ours are
    32-byte public keys, and a peer cannot choose an id starting with a zero byte."""
    return len(routing_id) == 5 and routing_id[0] == 0


class TransportError(Exception):
    """The transport cannot do what was asked (bind failed, not started...)."""


@dataclass(frozen=True, slots=True)
class TransportStats:
    """A snapshot of the counters. Keys of the per-type maps are MessageType names."""

    messages_in: dict[str, int]
    bytes_in: dict[str, int]
    messages_out: dict[str, int]
    bytes_out: dict[str, int]
    drops: dict[str, int]  # outbound frames not sent, by reason
    rejected: dict[str, int]  # inbound frames dropped, by RejectReason value
    events: dict[str, int]  # other happenings worth a metric (auth refusals, handshake failures)
    send_queue: int  # frames waiting for the loop now
    links_out: int  # outbound links up now
    links_in: int  # inbound links known now
    published: dict[str, int] = field(default_factory=dict)  # notifications sent, by topic


class _Outbound:
    """One dialled peer: its DEALER, the DEALER's monitor and the link state."""

    __slots__ = ("key", "address", "endpoint", "socket", "monitor", "up", "refused", "failure_reported")

    def __init__(self, key: bytes, address: str, endpoint: str, socket: zmq.Socket, monitor: zmq.Socket) -> None:
        self.key = key
        self.address = address
        self.endpoint = endpoint
        self.socket = socket
        self.monitor = monitor
        self.up = False
        self.refused = False  # the peer's ZAP refused us: zmq will not reconnect this DEALER
        self.failure_reported = False  # one AuthRefused per dial until a handshake succeeds


_DIAL = "dial"
_HANG_UP = "hang_up"


class Transport:
    """A node's ZeroMQ endpoint: listens, dials, routes frames by peer key, reports events."""

    def __init__(
        self,
        *,
        public_key: bytes,
        secret_key: bytes,
        network_magic: bytes,
        on_event: Callable[[Event], None],
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        allow_list: frozenset[bytes] | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        sndhwm: int = HWM,
        rcvhwm: int = HWM,
        heartbeat_ivl_ms: int = HEARTBEAT_IVL_MS,
        heartbeat_timeout_ms: int = HEARTBEAT_TIMEOUT_MS,
        heartbeat_ttl_ms: int = HEARTBEAT_TTL_MS,
        reconnect_ivl_ms: int = RECONNECT_IVL_MS,
        reconnect_ivl_max_ms: int = RECONNECT_IVL_MAX_MS,
        send_queue_size: int = SEND_QUEUE_SIZE,
        control_queue_size: int = CONTROL_QUEUE_SIZE,
        publish_listen: tuple[str, int] | None = None,
        publish_hwm: int = PUBLISH_HWM,
        publish_queue_size: int = PUBLISH_QUEUE_SIZE,
    ) -> None:
        if len(public_key) != KEY_SIZE or len(secret_key) != KEY_SIZE:
            raise ValueError(f"node keys must be {KEY_SIZE} raw bytes")
        if public_key_of(secret_key) != public_key:
            raise ValueError("the node secret key does not belong to the node public key")
        if len(network_magic) != MAGIC_SIZE:
            raise ValueError(f"network magic must be {MAGIC_SIZE} bytes, got {len(network_magic)}")
        if allow_list is not None:
            allow_list = frozenset(allow_list)
            bad = [k for k in allow_list if not isinstance(k, bytes) or len(k) != KEY_SIZE]
            if bad:
                raise ValueError(f"allow-list entries must be {KEY_SIZE}-byte keys ({len(bad)} are not)")
        for name, value in (("sndhwm", sndhwm), ("rcvhwm", rcvhwm), ("send_queue_size", send_queue_size),
                            ("control_queue_size", control_queue_size), ("max_message_bytes", max_message_bytes),
                            ("publish_hwm", publish_hwm), ("publish_queue_size", publish_queue_size)):
            if value <= 0:
                raise ValueError(f"{name} must be positive (bounded), got {value}")
        tcp_endpoint(host, port)  # validates host and port now, in the caller's thread
        if publish_listen is not None:
            tcp_endpoint(*publish_listen)

        self._public = bytes(public_key)
        self._secret = bytes(secret_key)
        self._magic = bytes(network_magic)
        self._on_event = on_event
        self._host = host
        self._port = port
        self._allow = allow_list
        self._max_message_bytes = max_message_bytes
        self._sndhwm = sndhwm
        self._rcvhwm = rcvhwm
        self._heartbeat = (heartbeat_ivl_ms, heartbeat_timeout_ms, heartbeat_ttl_ms)
        self._reconnect = (reconnect_ivl_ms, reconnect_ivl_max_ms)
        self._publish_listen = publish_listen
        self._publish_hwm = publish_hwm

        # Shared between threads.
        self._sends: queue.Queue[tuple[bytes, MessageType, bytes]] = queue.Queue(send_queue_size)
        self._control: queue.Queue[tuple] = queue.Queue(control_queue_size)
        self._publications: queue.Queue[tuple[bytes, bytes, bytes]] = queue.Queue(publish_queue_size)
        self._sequences: dict[bytes, int] = {}  # topic -> next sequence number; under _publish_lock
        self._publish_lock = threading.Lock()  # sequence order is queue order
        self._lock = threading.Lock()  # counters and link counts
        self._wake_lock = threading.Lock()  # the pipe's write end vs. its closing
        self._wake_r: int | None = None
        self._wake_w: int | None = None
        self._wake_pending = False
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self._bound_port: int | None = None
        self._messages_in: Counter[str] = Counter()
        self._bytes_in: Counter[str] = Counter()
        self._messages_out: Counter[str] = Counter()
        self._bytes_out: Counter[str] = Counter()
        self._drops: Counter[str] = Counter()
        self._rejected: Counter[str] = Counter()
        self._events: Counter[str] = Counter()
        self._published: Counter[str] = Counter()
        self._links_out = 0
        self._links_in = 0

        # Owned by the loop thread only.
        self._ctx: zmq.Context | None = None
        self._router: zmq.Socket | None = None
        self._router_monitor: zmq.Socket | None = None
        self._zap: zmq.Socket | None = None
        self._pub: zmq.Socket | None = None
        self._publish_port: int | None = None
        self._poller = zmq.Poller()
        self._outbound: dict[bytes, _Outbound] = {}
        self._by_socket: dict[zmq.Socket, _Outbound] = {}
        self._inbound: dict[bytes, int] = {}  # key -> file descriptor of its connection (-1 unknown)
        self._fd_key: dict[int, bytes] = {}
        self._auth_reported: dict[bytes, float] = {}
        self._bans: dict[bytes, float] = {}  # key -> time.monotonic() the ban ends; under _lock

    # --- public, thread-safe ---------------------------------------------------------------

    @property
    def public_key(self) -> bytes:
        return self._public

    @property
    def bound_port(self) -> int:
        if self._bound_port is None:
            raise TransportError("the transport is not listening yet (call start())")
        return self._bound_port

    @property
    def publish_port(self) -> int | None:
        """The port the notifications PUB socket is bound to; None without notifications."""
        return self._publish_port

    def is_allowed(self, key: bytes) -> bool:
        return self._allow is None or key in self._allow

    def start(self) -> None:
        """Bind the listen address and start the loop thread; TransportError if it cannot bind."""
        if self._thread is not None:
            raise TransportError("the transport was already started")
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._thread = threading.Thread(target=self._run, name=f"transport-{self._public[:4].hex()}", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S):
            self.stop()
            raise TransportError(f"the transport loop did not start within {START_TIMEOUT_S} s")
        if self._start_error is not None:
            self._thread.join(START_TIMEOUT_S)
            self._closed = True
            self._close_pipe()
            raise self._start_error

    def stop(self, timeout: float = 2.0) -> bool:
        """Stop the loop, close every socket (linger 0) and the context. True if it ended in time.

        Returns within `timeout`. No event is delivered after it returns True. Called from
        on_event (the loop thread) it only asks the loop to end, and returns False.
        """
        self._closed = True
        thread = self._thread
        if thread is None:
            return True
        self._stopping.set()
        self._wake(force=True)
        if threading.current_thread() is thread:  # from on_event: the loop ends after this turn
            return False
        thread.join(timeout)
        if thread.is_alive():
            log.error("transport loop did not stop seconds=%.1f", timeout)
            return False
        self._close_pipe()
        return True

    def dial(self, key: bytes, host: str, port: int) -> bool:
        """Keep an outbound link to the node `key` at host:port (zmq reconnects it).

        Returns False, without dialling, for our own key, a key the allow-list does not
        hold, or when the command queue is full. Dialling a key again with another address
        replaces the old link. A bad host or port raises ValueError. send() to this key
        drops (no_route) until LinkUp(outbound) has been delivered.
        """
        if len(key) != KEY_SIZE:
            raise ValueError(f"peer key must be {KEY_SIZE} raw bytes, got {len(key)}")
        endpoint = tcp_endpoint(host, port)
        if port == 0:
            raise ValueError("cannot dial port 0")
        if key == self._public:
            self._count(self._drops, "dial_self")
            return False
        if not self.is_allowed(key):
            self._count(self._drops, "dial_not_allowed")
            return False
        if self.is_banned(key):
            self._count(self._drops, "dial_banned")
            return False
        return self._command((_DIAL, bytes(key), endpoint, format_host_port(host, port), is_ipv6(host)))

    def ban(self, key: bytes, seconds: float) -> bool:
        """Refuse `key` for `seconds` (0 lifts the ban) and hang up on it now.

        False if the ban table is full of unexpired bans.
        """
        with self._lock:
            if seconds <= 0:
                self._bans.pop(key, None)
                return True
            if key not in self._bans and len(self._bans) >= MAX_BANS:
                now = time.monotonic()
                for k in [k for k, until in self._bans.items() if until <= now]:
                    del self._bans[k]
                if len(self._bans) >= MAX_BANS:
                    self._drops["ban_table_full"] += 1
                    return False
            self._bans[bytes(key)] = time.monotonic() + seconds
        self._command((_HANG_UP, bytes(key), "banned"))
        return True

    def is_banned(self, key: bytes) -> bool:
        with self._lock:
            until = self._bans.get(key)
            if until is None:
                return False
            if until > time.monotonic():
                return True
            del self._bans[key]
            return False

    def hang_up(self, key: bytes) -> bool:
        """Close the outbound link to `key` and forget its inbound route.

        zmq cannot close one connection of a ROUTER: if the peer dialled us, its connection
        stays open and its next valid message brings the inbound link back (LinkUp).
        """
        return self._command((_HANG_UP, bytes(key), "hung up"))

    def send(self, key: bytes, message: Message) -> bool:
        """Queue `message` for the peer `key`. Never blocks; False if it was dropped.

        The frame is encoded here, in the caller's thread; a message that breaks its own
        limits raises ValueError (a bug of ours, not of a peer).
        """
        frame = encode_message(self._magic, message)
        return self._enqueue(key, message.TYPE, frame)

    def send_many(self, keys: Iterable[bytes], message: Message) -> int:
        """Send one message to several peers, encoding it once. Returns how many were queued."""
        frame = encode_message(self._magic, message)
        return sum(self._enqueue(key, message.TYPE, frame) for key in keys)

    def publish(self, topic: bytes, body: bytes) -> bool:
        """Queue one notification [topic, body, sequence] for the PUB socket (see the module
        docstring). Never blocks; False if it was dropped (counted) or there is no PUB."""
        if self._publish_listen is None:
            return False
        if self._closed:
            self._count(self._drops, "not_running")
            return False
        with self._publish_lock:
            sequence = self._sequences.get(topic, 0)
            self._sequences[topic] = sequence + 1
            try:
                self._publications.put_nowait((topic, body, sequence.to_bytes(8, "little")))
            except queue.Full:
                self._count(self._drops, "publish_queue_full")
                return False
        self._wake()
        return True

    def stats(self) -> TransportStats:
        with self._lock:
            return TransportStats(
                messages_in=dict(self._messages_in),
                bytes_in=dict(self._bytes_in),
                messages_out=dict(self._messages_out),
                bytes_out=dict(self._bytes_out),
                drops=dict(self._drops),
                rejected=dict(self._rejected),
                events=dict(self._events),
                send_queue=self._sends.qsize(),
                links_out=self._links_out,
                links_in=self._links_in,
                published=dict(self._published),
            )

    # --- caller-side helpers ---------------------------------------------------------------

    def _enqueue(self, key: bytes, mtype: MessageType, frame: bytes) -> bool:
        if self._closed:
            self._count(self._drops, "not_running")
            return False
        try:
            self._sends.put_nowait((key, mtype, frame))
        except queue.Full:
            self._count(self._drops, "queue_full")
            return False
        self._wake()
        return True

    def _command(self, command: tuple) -> bool:
        if self._closed:
            self._count(self._drops, "not_running")
            return False
        try:
            self._control.put_nowait(command)
        except queue.Full:
            self._count(self._drops, "control_queue_full")
            return False
        self._wake()
        return True

    def _wake(self, force: bool = False) -> None:
        # The loop clears _wake_pending before it drains the queues, so an item queued
        # after that either sees False and writes, or sees a newer writer's True.
        if self._wake_pending and not force:
            return
        self._wake_pending = True
        with self._wake_lock:
            if self._wake_w is not None:
                try:
                    os.write(self._wake_w, b"\x01")
                except BlockingIOError:
                    pass  # the pipe is full of wake-ups already

    def _close_pipe(self) -> None:
        with self._wake_lock:
            for fd in (self._wake_r, self._wake_w):
                if fd is not None:
                    os.close(fd)
            self._wake_r = self._wake_w = None

    def _count(self, counter: Counter[str], key: str, n: int = 1) -> None:
        with self._lock:
            counter[key] += n

    # --- the loop thread -------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._setup()
        except BaseException as exc:  # reported to start(); the thread ends
            self._start_error = exc
            self._teardown()
            self._ready.set()
            return
        self._ready.set()
        try:
            self._loop()
        finally:
            self._teardown()

    def _setup(self) -> None:
        self._ctx = zmq.Context()
        self._ctx.setsockopt(zmq.LINGER, 0)
        # The ZAP handler must be bound before the ROUTER accepts its first connection.
        self._zap = self._ctx.socket(zmq.REP)
        self._zap.linger = 0
        self._zap.bind(ZAP_ENDPOINT)
        router = self._ctx.socket(zmq.ROUTER)
        self._router = router
        self._configure(router)
        router.router_mandatory = 1
        router.router_handover = 1
        router.curve_server = 1
        router.curve_secretkey = self._secret
        router.zap_domain = ZAP_DOMAIN
        if is_ipv6(self._host):
            router.ipv6 = 1
        self._router_monitor = router.get_monitor_socket(_ROUTER_EVENTS)
        self._router_monitor.linger = 0
        endpoint = tcp_endpoint(self._host, self._port)
        try:
            router.bind(endpoint)
        except zmq.ZMQError as exc:
            where = format_host_port(self._host, self._port)
            raise TransportError(f"cannot listen on {where}: {exc.strerror}") from None
        last = router.getsockopt_string(zmq.LAST_ENDPOINT)
        self._bound_port = int(last.rsplit(":", 1)[1])
        for sock in (self._zap, self._router_monitor, router):
            self._poller.register(sock, zmq.POLLIN)
        self._poller.register(self._wake_r, zmq.POLLIN)
        if self._publish_listen is not None:
            self._bind_publisher(*self._publish_listen)

    def _bind_publisher(self, host: str, port: int) -> None:
        pub = self._ctx.socket(zmq.PUB)
        self._pub = pub
        pub.linger = 0
        pub.sndhwm = self._publish_hwm
        if is_ipv6(host):
            pub.ipv6 = 1
        try:
            pub.bind(tcp_endpoint(host, port))
        except zmq.ZMQError as exc:
            where = format_host_port(host, port)
            raise TransportError(f"cannot publish notifications on {where}: {exc.strerror}") from None
        self._publish_port = int(pub.getsockopt_string(zmq.LAST_ENDPOINT).rsplit(":", 1)[1])

    def _configure(self, sock: zmq.Socket) -> None:
        """Options every peer-facing socket gets, before bind/connect."""
        sock.linger = 0
        sock.sndhwm = self._sndhwm
        sock.rcvhwm = self._rcvhwm
        sock.maxmsgsize = self._max_message_bytes
        sock.heartbeat_ivl, sock.heartbeat_timeout, sock.heartbeat_ttl = self._heartbeat
        sock.tcp_keepalive = 1
        sock.tcp_keepalive_idle = TCP_KEEPALIVE_IDLE_S
        sock.tcp_keepalive_intvl = TCP_KEEPALIVE_INTVL_S
        sock.tcp_keepalive_cnt = TCP_KEEPALIVE_COUNT
        sock.tcp_maxrt = TCP_MAXRT_MS
        sock.reconnect_ivl, sock.reconnect_ivl_max = self._reconnect

    def _loop(self) -> None:
        timeout = POLL_TIMEOUT_MS
        while not self._stopping.is_set():
            try:
                timeout = self._turn(timeout)
            except Exception:  # a bug of ours: log it, never let it kill the node's links
                log.exception("transport loop error")
                timeout = POLL_TIMEOUT_MS

    def _turn(self, timeout: int) -> int:
        ready = {sock for sock, _ in self._poller.poll(timeout)}
        if self._stopping.is_set():
            return 0
        if self._wake_r in ready:
            try:
                os.read(self._wake_r, 4096)
            except BlockingIOError:
                pass
        self._wake_pending = False
        more = self._handle_control()
        if self._zap in ready:
            self._on_zap()
        # Unconditionally, and all of it: a DISCONNECTED event names only a file descriptor,
        # and the kernel gives a closed connection's number to the next one accepted. An
        # event of the old connection read after the new one's first message would take
        # that new link down (fuzzing clients that connect the moment the last one closed
        # lost their link right after their handshake and never got our HELLO).
        if self._router_monitor is not None:
            self._on_router_monitor()
        for out in list(self._outbound.values()):
            if out.monitor in ready:
                self._on_dealer_monitor(out)
        if self._router in ready:
            self._on_router()
        for out in list(self._outbound.values()):
            if out.socket in ready and out.key in self._outbound:
                self._on_dealer(out)
        more = self._handle_sends() or more
        if self._pub is not None:
            more = self._handle_publications() or more
        return 0 if more else POLL_TIMEOUT_MS

    def _teardown(self) -> None:
        for out in list(self._outbound.values()):
            self._close_outbound(out)
        if self._router is not None:
            try:
                self._router.disable_monitor()
            except zmq.ZMQError:
                pass
        for sock in (self._router_monitor, self._router, self._zap, self._pub):
            if sock is not None:
                sock.close(linger=0)
        self._router_monitor = self._router = self._zap = self._pub = None
        if self._ctx is not None:
            self._ctx.destroy(linger=0)  # closes anything left and terminates the context
            self._ctx = None
        with self._lock:
            self._links_out = self._links_in = 0

    def _emit(self, event: Event) -> None:
        try:
            self._on_event(event)
        except Exception:
            log.exception("on_event raised event=%s", type(event).__name__)

    # commands

    def _handle_control(self) -> bool:
        for _ in range(BATCH):
            try:
                command = self._control.get_nowait()
            except queue.Empty:
                return False
            if command[0] == _DIAL:
                self._dial(*command[1:])
            elif command[0] == _HANG_UP:
                self._hang_up(command[1], command[2])
        return not self._control.empty()

    def _dial(self, key: bytes, endpoint: str, address: str, ipv6: bool) -> None:
        old = self._outbound.get(key)
        if old is not None:
            if old.endpoint == endpoint and not old.refused:
                return
            self._close_outbound(old, "redialled at another address")
        sock = self._ctx.socket(zmq.DEALER)
        monitor = None
        try:
            self._configure(sock)
            sock.immediate = 1
            sock.routing_id = self._public
            sock.curve_publickey = self._public
            sock.curve_secretkey = self._secret
            sock.curve_serverkey = key
            if ipv6:
                sock.ipv6 = 1
            monitor = sock.get_monitor_socket(_DEALER_EVENTS)
            monitor.linger = 0
            sock.connect(endpoint)
        except zmq.ZMQError as exc:
            log.warning("dial failed peer=%s endpoint=%s error=%s", key.hex()[:16], endpoint, json.dumps(str(exc)))
            if monitor is not None:
                sock.disable_monitor()
                monitor.close(linger=0)
            sock.close(linger=0)
            self._count(self._drops, "dial_failed")
            self._emit(LinkDown(key, True, f"cannot connect to {address}: {exc.strerror}"))
            return
        out = _Outbound(key, address, endpoint, sock, monitor)
        self._outbound[key] = out
        self._by_socket[sock] = out
        self._by_socket[monitor] = out
        self._poller.register(sock, zmq.POLLIN)
        self._poller.register(monitor, zmq.POLLIN)

    def _hang_up(self, key: bytes, reason: str) -> None:
        out = self._outbound.get(key)
        if out is not None:
            self._close_outbound(out, reason)
        self._forget_inbound(key, reason)

    def _close_outbound(self, out: _Outbound, reason: str | None = None) -> None:
        """Close a DEALER and its monitor; LinkDown if it was up and a reason is given."""
        self._outbound.pop(out.key, None)
        for sock in (out.socket, out.monitor):
            self._by_socket.pop(sock, None)
            try:
                self._poller.unregister(sock)
            except KeyError:
                pass
        try:
            out.socket.disable_monitor()
        except zmq.ZMQError:
            pass
        out.monitor.close(linger=0)
        out.socket.close(linger=0)
        if out.up:
            out.up = False
            with self._lock:
                self._links_out -= 1
            if reason is not None:
                self._emit(LinkDown(out.key, True, reason))

    # outbound frames

    def _handle_sends(self) -> bool:
        for _ in range(BATCH):
            try:
                key, mtype, frame = self._sends.get_nowait()
            except queue.Empty:
                return False
            self._route(key, mtype, frame)
        return not self._sends.empty()

    def _route(self, key: bytes, mtype: MessageType, frame: bytes) -> None:
        # copy=True on purpose: pyzmq's zero-copy send of large frames starts a process-wide
        # garbage-collector thread that would outlive stop().
        out = self._outbound.get(key)
        try:
            if out is not None and out.up:
                out.socket.send(frame, zmq.NOBLOCK)
            elif key in self._inbound:
                self._router.send_multipart((key, frame), zmq.NOBLOCK)
            else:
                self._count(self._drops, "no_route")
                return
        except zmq.Again:
            self._count(self._drops, "hwm")
            return
        except zmq.ZMQError as exc:
            if exc.errno == errno.EHOSTUNREACH:  # ROUTER_MANDATORY: that connection is gone
                self._count(self._drops, "unreachable")
                self._forget_inbound(key, "unreachable")
            else:
                log.warning("send failed peer=%s error=%s", key.hex()[:16], json.dumps(str(exc)))
                self._count(self._drops, "send_error")
            return
        with self._lock:
            self._messages_out[mtype.name] += 1
            self._bytes_out[mtype.name] += len(frame)

    def _handle_publications(self) -> bool:
        for _ in range(BATCH):
            try:
                topic, body, sequence = self._publications.get_nowait()
            except queue.Empty:
                return False
            try:
                self._pub.send_multipart((topic, body, sequence), zmq.NOBLOCK)  # PUB drops, never blocks
            except zmq.ZMQError as exc:
                log.warning("notification topic=%s not published: %s", topic.decode(errors="replace"), exc)
                self._count(self._drops, "publish_error")
                continue
            self._count(self._published, topic.decode(errors="replace"))
        return not self._publications.empty()

    # ZAP

    def _on_zap(self) -> None:
        for _ in range(BATCH):
            try:
                request = self._zap.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._zap.send_multipart(self._zap_reply(request))

    def _zap_reply(self, request: list[bytes]) -> list[bytes]:
        """RFC 27 reply: version, request id, status code, status text, user id, metadata."""
        if len(request) < 6 or request[0] != b"1.0":
            request_id = request[1] if len(request) > 1 else b""
            return [b"1.0", request_id, b"500", b"bad ZAP request", b"", b""]
        request_id, address, mechanism, credentials = request[1], request[3], request[5], request[6:]
        if mechanism != b"CURVE" or len(credentials) != 1 or len(credentials[0]) != KEY_SIZE:
            return [b"1.0", request_id, b"400", b"CURVE only", b"", b""]
        key = credentials[0]
        if not self.is_allowed(key):
            refusal = "key is not in the allow-list"
        elif self.is_banned(key):
            refusal = "key is banned"
        else:
            return [b"1.0", request_id, b"200", b"OK", key.hex().encode("ascii"), b""]
        self._count(self._events, "auth_refused_inbound")
        now = time.monotonic()
        if now - self._auth_reported.get(key, -AUTH_REPORT_INTERVAL_S) >= AUTH_REPORT_INTERVAL_S:
            if len(self._auth_reported) >= 1024:  # bounded: forget old reports
                self._auth_reported.clear()
            self._auth_reported[key] = now
            self._emit(AuthRefused(key, address.decode("ascii", "replace"), False, refusal))
        return [b"1.0", request_id, b"400", refusal.encode("ascii"), b"", b""]

    # inbound frames

    def _receive(self, sock: zmq.Socket) -> tuple[zmq.Frame, int] | None:
        """The next frame of `sock` and how many extra parts followed it (read and dropped)."""
        try:
            frame = sock.recv(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return None
        extra = 0
        more = frame.more
        while more:  # all parts of a message arrive together: these never block
            part = sock.recv(copy=False)
            extra += 1
            more = part.more
        return frame, extra

    def _on_router(self) -> None:
        for _ in range(BATCH):
            got = self._receive_router()
            if got is None:
                return

    def _receive_router(self) -> bool | None:
        try:
            routing_id = self._router.recv(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return None
        got = self._receive(self._router) if routing_id.more else None
        if got is None:
            return True
        frame, extra = got
        try:
            key = bytes.fromhex(frame.get(USER_ID))
        except (zmq.ZMQError, ValueError, TypeError):
            log.error("inbound message dropped reason=no_valid_property property=%s", USER_ID)
            return True
        size = len(frame)
        if self._bans and self.is_banned(key):  # its connection predates the ban
            self._count(self._events, "dropped_from_banned")
            return True
        if routing_id.bytes != key:
            if _is_generated_routing_id(routing_id.bytes):
                # The old connection of a peer that reconnected: ROUTER_HANDOVER gave its routing
                # id to the new one and renamed this one, which libzmq is closing. Its last frames
                # are the peer's own, not a spoof: dropped, never punished (punishing them banned
                # a node restarted in the clock-skew scenario).
                self._count(self._events, "dropped_from_replaced_connection")
                return True
            spoofed = routing_id.bytes
            if spoofed in self._inbound:  # ROUTER_HANDOVER gave that route to this connection
                self._forget_inbound(spoofed, "routing id taken over by another key")
            self._reject(key, RejectReason.SPOOFED, size)
            return True
        message = self._decode(key, frame, extra)
        if message is None:
            return True
        try:
            fd = frame.get(zmq.SRCFD)
        except zmq.ZMQError:
            fd = -1
        self._mark_inbound(key, fd, frame)
        self._deliver(key, message, size)
        return True

    def _on_dealer(self, out: _Outbound) -> None:
        for _ in range(BATCH):
            got = self._receive(out.socket)
            if got is None:
                return
            frame, extra = got
            if self._bans and self.is_banned(out.key):  # a hang-up is on its way
                self._count(self._events, "dropped_from_banned")
                continue
            message = self._decode(out.key, frame, extra)
            if message is None:
                continue
            if not out.up:  # the handshake event is queued before any message: read it first
                self._on_dealer_monitor(out)
                if not out.up:
                    self._link_up(out)
            self._deliver(out.key, message, len(frame))

    def _decode(self, key: bytes, frame: zmq.Frame, extra_parts: int) -> Message | None:
        if extra_parts:
            self._reject(key, RejectReason.MULTIPART, len(frame))
            return None
        try:
            return decode_message(self._magic, frame.buffer)
        except FrameError as exc:
            self._reject(key, exc.reason, len(frame))
            return None

    def _reject(self, key: bytes, reason: RejectReason, size: int) -> None:
        self._count(self._rejected, reason.value)
        self._emit(Rejected(key, reason, size))

    def _deliver(self, key: bytes, message: Message, size: int) -> None:
        name = message.TYPE.name
        with self._lock:
            self._messages_in[name] += 1
            self._bytes_in[name] += size
        self._emit(Received(key, message, size))

    # link state

    def _mark_inbound(self, key: bytes, fd: int, frame: zmq.Frame) -> None:
        current = self._inbound.get(key)
        if current is not None:
            if current == fd:
                return
            self._forget_inbound(key, "replaced by a new connection")  # a reconnect took the route over
        if fd >= 0:
            previous = self._fd_key.get(fd)
            if previous is not None and previous != key:  # the fd was reused: that connection is gone
                self._forget_inbound(previous, "disconnected")
            self._fd_key[fd] = key
        self._inbound[key] = fd
        with self._lock:
            self._links_in += 1
        try:
            address = frame.get("Peer-Address")
        except zmq.ZMQError:
            address = ""
        self._emit(LinkUp(key, False, address))

    def _forget_inbound(self, key: bytes, reason: str) -> None:
        fd = self._inbound.pop(key, None)
        if fd is None:
            return
        if self._fd_key.get(fd) == key:
            del self._fd_key[fd]
        with self._lock:
            self._links_in -= 1
        self._emit(LinkDown(key, False, reason))

    def _link_up(self, out: _Outbound) -> None:
        out.up = True
        out.failure_reported = False
        with self._lock:
            self._links_out += 1
        self._emit(LinkUp(out.key, True, out.address))

    def _on_router_monitor(self) -> None:
        """Every connection event of the ROUTER waiting now (see _turn for why all of them)."""
        while True:
            try:
                event = recv_monitor_message(self._router_monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            kind, value = event["event"], int(event["value"])
            if kind == zmq.EVENT_ACCEPTED:
                _bound_retransmission_backoff(value)
            elif kind == zmq.EVENT_DISCONNECTED:
                key = self._fd_key.get(value)
                if key is not None and self._inbound.get(key) == value:
                    self._forget_inbound(key, "disconnected")
            elif kind & _HANDSHAKE_FAILED:
                self._count(self._events, "handshake_failed_inbound")

    def _on_dealer_monitor(self, out: _Outbound) -> None:
        for _ in range(BATCH):
            try:
                event = recv_monitor_message(out.monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            kind, value = event["event"], int(event["value"])
            if kind == zmq.EVENT_CONNECTED:
                _bound_retransmission_backoff(value)
            elif kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                if not out.up:
                    self._link_up(out)
            elif kind == zmq.EVENT_DISCONNECTED:
                if out.up:
                    out.up = False
                    with self._lock:
                        self._links_out -= 1
                    self._emit(LinkDown(out.key, True, "disconnected"))
            elif kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                out.refused = True
                self._count(self._events, "auth_refused_outbound")
                self._emit(AuthRefused(out.key, out.address, True, f"the peer refused our key (ZAP status {value})"))
            elif kind & _HANDSHAKE_FAILED:
                self._count(self._events, "handshake_failed_outbound")
                if not out.failure_reported:
                    out.failure_reported = True
                    reason = "handshake failed: wrong key, or not a peerledger node"
                    self._emit(AuthRefused(out.key, out.address, True, reason))
