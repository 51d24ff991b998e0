"""Test helpers for real transports on loopback: bounded waits, an event log, a raw peer."""

from __future__ import annotations

import selectors
import socket
import threading
import time
from collections.abc import Callable

import zmq
from zmq.utils.monitor import recv_monitor_message

from transport.events import Event, LinkDown, LinkUp, Received, Rejected
from transport.keys import generate_node_keypair

DEFAULT_WAIT = 5.0  # seconds; every wait in these tests is bounded


def wait_until(predicate: Callable[[], object], timeout: float = DEFAULT_WAIT, what: str = "condition") -> object:
    """Poll `predicate` until it is truthy; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


class EventLog:
    """An on_event callback that records events and lets a test wait for one."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._cond = threading.Condition()

    def __call__(self, event: Event) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def snapshot(self) -> list[Event]:
        with self._cond:
            return list(self.events)

    def wait_for(self, predicate: Callable[[Event], bool], timeout: float = DEFAULT_WAIT, after: int = 0) -> Event:
        """The first event (from index `after`) matching `predicate`, waiting up to `timeout`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event in self.events[after:]:
                    if predicate(event):
                        return event
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no matching event within {timeout} s; got {self.events!r}"[:4000])
                self._cond.wait(left)

    def link_up(self, peer: bytes, outbound: bool, **kw) -> Event:
        return self.wait_for(lambda e: isinstance(e, LinkUp) and e.peer == peer and e.outbound == outbound, **kw)

    def link_down(self, peer: bytes, outbound: bool, **kw) -> Event:
        return self.wait_for(lambda e: isinstance(e, LinkDown) and e.peer == peer and e.outbound == outbound, **kw)

    def received(self, peer: bytes, message, **kw) -> Event:
        return self.wait_for(lambda e: isinstance(e, Received) and e.peer == peer and e.message == message, **kw)

    def rejected(self, peer: bytes, reason, **kw) -> Event:
        return self.wait_for(lambda e: isinstance(e, Rejected) and e.peer == peer and e.reason is reason, **kw)

    def of_type(self, cls: type) -> list[Event]:
        return [e for e in self.snapshot() if isinstance(e, cls)]


class RawPeer:
    """A bare zmq CURVE DEALER that speaks whatever bytes a test gives it (a hostile peer)."""

    def __init__(
        self, server_key: bytes, port: int, *, keypair=None, routing_id: bytes | None = None, rcvhwm: int = 1000
    ) -> None:
        self.public, self.secret = keypair or generate_node_keypair()
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.rcvhwm = rcvhwm
        self.sock.rcvbuf = 64 * 1024 if rcvhwm < 10 else -1  # a slow reader: small kernel buffer too
        self.sock.curve_publickey = self.public
        self.sock.curve_secretkey = self.secret
        self.sock.curve_serverkey = server_key
        self.sock.routing_id = self.public if routing_id is None else routing_id
        self.sock.reconnect_ivl = 50
        self.monitor = self.sock.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
        )
        self.monitor.linger = 0
        self.sock.connect(f"tcp://127.0.0.1:{port}")

    def wait_event(self, kind: int, timeout: float = DEFAULT_WAIT) -> dict:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if self.monitor.poll(int(left * 1000) + 1):
                event = recv_monitor_message(self.monitor)
                if event["event"] == kind:
                    return event
        raise AssertionError(f"raw peer: no monitor event {kind} within {timeout} s")

    def send(self, *parts: bytes) -> None:
        self.sock.send_multipart(list(parts), zmq.NOBLOCK)

    def recv(self, timeout: float = DEFAULT_WAIT) -> bytes | None:
        if self.sock.poll(int(timeout * 1000)):
            return self.sock.recv(zmq.NOBLOCK)
        return None

    def close(self) -> None:
        self.sock.disable_monitor()
        self.monitor.close(linger=0)
        self.sock.close(linger=0)
        self.ctx.term()


class StallingProxy:
    """A TCP relay on loopback that can stop relaying while keeping its connections open.

    A stalled relay is a link that neither closes nor carries anything (a Wi-Fi drop, a
    frozen router): only heartbeats can tell it is dead.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stalled = threading.Event()
        self._closed = threading.Event()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.listener, selectors.EVENT_READ)
        self._sockets: list[socket.socket] = [self.listener]
        self._thread = threading.Thread(target=self._run, name="stalling-proxy", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._closed.is_set():
            for key, _ in self._selector.select(0.05):
                sock = key.fileobj
                if sock is self.listener:
                    client, _ = self.listener.accept()
                    upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
                    upstream.settimeout(2)
                    client.settimeout(2)
                    self._sockets += [client, upstream]
                    self._selector.register(client, selectors.EVENT_READ, upstream)
                    self._selector.register(upstream, selectors.EVENT_READ, client)
                    continue
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    for s in (sock, key.data):
                        try:
                            self._selector.unregister(s)
                        except (KeyError, ValueError):
                            pass
                        s.close()
                elif not self.stalled.is_set():
                    try:
                        key.data.sendall(data)
                    except OSError:
                        pass
                # stalled: bytes are read and thrown away, and the connection stays open

    def close(self) -> None:
        self._closed.set()
        self._thread.join(2.0)
        self._selector.close()
        for sock in self._sockets:
            sock.close()
