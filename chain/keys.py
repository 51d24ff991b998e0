"""Ed25519 keys and signatures (pycryptodome only) and human-readable addresses.

Signature validity is a consensus rule, so there is exactly one verifier: pycryptodome's
RFC 8032 mode, plus one rule of ours: public keys of small order are refused (they verify
forged signatures). The verdict on every C2SP/CCTV edge-case vector is pinned by a test, so
a library upgrade that changes it fails loudly instead of splitting the network.

Parsing a public key costs about as much as a verification, so parsed keys are cached.
"""

from __future__ import annotations

import base64
import functools

from Crypto.PublicKey import ECC
from Crypto.Signature import eddsa

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


@functools.lru_cache(maxsize=65536)
def _verifier(public: bytes) -> object | None:
    try:
        key = eddsa.import_public_key(public)
    except ValueError:
        return None
    point = key.pointQ.copy()
    point.double().double().double()  # 8P, in microseconds (a scalar multiply takes a millisecond)
    if point.is_point_at_infinity():
        # A small-order key verifies forged signatures (the all-zero key accepts an all-zero
        # signature on any message): whatever it "signs" proves nothing, so it signs nothing.
        return None
    return eddsa.new(key, "rfc8032")


def verify(public: bytes, message: bytes, signature: bytes) -> bool:
    """True if `signature` is a valid RFC 8032 signature of `message` by `public`."""
    if len(public) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
        return False
    verifier = _verifier(bytes(public))
    if verifier is None:
        return False
    try:
        verifier.verify(message, signature)
    except ValueError:
        return False
    return True


def address_of(public: bytes) -> bytes:
    """The 20-byte account address of a public key."""
    return _address_of(bytes(public))


@functools.lru_cache(maxsize=65536)
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
