"""Account state and the state transition: applying a block, undoing it, and the state hash.

Accounts are read through `AccountReader`, so the same rules run over an LMDB transaction,
a mempool overlay or a plain dict in a test. Applying a block never mutates anything: it
returns the new value of every touched account and its previous value (the undo record).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Protocol

from chain.encoding import sha256
from chain.errors import ChainError, Code, DecodeError
from chain.keys import address_of
from chain.tx import BOND, EVIDENCE, MAX_AMOUNT, TRANSFER, UNBOND, Transaction

_ACCOUNT = struct.Struct(">QQQQQQ")
ACCOUNT_SIZE = _ACCOUNT.size
_DIGEST_MOD = 2**256


@dataclass(frozen=True, slots=True)
class Account:
    balance: int = 0
    nonce: int = 0  # the nonce the next transaction from this account must carry
    stake: int = 0  # bonded, earning the right to produce blocks (Proof of Stake)
    unbonding: int = 0  # leaving stake, spendable from `unbonding_height`
    unbonding_height: int = 0
    slashed_slot: int = 0  # last slot this account was slashed for: evidence is used once

    def with_balance(self, balance: int, nonce: int | None = None) -> Account:
        """A copy with another balance (and nonce): every transfer makes two, and
        dataclasses.replace costs more than the rest of applying it."""
        return Account(balance, self.nonce if nonce is None else nonce, self.stake, self.unbonding,
                       self.unbonding_height, self.slashed_slot)


EMPTY = Account()


def encode_account(a: Account) -> bytes:
    return _ACCOUNT.pack(a.balance, a.nonce, a.stake, a.unbonding, a.unbonding_height, a.slashed_slot)


def decode_account(data: bytes) -> Account:
    if len(data) != ACCOUNT_SIZE:
        raise DecodeError(f"account record of {len(data)} bytes, expected {ACCOUNT_SIZE}")
    account = Account(*_ACCOUNT.unpack(data))
    if max(account.balance, account.stake, account.unbonding) > MAX_AMOUNT:
        raise DecodeError("account amount out of range")
    return account


class AccountReader(Protocol):
    def get_account(self, address: bytes) -> Account | None: ...


GetAccount = Callable[[bytes], "Account | None"]


@dataclass(frozen=True, slots=True)
class Evidence:
    """What a valid double-signing proof establishes: who signed twice, and for which slot."""

    offender: bytes  # address
    slot: int


SLASH_REPORTER_PERCENT = 10  # of the slashed stake, to whoever submits the evidence; the rest is burnt


@dataclass(frozen=True, slots=True)
class TxContext:
    """What a transaction's effect may depend on besides the accounts."""

    height: int  # height of the block that includes it
    unbonding_delay: int = 0
    staking: bool = False  # bond, unbond and evidence are valid only on a Proof of Stake network
    # Checks an evidence payload (two headers) and says who it convicts; raises ChainError.
    check_evidence: Callable[[bytes], Evidence] | None = None


def _add(a: int, b: int, what: str) -> int:
    total = a + b
    if total > MAX_AMOUNT:
        raise ChainError(Code.BAD_AMOUNT, f"{what} would overflow")
    return total


def tx_cost(tx: Transaction) -> int:
    """What a transaction takes from its sender's spendable balance."""
    return tx.amount + tx.fee if tx.kind in (TRANSFER, BOND) else tx.fee


def spendable(account: Account, height: int) -> int:
    """Balance plus stake whose unbonding delay has passed by `height`."""
    if account.unbonding and height >= account.unbonding_height:
        return account.balance + account.unbonding
    return account.balance


def _release_unbonded(account: Account, height: int) -> Account:
    """The account with stake whose unbonding delay has passed by `height` moved to its balance."""
    if account.unbonding and height >= account.unbonding_height:
        released = _add(account.balance, account.unbonding, "balance")
        return replace(account, balance=released, unbonding=0, unbonding_height=0)
    return account


def apply_tx(get: GetAccount, tx: Transaction, ctx: TxContext) -> dict[bytes, Account]:
    """Check one transaction against the state `get` sees; return the accounts it changes.

    The fee is debited here and credited to the producer by `apply_block`.
    """
    return _apply_tx(get, tx, ctx)[0]


def _apply_tx(get: GetAccount, tx: Transaction, ctx: TxContext) -> tuple[dict[bytes, Account], int]:
    """The accounts a transaction changes, and the coins it burns (slashing)."""
    sender_addr = address_of(tx.sender)
    sender = get(sender_addr) or EMPTY
    if tx.nonce != sender.nonce:
        raise ChainError(
            Code.WRONG_NONCE, f"nonce {tx.nonce} but account {sender_addr.hex()[:8]} expects {sender.nonce}"
        )
    sender = _release_unbonded(sender, ctx.height)
    balance = sender.balance
    cost = tx_cost(tx)
    if cost > MAX_AMOUNT:
        raise ChainError(Code.BAD_AMOUNT, "amount plus fee would overflow")
    if cost > balance:
        raise ChainError(Code.INSUFFICIENT_FUNDS, f"needs {cost}, account holds {balance}")
    sender = sender.with_balance(balance - cost, sender.nonce + 1)
    if tx.kind == TRANSFER:
        if tx.recipient == sender_addr:
            return {sender_addr: sender.with_balance(sender.balance + tx.amount)}, 0
        recipient = get(tx.recipient) or EMPTY
        credited = recipient.with_balance(_add(recipient.balance, tx.amount, "recipient balance"))
        return {sender_addr: sender, tx.recipient: credited}, 0
    if not ctx.staking:
        raise ChainError(Code.BAD_BLOCK, "staking transactions are not valid on this network")
    if tx.kind == BOND:
        return {sender_addr: replace(sender, stake=_add(sender.stake, tx.amount, "stake"))}, 0
    if tx.kind == UNBOND:
        if tx.amount > sender.stake:
            raise ChainError(Code.INSUFFICIENT_FUNDS, f"unbonds {tx.amount}, stake is {sender.stake}")
        unbonding = _add(sender.unbonding, tx.amount, "unbonding")
        release = ctx.height + ctx.unbonding_delay
        return {
            sender_addr: replace(
                sender, stake=sender.stake - tx.amount, unbonding=unbonding, unbonding_height=release
            )
        }, 0
    if tx.kind == EVIDENCE:
        return _slash(get, tx, ctx, sender_addr, sender)
    raise ChainError(Code.BAD_BLOCK, f"transaction kind {tx.kind} is not handled by this network")


def _slash(
    get: GetAccount, tx: Transaction, ctx: TxContext, sender_addr: bytes, sender: Account
) -> tuple[dict[bytes, Account], int]:
    """Double signing proven: the offender loses all its stake, bonded and unbonding."""
    if ctx.check_evidence is None:
        raise ChainError(Code.BAD_BLOCK, "evidence is not valid on this network")
    evidence = ctx.check_evidence(tx.payload)
    # Stake whose unbonding delay has passed is balance (`spendable`), not stake: it is out of
    # reach of slashing whether or not the offender has sent a transaction since it matured.
    if evidence.offender == sender_addr:
        offender = sender
    else:
        offender = _release_unbonded(get(evidence.offender) or EMPTY, ctx.height)
    slashed = offender.stake + offender.unbonding
    if evidence.slot <= offender.slashed_slot or slashed == 0:
        raise ChainError(Code.DUPLICATE, "this staker was already slashed for that slot, or has no stake")
    reward = slashed * SLASH_REPORTER_PERCENT // 100
    offender = replace(offender, stake=0, unbonding=0, unbonding_height=0, slashed_slot=evidence.slot)
    if evidence.offender == sender_addr:
        sender = offender
    sender = sender.with_balance(_add(sender.balance, reward, "reporter balance"))
    updates = {evidence.offender: offender, sender_addr: sender}
    return updates, slashed - reward


@dataclass(frozen=True, slots=True)
class StateChange:
    """The effect of one block: new account values and the values they replace (undo)."""

    updated: Mapping[bytes, Account]
    previous: Mapping[bytes, Account | None]
    fees: int
    minted: int
    burned: int = 0  # slashed stake that went to nobody


class Overlay:
    """Pending account values over a base reader; what a block or a mempool sees.

    The base is read once per address (a block reads each account it touches once, not again
    to record its previous value), so it must not change while the overlay is in use.
    """

    __slots__ = ("_get", "_base", "changes", "previous")

    def __init__(self, get: GetAccount) -> None:
        self._get = get
        self._base: dict[bytes, Account | None] = {}  # what the base reader answered: each read once
        self.changes: dict[bytes, Account] = {}
        self.previous: dict[bytes, Account | None] = {}

    def get(self, address: bytes) -> Account | None:
        if address in self.changes:
            return self.changes[address]
        if address in self._base:
            return self._base[address]
        value = self._base[address] = self._get(address)
        return value

    def put(self, updates: Mapping[bytes, Account]) -> None:
        for address, account in updates.items():
            if address not in self.previous:
                self.previous[address] = self._base[address] if address in self._base else self._get(address)
            self.changes[address] = account


def apply_block(get: GetAccount, txs: Iterable[Transaction], producer: bytes, reward: int, ctx: TxContext) -> StateChange:
    """Apply every transaction in order, then credit reward plus fees to the producer.

    Two transactions spending the same nonce, or more than the balance, fail here: the
    second one sees the state the first one left.
    """
    overlay = Overlay(get)
    fees = burned = 0
    for tx in txs:
        updates, burnt = _apply_tx(overlay.get, tx, ctx)
        overlay.put(updates)
        fees += tx.fee
        burned += burnt
    credit = reward + fees
    if credit:
        account = overlay.get(producer) or EMPTY
        overlay.put({producer: account.with_balance(_add(account.balance, credit, "producer balance"))})
    return StateChange(overlay.changes, overlay.previous, fees, reward, burned)


# --- the state hash --------------------------------------------------------------------
# A sum of per-account hashes modulo 2**256: it can be updated from a block's changes
# alone, and recomputed from scratch by scanning every account, with the same result.
# It identifies a state for comparison between nodes; it is not a consensus commitment.


def account_digest(address: bytes, account: Account) -> int:
    return int.from_bytes(sha256(b"peerledger/account" + address + encode_account(account)), "big")


def digest_update(digest: int, previous: Mapping[bytes, Account | None], updated: Mapping[bytes, Account]) -> int:
    for address, old in previous.items():
        if old is not None:
            digest -= account_digest(address, old)
    for address, new in updated.items():
        digest += account_digest(address, new)
    return digest % _DIGEST_MOD


def digest_undo(digest: int, previous: Mapping[bytes, Account | None], updated: Mapping[bytes, Account]) -> int:
    for address, new in updated.items():
        digest -= account_digest(address, new)
    for address, old in previous.items():
        if old is not None:
            digest += account_digest(address, old)
    return digest % _DIGEST_MOD


def state_digest(accounts: Iterable[tuple[bytes, Account]]) -> int:
    return sum(account_digest(a, acc) for a, acc in accounts) % _DIGEST_MOD


def state_hash_hex(digest: int) -> str:
    return digest.to_bytes(32, "big").hex()


# --- undo records ------------------------------------------------------------------------


def encode_undo(previous: Mapping[bytes, Account | None]) -> bytes:
    parts = [struct.pack(">I", len(previous))]
    for address in sorted(previous):
        old = previous[address]
        parts.append(address + (b"\x00" if old is None else b"\x01" + encode_account(old)))
    return b"".join(parts)


def decode_undo(data: bytes) -> dict[bytes, Account | None]:
    from chain.encoding import Reader

    r = Reader(data, "undo record")
    previous: dict[bytes, Account | None] = {}
    last = b""
    for _ in range(r.count(10_000_000)):
        address = r.fixed(20)
        if address <= last:  # encode_undo writes each address once, in ascending order
            raise DecodeError("undo record: addresses not in strictly ascending order")
        last = address
        flag = r.u8()
        if flag > 1:
            raise DecodeError(f"undo record: presence flag {flag} is neither 0 nor 1")
        previous[address] = decode_account(r.fixed(ACCOUNT_SIZE)) if flag else None
    r.done()
    return previous
