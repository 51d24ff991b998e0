"""What the transport tells the node: events, delivered through the `on_event` callback.

The callback runs in the transport thread, so it must be cheap (hand the event to an actor
with `tell` and return); an exception from it is logged and the loop goes on. Events of one
link arrive in order: LinkUp, then Received/Rejected, then LinkDown.

- LinkUp(peer, outbound, address): a link to `peer` can carry messages.
  Outbound: our DEALER finished the CURVE handshake; this happens again after every
  reconnect, and each time the peer must be sent HELLO again (zmq reconnects silently
  and drops what was in flight). `address` is the "host:port" we dialled.
  Inbound: the first valid message from a key we have no inbound link with arrived over
  our ROUTER (it is delivered right after). `address` is the peer's IP (its port is
  ephemeral and not worth dialling).
- LinkDown(peer, outbound, reason): that link is gone ("disconnected" - closed or
  heartbeat timeout -, "hung up", "banned", "unreachable", "replaced by a new
  connection"...). zmq reconnects an outbound link by itself unless it was hung up,
  banned or refused; an inbound link comes back when the peer speaks again.
- Received(peer, message, size): a valid message; `size` is the frame's byte count.
- Rejected(peer, reason, size): a frame from `peer` was dropped (malformed, oversized,
  another network or version, unknown type, multipart, or a spoofed routing id).
  `peer` is always the CURVE-authenticated key, so it is safe to score and ban.
- AuthRefused(peer, address, outbound, reason): a CURVE handshake failed.
  Inbound: our allow-list or a ban refused `peer` (its key) connecting from `address`
  (an IP); reported at most once a minute per key.
  Outbound: the node we dialled refused our key (zmq will NOT retry: hang_up and dial
  again later), or the handshake failed (wrong server key, not a peerledger node; zmq
  retries with backoff, reported once per dial until a handshake succeeds).

Peers are identified by their 32-byte CURVE public key everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from transport.messages import Message, RejectReason


@dataclass(frozen=True, slots=True)
class LinkUp:
    peer: bytes
    outbound: bool
    address: str


@dataclass(frozen=True, slots=True)
class LinkDown:
    peer: bytes
    outbound: bool
    reason: str


@dataclass(frozen=True, slots=True)
class Received:
    peer: bytes
    message: Message
    size: int


@dataclass(frozen=True, slots=True)
class Rejected:
    peer: bytes
    reason: RejectReason
    size: int


@dataclass(frozen=True, slots=True)
class AuthRefused:
    peer: bytes
    address: str
    outbound: bool
    reason: str


Event = LinkUp | LinkDown | Received | Rejected | AuthRefused
