"""The address book: nodes we know how to reach, and who is banned. Pure data, bounded.

Entries come from configured seeds, from peers' handshakes (their advertised listen
address) and from peer exchange (ADDR). Each records when the node was last seen and how
many dials in a row failed, so that dead addresses are tried less and less often and
finally forgotten; seeds are never forgotten. Records are persisted through the store as
opaque bytes, encoded here.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass

from chain.encoding import Reader

MAX_ENTRIES = 2000
MAX_FAILURES = 8  # a non-seed address failing this many dials in a row is forgotten
BACKOFF_BASE_MS = 5_000
BACKOFF_MAX_MS = 30 * 60_000
_RECORD = struct.Struct(">QHB")


@dataclass(slots=True)
class PeerRecord:
    address: str  # "host:port"
    last_seen_ms: int = 0
    failures: int = 0
    seed: bool = False
    next_try_ms: int = 0

    def encode(self) -> bytes:
        text = self.address.encode()
        return _RECORD.pack(self.last_seen_ms, self.failures, int(self.seed)) + bytes([len(text)]) + text

    @classmethod
    def decode(cls, data: bytes) -> PeerRecord:
        r = Reader(data, "peer record")
        last_seen, failures, seed = r.u64(), r.u16(), r.u8()
        address = r.var_bytes(255, 1).decode()
        r.done()
        return cls(address, last_seen, failures, bool(seed))


class AddressBook:
    def __init__(self, own_key: bytes, max_entries: int = MAX_ENTRIES) -> None:
        self.own_key = own_key
        self.max_entries = max_entries
        self.entries: dict[bytes, PeerRecord] = {}
        self.bans: dict[bytes, int] = {}  # node id -> banned until (ms)
        self.dirty: set[bytes] = set()  # changed since last persisted

    def load(self, records: dict[bytes, bytes], bans: dict[bytes, int]) -> None:
        for key, data in records.items():
            if key == self.own_key:  # a copied data directory may carry its source's view of us
                self.dirty.add(key)
                continue
            try:
                self.entries[key] = PeerRecord.decode(data)
            except Exception:  # noqa: BLE001 - a damaged record is dropped, not fatal
                self.dirty.add(key)
        self.bans.update(bans)

    def add_seed(self, key: bytes, address: str) -> None:
        record = self.entries.get(key)
        if record is None:
            record = self.entries[key] = PeerRecord(address)
        record.address, record.seed = address, True
        self.dirty.add(key)

    def learn(self, key: bytes, address: str, seen_ms: int) -> None:
        """A node is reachable at `address` (heard from itself or from a peer)."""
        if key == self.own_key or not address:
            return
        record = self.entries.get(key)
        if record is None:
            if len(self.entries) >= self.max_entries and not self._evict_one():
                return
            record = self.entries[key] = PeerRecord(address, seen_ms)
        elif not record.seed:
            record.address = address
        record.last_seen_ms = max(record.last_seen_ms, seen_ms)
        self.dirty.add(key)

    def _evict_one(self) -> bool:
        candidates = [(r.last_seen_ms, k) for k, r in self.entries.items() if not r.seed]
        if not candidates:
            return False
        _, key = min(candidates)
        del self.entries[key]
        self.dirty.add(key)
        return True

    def connected(self, key: bytes, now_ms: int) -> None:
        record = self.entries.get(key)
        if record is not None:
            record.failures, record.last_seen_ms, record.next_try_ms = 0, now_ms, 0
            self.dirty.add(key)

    def failed(self, key: bytes, now_ms: int) -> None:
        record = self.entries.get(key)
        if record is None:
            return
        record.failures += 1
        record.next_try_ms = now_ms + min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** min(record.failures, 16))
        if record.failures >= MAX_FAILURES and not record.seed:
            del self.entries[key]
        self.dirty.add(key)

    def candidates(self, exclude: set[bytes], now_ms: int, count: int) -> list[tuple[bytes, str]]:
        """Addresses worth dialling now, most recently seen first, with some randomness."""
        ready = [
            (k, r)
            for k, r in self.entries.items()
            if k not in exclude and r.next_try_ms <= now_ms and not self.is_banned(k, now_ms)
        ]
        random.shuffle(ready)
        ready.sort(key=lambda kr: -kr[1].last_seen_ms // 600_000)  # recent (10-minute buckets) first
        return [(k, r.address) for k, r in ready[:count]]

    def sample(self, count: int) -> list[tuple[bytes, PeerRecord]]:
        items = list(self.entries.items())
        random.shuffle(items)
        return items[:count]

    def ban(self, key: bytes, until_ms: int) -> None:
        self.bans[key] = until_ms

    def is_banned(self, key: bytes, now_ms: int) -> bool:
        until = self.bans.get(key)
        if until is None:
            return False
        if until <= now_ms:
            del self.bans[key]
            return False
        return True

    def take_dirty(self) -> dict[bytes, bytes]:
        """Records to persist since the last call (empty bytes: delete)."""
        out = {k: (self.entries[k].encode() if k in self.entries else b"") for k in self.dirty}
        self.dirty.clear()
        return out
