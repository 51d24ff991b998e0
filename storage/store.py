"""The node's ledger on disk: one LMDB environment, the only module that imports lmdb.

What survives a power cut, and why:
- LMDB is copy-on-write: a write transaction either commits completely or leaves the
  previous version of every page in place. With `sync` on (the default), a commit returns
  only after the data and the new meta page are on disk, so a power cut at any instant
  leaves either the old tip or the new one.
- Connecting a block writes its state changes, undo record, indexes and the tip pointer in
  one write transaction. A reorganisation (undo back to the fork point, connect the heavier
  branch) is also one transaction, aborted as a whole if any block of the branch is invalid,
  and so is a run of blocks that extends the tip (add_blocks, during a sync): the tip moves
  from the run's parent to its last block or not at all.
- With `sync` off, a power cut may lose the last commits but still cannot mix two states
  (LMDB keeps the meta pages consistent); the node restarts on an older tip and re-syncs.
- The transaction index is derived data and trails the tip: `index_txs` brings it up in
  its own write transaction after the block's (the storage actor calls it once the new tip
  is announced). Its keys are random ids, so each entry dirties a page of its own: in the
  block's transaction it was ~40% of a connect. A power cut between the two commits leaves
  it behind; the storage actor catches it up when the node starts.

Named databases:
    meta      b"schema" u32 | b"network" 32 | b"tip" hash | b"digest" 32-byte state hash |
              b"txindex_tip" hash (the main-chain block up to which txindex is complete)
    headers   block hash -> header bytes
    index     block hash -> height u64 | cumulative weight 32 | flags u8
    blocks    block hash -> block bytes
    main      height u64 -> block hash (the main chain)
    side      height u64 + hash -> b"" (stored blocks off the main chain, for pruning)
    accounts  address -> account record
    undo      block hash -> undo record (previous values of the accounts it changed)
    txindex   tx id -> block hash | position u32 (main chain up to txindex_tip)
    peers     node id -> address book record (actors.peerbook encodes it)
    bans      node id -> banned until, ms u64
    mempool   tx id -> added at, ms u64 | raw transaction (pending transactions, so that
              they survive a restart; written in batches, at most a second behind)

One writer: the storage actor. Readers (API, validation, sync serving) open short read
transactions from their own threads; so does a backup (`Store.backup`), whose one long read
transaction never blocks the writer (LMDB readers do not block writers).

Backups are LMDB's own compacted copy of one read snapshot, with a manifest (network,
height, tip, size, SHA-256) written last, so a directory without it is an unfinished copy.
`restore_backup` puts one in place of a stopped node's ledger: it takes the directory
lock, checks the manifest, the checksum and that the copy opens as a ledger of this
network, and swaps it in by renaming. The map grows by doubling on MapFullError, which LMDB
allows only while no transaction is open in this process: readers therefore hold a shared
lock that the resize takes exclusively.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import itertools
import json
import logging
import os
import shutil
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import lmdb

from chain.block import Block, Header, check_block_shape, decode_block, decode_header
from chain.consensus import ConsensusEngine, HeaderContext, better_tip, check_header_context, engine_for
from chain.errors import ChainError, Code
from chain.params import POS, ChainParams, genesis_accounts, genesis_header
from chain.pos import epoch_seed_height
from chain.state import (
    Account,
    TxContext,
    apply_block,
    decode_account,
    decode_undo,
    digest_undo,
    digest_update,
    encode_account,
    encode_undo,
    state_digest,
    state_hash_hex,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
LEDGER_DIR = "ledger"  # the LMDB environment, inside the data directory
_DATABASES = ("meta", "headers", "index", "blocks", "main", "side", "accounts", "undo", "txindex",
              "peers", "bans", "mempool")
_U64 = struct.Struct(">Q")
_INDEX = struct.Struct(">Q32sB")
_TXLOC = struct.Struct(">32sI")
HAVE_BLOCK = 1
INVALID = 2
# A 32-bit process cannot map 2 GiB or more (Raspberry Pi OS 32-bit).
MAX_MAP_SIZE = (2**31 - 2**20) if sys.maxsize < 2**32 else 2**40
# Blocks kept decoded after they are stored, for a reorganisation: it disconnects the tip's
# blocks and connects rivals that came moments before, and decoding them again from disk
# was a quarter of its cost (2,500 transactions out, 2,500 + 900 in: 65 -> 48 ms). A decoded
# transaction takes ~580 bytes: at most ~3.5 MB.
RECENT_BLOCKS = 4
RECENT_TXS = 6_000
INDEX_BATCH_TXS = 20_000  # transactions indexed in one write transaction at most


class StoreError(Exception):
    """The store cannot be used as asked; the message says why and what to do."""


class StoreLocked(StoreError):
    pass


class StoreCorrupt(StoreError):
    pass


@dataclass(frozen=True, slots=True)
class Tip:
    hash: bytes
    height: int
    weight: int
    timestamp_ms: int
    state_hash: str
    tx_count: int = 0  # transactions on the main chain up to this tip
    total_stake: int = 0  # stake bonded in the state at this tip (Proof of Stake)


class _RecentBlocks:
    """The last blocks stored (main chain or side branch), decoded, by hash. A block's hash
    fixes its content, so an entry never goes stale; only blocks that passed the store's
    checks and were committed enter."""

    def __init__(self, max_blocks: int = RECENT_BLOCKS, max_txs: int = RECENT_TXS) -> None:
        self.max_blocks = max_blocks
        self.max_txs = max_txs
        self._blocks: dict[bytes, Block] = {}  # oldest first
        self._txs = 0
        self._lock = threading.Lock()

    def keep(self, blocks: Iterable[Block]) -> None:
        with self._lock:
            for block in blocks:
                if block.hash in self._blocks:
                    continue
                self._blocks[block.hash] = block
                self._txs += len(block.txs)
                while len(self._blocks) > self.max_blocks or (self._txs > self.max_txs and len(self._blocks) > 1):
                    oldest = self._blocks.pop(next(iter(self._blocks)))
                    self._txs -= len(oldest.txs)

    def get(self, block_hash: bytes) -> Block | None:
        with self._lock:
            return self._blocks.get(block_hash)

    def newest_first(self) -> list[Block]:
        with self._lock:
            return list(reversed(self._blocks.values()))


@dataclass(frozen=True, slots=True)
class _Totals:
    """Running figures of the main chain, kept in meta and moved with every block."""

    digest: int
    tx_count: int
    total_stake: int


@dataclass(frozen=True, slots=True)
class IndexEntry:
    height: int
    weight: int  # cumulative weight of the branch ending here
    flags: int

    @property
    def has_block(self) -> bool:
        return bool(self.flags & HAVE_BLOCK)

    @property
    def invalid(self) -> bool:
        return bool(self.flags & INVALID)


@dataclass(frozen=True, slots=True)
class AddResult:
    """What adding a block did. `connected`/`disconnected` are in the order applied."""

    status: str  # "connected", "reorganized", "side_branch", "duplicate", "reorg_refused"
    tip: Tip
    connected: tuple[Block, ...] = ()
    disconnected: tuple[Block, ...] = ()


def _encode_index(e: IndexEntry) -> bytes:
    return _INDEX.pack(e.height, e.weight.to_bytes(32, "big"), e.flags)


def _decode_index(data: bytes) -> IndexEntry:
    height, weight, flags = _INDEX.unpack(data)
    return IndexEntry(height, int.from_bytes(weight, "big"), flags)


class _SharedLock:
    """Many readers or one exclusive holder (only the map resize takes it exclusively)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._exclusive = False

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._exclusive = True
            while self._readers:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


class Store:
    """The ledger of one node. Open it with `Store.open`; close it with `close`."""

    def __init__(self, path: Path, params: ChainParams, env: lmdb.Environment, lock_fd: int) -> None:
        self.path = path
        self.params = params
        self.engine: ConsensusEngine = engine_for(params)
        self._env = env
        self._lock_fd = lock_fd
        self._dbs = {name: env.open_db(name.encode()) for name in _DATABASES}
        self._rw = _SharedLock()
        self._write_lock = threading.Lock()
        self._tip: Tip | None = None
        self._totals = _Totals(0, 0, 0)
        self._recent = _RecentBlocks()
        self._staking = params.consensus == POS
        self._closing = threading.Event()  # tells a backup in progress to give up

    # --- opening and closing ---------------------------------------------------------

    @classmethod
    def open(cls, path: str | Path, params: ChainParams, *, map_size: int = 1 << 30, sync: bool = True) -> Store:
        path = Path(path)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create data directory {path}: {e.strerror}") from None
        lock_fd = _lock_directory(path)
        try:
            return cls._open_ledger(path, path / LEDGER_DIR, params, lock_fd, map_size=map_size, sync=sync)
        except BaseException:
            os.close(lock_fd)
            raise

    @classmethod
    def _open_ledger(
        cls, path: Path, ledger: Path, params: ChainParams, lock_fd: int, *, map_size: int = 1 << 30,
        sync: bool = True, readonly: bool = False, create: bool = True,
    ) -> Store:
        """Open the LMDB environment in `ledger` (messages name `path`, the data directory).
        The caller holds the directory lock (`lock_fd`, which the store then owns, or -1)."""
        try:
            env = lmdb.open(
                str(ledger),
                map_size=min(map_size, MAX_MAP_SIZE),
                max_dbs=len(_DATABASES) + 2,
                sync=sync,
                metasync=sync,
                readahead=False,
                max_readers=256,
                readonly=readonly,
                lock=not readonly,  # read-only opens are made under the directory lock
                create=create,
            )
        except (lmdb.InvalidError, lmdb.CorruptedError, lmdb.PageNotFoundError) as e:
            raise StoreCorrupt(f"the store in {path} is damaged and cannot be opened: {e}") from None
        except lmdb.Error as e:
            raise StoreError(f"cannot open the store in {path}: {e}") from None
        _check_not_truncated(env, ledger, path)
        if not readonly:
            _back_the_whole_map(env, ledger)
        try:
            store = cls(path, params, env, lock_fd)
        except lmdb.Error as e:
            env.close()
            raise StoreCorrupt(f"the store in {path} is damaged or not a peerledger store: {e}") from None
        try:
            store._initialise(create=create)
        except BaseException:
            store._lock_fd = -1  # the caller's to close
            store.close()
            raise
        return store

    def close(self) -> None:
        self._closing.set()  # a backup holds a read transaction: it gives up instead of delaying this
        if self._env is not None:
            with self._rw.exclusive():
                self._env.close()
            self._env = None
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def _initialise(self, create: bool = True) -> None:
        meta = self._dbs["meta"]
        with self._read() as txn:  # damage met here is reported as damage, like anywhere else
            schema = txn.get(b"schema", db=meta)
            network = txn.get(b"network", db=meta)
            index_known = txn.get(b"txindex_tip", db=meta) is not None
        if schema is None:
            if not create:
                raise StoreCorrupt(f"the store in {self.path} holds no ledger (no schema record)")
            self._write(self._create_genesis)
        else:
            (version,) = struct.unpack(">I", schema)
            if version != SCHEMA_VERSION:
                raise StoreError(
                    f"the store in {self.path} has schema version {version}; this peerledger reads "
                    f"version {SCHEMA_VERSION}. Use a matching peerledger or start from an empty data directory."
                )
            if network != self.params.network_id:
                raise StoreError(
                    f"the store in {self.path} belongs to network {network.hex()[:16]}, but the genesis spec "
                    f"gives network {self.params.network_id.hex()[:16]}. Point the node at its own genesis "
                    f"file or at another data directory."
                )
            if not index_known and not self._env.flags()["readonly"]:
                self._write(self._mark_old_index_complete)
        self._load_tip()

    def _mark_old_index_complete(self, txn: lmdb.Transaction) -> None:
        """A ledger written before the index trailed the tip has it complete up to the tip."""
        meta = self._dbs["meta"]
        txn.put(b"txindex_tip", txn.get(b"tip", db=meta), db=meta)

    def _create_genesis(self, txn: lmdb.Transaction) -> None:
        d = self._dbs
        header = genesis_header(self.params)
        block = Block(header, ())
        txn.put(b"schema", struct.pack(">I", SCHEMA_VERSION), db=d["meta"])
        txn.put(b"network", self.params.network_id, db=d["meta"])
        txn.put(header.hash, header.raw, db=d["headers"])
        txn.put(header.hash, _encode_index(IndexEntry(0, 0, HAVE_BLOCK)), db=d["index"])
        txn.put(header.hash, block.raw, db=d["blocks"])
        txn.put(_U64.pack(0), header.hash, db=d["main"])
        accounts = genesis_accounts(self.params)
        for address, account in accounts.items():
            txn.put(address, encode_account(account), db=d["accounts"])
        txn.put(b"tip", header.hash, db=d["meta"])
        txn.put(b"txindex_tip", header.hash, db=d["meta"])
        txn.put(b"digest", state_digest(accounts.items()).to_bytes(32, "big"), db=d["meta"])
        txn.put(b"txcount", _U64.pack(0), db=d["meta"])
        txn.put(b"total_stake", _U64.pack(sum(a.stake for a in accounts.values())), db=d["meta"])

    def _load_tip(self) -> None:
        with self._read() as txn:
            self._tip, self._totals = self._read_tip(txn)

    def _read_tip(self, txn: lmdb.Transaction) -> tuple[Tip, _Totals]:
        """The tip and running totals recorded in `txn`'s snapshot, checked for consistency."""
        d = self._dbs
        tip_hash = txn.get(b"tip", db=d["meta"])
        digest = txn.get(b"digest", db=d["meta"])
        raw_index = txn.get(tip_hash, db=d["index"]) if tip_hash else None
        raw_header = txn.get(tip_hash, db=d["headers"]) if tip_hash else None
        if raw_index is None or raw_header is None or digest is None:
            raise StoreCorrupt(f"the store in {self.path} has no valid tip record; it is damaged")
        entry = _decode_index(raw_index)
        if txn.get(_U64.pack(entry.height), db=d["main"]) != tip_hash:
            raise StoreCorrupt(f"the store in {self.path} is damaged: the tip is not on the main chain index")
        if not txn.get(tip_hash, db=d["blocks"]):
            raise StoreCorrupt(f"the store in {self.path} is damaged: the tip block is missing")
        tx_count = txn.get(b"txcount", db=d["meta"])
        total_stake = txn.get(b"total_stake", db=d["meta"])
        header = decode_header(raw_header)
        totals = _Totals(
            int.from_bytes(digest, "big"),
            _U64.unpack(tx_count)[0] if tx_count else 0,
            _U64.unpack(total_stake)[0] if total_stake else 0,
        )
        return self._make_tip(tip_hash, entry, header, totals), totals

    @staticmethod
    def _make_tip(block_hash: bytes, entry: IndexEntry, header: Header, totals: _Totals) -> Tip:
        return Tip(
            block_hash, entry.height, entry.weight, header.timestamp_ms, state_hash_hex(totals.digest),
            totals.tx_count, totals.total_stake,
        )

    # --- transactions ------------------------------------------------------------------

    @contextlib.contextmanager
    def _read(self) -> Iterator[lmdb.Transaction]:
        with self._rw.shared():
            if self._env is None:
                raise StoreError("the store is closed")
            try:
                with self._env.begin(buffers=False) as txn:
                    yield txn
            except _DAMAGE as e:
                raise StoreCorrupt(f"the store in {self.path} is damaged: {e}") from None

    def _write(self, body: Callable[[lmdb.Transaction], object]) -> object:
        """Run `body` in one write transaction; grow the map and retry if it is full."""
        with self._write_lock:
            while True:
                try:
                    with self._rw.shared():
                        with self._env.begin(write=True) as txn:
                            return body(txn)
                except lmdb.MapFullError:
                    self._grow_map()
                except _DAMAGE as e:
                    raise StoreCorrupt(f"the store in {self.path} is damaged: {e}") from None
                except lmdb.Error as e:
                    if _is_disk_full(e) or _short_write_on_a_full_disk(e, self.path):
                        raise StoreError(
                            f"the disk holding {self.path} is full; nothing was written. Free space and the node "
                            f"resumes where it was."
                        ) from None
                    raise

    def _grow_map(self) -> None:
        current = self._env.info()["map_size"]
        if current >= MAX_MAP_SIZE:
            raise StoreError(
                f"the store in {self.path} reached its maximum map size of {current >> 20} MiB on this platform"
            )
        new_size = min(current * 2, MAX_MAP_SIZE)
        with self._rw.exclusive():
            self._env.set_mapsize(new_size)
            _back_the_whole_map(self._env, self.path / LEDGER_DIR)
        log.info("store map grown from %d MiB to %d MiB", current >> 20, new_size >> 20)

    # --- reading -----------------------------------------------------------------------

    def tip(self) -> Tip:
        assert self._tip is not None
        return self._tip

    def header(self, block_hash: bytes) -> Header | None:
        with self._read() as txn:
            raw = txn.get(block_hash, db=self._dbs["headers"])
        return decode_header(raw) if raw else None

    def index_entry(self, block_hash: bytes) -> IndexEntry | None:
        with self._read() as txn:
            raw = txn.get(block_hash, db=self._dbs["index"])
        return _decode_index(raw) if raw else None

    def block_raw(self, block_hash: bytes) -> bytes | None:
        with self._read() as txn:
            return txn.get(block_hash, db=self._dbs["blocks"])

    def block(self, block_hash: bytes) -> Block | None:
        raw = self.block_raw(block_hash)
        return decode_block(raw) if raw else None

    def hash_at(self, height: int) -> bytes | None:
        if height < 0:
            return None
        with self._read() as txn:
            return txn.get(_U64.pack(height), db=self._dbs["main"])

    def account(self, address: bytes) -> Account | None:
        with self._read() as txn:
            raw = txn.get(address, db=self._dbs["accounts"])
        return decode_account(raw) if raw else None

    def accounts(self, addresses: list[bytes]) -> dict[bytes, Account | None]:
        """Several accounts from one consistent snapshot (mempool revalidation)."""
        with self._read() as txn:
            db = self._dbs["accounts"]
            return {a: (decode_account(raw) if (raw := txn.get(a, db=db)) else None) for a in addresses}

    def accounts_at_tip(self, addresses: list[bytes]) -> tuple[bytes, dict[bytes, Account | None]]:
        """`accounts` with the hash of the tip whose state they are, from the same snapshot
        (the in-memory tip moves a moment after the commit; the snapshot's record does not)."""
        with self._read() as txn:
            db = self._dbs["accounts"]
            tip = txn.get(b"tip", db=self._dbs["meta"])
            return tip, {a: (decode_account(raw) if (raw := txn.get(a, db=db)) else None) for a in addresses}

    def tx_location(self, txid: bytes) -> tuple[bytes, int, int] | None:
        """(block hash, height, position) of a transaction on the main chain.

        The index trails the tip (index_txs): an entry whose block left the main chain is
        not an answer, and the blocks it has not reached are looked through if they are
        among the recent ones (the moments between a block's commit and its index's)."""
        d = self._dbs
        with self._read() as txn:
            raw = txn.get(txid, db=d["txindex"])
            if raw is not None:
                block_hash, position = _TXLOC.unpack(raw)
                height = _decode_index(txn.get(block_hash, db=d["index"])).height
                if txn.get(_U64.pack(height), db=d["main"]) == block_hash:
                    return block_hash, height, position
            if not self._index_behind(txn):
                return None
            for block in self._recent.newest_first():
                if txn.get(_U64.pack(block.height), db=d["main"]) != block.hash:
                    continue
                for position, tx in enumerate(block.txs):
                    if tx.id == txid:
                        return block.hash, block.height, position
        return None

    def index_txs(self, max_txs: int = INDEX_BATCH_TXS) -> bool:
        """Bring the transaction index toward the tip in one write transaction: out go the
        entries of blocks that left the main chain, in come those of the next main-chain
        blocks, up to `max_txs` transactions (whole blocks). Answers whether it is still behind."""
        d = self._dbs

        def body(txn: lmdb.Transaction) -> bool:
            tip_hash = txn.get(b"tip", db=d["meta"])
            cursor = txn.get(b"txindex_tip", db=d["meta"])
            if cursor == tip_hash:
                return False
            height = _decode_index(txn.get(cursor, db=d["index"])).height
            while txn.get(_U64.pack(height), db=d["main"]) != cursor:  # a branch a reorganisation left
                block = self._stored_block(txn, cursor)
                for tx in block.txs:
                    loc = txn.get(tx.id, db=d["txindex"])
                    if loc is not None and loc[:32] == cursor:
                        txn.delete(tx.id, db=d["txindex"])
                cursor, height = block.header.prev_hash, height - 1
            tip_height = _decode_index(txn.get(tip_hash, db=d["index"])).height
            indexed = 0
            while height < tip_height and indexed < max_txs:
                height += 1
                cursor = txn.get(_U64.pack(height), db=d["main"])
                block = self._stored_block(txn, cursor)
                for position, tx in enumerate(block.txs):
                    txn.put(tx.id, _TXLOC.pack(cursor, position), db=d["txindex"])
                indexed += len(block.txs)
            txn.put(b"txindex_tip", cursor, db=d["meta"])
            return height < tip_height

        return self._write(body)

    def index_all_txs(self) -> None:
        """Bring the transaction index up to the tip, however far behind it is."""
        while self.index_txs():
            pass

    def index_behind(self) -> bool:
        """Whether the transaction index has not reached the tip yet."""
        with self._read() as txn:
            return self._index_behind(txn)

    def _index_behind(self, txn: lmdb.Transaction) -> bool:
        meta = self._dbs["meta"]
        return txn.get(b"txindex_tip", db=meta) != txn.get(b"tip", db=meta)

    def iter_accounts(self) -> Iterator[tuple[bytes, Account]]:
        """Every account, from one snapshot. Holds a read transaction while iterating."""
        with self._read() as txn:
            for key, value in txn.cursor(db=self._dbs["accounts"]):
                yield key, decode_account(value)

    def header_context(self, parent_hash: bytes) -> HeaderContext | None:
        """The ancestors a child of `parent_hash` is judged against, on whatever branch."""
        with self._read() as txn:
            return self._header_context(txn, parent_hash)

    def _header_context(self, txn: lmdb.Transaction, parent_hash: bytes) -> HeaderContext | None:
        """None when the parent, or one of the ancestors needed, is not stored (or was pruned)."""
        headers = self._dbs["headers"]
        raw = txn.get(parent_hash, db=headers)
        if raw is None:
            return None
        chain = [decode_header(raw)]  # parent, grandparent, ... back to genesis at most
        while len(chain) < max(self.params.median_time_span, 2) and chain[-1].height > 0:
            raw = txn.get(chain[-1].prev_hash, db=headers)
            if raw is None:  # a dead branch whose root prune_side_branches forgot
                return None
            chain.append(decode_header(raw))
        grandparent = chain[1] if len(chain) > 1 and chain[1].height > 0 else None
        timestamps = tuple(h.timestamp_ms for h in chain[: self.params.median_time_span])
        seed = self._epoch_seed(txn, chain[0]) if self._staking else b""
        if seed is None:
            return None
        return HeaderContext(chain[0], grandparent, timestamps, seed)

    def _epoch_seed(self, txn: lmdb.Transaction, parent: Header) -> bytes | None:
        """Hash of the ancestor that seeds eligibility for a child of `parent` (chain.pos);
        None when the walk back meets a header that is not stored (a dead side branch
        pruned under a block or header that still names it)."""
        target = epoch_seed_height(parent.height + 1, self.params.epoch_length)
        block_hash, header = parent.hash, parent
        if txn.get(_U64.pack(parent.height), db=self._dbs["main"]) == parent.hash:
            return txn.get(_U64.pack(target), db=self._dbs["main"])  # on the main chain: one lookup
        while header.height > target:
            block_hash = header.prev_hash
            raw = txn.get(block_hash, db=self._dbs["headers"])
            if raw is None:
                return None
            header = decode_header(raw)
        return block_hash

    def locator(self) -> list[bytes]:
        """Main-chain hashes at exponentially spaced heights back from the tip (Bitcoin's locator)."""
        tip = self.tip()
        heights, step, height = [], 1, tip.height
        while height > 0 and len(heights) < 63:
            heights.append(height)
            if len(heights) >= 10:
                step *= 2
            height -= step
        heights.append(0)
        with self._read() as txn:
            return [txn.get(_U64.pack(h), db=self._dbs["main"]) for h in heights]

    def main_chain_hashes(self, start: int, count: int) -> list[bytes]:
        with self._read() as txn:
            out = []
            for height in range(start, start + count):
                h = txn.get(_U64.pack(height), db=self._dbs["main"])
                if h is None:
                    break
                out.append(h)
            return out

    def state_digest(self) -> int:
        return self._totals.digest

    # --- writing: blocks -----------------------------------------------------------------

    def add_block(self, block: Block, now_ms: int) -> AddResult:
        """Validate a block against its ancestors, store it, and follow the heaviest branch.

        The caller has checked signatures. Raises ChainError when the block is invalid
        (the block is then remembered as invalid, so its descendants are refused cheaply)
        or when its parent is unknown (Code.UNKNOWN_PARENT: keep it as an orphan).
        """
        header = block.header
        with self._read() as txn:
            known = txn.get(header.hash, db=self._dbs["index"])
            parent_raw = txn.get(header.prev_hash, db=self._dbs["index"])
            ctx = self._header_context(txn, header.prev_hash) if parent_raw else None
        if known is not None:
            entry = _decode_index(known)
            if entry.invalid:
                raise ChainError(Code.INVALID_ANCESTOR, f"block {header.hash.hex()[:16]} is known to be invalid")
            if entry.has_block:
                return AddResult("duplicate", self.tip())
        if parent_raw is None:
            raise ChainError(Code.UNKNOWN_PARENT, f"parent {header.prev_hash.hex()[:16]} is unknown")
        parent = _decode_index(parent_raw)
        if parent.invalid:
            self._mark_invalid(header)
            raise ChainError(Code.INVALID_ANCESTOR, f"block {header.hash.hex()[:16]} descends from an invalid block")
        if not parent.has_block:
            raise ChainError(Code.UNKNOWN_PARENT, f"parent {header.prev_hash.hex()[:16]} has no block yet")
        if ctx is None:
            raise ChainError(Code.UNKNOWN_PARENT, f"the ancestors of {header.prev_hash.hex()[:16]} are not stored")
        check_header_context(self.engine, header, ctx, now_ms)
        check_block_shape(block, self.params.max_block_bytes, self.params.max_block_txs)
        entry = IndexEntry(header.height, parent.weight + self.engine.block_weight(header), HAVE_BLOCK)
        tip = self.tip()
        if not better_tip(entry.weight, tip.weight):
            try:
                self._check_side_block(block, ctx, tip)
            except _BranchInvalid as bad:
                self._write(lambda txn: self._store_invalid(txn, block, bad.block_hash, bad.descendants))
                raise bad.error from None
            self._write(lambda txn: self._store_side(txn, block, entry))
            self._recent.keep((block,))
            return AddResult("side_branch", tip)
        try:
            result, totals = self._write(lambda txn: self._switch_to(txn, block, entry))
        except _BranchInvalid as bad:
            self._write(lambda txn: self._store_invalid(txn, block, bad.block_hash, bad.descendants))
            raise bad.error from None
        # Committed: only now does the in-memory view move.
        self._totals = totals
        self._tip = result.tip
        self._recent.keep(result.connected)
        return result

    def _check_side_block(self, block: Block, ctx: HeaderContext, tip: Tip) -> None:
        """A side block is stored without being connected, so nothing else would judge it
        before its branch wins: refuse those that cost the sender nothing and would fill the
        disk (a Proof of Work block costs its work). Under Proof of Stake a signature alone
        makes a block, so its signer must be eligible: by the stake at our tip if that
        suffices (the common case, cheap), else by the exact stake at its parent, which an
        honest block of a branch whose stake moved differently from ours (bonds, unbonds, a
        slash) needs. Side branches deeper than the reorganisation limit are pruned."""
        if not self._staking:
            return
        try:
            with self._read() as txn:
                self._check_stake_ahead(txn, block.header, ctx)
        except ChainError:
            stake, total_stake = self._stake_at_parent(block, tip)
            try:
                self.engine.check_stake(block.header, ctx, stake, total_stake)
            except ChainError as e:
                raise _BranchInvalid(block.hash, e) from None

    def _stake_at_parent(self, block: Block, tip: Tip) -> tuple[int, int]:
        """(stake of `block`'s producer, total stake) in the state after its parent, a side
        block or a main-chain block: worked out in a write transaction that is then aborted
        (main chain disconnected to the fork point, the side branch connected up to the
        parent, with every check). Raises _BranchInvalid if an ancestor breaks a rule."""
        d = self._dbs

        def body(txn: lmdb.Transaction) -> None:
            branch: list[bytes] = []
            cursor_hash, cursor_height = block.header.prev_hash, block.height - 1
            while txn.get(_U64.pack(cursor_height), db=d["main"]) != cursor_hash:
                branch.append(cursor_hash)
                cursor_hash = decode_header(txn.get(cursor_hash, db=d["headers"])).prev_hash
                cursor_height -= 1
            totals = self._totals
            for height in range(tip.height, cursor_height, -1):
                old_hash = txn.get(_U64.pack(height), db=d["main"])
                totals = self._disconnect(txn, self._stored_block(txn, old_hash), totals)
            order = branch[::-1]
            for position, block_hash in enumerate(order):
                try:
                    totals = self._connect(txn, self._stored_block(txn, block_hash), totals)
                except ChainError as e:
                    raise _BranchInvalid(block_hash, e, tuple(order[position + 1 :])) from None
            producer = self._get_account(txn, block.header.producer)
            raise _Reached(producer.stake if producer else 0, totals.total_stake)

        try:
            self._write(body)
        except _Reached as reached:  # leaving the transaction by an exception aborted it
            return reached.args
        raise AssertionError("unreachable")

    def _store_side(self, txn: lmdb.Transaction, block: Block, entry: IndexEntry) -> None:
        d = self._dbs
        txn.put(block.hash, block.header.raw, db=d["headers"])
        txn.put(block.hash, _encode_index(entry), db=d["index"])
        txn.put(block.hash, block.raw, db=d["blocks"])
        txn.put(_U64.pack(entry.height) + block.hash, b"", db=d["side"])
        self._note_best_header(txn, block.hash, entry)

    def _store_invalid(
        self, txn: lmdb.Transaction, block: Block, bad_hash: bytes, descendants: tuple[bytes, ...] = ()
    ) -> None:
        """Remember that `bad_hash` (in `block`'s branch) is invalid, and so are `block` and the
        stored `descendants` of `bad_hash` on the way to it: each is refused from now on."""
        d = self._dbs
        txn.put(block.hash, block.header.raw, db=d["headers"])
        txn.put(block.hash, _encode_index(IndexEntry(block.height, 0, INVALID)), db=d["index"])
        for doomed in (bad_hash, *descendants):
            if doomed == block.hash:
                continue
            raw = txn.get(doomed, db=d["index"])
            if raw is not None:
                old = _decode_index(raw)
                txn.put(doomed, _encode_index(IndexEntry(old.height, old.weight, INVALID)), db=d["index"])
                txn.delete(doomed, db=d["blocks"])
                txn.delete(_U64.pack(old.height) + doomed, db=d["side"])

    def _mark_invalid(self, header: Header) -> None:
        def body(txn: lmdb.Transaction) -> None:
            txn.put(header.hash, header.raw, db=self._dbs["headers"])
            txn.put(header.hash, _encode_index(IndexEntry(header.height, 0, INVALID)), db=self._dbs["index"])

        self._write(body)

    def add_blocks(self, blocks: list[Block], now_ms: int) -> list[AddResult] | None:
        """Connect a run of blocks that extends the tip - the first a child of the tip, each
        of the others a child of the one before - in one write transaction: during a sync,
        one commit (and one flush to disk) for the lot instead of one per block.

        Every block passes the checks add_block makes, and the run is atomic like a
        reorganisation: a power cut leaves the old tip or the last block of the run, and
        the in-memory tip moves only after the commit. Answers one "connected" AddResult per
        block, or None, having written nothing, when the blocks are not such a run or any
        of them fails a check: the caller then adds them one by one with add_block, which
        remembers what is invalid and says why.
        """
        if not blocks:
            return []
        if blocks[0].header.prev_hash != self.tip().hash or any(
            child.header.prev_hash != parent.hash for parent, child in itertools.pairwise(blocks)
        ):
            return None
        index = self._dbs["index"]

        def body(txn: lmdb.Transaction) -> tuple[list[AddResult], _Totals]:
            tip, totals = self.tip(), self._totals
            results = []
            for block in blocks:
                header = block.header
                known = txn.get(header.hash, db=index)
                if known is not None and _decode_index(known).flags & (HAVE_BLOCK | INVALID):
                    raise _NotAnExtension  # stored already, or known invalid: add_block says which
                parent = _decode_index(txn.get(header.prev_hash, db=index))
                ctx = self._header_context(txn, header.prev_hash)
                if ctx is None:
                    raise _NotAnExtension
                check_header_context(self.engine, header, ctx, now_ms)
                check_block_shape(block, self.params.max_block_bytes, self.params.max_block_txs)
                entry = IndexEntry(header.height, parent.weight + self.engine.block_weight(header), HAVE_BLOCK)
                if not better_tip(entry.weight, tip.weight):
                    raise _NotAnExtension
                result, totals = self._switch_to(txn, block, entry, tip, totals)
                if result.status != "connected":
                    raise _NotAnExtension
                tip = result.tip
                results.append(result)
            return results, totals

        try:
            results, totals = self._write(body)
        except (ChainError, _BranchInvalid, _NotAnExtension):
            return None  # aborted: nothing was written
        # Committed: only now does the in-memory view move.
        self._totals = totals
        self._tip = results[-1].tip
        self._recent.keep(blocks[-RECENT_BLOCKS:])
        return results

    def _switch_to(
        self, txn: lmdb.Transaction, block: Block, entry: IndexEntry, tip: Tip | None = None,
        totals: _Totals | None = None,
    ) -> tuple[AddResult, _Totals]:
        """Store `block` and make its branch the main chain, all inside `txn`, from `tip` and
        `totals` (default: the committed ones; add_blocks passes those its run has reached)."""
        d = self._dbs
        tip = self.tip() if tip is None else tip
        totals = self._totals if totals is None else totals
        self._store_side(txn, block, entry)
        # Walk the new branch back to the main chain.
        branch = [block.hash]
        cursor_hash, cursor_height = block.header.prev_hash, block.height - 1
        while txn.get(_U64.pack(cursor_height), db=d["main"]) != cursor_hash:
            if _decode_index(txn.get(cursor_hash, db=d["index"])).invalid:
                raise _BranchInvalid(
                    cursor_hash,
                    ChainError(Code.INVALID_ANCESTOR, "block descends from an invalid block"),
                    tuple(branch[1:]),
                )
            branch.append(cursor_hash)
            cursor_hash = decode_header(txn.get(cursor_hash, db=d["headers"])).prev_hash
            cursor_height -= 1
        fork_height = cursor_height
        depth = tip.height - fork_height
        if depth > self.params.max_reorg_depth:
            log.warning(
                "refusing a reorganisation of depth %d (limit %d) to block %s at height %d",
                depth, self.params.max_reorg_depth, block.hash.hex()[:16], block.height,
            )
            return AddResult("reorg_refused", tip), totals
        disconnected = []
        for height in range(tip.height, fork_height, -1):
            old_hash = txn.get(_U64.pack(height), db=d["main"])
            old_block = self._stored_block(txn, old_hash)
            totals = self._disconnect(txn, old_block, totals)
            disconnected.append(old_block)
        connected = []
        order = branch[::-1]
        for position, block_hash in enumerate(order):
            new_block = block if block_hash == block.hash else self._stored_block(txn, block_hash)
            try:
                totals = self._connect(txn, new_block, totals)
            except ChainError as e:
                raise _BranchInvalid(block_hash, e, tuple(order[position + 1 : -1])) from None
            connected.append(new_block)
        txn.put(b"tip", block.hash, db=d["meta"])
        txn.put(b"digest", totals.digest.to_bytes(32, "big"), db=d["meta"])
        txn.put(b"txcount", _U64.pack(totals.tx_count), db=d["meta"])
        txn.put(b"total_stake", _U64.pack(totals.total_stake), db=d["meta"])
        new_tip = self._make_tip(block.hash, entry, block.header, totals)
        status = "connected" if not disconnected else "reorganized"
        if disconnected:
            log.info(
                "reorganised: %d blocks disconnected, %d connected, new tip %s at %d",
                len(disconnected), len(connected), block.hash.hex()[:16], block.height,
            )
        return AddResult(status, new_tip, tuple(connected), tuple(disconnected)), totals

    def _stored_block(self, txn: lmdb.Transaction, block_hash: bytes) -> Block:
        """A stored block, decoded: from the recent ones if it is one of them."""
        block = self._recent.get(block_hash)
        return block if block is not None else decode_block(txn.get(block_hash, db=self._dbs["blocks"]))

    def _get_account(self, txn: lmdb.Transaction, address: bytes) -> Account | None:
        raw = txn.get(address, db=self._dbs["accounts"])
        return decode_account(raw) if raw else None

    def _connect(self, txn: lmdb.Transaction, block: Block, totals: _Totals) -> _Totals:
        d = self._dbs
        header = block.header
        get = lambda address: self._get_account(txn, address)  # noqa: E731
        if self._staking:
            staker = get(header.producer)
            ctx = self._header_context(txn, header.prev_hash)
            self.engine.check_stake(header, ctx, staker.stake if staker else 0, totals.total_stake)
        tx_ctx = TxContext(
            header.height,
            self.params.unbonding_delay,
            self._staking,
            self.engine.check_evidence if self._staking else None,
        )
        change = apply_block(get, block.txs, header.producer, self.params.block_reward, tx_ctx)
        for address, account in change.updated.items():
            txn.put(address, encode_account(account), db=d["accounts"])
        txn.put(block.hash, encode_undo(change.previous), db=d["undo"])
        txn.put(_U64.pack(header.height), block.hash, db=d["main"])
        txn.delete(_U64.pack(header.height) + block.hash, db=d["side"])
        return _Totals(
            digest_update(totals.digest, change.previous, change.updated),
            totals.tx_count + len(block.txs),
            totals.total_stake + _stake_delta(change.previous, change.updated),
        )

    def _disconnect(self, txn: lmdb.Transaction, block: Block, totals: _Totals) -> _Totals:
        d = self._dbs
        raw_undo = txn.get(block.hash, db=d["undo"])
        if raw_undo is None:
            raise StoreCorrupt(f"undo record of block {block.hash.hex()[:16]} is missing; the store is damaged")
        previous = decode_undo(raw_undo)
        current = {address: self._get_account(txn, address) for address in previous}
        for address, old in previous.items():
            if old is None:
                txn.delete(address, db=d["accounts"])
            else:
                txn.put(address, encode_account(old), db=d["accounts"])
        txn.delete(block.hash, db=d["undo"])
        txn.delete(_U64.pack(block.height), db=d["main"])
        txn.put(_U64.pack(block.height) + block.hash, b"", db=d["side"])
        present = {a: acc for a, acc in current.items() if acc is not None}
        return _Totals(
            digest_undo(totals.digest, previous, present),
            totals.tx_count - len(block.txs),
            totals.total_stake - _stake_delta(previous, present),
        )

    # --- headers-first sync --------------------------------------------------------------

    def add_headers(self, headers: list[Header], now_ms: int) -> Header | None:
        """Validate and store headers (without their blocks) in one transaction.

        Each header must extend a known header (an earlier one of the list, or one stored).
        Returns the last header stored or already known; raises ChainError at the first
        invalid one, storing nothing of the list.
        """
        d = self._dbs

        def body(txn: lmdb.Transaction) -> Header | None:
            last = None
            for header in headers:
                raw = txn.get(header.hash, db=d["index"])
                if raw is not None:
                    if _decode_index(raw).invalid:
                        raise ChainError(Code.INVALID_ANCESTOR, f"header {header.hash.hex()[:16]} is known invalid")
                    last = header
                    continue
                parent_raw = txn.get(header.prev_hash, db=d["index"])
                if parent_raw is None:
                    raise ChainError(Code.UNKNOWN_PARENT, f"header {header.hash.hex()[:16]} does not connect")
                parent = _decode_index(parent_raw)
                if parent.invalid:
                    raise ChainError(Code.INVALID_ANCESTOR, f"header {header.hash.hex()[:16]} extends an invalid one")
                ctx = self._header_context(txn, header.prev_hash)
                if ctx is None:
                    raise ChainError(Code.UNKNOWN_PARENT, f"ancestors of header {header.hash.hex()[:16]} are not stored")
                check_header_context(self.engine, header, ctx, now_ms)
                if self._staking:
                    self._check_stake_ahead(txn, header, ctx)
                entry = IndexEntry(header.height, parent.weight + self.engine.block_weight(header), 0)
                txn.put(header.hash, header.raw, db=d["headers"])
                txn.put(header.hash, _encode_index(entry), db=d["index"])
                self._note_best_header(txn, header.hash, entry)
                last = header
            return last

        return self._write(body)

    def _check_stake_ahead(self, txn: lmdb.Transaction, header: Header, ctx: HeaderContext) -> None:
        """Proof of Stake headers arrive before the state they depend on: judge eligibility
        by the stake at our tip. Otherwise anyone could forge a heavy header chain with
        signatures alone; the exact check runs again when the block connects."""
        staker = self._get_account(txn, header.producer)
        try:
            self.engine.check_stake(header, ctx, staker.stake if staker else 0, self._totals.total_stake)
        except ChainError as e:
            raise ChainError(Code.NOT_ELIGIBLE, f"{e.message} (by the stake at our tip)") from None

    def _note_best_header(self, txn: lmdb.Transaction, block_hash: bytes, entry: IndexEntry) -> None:
        best = txn.get(b"best_header", db=self._dbs["meta"])
        if best is not None:
            raw = txn.get(best, db=self._dbs["index"])
            if raw is not None and not better_tip(entry.weight, _decode_index(raw).weight):
                return
        txn.put(b"best_header", block_hash, db=self._dbs["meta"])

    def best_header(self) -> tuple[bytes, IndexEntry]:
        """The heaviest valid header known, with or without its block (at least the tip)."""
        tip = self.tip()
        with self._read() as txn:
            best = txn.get(b"best_header", db=self._dbs["meta"])
            raw = txn.get(best, db=self._dbs["index"]) if best else None
        entry = _decode_index(raw) if raw else None
        if entry is None or entry.invalid or not better_tip(entry.weight, tip.weight):
            return tip.hash, IndexEntry(tip.height, tip.weight, HAVE_BLOCK)
        return best, entry

    def missing_blocks(self, target: bytes, limit: int) -> list[bytes]:
        """Hashes of the blocks still missing on the way to header `target`, oldest first."""
        d = self._dbs
        missing: list[bytes] = []
        with self._read() as txn:
            cursor = target
            while True:
                raw = txn.get(cursor, db=d["index"])
                if raw is None:
                    break
                entry = _decode_index(raw)
                if entry.has_block or entry.invalid:
                    break
                missing.append(cursor)
                cursor = decode_header(txn.get(cursor, db=d["headers"])).prev_hash
        missing.reverse()
        return missing[:limit]

    def headers_after(self, locator: list[bytes], stop_hash: bytes, limit: int) -> list[bytes]:
        """Main-chain headers after the first locator hash we share (Bitcoin's getheaders)."""
        d = self._dbs
        with self._read() as txn:
            start = 0
            for block_hash in locator:
                raw = txn.get(block_hash, db=d["index"])
                if raw is None:
                    continue
                height = _decode_index(raw).height
                if txn.get(_U64.pack(height), db=d["main"]) == block_hash:
                    start = height + 1
                    break
            out = []
            for height in range(start, start + limit):
                block_hash = txn.get(_U64.pack(height), db=d["main"])
                if block_hash is None:
                    break
                out.append(txn.get(block_hash, db=d["headers"]))
                if block_hash == stop_hash:
                    break
            return out

    # --- peer book and bans ----------------------------------------------------------------

    def save_peers(self, entries: dict[bytes, bytes]) -> None:
        """Write peer records (node id -> encoded record; empty bytes deletes)."""
        db = self._dbs["peers"]

        def body(txn: lmdb.Transaction) -> None:
            for node_id, record in entries.items():
                if record:
                    txn.put(node_id, record, db=db)
                else:
                    txn.delete(node_id, db=db)

        self._write(body)

    def load_peers(self) -> dict[bytes, bytes]:
        with self._read() as txn:
            return dict(txn.cursor(db=self._dbs["peers"]))

    def save_ban(self, node_id: bytes, until_ms: int) -> None:
        packed = _U64.pack(until_ms)
        self._write(lambda txn: txn.put(node_id, packed, db=self._dbs["bans"]) if until_ms else
                    txn.delete(node_id, db=self._dbs["bans"]))

    def load_bans(self) -> dict[bytes, int]:
        with self._read() as txn:
            return {k: _U64.unpack(v)[0] for k, v in txn.cursor(db=self._dbs["bans"])}

    # --- persisted mempool ---------------------------------------------------------------

    def save_mempool(self, added: Iterable[tuple[bytes, int, bytes]], removed: Iterable[bytes]) -> None:
        """Record pending transactions (id, added at ms, raw bytes) and forget others (ids),
        in one write transaction."""
        db = self._dbs["mempool"]

        def body(txn: lmdb.Transaction) -> None:
            for txid in removed:
                txn.delete(txid, db=db)
            for txid, added_ms, raw in added:
                txn.put(txid, _U64.pack(added_ms) + raw, db=db)

        self._write(body)

    def load_mempool(self, max_bytes: int) -> list[tuple[bytes, int, bytes]]:
        """The pending transactions recorded, as (id, added at ms, raw bytes), at most
        `max_bytes` of them (the mempool's own cap; the rest are forgotten at the next save)."""
        out, total = [], 0
        with self._read() as txn:
            for txid, value in txn.cursor(db=self._dbs["mempool"]):
                if len(txid) != 32 or len(value) <= _U64.size:
                    continue  # not a record this version writes: dropped at the next save
                total += len(value) - _U64.size
                if total > max_bytes:
                    break
                out.append((txid, _U64.unpack_from(value)[0], value[_U64.size :]))
        return out

    def prune_side_branches(self) -> int:
        """Forget side-branch blocks deeper than the reorg limit: they can never win.

        A branch dies at its root: blocks above the limit whose ancestors are forgotten go
        too, or a child of them would find its ancestry (header context, fork point) missing.
        """
        limit = self.tip().height - self.params.max_reorg_depth
        if limit <= 0:
            return 0
        self.index_all_txs()  # an index trailing on a dead branch reads its blocks to leave it
        d = self._dbs

        def body(txn: lmdb.Transaction) -> int:
            doomed = []
            forgotten: set[bytes] = set()
            with txn.cursor(db=d["side"]) as cursor:
                for key, _ in cursor:  # in height order: parents before their children
                    block_hash = key[8:]
                    if _U64.unpack_from(key)[0] >= limit:
                        raw = txn.get(block_hash, db=d["headers"])
                        if raw is None or decode_header(raw).prev_hash not in forgotten:
                            continue
                    doomed.append(key)
                    forgotten.add(block_hash)
            for key in doomed:
                block_hash = key[8:]
                txn.delete(key, db=d["side"])
                for db in ("blocks", "headers", "index"):
                    txn.delete(block_hash, db=d[db])
            return len(doomed)

        return self._write(body)


    # --- backups --------------------------------------------------------------------------

    def backup(self, dest: str | Path) -> BackupInfo:
        """Write a compacted copy of the ledger into `dest`, a new (or empty) directory.

        The copy is LMDB's own (mdb_env_copyfd2 with compaction) of one read snapshot, so
        it is consistent however busy the writer is, and the manifest records that
        snapshot's tip. A read transaction never blocks the writer; only a map resize would
        have to wait for it (LMDB resizes with no transaction open), so the map is grown
        first if less than half of it is free. Pages the writer frees meanwhile are reused
        only after the copy: the file may grow by what is written during the backup.
        Closing the store stops a backup in progress (BackupError) rather than wait for it.
        """
        dest = Path(os.path.abspath(dest))
        created = _prepare_backup_dir(dest)
        started = time.monotonic()
        try:
            self._make_headroom()
            with self._rw.shared():
                if self._env is None or self._closing.is_set():
                    raise BackupError("the store is closing")
                txn = self._env.begin(buffers=False)
                try:
                    tip, _ = self._read_tip(txn)
                    size, digest = self._copy_snapshot(txn, dest / BACKUP_DATA)
                finally:
                    txn.abort()
            info = BackupInfo(
                network=self.params.name, network_id=self.params.network_id.hex(), schema=SCHEMA_VERSION,
                height=tip.height, tip=tip.hash.hex(), state_hash=tip.state_hash, tx_count=tip.tx_count,
                bytes=size, sha256=digest, created_ms=int(time.time() * 1000),
            )
            _write_manifest(dest, info)
        except BaseException as e:
            _remove_backup(dest, created)
            if isinstance(e, lmdb.Error):
                raise BackupError(f"cannot write a backup to {dest}: {e}") from None
            if isinstance(e, OSError):
                raise BackupError(f"cannot write a backup to {dest}: {e.strerror or e}") from None
            raise
        log.info("backup written path=%s height=%d bytes=%d seconds=%.1f", dest, info.height, info.bytes,
                 time.monotonic() - started)
        return info

    def _copy_snapshot(self, txn: lmdb.Transaction, target: Path) -> tuple[int, str]:
        """LMDB writes the snapshot into a pipe; a thread drains it into `target` (0600),
        hashing as it goes, and answers (size, SHA-256). When the store closes, the thread
        stops reading and closes the pipe, so LMDB's next write fails and the copy ends."""
        read_fd, write_fd = os.pipe()
        try:
            out_fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except BaseException:
            os.close(read_fd)
            os.close(write_fd)
            raise
        drained: dict[str, object] = {}

        def drain() -> None:
            digest, size = hashlib.sha256(), 0
            try:
                with os.fdopen(out_fd, "wb") as out:
                    while chunk := os.read(read_fd, _COPY_CHUNK):
                        if self._closing.is_set():
                            drained["aborted"] = True
                            return
                        out.write(chunk)
                        digest.update(chunk)
                        size += len(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                drained["result"] = (size, digest.hexdigest())
            except BaseException as e:  # noqa: BLE001 - handed to the copying thread
                drained["error"] = e
            finally:
                os.close(read_fd)

        thread = threading.Thread(target=drain, name="backup-writer", daemon=True)
        thread.start()
        failure: lmdb.Error | None = None
        try:
            self._env.copyfd(write_fd, compact=True, txn=txn)
        except lmdb.Error as e:
            failure = e  # most likely the pipe, closed because of one of the reasons below
        finally:
            os.close(write_fd)
            thread.join()
        if "error" in drained:
            raise drained["error"]
        if drained.get("aborted"):
            raise BackupError("the node is stopping: the backup was abandoned")
        if failure is not None:
            raise failure
        return drained["result"]

    def _make_headroom(self) -> None:
        with self._write_lock:
            info, psize = self._env.info(), self._env.stat()["psize"]
            used = (info["last_pgno"] + 1) * psize
            if used * 2 > info["map_size"] and info["map_size"] < MAX_MAP_SIZE:
                self._grow_map()

def _stake_delta(previous: dict, updated: dict) -> int:
    """How much bonded stake a change adds (negative when it removes)."""
    return sum(a.stake for a in updated.values()) - sum(a.stake for a in previous.values() if a is not None)


class _NotAnExtension(Exception):
    """add_blocks: the run does not simply extend the tip; add its blocks one by one."""


class _BranchInvalid(Exception):
    """Block `block_hash` broke a rule; `descendants` are the stored blocks between it and the
    block being added, which are invalid with it."""

    def __init__(self, block_hash: bytes, error: ChainError, descendants: tuple[bytes, ...] = ()) -> None:
        self.block_hash = block_hash
        self.error = error
        self.descendants = descendants


class _Reached(Exception):
    """Carries what an aborted trial transaction worked out out of it (Store._stake_at_parent)."""


def _check_not_truncated(env: lmdb.Environment, ledger: Path, path: Path) -> None:
    """LMDB reads data.mdb through a memory map: a page past the end of a file cut short (a
    copy interrupted, a full card, damage) kills the process with SIGBUS at its first read,
    with no message at all. The meta page names the last page in use: the file must reach it."""
    try:
        size = (ledger / "data.mdb").stat().st_size
    except OSError:
        return
    needed = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    if size < needed:
        env.close()
        raise StoreCorrupt(
            f"the store in {path} is damaged: its data file holds {size} bytes but its pages run to byte "
            f"{needed} (the file was cut short)"
        )


# What LMDB raises when it reads a page that is not what it should be.
_DAMAGE = (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.BadDbiError, lmdb.BadTxnError)


def _back_the_whole_map(env: lmdb.Environment, ledger: Path) -> None:
    """Extend data.mdb (sparsely: no disk space is used) to the size of the memory map.

    A damaged page can point LMDB past the end of the file but inside the map; reading there
    kills the process with SIGBUS, before any check can say a word. With the whole map
    backed by the file, such a read finds zeros, which LMDB reports as MDB_CORRUPTED: the
    node stops with a message naming the damaged store instead of dying by signal.
    """
    data = ledger / "data.mdb"
    try:
        if data.stat().st_size < env.info()["map_size"]:
            os.truncate(data, env.info()["map_size"])
    except OSError as e:
        log.warning("could not extend the store file path=%s error=%s", data, e)


def _short_write_on_a_full_disk(error: lmdb.Error, path: Path) -> bool:
    """LMDB reports a write cut short by a full disk as EIO ("Input/output error"), not
    ENOSPC (seen on tmpfs): then the file system holding the store is (all but) full."""
    if "Input/output error" not in str(error):
        return False
    try:
        stat = os.statvfs(path)
    except OSError:
        return False
    return stat.f_bavail * stat.f_frsize < 4 * 1024 * 1024


def _is_disk_full(error: lmdb.Error) -> bool:
    return "No space left" in str(error) or getattr(error, "errno", None) == errno.ENOSPC


def _lock_directory(path: Path) -> int:
    """Hold an exclusive lock on the data directory for the life of the process."""
    lock_path = path / "LOCK"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        try:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        finally:
            os.close(fd)
        raise StoreLocked(
            f"data directory {path} is in use by another peerledger process (pid {holder}); "
            f"two nodes cannot share one data directory"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


# --------------------------------------------------------------------------- backups

BACKUP_DATA = "data.mdb"  # the name LMDB's copy gives the file
BACKUP_MANIFEST = "backup.json"
BACKUP_FORMAT = 1
_COPY_CHUNK = 1 << 20


class BackupError(StoreError):
    """A backup cannot be made or restored; the message says why."""


@dataclass(frozen=True, slots=True)
class BackupInfo:
    """What a backup holds: the manifest written beside its data file."""

    network: str
    network_id: str  # hex
    schema: int
    height: int
    tip: str  # hex
    state_hash: str
    tx_count: int
    bytes: int  # size of the data file
    sha256: str  # of the data file, hex
    created_ms: int

    def to_json(self) -> dict:
        return {"format": BACKUP_FORMAT, **{name: getattr(self, name) for name in self.__slots__}}


def _prepare_backup_dir(dest: Path) -> bool:
    """Make `dest` (mode 0700) or accept it empty; answers whether it was created here."""
    if dest.exists():
        if not dest.is_dir() or any(dest.iterdir()):
            raise BackupError(f"{dest} already exists and is not an empty directory; choose a new path")
        return False
    try:
        dest.mkdir(mode=0o700)
    except FileNotFoundError:
        raise BackupError(f"cannot create {dest}: its parent directory does not exist") from None
    except OSError as e:
        raise BackupError(f"cannot create {dest}: {e.strerror or e}") from None
    return True


def _remove_backup(dest: Path, created: bool) -> None:
    """Undo a failed backup: its files, and the directory if this backup made it."""
    for name in (BACKUP_DATA, BACKUP_MANIFEST, BACKUP_MANIFEST + ".tmp"):
        with contextlib.suppress(OSError):
            (dest / name).unlink()
    if created:
        with contextlib.suppress(OSError):
            dest.rmdir()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_manifest(dest: Path, info: BackupInfo) -> None:
    """The manifest goes last, atomically: a backup directory without one is unfinished."""
    tmp = dest / (BACKUP_MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump(info.to_json(), f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, dest / BACKUP_MANIFEST)
    _fsync_dir(dest)


def read_backup(path: str | Path) -> BackupInfo:
    """The manifest of the backup in directory `path`, checked against its data file's size."""
    path = Path(path)
    manifest, data = path / BACKUP_MANIFEST, path / BACKUP_DATA
    if not path.is_dir():
        raise BackupError(f"{path} is not a directory (a backup is the directory `peerledger backup` wrote)")
    if not data.exists():
        raise BackupError(f"{path} holds no {BACKUP_DATA}: it is not a peerledger backup")
    if not manifest.exists():
        raise BackupError(f"{path} has no {BACKUP_MANIFEST}: the backup did not finish; make a new one")
    try:
        document = json.loads(manifest.read_text())
        if document.get("format") != BACKUP_FORMAT:
            raise BackupError(f"{manifest} has format {document.get('format')!r}; this peerledger reads {BACKUP_FORMAT}")
        info = BackupInfo(**{name: document[name] for name in BackupInfo.__slots__})
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise BackupError(f"{manifest} is damaged: {e}") from None
    size = data.stat().st_size
    if size != info.bytes:
        raise BackupError(f"{data} has {size} bytes but the backup wrote {info.bytes}: it is truncated or damaged")
    return info


def restore_backup(
    backup: str | Path, data_dir: str | Path, params: ChainParams, *, force: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> BackupInfo:
    """Put the backup in directory `backup` in place of the ledger of the stopped node whose
    data directory is `data_dir`. Keys and wallets are left alone.

    Refused while a node holds the directory, and, unless `force`, when the directory holds
    a ledger with blocks beyond genesis (or one that cannot be read): restoring replaces it.
    The copy is checked (checksum, and that it opens as a ledger of this network with a
    consistent tip) before it replaces anything. The peer book and bans of the node that
    made the backup are dropped: they belong to that node. `progress(done, total)` is
    called as bytes are copied.
    """
    backup, data_dir = Path(os.path.abspath(backup)), Path(os.path.abspath(data_dir))
    info = read_backup(backup)
    if info.network_id != params.network_id.hex():
        raise BackupError(
            f"{backup} is a backup of network {info.network} {info.network_id[:16]}, but the genesis spec "
            f"gives network {params.name} {params.network_id.hex()[:16]}"
        )
    if info.schema != SCHEMA_VERSION:
        raise BackupError(f"{backup} has store schema {info.schema}; this peerledger reads {SCHEMA_VERSION}")
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise BackupError(f"cannot create data directory {data_dir}: {e.strerror or e}") from None
    try:
        lock_fd = _lock_directory(data_dir)
    except StoreLocked as e:
        raise StoreLocked(f"{e}. Stop the node before restoring") from None
    try:
        ledger = data_dir / LEDGER_DIR
        if not force and (ledger / BACKUP_DATA).exists():
            _refuse_to_replace(data_dir, ledger, params)
        staging = data_dir / (LEDGER_DIR + ".restoring")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o700)
        _copy_checked(backup / BACKUP_DATA, staging / BACKUP_DATA, info, progress)
        restored = Store._open_ledger(data_dir, staging, params, -1, create=False)
        try:
            if restored.tip().hash.hex() != info.tip:
                raise BackupError(f"{backup}: the copy's tip is not the one its manifest names; it is damaged")

            def forget_peers(txn: lmdb.Transaction) -> None:
                for name in ("peers", "bans"):
                    txn.drop(restored._dbs[name], delete=False)

            restored._write(forget_peers)
        finally:
            restored.close()
        with contextlib.suppress(FileNotFoundError):
            (staging / "lock.mdb").unlink()
        replaced = data_dir / (LEDGER_DIR + ".replaced")
        shutil.rmtree(replaced, ignore_errors=True)
        if ledger.exists():
            os.rename(ledger, replaced)
        os.rename(staging, ledger)
        _fsync_dir(data_dir)
        shutil.rmtree(replaced, ignore_errors=True)
        _give_to_owner_of(data_dir, ledger)
    except BaseException:
        shutil.rmtree(data_dir / (LEDGER_DIR + ".restoring"), ignore_errors=True)
        raise
    finally:
        os.close(lock_fd)
    return info


def _refuse_to_replace(data_dir: Path, ledger: Path, params: ChainParams) -> None:
    try:
        current = Store._open_ledger(data_dir, ledger, params, -1, readonly=True, create=False)
    except StoreError as e:
        raise BackupError(f"{e}; restoring would replace it: pass --force to do so") from None
    try:
        height = current.tip().height
    finally:
        current.close()
    if height > 0:
        raise BackupError(
            f"data directory {data_dir} already holds a ledger at height {height}; restoring would replace it: "
            f"pass --force to do so"
        )


def _copy_checked(source: Path, target: Path, info: BackupInfo, progress: Callable[[int, int], None] | None) -> None:
    digest = hashlib.sha256()
    done = 0
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with open(source, "rb") as src, os.fdopen(fd, "wb") as dst:
        while chunk := src.read(_COPY_CHUNK):
            digest.update(chunk)
            dst.write(chunk)
            done += len(chunk)
            if progress is not None:
                progress(done, info.bytes)
        dst.flush()
        os.fsync(dst.fileno())
    if done != info.bytes or digest.hexdigest() != info.sha256:
        raise BackupError(f"{source} does not match its manifest's checksum: the backup is damaged")


def _give_to_owner_of(data_dir: Path, ledger: Path) -> None:
    """Run as root (sudo) for a node that runs as its own user: the restored files are the
    node's, or it could not open them."""
    if os.geteuid() != 0:
        return
    owner = data_dir.stat()
    for path in (data_dir / "LOCK", ledger, *ledger.iterdir()):
        os.chown(path, owner.st_uid, owner.st_gid)
