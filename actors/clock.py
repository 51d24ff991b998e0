"""Network-adjusted time: this node's clock corrected by the median offset of its peers.

Raspberry Pis often boot without a real-time clock, so a node cannot trust its own time
for timestamp rules. Like Bitcoin, it takes the median of the offsets its peers report in
their handshakes, ignores offsets beyond a bound (a peer that lies wildly moves nothing),
and keeps its own clock when it has too few peers to outvote a liar.

Testing aid: PEERLEDGER_CLOCK_OFFSET_MS (an integer, read once when the node starts) moves
this node's own clock by that many milliseconds, as a Pi booted with a wrong clock would
have it. The fault suite (tests/faults) uses it for clock skew, because no real mechanism
shifts one process's wall clock here: time namespaces offset only the monotonic and boot
clocks, and Debian's libfaketime 0.9.10 breaks Python 3.11's time.sleep. Never set it on a
real node.
"""

from __future__ import annotations

import os
import statistics
import threading
import time

MIN_SAMPLES = 3  # with fewer peers, a single liar would set our time
MAX_SAMPLES = 200
OFFSET_ENV = "PEERLEDGER_CLOCK_OFFSET_MS"


def _own_skew_ms() -> int:
    try:
        return int(os.environ.get(OFFSET_ENV, "0") or 0)
    except ValueError:
        raise ValueError(f"{OFFSET_ENV} must be an integer number of milliseconds") from None


def local_ms() -> int:
    """This machine's wall clock in ms (moved by PEERLEDGER_CLOCK_OFFSET_MS, a testing aid)."""
    return int(time.time() * 1000) + _SKEW_MS


_SKEW_MS = _own_skew_ms()


class NetworkClock:
    def __init__(self, max_offset_ms: int = 70 * 60 * 1000) -> None:
        self.max_offset_ms = max_offset_ms
        self._lock = threading.Lock()
        self._samples: dict[bytes, int] = {}
        self._offset_ms = 0

    def now_ms(self) -> int:
        return local_ms() + self._offset_ms

    @property
    def offset_ms(self) -> int:
        return self._offset_ms

    def add_sample(self, peer: bytes, peer_time_ms: int) -> None:
        """Record a peer's clock as read at handshake (its time minus ours)."""
        offset = peer_time_ms - local_ms()
        with self._lock:
            if peer not in self._samples and len(self._samples) >= MAX_SAMPLES:
                return
            self._samples[peer] = offset
            self._recompute()

    def remove_sample(self, peer: bytes) -> None:
        with self._lock:
            self._samples.pop(peer, None)
            self._recompute()

    def _recompute(self) -> None:
        usable = [o for o in self._samples.values() if abs(o) <= self.max_offset_ms]
        # Our own clock counts as one sample of offset 0, as in Bitcoin.
        self._offset_ms = int(statistics.median([0, *usable])) if len(usable) >= MIN_SAMPLES else 0
