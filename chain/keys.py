"""Ed25519 keys and signatures (pycryptodome only) and human-readable addresses.

Signature validity is a consensus rule, so there is exactly one verifier: RFC 8032 as
pycryptodome's EdDSA module decides it, plus one rule of ours: public keys of small order are
refused (they verify forged signatures). The verdict on every C2SP/CCTV edge-case vector is
pinned by a test, so a library upgrade that changes it fails loudly instead of splitting the
network.

Verification is the most expensive thing a node does. `verify` evaluates pycryptodome's own
check - the same C functions of its Ed25519 module, the same decoding, the same cofactored
equation - without the Python wrappers around them, whose big-integer and pointer objects
cost about a third of each verification, all of it under the GIL (`_check`). A property test
compares it with `eddsa.new(key, "rfc8032").verify` on valid, tampered and edge-case input.
Public keys are read the same way (`_public_key`: the library's C decoding, a seventh of a
verification where its import took half of one) and cached.
"""

from __future__ import annotations

import base64
import functools
import hashlib

from Crypto.PublicKey import ECC
from Crypto.Signature import eddsa
from Crypto.PublicKey._point import _curves
from Crypto.Util._raw_api import VoidPointer, c_size_t, c_uint8_ptr, c_uint8_ptr_out, null_pointer

from chain.encoding import sha256
from chain.errors import ChainError, Code

PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64
ADDRESS_SIZE = 20
ADDRESS_PREFIX = "pl"
_CHECKSUM_SIZE = 4
ZERO_ADDRESS = bytes(ADDRESS_SIZE)


class SigningKey:
    """A private Ed25519 key. The seed never leaves this object except through export."""

    __slots__ = ("_key", "public")

    def __init__(self, key: ECC.EccKey) -> None:
        self._key = key
        self.public: bytes = key.public_key().export_key(format="raw")

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(ECC.generate(curve="Ed25519"))

    @classmethod
    def from_seed(cls, seed: bytes) -> SigningKey:
        if len(seed) != 32:
            raise ValueError("an Ed25519 seed is 32 bytes")
        return cls(eddsa.import_private_key(seed))

    @property
    def seed(self) -> bytes:
        return self._key.seed

    @property
    def address(self) -> bytes:
        return address_of(self.public)

    def sign(self, message: bytes) -> bytes:
        return eddsa.new(self._key, "rfc8032").sign(message)

    def export_pkcs8(self, passphrase: str | None) -> bytes:
        """PEM; with a passphrase it is encrypted with scrypt and AES-256-GCM."""
        if passphrase:
            return self._key.export_key(
                format="PEM",
                passphrase=passphrase,
                protection="scryptAndAES256-GCM",
            ).encode()
        return self._key.export_key(format="PEM").encode()

    @classmethod
    def import_pkcs8(cls, data: bytes, passphrase: str | None) -> SigningKey:
        key = ECC.import_key(data, passphrase=passphrase or None)
        if key.curve != "Ed25519" or not key.has_private():
            raise ValueError("not an Ed25519 private key")
        return cls(key)


# pycryptodome's own handle on the C functions of its Ed25519 module, the ones its EdDSA
# verification calls, loaded once by the library for whichever FFI backend it uses (cffi
# refuses a second declaration of the same functions, so we do not load them ourselves).
_ED25519 = _curves["Ed25519"].rawlib
_ORDER = 2**252 + 27742317777372353535851937790883648493  # L, the order of the base point
_SIZE = c_size_t(32)


def _new_point(x: int, y: int) -> object:
    out = VoidPointer()
    if _ED25519.new_point(out.address_of(), c_uint8_ptr(x.to_bytes(32, "big")),
                          c_uint8_ptr(y.to_bytes(32, "big")), _SIZE, null_pointer):
        raise ValueError("not a point of Ed25519")
    return out.get()


def _clone(point: object) -> object:
    out = VoidPointer()
    if _ED25519.clone(out.address_of(), point):
        raise MemoryError("cannot copy an Ed25519 point")
    return out.get()


# Shared by every thread, only ever read (cloned, compared): a point is four arrays of limbs,
# and the C functions keep no state of their own.
_BASE = _new_point(0x216936D3CD6E53FEC0A4E231FDD6DC5C692CC7609525A7B2C9562D608F25D51A,
                   0x6666666666666666666666666666666666666666666666666666666666666658)
_IDENTITY = _new_point(0, 1)


class _PublicKey:
    """A parsed public key: its point in C memory (freed with this object) and the encoding
    that goes into the hash, pycryptodome's re-encoding of it (not the bytes received, which
    may be a non-canonical encoding of the same point)."""

    __slots__ = ("point", "encoded")

    def __init__(self, point: object) -> None:
        self.point = point  # owned from here: freed with this object, also if _encode fails
        self.encoded = _encode(point)

    def __del__(self, free=_ED25519.free_point) -> None:  # bound now: at exit globals are gone
        if self.point is not None:
            free(self.point)


# Both caches are sized for the senders active at once, not for every sender ever seen: at
# 65,536 entries the keys took 25 MB (half of them refused keys, cached too) and the
# addresses 13 MB, much of an idle node's budget on a network of many occasional senders.
# A miss costs 37 us here and 0.5 us below.
KEY_CACHE = 8192


@functools.lru_cache(maxsize=KEY_CACHE)
def _public_key(public: bytes) -> _PublicKey | None:
    """`public` as `eddsa.import_public_key` reads it - the same C decoding, which accepts and
    refuses the same encodings - without the library's round trip of the point through big
    integers and a second point (a third of a verification when a sender is new); None when
    the library refuses it or it has small order."""
    out = VoidPointer()
    if _ED25519.decode_point(out.address_of(), c_uint8_ptr(public), _SIZE, null_pointer):
        return None
    key = _PublicKey(out.get())
    if _has_small_order(key.point):
        # A small-order key verifies forged signatures (the all-zero key accepts an all-zero
        # signature on any message): whatever it "signs" proves nothing, so it signs nothing.
        return None
    return key


def _has_small_order(point: object) -> bool:
    """[8]P == O: 8P in three doublings (microseconds; a scalar multiply takes a hundred)."""
    lib = _ED25519
    multiple = _clone(point)
    try:
        if lib.double(multiple) or lib.double(multiple) or lib.double(multiple):
            raise ValueError("Ed25519 point arithmetic failed")
        return lib.cmp(multiple, _IDENTITY) == 0
    finally:
        lib.free_point(multiple)


def _encode(point: object) -> bytes:
    """RFC 8032 encoding, as the library exports a key: y little-endian, x's parity on top."""
    x, y = bytearray(32), bytearray(32)
    with c_uint8_ptr_out(x) as x_out, c_uint8_ptr_out(y) as y_out:
        if _ED25519.get_xy(x_out, y_out, _SIZE, point):
            raise ValueError("cannot read an Ed25519 point")
    y.reverse()  # get_xy writes big-endian
    y[31] |= (x[31] & 1) << 7
    return bytes(y)


def _check(key: _PublicKey, message: bytes, signature: bytes) -> bool:
    """RFC 8032 section 5.1.7 as pycryptodome's `_verify_ed25519` does it: R decoded by the
    same C function, S < L, k = SHA-512(R || A || M) mod L, and the cofactored equation
    [8][S]B == [8]R + [8][k]A, evaluated as [8]([S]B - R - [k]A) == O (the same test: the
    group law, not an approximation of it). An error of the C library is raised, never turned
    into a verdict."""
    lib = _ED25519
    out = VoidPointer()
    if lib.decode_point(out.address_of(), c_uint8_ptr(signature[:32]), _SIZE, null_pointer):
        return False
    r_point = out.get()
    sb = ka = None
    try:
        s = int.from_bytes(signature[32:], "little")
        if s >= _ORDER:
            return False
        digest = hashlib.sha512(signature[:32])
        digest.update(key.encoded)
        digest.update(message)
        k = int.from_bytes(digest.digest(), "little") % _ORDER
        sb = _clone(_BASE)
        ka = _clone(key.point)
        if (lib.scalar_public(sb, c_uint8_ptr(s.to_bytes(32, "big")), _SIZE)
                or lib.scalar_public(ka, c_uint8_ptr(k.to_bytes(32, "big")), _SIZE)
                or lib.add(ka, r_point) or lib.neg(ka) or lib.add(sb, ka)
                or lib.double(sb) or lib.double(sb) or lib.double(sb)):
            raise ValueError("Ed25519 point arithmetic failed")
        return lib.cmp(sb, _IDENTITY) == 0
    finally:
        for point in (r_point, sb, ka):
            if point is not None:
                lib.free_point(point)


def verify(public: bytes, message: bytes, signature: bytes) -> bool:
    """True if `signature` is a valid RFC 8032 signature of `message` by `public`."""
    if len(public) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
        return False
    key = _public_key(bytes(public))
    if key is None:
        return False
    return _check(key, message, signature)


def address_of(public: bytes) -> bytes:
    """The 20-byte account address of a public key."""
    return _address_of(bytes(public))


@functools.lru_cache(maxsize=KEY_CACHE)
def _address_of(public: bytes) -> bytes:
    # Asked for every transaction in every block and mempool check, of few distinct senders.
    return sha256(b"peerledger/address" + public)[:ADDRESS_SIZE]


def _checksum(address: bytes) -> bytes:
    return sha256(b"peerledger/checksum" + address)[:_CHECKSUM_SIZE]


def address_to_text(address: bytes) -> str:
    """`pl` + lowercase base32 of the address and a 4-byte checksum (39 characters)."""
    if len(address) != ADDRESS_SIZE:
        raise ValueError("an address is 20 bytes")
    body = base64.b32encode(address + _checksum(address)).decode().rstrip("=").lower()
    return ADDRESS_PREFIX + body


def address_from_text(text: str) -> bytes:
    """Parse a text address; a mistyped one fails its checksum and is refused."""
    if not isinstance(text, str):
        raise ChainError(Code.BAD_ADDRESS, "an address is a string")
    text = text.strip()
    if not text.startswith(ADDRESS_PREFIX) or len(text) != 41:
        raise ChainError(Code.BAD_ADDRESS, f"{text[:60]!r} is not a peerledger address (pl + 39 characters)")
    body = text[len(ADDRESS_PREFIX) :].upper()
    try:
        raw = base64.b32decode(body + "=" * (-len(body) % 8))
    except (ValueError, base64.binascii.Error):
        raise ChainError(Code.BAD_ADDRESS, f"{text!r} contains characters outside base32") from None
    address, checksum = raw[:ADDRESS_SIZE], raw[ADDRESS_SIZE:]
    if len(raw) != ADDRESS_SIZE + _CHECKSUM_SIZE or _checksum(address) != checksum:
        raise ChainError(Code.BAD_ADDRESS, f"{text!r} fails its checksum (mistyped?)")
    if address_to_text(address) != text:
        raise ChainError(Code.BAD_ADDRESS, f"{text!r} is not in canonical form")
    return address
