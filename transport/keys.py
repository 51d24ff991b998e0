"""Node identity, peer addresses and zmq endpoints.

A node's id is its long-term CURVE public key: 32 raw bytes (zmq's z85 text form is only
used at the zmq API). A peer address names the key with the place, the way Lightning node
URIs do, because a CURVE client must know the server's key before it connects:

    <64 hex chars of the public key>@host:port      host: IPv4, hostname, or [IPv6]

Key files are written by the application layer, not here.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

import zmq
import zmq.utils.z85

KEY_SIZE = 32  # raw CURVE key
Z85_KEY_SIZE = 40  # the same key as z85 text
_HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")
# RFC 1123 hostname: dot-separated labels of letters, digits and inner hyphens.
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
MAX_HOSTNAME = 253


def generate_node_keypair() -> tuple[bytes, bytes]:
    """A fresh CURVE keypair as (public, secret), 32 raw bytes each."""
    public, secret = zmq.curve_keypair()
    return zmq.utils.z85.decode(public), zmq.utils.z85.decode(secret)


def public_key_of(secret: bytes) -> bytes:
    """The public key that belongs to a 32-byte secret key."""
    _check_key(secret, "secret key")
    return zmq.utils.z85.decode(zmq.curve_public(zmq.utils.z85.encode(secret)))


def to_z85(key: bytes) -> bytes:
    _check_key(key, "key")
    return zmq.utils.z85.encode(key)


def from_z85(text: bytes | str) -> bytes:
    if isinstance(text, str):
        text = text.encode("ascii")
    if len(text) != Z85_KEY_SIZE:
        raise ValueError(f"a z85 key has {Z85_KEY_SIZE} characters, got {len(text)}")
    try:
        return zmq.utils.z85.decode(text)
    except (ValueError, KeyError, IndexError) as exc:
        raise ValueError(f"not a z85 key: {exc}") from None


def key_from_hex(text: str) -> bytes:
    if not _HEX_KEY.fullmatch(text):
        raise ValueError(f"a node key is 64 hex characters, got {text[:80]!r}")
    return bytes.fromhex(text)


def _check_key(key: bytes, what: str) -> None:
    if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_SIZE:
        size = len(key) if isinstance(key, (bytes, bytearray)) else type(key).__name__
        raise ValueError(f"{what} must be {KEY_SIZE} raw bytes, got {size}")


def is_ipv6(host: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address)
    except ValueError:
        return False


def check_host(host: str) -> str:
    """`host` if it is an IPv4/IPv6 address or a valid hostname (no brackets), else ValueError."""
    if not host:
        raise ValueError("host is empty")
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    if ":" in host:
        raise ValueError(f"host {host!r} is not a valid IPv6 address")
    name = host[:-1] if host.endswith(".") else host
    if len(name) > MAX_HOSTNAME or not all(_LABEL.fullmatch(label) for label in name.split(".")):
        raise ValueError(f"host {host!r} is not an IP address or a valid hostname")
    return host


def check_port(port: int, *, allow_zero: bool = False) -> int:
    if isinstance(port, bool) or not isinstance(port, int):
        raise ValueError(f"port must be an integer, got {port!r}")
    low = 0 if allow_zero else 1
    if not low <= port <= 65535:
        raise ValueError(f"port {port} is out of range {low}..65535")
    return port


def format_host_port(host: str, port: int) -> str:
    """"host:port", with brackets around an IPv6 host."""
    return f"[{host}]:{port}" if is_ipv6(host) else f"{host}:{port}"


def parse_host_port(text: str) -> tuple[str, int]:
    """("host", port) from "host:port" or "[v6]:port"; ValueError says what is wrong."""
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError(f"{text!r}: '[' without a closing ']'")
        host, rest = text[1:close], text[close + 1 :]
        if not is_ipv6(host):
            raise ValueError(f"{text!r}: {host!r} in brackets is not an IPv6 address")
        if not rest.startswith(":"):
            raise ValueError(f"{text!r}: expected ':port' after ']'")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"{text!r}: missing ':port'")
        if ":" in host:
            raise ValueError(f"{text!r}: an IPv6 host must be written in brackets, like [::1]:9000")
        check_host(host)
    if not port_text.isascii() or not port_text.isdigit():
        raise ValueError(f"{text!r}: port {port_text!r} is not a number")
    return host, check_port(int(port_text))


@dataclass(frozen=True, slots=True)
class PeerAddress:
    """Where a node listens and which key it must prove it holds."""

    key: bytes
    host: str
    port: int

    def __post_init__(self) -> None:
        _check_key(self.key, "peer key")
        check_host(self.host)
        check_port(self.port)

    @property
    def endpoint(self) -> str:
        return tcp_endpoint(self.host, self.port)

    def __str__(self) -> str:
        return format_peer_address(self.key, self.host, self.port)


def parse_peer_address(text: str) -> PeerAddress:
    """PeerAddress from "<64 hex key>@host:port"; the ValueError names the faulty part."""
    text = text.strip()
    key_text, sep, place = text.partition("@")
    if not sep:
        raise ValueError(f"{text!r}: a peer address is <64 hex chars of the node key>@host:port, '@' is missing")
    if not _HEX_KEY.fullmatch(key_text):
        raise ValueError(f"{text!r}: the node key before '@' must be 64 hex characters, got {len(key_text)} characters")
    host, port = parse_host_port(place)
    return PeerAddress(bytes.fromhex(key_text), host, port)


def format_peer_address(key: bytes, host: str, port: int) -> str:
    _check_key(key, "peer key")
    return f"{key.hex()}@{format_host_port(host, port)}"


def tcp_endpoint(host: str, port: int) -> str:
    """The zmq endpoint for host and port ("*" or port 0 = any, for binding)."""
    if host != "*":
        check_host(host)
    check_port(port, allow_zero=True)
    port_text = "*" if port == 0 else str(port)
    return f"tcp://[{host}]:{port_text}" if is_ipv6(host) else f"tcp://{host}:{port_text}"
