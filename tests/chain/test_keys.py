"""Keys, signatures and text addresses: what a wallet user types and stores."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chain.errors import ChainError, Code
from chain.keys import (
    ADDRESS_SIZE,
    SigningKey,
    address_from_text,
    address_of,
    address_to_text,
    verify,
)
from tests.chainbuilder import key

addresses = st.binary(min_size=ADDRESS_SIZE, max_size=ADDRESS_SIZE)

# What a user may type instead of the right character: every other base32 character, the
# characters base32 leaves out because they look alike, capitals, look-alikes from
# other scripts, and separators.
TYPO_ALPHABET = sorted(
    set(string.ascii_lowercase + "234567" + "0189" + string.ascii_uppercase + "-_=+ ./:" + "ıοаеΙ\u00a0")
)


def _refused(text) -> ChainError:
    with pytest.raises(ChainError) as err:
        address_from_text(text)
    assert err.value.code is Code.BAD_ADDRESS
    return err.value


@given(addresses)
def test_address_text_round_trip(address):
    text = address_to_text(address)
    assert text.startswith("pl") and len(text) == 41
    assert set(text[2:]) <= set("abcdefghijklmnopqrstuvwxyz234567")
    assert address_from_text(text) == address


def test_known_address_text():
    # Pins the text form: a change here makes every address users hold unreadable.
    assert address_to_text(bytes(20)) == "plaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaadbftq5q"
    # and the rule behind it, computed independently: pl + base32(address + checksum)
    import base64
    import hashlib

    address = bytes(range(20))
    checksum = hashlib.sha256(b"peerledger/checksum" + address).digest()[:4]
    expected = "pl" + base64.b32encode(address + checksum).decode().rstrip("=").lower()
    assert address_to_text(address) == expected


@pytest.mark.parametrize("index", range(6))
def test_every_single_character_typo_is_refused(index):
    text = address_to_text(key(index).address)
    for position in range(len(text)):
        for char in TYPO_ALPHABET:
            if char == text[position]:
                continue
            typo = text[:position] + char + text[position + 1 :]
            if typo.strip() == text:  # a typed space at either end is trimmed, not a typo
                continue
            _refused(typo)


@pytest.mark.parametrize("index", range(6))
def test_every_dropped_doubled_or_swapped_character_is_refused(index):
    text = address_to_text(key(index).address)
    for i in range(len(text)):
        _refused(text[:i] + text[i + 1 :])
        _refused(text[:i] + text[i] + text[i:])
        if i + 1 < len(text) and text[i] != text[i + 1]:
            _refused(text[:i] + text[i + 1] + text[i] + text[i + 2 :])


@given(addresses)
def test_non_canonical_forms_are_refused(address):
    text = address_to_text(address)
    _refused(text.upper())
    _refused("pl" + text[2:].upper())
    _refused(text + "=")
    _refused(text + "=======")
    _refused("PL" + text[2:])
    _refused(text[2:])  # no prefix
    _refused("pl" + text)  # doubled prefix


@given(addresses)
def test_nonzero_padding_bits_are_refused(address):
    # 24 bytes are 192 bits: the 39th character carries 2 bits and 3 zero padding bits.
    # A decoder ignores the padding, so the 7 other values of those bits spell the same
    # bytes; they must not be accepted as other spellings of the address.
    text = address_to_text(address)
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    last = alphabet.index(text[-1])
    assert last & 0b111 == 0
    for pad in range(1, 8):
        _refused(text[:-1] + alphabet[last | pad])


def test_surrounding_whitespace_is_trimmed():
    # Deliberate leniency for copy and paste; the bytes returned are the same address.
    address = key(0).address
    assert address_from_text("  " + address_to_text(address) + "\n") == address


@pytest.mark.parametrize("value", [None, b"pl", 42, "", "pl", "x" * 41, "pl" + "a" * 200])
def test_garbage_is_refused_with_bad_address(value):
    _refused(value)


def test_bad_address_does_not_penalise():
    # a user's typo in the API is not a peer's misbehaviour
    assert not Code.BAD_ADDRESS.penalise


def test_address_to_text_refuses_wrong_size():
    with pytest.raises(ValueError):
        address_to_text(bytes(19))


def test_address_of_depends_on_every_key_byte():
    public = key(0).public
    assert len(address_of(public)) == ADDRESS_SIZE
    seen = {address_of(public)}
    for i in range(len(public)):
        changed = bytearray(public)
        changed[i] ^= 1
        seen.add(address_of(bytes(changed)))
    assert len(seen) == len(public) + 1


# --- keys and signatures ---------------------------------------------------------------------


def test_keys_from_seed_are_deterministic():
    seed = bytes(range(32))
    a, b = SigningKey.from_seed(seed), SigningKey.from_seed(seed)
    assert a.public == b.public and a.seed == seed and a.address == address_of(a.public)
    assert a.sign(b"m") == b.sign(b"m")
    with pytest.raises(ValueError):
        SigningKey.from_seed(bytes(31))


def test_rfc8032_test_vector_1():
    # RFC 8032 section 7.1, TEST 1: the verifier is plain Ed25519, not a variant.
    k = SigningKey.from_seed(bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"))
    assert k.public.hex() == "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    sig = k.sign(b"")
    assert sig.hex() == (
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
    )
    assert verify(k.public, b"", sig)


@settings(max_examples=20, deadline=None)
@given(st.binary(max_size=300))
def test_sign_verify(message):
    k = key(3)
    sig = k.sign(message)
    assert verify(k.public, message, sig)
    assert not verify(key(4).public, message, sig)
    assert not verify(k.public, message + b"x", sig)


@pytest.mark.parametrize(
    "public,signature",
    [
        (bytes(31), bytes(64)),
        (bytes(33), bytes(64)),
        (b"\xff" * 32, bytes(64)),  # not a point on the curve
        (None, bytes(64)),
    ],
)
def test_verify_returns_false_never_raises(public, signature):
    if public is None:
        public = key(0).public
        signature = bytes(63)
    assert verify(public, b"message", signature) is False


def test_generated_keys_differ():
    assert SigningKey.generate().public != SigningKey.generate().public


# --- PKCS#8 ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def encrypted():
    return key(7).export_pkcs8("correct horse battery staple")


def test_pkcs8_with_passphrase_round_trips(encrypted):
    assert b"ENCRYPTED PRIVATE KEY" in encrypted
    assert key(7).seed not in encrypted
    back = SigningKey.import_pkcs8(encrypted, "correct horse battery staple")
    assert back.seed == key(7).seed and back.public == key(7).public
    assert verify(key(7).public, b"m", back.sign(b"m"))


@pytest.mark.parametrize("wrong", ["correct horse battery stapl", "Correct horse battery staple", None])
def test_pkcs8_wrong_or_missing_passphrase_fails(encrypted, wrong):
    with pytest.raises(ValueError):
        SigningKey.import_pkcs8(encrypted, wrong)


def test_pkcs8_tampered_file_fails(encrypted):
    lines = encrypted.split(b"\n")
    body = bytearray(lines[1])
    body[20] = ord("A") if body[20] != ord("A") else ord("B")
    lines[1] = bytes(body)
    with pytest.raises(ValueError):
        SigningKey.import_pkcs8(b"\n".join(lines), "correct horse battery staple")


def test_pkcs8_without_passphrase_round_trips():
    pem = key(8).export_pkcs8(None)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert SigningKey.import_pkcs8(pem, None).seed == key(8).seed


def test_pkcs8_refuses_other_keys():
    from Crypto.PublicKey import ECC

    p256 = ECC.generate(curve="P-256").export_key(format="PEM").encode()
    public_only = key(0)._key.public_key().export_key(format="PEM").encode()
    for data in (p256, public_only, b"not a key"):
        with pytest.raises(ValueError):
            SigningKey.import_pkcs8(data, None)
