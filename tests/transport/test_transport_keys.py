"""Node keys and "<hex key>@host:port" peer addresses."""

from __future__ import annotations

import pytest

from transport.keys import (
    KEY_SIZE,
    PeerAddress,
    format_host_port,
    format_peer_address,
    from_z85,
    generate_node_keypair,
    key_from_hex,
    parse_host_port,
    parse_peer_address,
    public_key_of,
    tcp_endpoint,
    to_z85,
)

KEY = bytes(range(32))
HEX = KEY.hex()


def test_keypair_is_raw_32_bytes_and_consistent():
    public, secret = generate_node_keypair()
    assert len(public) == len(secret) == KEY_SIZE
    assert public_key_of(secret) == public
    assert generate_node_keypair()[0] != public


def test_z85_round_trip():
    text = to_z85(KEY)
    assert len(text) == 40
    assert from_z85(text) == KEY == from_z85(text.decode())
    with pytest.raises(ValueError, match="40 characters"):
        from_z85(b"abc")
    with pytest.raises(ValueError):
        to_z85(b"short")


def test_key_from_hex():
    assert key_from_hex(HEX.upper()) == KEY
    with pytest.raises(ValueError, match="64 hex"):
        key_from_hex(HEX[:-1] + "g")


@pytest.mark.parametrize(
    "text, host, port",
    [
        (f"{HEX}@127.0.0.1:9000", "127.0.0.1", 9000),
        (f"{HEX}@pi-node-3.local:1", "pi-node-3.local", 1),
        (f"{HEX}@[::1]:65535", "::1", 65535),
        (f"{HEX}@[2001:db8::7]:9000", "2001:db8::7", 9000),
        (f"  {HEX.upper()}@localhost:9000\n", "localhost", 9000),
    ],
)
def test_parse_peer_address(text, host, port):
    address = parse_peer_address(text)
    assert address == PeerAddress(KEY, host, port)
    assert parse_peer_address(str(address)) == address
    assert address.endpoint == tcp_endpoint(host, port)


@pytest.mark.parametrize(
    "text, complaint",
    [
        ("127.0.0.1:9000", "'@' is missing"),
        (f"{HEX[:-2]}@127.0.0.1:9000", "64 hex characters, got 62"),
        (f"{HEX[:-1]}z@127.0.0.1:9000", "64 hex characters"),
        (f"{HEX}@127.0.0.1", "missing ':port'"),
        (f"{HEX}@127.0.0.1:", "port '' is not a number"),
        (f"{HEX}@127.0.0.1:http", "not a number"),
        (f"{HEX}@127.0.0.1:0", "out of range"),
        (f"{HEX}@127.0.0.1:65536", "out of range"),
        (f"{HEX}@127.0.0.1:٣", "not a number"),  # a non-ASCII digit
        (f"{HEX}@:9000", "host is empty"),
        (f"{HEX}@::1:9000", "in brackets"),
        (f"{HEX}@[::1:9000", "closing ']'"),
        (f"{HEX}@[::1]9000", "':port' after ']'"),
        (f"{HEX}@[10.0.0.1]:9000", "not an IPv6 address"),
        (f"{HEX}@bad_host!:9000", "not an IP address or a valid hostname"),
        (f"{HEX}@-bad.example:9000", "valid hostname"),
        (f"{HEX}@{'a' * 64}.example:9000", "valid hostname"),
    ],
)
def test_parse_peer_address_errors_name_the_problem(text, complaint):
    with pytest.raises(ValueError, match=complaint.replace("[", r"\[").replace("(", r"\(")):
        parse_peer_address(text)


def test_format_peer_address():
    assert format_peer_address(KEY, "10.1.2.3", 9000) == f"{HEX}@10.1.2.3:9000"
    assert format_peer_address(KEY, "::1", 9000) == f"{HEX}@[::1]:9000"
    with pytest.raises(ValueError):
        format_peer_address(b"short", "::1", 9000)


def test_host_port_helpers():
    assert format_host_port("::1", 5) == "[::1]:5"
    assert parse_host_port("[::1]:5") == ("::1", 5)
    assert parse_host_port("example.org:5") == ("example.org", 5)


def test_tcp_endpoint():
    assert tcp_endpoint("127.0.0.1", 9000) == "tcp://127.0.0.1:9000"
    assert tcp_endpoint("::1", 9000) == "tcp://[::1]:9000"
    assert tcp_endpoint("0.0.0.0", 0) == "tcp://0.0.0.0:*"
    assert tcp_endpoint("*", 9000) == "tcp://*:9000"
    with pytest.raises(ValueError):
        tcp_endpoint("bad host", 1)
    with pytest.raises(ValueError):
        tcp_endpoint("127.0.0.1", 70000)


def test_peer_address_validates_its_fields():
    with pytest.raises(ValueError):
        PeerAddress(KEY, "127.0.0.1", 0)
    with pytest.raises(ValueError):
        PeerAddress(b"\x00" * 31, "127.0.0.1", 1)
