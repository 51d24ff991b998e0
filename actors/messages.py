"""Messages between the node's actors: immutable, one class per event or query.

`origin` is the node id of the peer an object came from, or None when it came from this
node (its API or its producer); rejections go back to the network actor with it so that
the peer can be penalised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chain.block import Block
from chain.errors import ChainError
from chain.tx import Transaction
from storage.store import Tip

Origin = bytes | None


# --- validation ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CheckTx:
    """Ask: decode and verify one transaction; answers the Transaction or raises ChainError."""

    raw: bytes


@dataclass(frozen=True, slots=True)
class TxsReceived:
    """Raw transactions from a peer, to be verified and offered to the mempool."""

    raws: tuple[bytes, ...]
    origin: Origin


@dataclass(frozen=True, slots=True)
class BlockReceived:
    """A raw block from a peer, to be decoded, verified and handed to storage."""

    raw: bytes
    origin: Origin


# --- storage ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class AddBlock:
    """A block whose signatures are verified, for storage to validate in context and store."""

    block: Block
    origin: Origin


@dataclass(frozen=True, slots=True)
class TipChanged:
    """The main chain moved; blocks are listed in the order they were (dis)connected."""

    tip: Tip
    connected: tuple[Block, ...]
    disconnected: tuple[Block, ...]


@dataclass(frozen=True, slots=True)
class BlockRejected:
    block_hash: bytes
    origin: Origin
    error: ChainError


# --- mempool ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class AddTxs:
    """Verified transactions for the mempool. With `reply` (a pykka future, from the API's
    path) the mempool sets it to the per-transaction results: it may hold the message
    until it has taken in a new tip, so these are told, not asked."""

    txs: tuple[Transaction, ...]
    origin: Origin
    reply: Any = None


@dataclass(frozen=True, slots=True)
class TxsAccepted:
    """Transactions newly admitted to the mempool, to relay."""

    txs: tuple[Transaction, ...]
    origin: Origin


@dataclass(frozen=True, slots=True)
class TxRejected:
    txid: bytes
    origin: Origin
    error: ChainError


@dataclass(frozen=True, slots=True)
class WantTxs:
    """The producer asks for the best transactions on top of `tip_hash`; answered by tell."""

    tip_hash: bytes
    max_bytes: int
    max_txs: int
    min_age_ms: int  # leave out transactions that came this recently (ProducerSettings.min_tx_age_ms)
    reply_to: Any  # ActorRef of the producer


@dataclass(frozen=True, slots=True)
class BlockTemplateTxs:
    tip_hash: bytes
    txs: tuple[Transaction, ...]


@dataclass(frozen=True, slots=True)
class MempoolQuery:
    """Ask: size and bytes; with `address`, the next nonce it should use; with `txid`, that
    pending transaction (or None)."""

    address: bytes | None = None
    txid: bytes | None = None


@dataclass(frozen=True, slots=True)
class BlockStored:
    """Storage kept a block (on the main chain or a side branch): its children may follow."""

    block_hash: bytes
    status: str


@dataclass(frozen=True, slots=True)
class BlockDeferred:
    """Storage could not place a block yet: its parent is missing (UNKNOWN_PARENT) or it
    is ahead of our clock (TIME_TOO_NEW). Sync keeps it and offers it again later."""

    block: Block
    origin: Origin
    error: ChainError


@dataclass(frozen=True, slots=True)
class AddHeaders:
    headers: tuple  # tuple[Header, ...]
    origin: Origin


@dataclass(frozen=True, slots=True)
class HeadersStored:
    origin: Origin
    count: int  # headers in the request
    last_hash: bytes | None  # last header stored or known
    error: ChainError | None


@dataclass(frozen=True, slots=True)
class SavePeers:
    """Persist address book records (node id -> record, empty to delete) and bans
    (node id -> banned until, ms). Storage writes them: it is the only writer."""

    records: dict
    bans: dict


@dataclass(frozen=True, slots=True)
class SaveMempool:
    """Persist pending transactions: `added` as (tx id, added at ms, raw bytes), `removed`
    as tx ids. The mempool sends one at most every second; storage writes it."""

    added: tuple
    removed: tuple


@dataclass(frozen=True, slots=True)
class RestoreMempool:
    """Reload the pending transactions persisted before the last stop (told once at start)."""


# --- network <-> sync ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PeerReady:
    """A peer finished its handshake (again, after a reconnect)."""

    peer: bytes
    best_hash: bytes
    best_height: int
    best_weight: int


@dataclass(frozen=True, slots=True)
class PeerGone:
    peer: bytes


@dataclass(frozen=True, slots=True)
class HeadersArrived:
    peer: bytes
    raws: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class BlockArrived:
    peer: bytes
    raw: bytes


@dataclass(frozen=True, slots=True)
class BlocksAnnounced:
    peer: bytes
    hashes: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class BlocksNotFound:
    peer: bytes
    hashes: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Penalise:
    """Misbehaviour points against a peer; enough of them and it is banned."""

    peer: bytes
    points: int
    reason: str


@dataclass(frozen=True, slots=True)
class DropPeer:
    """Disconnect a peer without banning it (stalled, unresponsive)."""

    peer: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class Flush:
    """Time to send the batched inventory announcements."""


# --- producer -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ChunkDone:
    """A worker finished searching a nonce range of job `job`."""

    job: int
    nonce: int | None
    hashes: int


# --- timers -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Tick:
    """Periodic housekeeping (expiry, refresh); sent by the node's timer thread."""

    now_ms: int
