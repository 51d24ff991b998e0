"""A bounded memory of recently seen ids (transactions verified, known to a peer, confirmed).

Two plain sets, the older dropped whole when the younger fills: it holds at least the last
`capacity // 2` ids added and at most `capacity`, and forgets roughly the oldest first. At
1,000 transactions a second a node keeps several hundred thousand such ids; a set entry costs
about 40 bytes beside the id, an OrderedDict kept in LRU order about 105 (a linked-list node
per entry), and every operation here is O(1).
"""

from __future__ import annotations


class RecentSet:
    __slots__ = ("capacity", "_young", "_old")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._young: set[bytes] = set()
        self._old: set[bytes] = set()

    def add(self, item: bytes) -> None:
        if self.capacity <= 0:
            return
        self._young.add(item)
        if len(self._young) >= max(1, self.capacity // 2):
            self._old, self._young = self._young, set()

    def discard(self, item: bytes) -> None:
        self._young.discard(item)
        self._old.discard(item)

    def __contains__(self, item: bytes) -> bool:
        return item in self._young or item in self._old

    def __len__(self) -> int:
        """Ids held (one added again after the sets turned over counts twice)."""
        return len(self._young) + len(self._old)
