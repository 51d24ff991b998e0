"""Transactions: encoding, ids, signing and the checks that need no chain state.

Wire and disk layout (big-endian, 143 bytes + payload):

    kind u8 | sender public key 32 | nonce u64 | fee u64 | recipient 20 | amount u64
    | payload_len u16 | payload | signature 64

The signature covers a domain tag, the network id and every byte before the signature, so
a transaction signed for one network is worthless on another. The id is SHA-256 of the
whole encoding.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from chain.encoding import sha256
from chain.errors import ChainError, Code, DecodeError
from chain.keys import ADDRESS_SIZE, SIGNATURE_SIZE, ZERO_ADDRESS, SigningKey, address_of, verify

TRANSFER = 0
BOND = 1  # move balance into stake (Proof of Stake)
UNBOND = 2  # start returning stake to balance after the unbonding delay
EVIDENCE = 3  # proof of double signing; payload holds two headers
KINDS = frozenset({TRANSFER, BOND, UNBOND, EVIDENCE})

MAX_AMOUNT = 2**63 - 1  # no balance, amount or fee may exceed this (overflow guard)
MAX_PAYLOAD = 1024
SIGNING_TAG = b"peerledger/tx/v1"

_FIXED = struct.Struct(">B32sQQ20sQH")
MIN_TX_SIZE = _FIXED.size + SIGNATURE_SIZE
MAX_TX_SIZE = MIN_TX_SIZE + MAX_PAYLOAD


@dataclass(frozen=True, slots=True)
class Transaction:
    kind: int
    sender: bytes  # Ed25519 public key of the account that pays
    nonce: int  # must equal the sender account's nonce: replay protection
    fee: int
    recipient: bytes  # 20-byte address; zero for kinds that have none
    amount: int
    payload: bytes = b""
    signature: bytes = bytes(SIGNATURE_SIZE)
    raw: bytes = field(default=b"", compare=False, repr=False)
    id: bytes = field(default=b"", compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.raw:
            object.__setattr__(self, "raw", encode_tx(self))
        if not self.id:
            object.__setattr__(self, "id", sha256(self.raw))

    @property
    def sender_address(self) -> bytes:
        return address_of(self.sender)

    @property
    def size(self) -> int:
        return len(self.raw)

    def signing_message(self, network_id: bytes) -> bytes:
        return SIGNING_TAG + network_id + self.raw[: -SIGNATURE_SIZE]


def _unsigned_bytes(tx: Transaction) -> bytes:
    return (
        _FIXED.pack(tx.kind, tx.sender, tx.nonce, tx.fee, tx.recipient, tx.amount, len(tx.payload))
        + tx.payload
    )


def encode_tx(tx: Transaction) -> bytes:
    check_tx_fields(tx)
    return _unsigned_bytes(tx) + tx.signature


def check_tx_fields(tx: Transaction) -> None:
    """Shape rules for each kind; any object built here has exactly one encoding."""
    if tx.kind not in KINDS:
        raise DecodeError(f"unknown transaction kind {tx.kind}")
    if len(tx.sender) != 32 or len(tx.recipient) != ADDRESS_SIZE or len(tx.signature) != SIGNATURE_SIZE:
        raise DecodeError("transaction field of the wrong size")
    if len(tx.payload) > MAX_PAYLOAD:
        raise DecodeError(f"payload of {len(tx.payload)} bytes exceeds {MAX_PAYLOAD}", Code.OVERSIZE)
    for name, value in (("nonce", tx.nonce), ("fee", tx.fee), ("amount", tx.amount)):
        if not isinstance(value, int) or value < 0 or value > MAX_AMOUNT:
            raise DecodeError(f"{name} {value!r} is out of range 0..{MAX_AMOUNT}", Code.BAD_AMOUNT)
    if tx.kind == TRANSFER:
        if tx.payload:
            raise DecodeError("a transfer carries no payload")
        if tx.amount == 0:
            raise DecodeError("a transfer of zero", Code.BAD_AMOUNT)
    elif tx.kind in (BOND, UNBOND):
        if tx.payload or tx.recipient != ZERO_ADDRESS:
            raise DecodeError("bond and unbond carry no recipient and no payload")
        if tx.amount == 0:
            raise DecodeError("a bond or unbond of zero", Code.BAD_AMOUNT)
    elif tx.kind == EVIDENCE:
        if tx.recipient != ZERO_ADDRESS or tx.amount != 0 or not tx.payload:
            raise DecodeError("evidence carries a payload and no recipient or amount")


def decode_tx(data: bytes) -> Transaction:
    tx, end = decode_tx_at(data, 0)
    if end != len(data):
        raise DecodeError(f"transaction: {len(data) - end} trailing bytes")
    return tx


def decode_tx_at(data: bytes, offset: int) -> tuple[Transaction, int]:
    """Decode the transaction starting at `offset`; return it and the offset after it."""
    if len(data) - offset < MIN_TX_SIZE:
        raise DecodeError("transaction: truncated")
    kind, sender, nonce, fee, recipient, amount, payload_len = _FIXED.unpack_from(data, offset)
    if payload_len > MAX_PAYLOAD:
        raise DecodeError(f"transaction payload of {payload_len} bytes exceeds {MAX_PAYLOAD}", Code.OVERSIZE)
    start = offset + _FIXED.size
    end = start + payload_len + SIGNATURE_SIZE
    if end > len(data):
        raise DecodeError("transaction: truncated")
    raw = bytes(data[offset:end])
    tx = Transaction(
        kind,
        sender,
        nonce,
        fee,
        recipient,
        amount,
        raw[_FIXED.size : _FIXED.size + payload_len],
        raw[-SIGNATURE_SIZE:],
        raw,
        sha256(raw),
    )
    check_tx_fields(tx)
    return tx, end


def sign_tx(
    key: SigningKey,
    network_id: bytes,
    *,
    kind: int = TRANSFER,
    nonce: int,
    fee: int,
    recipient: bytes = ZERO_ADDRESS,
    amount: int,
    payload: bytes = b"",
) -> Transaction:
    unsigned = Transaction(kind, key.public, nonce, fee, recipient, amount, payload)
    signature = key.sign(unsigned.signing_message(network_id))
    return Transaction(kind, key.public, nonce, fee, recipient, amount, payload, signature)


def check_signature(tx: Transaction, network_id: bytes) -> None:
    if not verify(tx.sender, tx.signing_message(network_id), tx.signature):
        raise ChainError(Code.BAD_SIGNATURE, f"transaction {tx.id.hex()[:16]} has an invalid signature")
