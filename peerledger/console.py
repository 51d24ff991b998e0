"""Terminal output of the CLI: screens, tables, sizes, durations and progress.

Pure functions of the data they are given (the screens take the API's JSON), so what an
operator sees can be tested without a terminal. Progress goes to stderr and only when it is
a terminal: piped or logged output stays one final line.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Self, TextIO

BAR_WIDTH = 30
SPINNER = "|/-\\"


def size(n: float | None) -> str:
    """Bytes in binary units: 512 B, 3.4 KiB, 12.0 MiB."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def duration(seconds: float | None) -> str:
    """45 s, 12 min 5 s, 3 h 2 min, 4 d 1 h."""
    if seconds is None:
        return "-"
    s = int(max(0, seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def bar(done: float, total: float, width: int = BAR_WIDTH) -> str:
    """[##########--------------------]  33.3%"""
    fraction = 0.0 if total <= 0 else min(1.0, max(0.0, done / total))
    filled = round(fraction * width)
    return f"[{'#' * filled}{'-' * (width - filled)}] {fraction * 100:5.1f}%"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns left-aligned and as wide as their widest cell; None shows as '-'."""
    cells = [[("-" if c is None else str(c)) for c in row] for row in rows]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


# --------------------------------------------------------------------------- status screen


def sync_line(status: dict[str, Any]) -> str:
    """In sync, or catching up with a bar from the tip's height to what sync heads for."""
    height = status["height"]
    target = max(height, status.get("best_header_height") or 0, status.get("best_peer_height") or 0)
    if target > height:
        return f"catching up {bar(height, target)}  {height}/{target}, {target - height} blocks to go"
    if status.get("syncing"):
        return "catching up (a peer announced a heavier chain; fetching its headers)"
    if not status.get("peers"):
        return "no peers: nothing to sync with"
    return "in sync with its peers"


def status_screen(status: dict[str, Any], peers: list[dict[str, Any]] | None, now_ms: int) -> str:
    """The one screen of `peerledger status`: one "label  value" line per subject (scripts
    may read `height`, `tip` and `producing` lines; the labels are stable)."""
    ready = [p for p in peers or [] if p.get("ready")]
    banned = [p for p in peers or [] if "banned_until_ms" in p]
    outbound = sum(1 for p in ready if p.get("direction") == "outbound")
    tip_age = (now_ms - status["tip_time_ms"]) / 1000 if status.get("tip_time_ms") else None
    if peers is None:
        peer_text = f"{status['peers']} connected"
    else:
        peer_text = f"{len(ready)} connected ({outbound} out, {len(ready) - outbound} in)"
        peer_text += f", {len(banned)} banned" if banned else ""
    if not status.get("producing"):
        producing = "no (following only)"
    elif status["consensus"] == "pos":
        producing = f"staking, {status['blocks_produced']} blocks since start"
    else:
        producing = f"{status['hash_rate']} hashes/s, {status['blocks_produced']} blocks since start"
    lines = [
        f"network    {status['network']} ({status['consensus']}) {status['network_id'][:16]}",
        f"node       {status.get('name') or '-'} {status['node_id'][:16]}  (peerledger {status.get('version', '?')})",
        f"height     {status['height']}",
        f"tip        {status['tip']}  (made {duration(tip_age)} ago)",
        f"sync       {sync_line(status)}",
        f"state      {status['state_hash']}  ({status.get('tx_count', 0)} txs on the chain)",
        f"peers      {peer_text}",
        f"mempool    {status['mempool_size']} txs, {size(status['mempool_bytes'])}",
        f"clock      offset {status.get('clock_offset_ms', 0):+d} ms (this clock to network time, the median of peers')",
        f"producing  {producing}",
    ]
    return "\n".join(lines)


def peers_table(peers: list[dict[str, Any]], now_ms: int) -> str:
    """The table of `peerledger peers`: sessions first (ready ones first), then bans."""
    sessions = sorted((p for p in peers if "banned_until_ms" not in p),
                      key=lambda p: (not p.get("ready"), p.get("direction") != "outbound", p["node_id"]))
    bans = {p["node_id"]: p["banned_until_ms"] for p in peers if "banned_until_ms" in p}
    rows = []
    for p in sessions:
        latency = p.get("latency_ms")
        until = bans.pop(p["node_id"], None)
        rows.append([
            p["node_id"][:16], p.get("address") or "-", {"outbound": "out", "inbound": "in"}.get(p.get("direction"), "-"),
            "yes" if p.get("ready") else "no", p.get("height"),
            f"{latency:.0f} ms" if latency is not None else None, p.get("score", 0),
            f"banned {duration((until - now_ms) / 1000)}" if until else "-",
        ])
    for node_id, until in sorted(bans.items()):
        rows.append([node_id[:16], "-", "-", "no", None, None, None, f"banned {duration((until - now_ms) / 1000)}"])
    if not rows:
        return "no peers"
    return table(["NODE ID", "ADDRESS", "DIR", "READY", "HEIGHT", "LATENCY", "SCORE", "BAN"], rows)


# --------------------------------------------------------------------------- progress


class Progress:
    """One line on stderr, redrawn in place while long work runs (only on a terminal).

        with Progress("restoring") as progress:
            copy(..., progress=progress.update)      # update(done, total) or update(done)
    """

    def __init__(self, label: str, stream: TextIO | None = None, interval: float = 0.2) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.interval = interval
        self._last = 0.0
        self._turn = 0
        self._width = 0

    def update(self, done: int, total: int | None = None, *, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        self._turn += 1
        if total:
            text = f"{self.label} {bar(done, total)}  {size(done)} of {size(total)}"
        else:
            text = f"{self.label} {SPINNER[self._turn % len(SPINNER)]} {size(done)}"
        self.stream.write("\r" + text.ljust(self._width))
        self.stream.flush()
        self._width = len(text)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()


def run_with_progress(work: Callable[[], Any], measure: Callable[[], int], label: str,
                      interval: float = 0.2) -> Any:
    """Run `work` in a thread while showing `measure()` (bytes so far) with a spinner;
    answers what `work` returned, or raises what it raised."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = work()
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            result["error"] = e

    thread = threading.Thread(target=target, name=label, daemon=True)
    thread.start()
    with Progress(label, interval=interval) as progress:
        while thread.is_alive():
            thread.join(interval)
            try:
                progress.update(measure())
            except OSError:
                progress.update(0)
    if "error" in result:
        raise result["error"]
    return result.get("value")
