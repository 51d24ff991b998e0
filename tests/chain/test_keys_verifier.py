"""chain.keys.verify against its reference: pycryptodome's own EdDSA verification.

`verify` evaluates the library's check with the library's C functions but without its Python
wrappers (chain/keys.py says why). Signature validity is a consensus rule, so the two must
agree on every input, not only on valid signatures: here on valid, tampered and malformed
signatures of random keys, on edge points in R and A, and, in test_ed25519_vectors.py, on
914 edge-case vectors.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from hypothesis import given, settings
from hypothesis import strategies as st

from Crypto.Signature import eddsa

from chain.keys import SigningKey, _public_key, verify

ROOT = Path(__file__).resolve().parent.parent.parent
ORDER = 2**252 + 27742317777372353535851937790883648493
P = 2**255 - 19
VECTORS = json.loads((Path(__file__).resolve().parent.parent / "data" / "ed25519" / "cctv_ed25519vectors.json").read_text())
# Encodings of points of small order and non-canonical encodings, taken from the vectors' R.
EDGE_POINTS = sorted({bytes.fromhex(v["sig"])[:32] for v in VECTORS} | {bytes.fromhex(v["key"]) for v in VECTORS})
KEYS = [SigningKey.from_seed(bytes([i]) * 32) for i in range(8)]


def library_key(public: bytes):
    """The key as the library imports it; None for a key it refuses, or one of small order
    (which we refuse: the library lacks that rule)."""
    try:
        key = eddsa.import_public_key(public)
    except ValueError:
        return None
    point = key.pointQ.copy()
    point.double().double().double()
    return None if point.is_point_at_infinity() else key


def reference(public: bytes, message: bytes, signature: bytes) -> bool:
    """pycryptodome's verdict, plus our refusal of small-order keys."""
    key = library_key(public)
    if key is None:
        return False
    try:
        eddsa.new(key, "rfc8032").verify(message, signature)
    except ValueError:
        return False
    return True


def tamper(signature: bytes, how: int, data: bytes) -> bytes:
    r, s = signature[:32], int.from_bytes(signature[32:], "little")
    if how == 0:  # one bit flipped anywhere
        bit = int.from_bytes(data[:2], "little") % 512
        flipped = bytearray(signature)
        flipped[bit // 8] ^= 1 << (bit % 8)
        return bytes(flipped)
    if how == 1:  # S + L: the same point, a non-reduced scalar (malleability)
        return r + ((s + ORDER) % 2**256).to_bytes(32, "little")
    if how == 2:  # R replaced by an edge point
        return EDGE_POINTS[int.from_bytes(data[:4], "little") % len(EDGE_POINTS)] + signature[32:]
    if how == 3:  # R random
        return data[:32].ljust(32, b"\0") + signature[32:]
    if how == 4:  # S random, possibly >= L
        return r + data[:32].ljust(32, b"\xff")
    return signature


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(KEYS) - 1), st.binary(max_size=300), st.integers(0, 5), st.binary(min_size=32, max_size=32))
def test_verify_agrees_with_the_library_on_signed_and_tampered_input(signer, message, how, data):
    key = KEYS[signer]
    signature = tamper(key.sign(message), how, data)
    assert verify(key.public, message, signature) == reference(key.public, message, signature)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.binary(min_size=64, max_size=64), st.binary(max_size=64))
def test_verify_agrees_with_the_library_on_random_input(public, signature, message):
    assert verify(public, message, signature) == reference(public, message, signature)


def test_verify_agrees_with_the_library_on_edge_keys_and_commitments():
    rng = random.Random(7)
    signed = [(k, m, k.sign(m)) for k in KEYS for m in (b"", b"m", bytes(range(200)))]
    checked = 0
    for point in EDGE_POINTS:
        key, message, signature = rng.choice(signed)
        for public, sig in ((point, signature), (key.public, point + signature[32:])):
            assert verify(public, message, sig) == reference(public, message, sig), (point.hex(), public.hex())
            checked += 1
    assert checked == 2 * len(EDGE_POINTS) >= 60


def library_reading(public: bytes) -> bytes | None:
    """`library_key` re-encoded as the library exports it (what goes into the hash)."""
    key = library_key(public)
    return None if key is None else key.export_key(format="raw")


def our_reading(public: bytes) -> bytes | None:
    key = _public_key.__wrapped__(public)  # not the cache: each call decodes
    return None if key is None else key.encoded


def test_public_keys_are_read_as_the_library_reads_them():
    # The edge points hold every point of small order and non-canonical encodings (x = 0
    # with the sign bit set); y + p for each y < 19 is the other non-canonical kind.
    non_canonical = [((y + P) | sign << 255).to_bytes(32, "little") for y in range(19) for sign in (0, 1)]
    keys = EDGE_POINTS + non_canonical + [k.public for k in KEYS]
    readings = [(our_reading(k), library_reading(k)) for k in keys]
    assert all(ours == theirs for ours, theirs in readings), [k.hex() for k, r in zip(keys, readings) if r[0] != r[1]]
    assert {theirs is None for _, theirs in readings} == {True, False}


@settings(max_examples=500, deadline=None)
@given(st.binary(min_size=32, max_size=32))
def test_random_public_keys_are_read_as_the_library_reads_them(public):
    assert our_reading(public) == library_reading(public)


def test_a_valid_signature_verifies_and_the_same_one_on_another_message_does_not():
    key = KEYS[0]
    signature = key.sign(b"pay 10 to bob")
    assert verify(key.public, b"pay 10 to bob", signature)
    assert not verify(key.public, b"pay 11 to bob", signature)
    assert not verify(KEYS[1].public, b"pay 10 to bob", signature)
    assert verify(memoryview(key.public), memoryview(b"pay 10 to bob"), memoryview(signature))


# pycryptodome reaches its C code through cffi when cffi is importable, through ctypes
# otherwise; chain.keys uses the library's own handle on it, which must work through both.
BACKEND_CHECK = """
import json, sys
if sys.argv[1] == "ctypes":
    sys.modules["cffi"] = None  # what a machine without cffi has
from Crypto.Util import _raw_api
from chain.keys import verify
data = "tests/data/ed25519/"
vectors = json.load(open(data + "cctv_ed25519vectors.json"))
pinned = json.load(open(data + "pinned_verdicts.json"))["verdicts"]
now = {str(v["number"]): "accept" if verify(bytes.fromhex(v["key"]), v["msg"].encode(), bytes.fromhex(v["sig"]))
       else "reject" for v in vectors}
print(_raw_api.backend, sum(now[n] != pinned[n] for n in pinned), len(pinned))
"""


@pytest.mark.parametrize("backend", ["cffi", "ctypes"])
def test_every_pinned_verdict_holds_through_either_ffi_backend(backend):
    result = subprocess.run([sys.executable, "-c", BACKEND_CHECK, backend], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [backend, "0", "914"], result.stdout
