"""CPU seconds per produced block: Proof of Stake against Proof of Work at the same block
interval, both measured in one run on this machine.

    python -m tests.benchmarks.bench_pos               # 40 blocks each, about 2 minutes
    python -m tests.benchmarks.bench_pos --blocks 15   # a quicker look
    python -m tests.benchmarks.bench_pos --json FILE   # also write the figures as JSON

Each network is one real node (`peerledger init` + `peerledger run`, network off, API on
loopback), started by tests/nodes.py in its own session so that its worker processes are
counted with it:

- PoW: one mining worker ([producer] workers = 1), initial difficulty 1.3 M (about one
  worker-second on this machine), ASERT keeping it at the interval.
- PoS: the node stakes with its default wallet, slots of 100 ms, difficulty 10 (one slot
  in ten has a producer, as in tests/pos).
- idle: the PoS node with its producer off: what any node costs while it waits, the floor
  under the PoS figure.

All use a 1 s block interval. After a warm-up of WARM_UP blocks, the CPU time of the node's
whole session (utime + stime of every live process of it from /proc/<pid>/stat, plus the
node's cutime + cstime for children it reaped) is read when the node logs a new tip, and
again when it logs the tip N blocks later; the figure is their difference divided by N.
Heights are read from the node's log, not its API, so that measuring adds no work to the
node. Goal: PoS below 1% of PoW.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tests.nodes import Network, NodeProcess, session_processes
from tests.pos.posnet import add_stakers

WARM_UP = 3
INTERVAL_MS = 1000
POW_DIFFICULTY = 1_300_000  # ~1 s of one worker (DESIGN.md: ~1.3 M double SHA-256 a second)
GOAL = 0.01  # PoS CPU per block below 1% of PoW's
TICK = os.sysconf("SC_CLK_TCK")
TIP_LINE = re.compile(rb"actors\.storage: tip hash=[0-9a-f]+ height=(\d+)")
QUIET = {"node": {"log_level": "INFO"}, "network": {"enabled": False}, "validation": {"workers": 0}}


@dataclass
class Figure:
    name: str
    blocks: int
    wall_s: float
    cpu_s: float
    processes: int  # live processes of the node's session at the end (node + workers)

    @property
    def cpu_per_block(self) -> float:
        return self.cpu_s / self.blocks if self.blocks else float("nan")

    @property
    def cores(self) -> float:
        return self.cpu_s / self.wall_s if self.wall_s else float("nan")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def session_cpu_s(node: NodeProcess) -> float:
    """CPU seconds used so far by the node's session: live processes, and the children the
    node reaped (its cutime + cstime)."""
    ticks = 0
    for pid, _ in session_processes(node.pid):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
        ticks += utime + stime + (cutime + cstime if pid == node.pid else 0)
    return ticks / TICK


def logged_height(node: NodeProcess) -> int:
    found = TIP_LINE.findall(node.log_path.read_bytes())
    return int(found[-1]) if found else 0


def wait_new_tip(node: NodeProcess, at_least: int, timeout: float) -> tuple[int, float, float]:
    """Poll the log (every 10 ms) until the node logs a tip at `at_least` or above; answers
    (height, monotonic time, session CPU seconds) read right then."""
    deadline = time.monotonic() + timeout
    while True:
        node.assert_running()
        height = logged_height(node)
        if height >= at_least:
            return height, time.monotonic(), session_cpu_s(node)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{node.name} did not reach height {at_least} within {timeout:g} s (at {height})")
        time.sleep(0.01)


def measure(name: str, node: NodeProcess, blocks: int, *, producing: bool = True, seconds: float = 0.0) -> Figure:
    if producing:
        start, t0, cpu0 = wait_new_tip(node, WARM_UP, 120)
        end, t1, cpu1 = wait_new_tip(node, start + blocks, blocks * INTERVAL_MS / 1000 * 4 + 60)
        made = end - start
    else:
        time.sleep(2.0)  # past start-up
        t0, cpu0 = time.monotonic(), session_cpu_s(node)
        time.sleep(seconds)
        t1, cpu1 = time.monotonic(), session_cpu_s(node)
        made = 0
    figure = Figure(name, made, t1 - t0, cpu1 - cpu0, len(session_processes(node.pid)))
    log(f"  {name}: {figure.blocks} blocks in {figure.wall_s:.1f} s, {figure.cpu_s:.2f} CPU s "
        f"({figure.cores * 100:.1f}% of a core), {figure.processes} process(es)")
    return figure


def run_pow(root: Path, blocks: int) -> Figure:
    net = Network(root / "pow", genesis={"block_interval_ms": INTERVAL_MS, "initial_difficulty": POW_DIFFICULTY})
    try:
        node = net.add_node({**QUIET, "producer": {"enabled": True, "workers": 1, "chunk_nonces": 200_000}})
        net.start(node)
        figure = measure("PoW, 1 worker", node, blocks)
        node.stop()
        return figure
    finally:
        net.cleanup()


def run_pos(root: Path, blocks: int, *, producing: bool = True, seconds: float = 0.0) -> Figure:
    net = Network(root / ("pos" if producing else "idle"))
    try:
        (node,) = add_stakers(net, 1, {**QUIET, "producer": {"enabled": producing, "workers": 1}})
        net.start(node)
        name = "PoS, staking" if producing else "idle PoS node (producer off)"
        figure = measure(name, node, blocks, producing=producing, seconds=seconds)
        node.stop()
        return figure
    finally:
        net.cleanup()


def table(rows: list[Figure], pow_row: Figure) -> str:
    header = (f"{'network (1 node, 1 s interval)':32} {'blocks':>6} {'wall s':>7} {'CPU s':>7} {'% core':>7} "
              f"{'CPU s/block':>12} {'vs PoW':>8}")
    lines = [header]
    for r in rows:
        per_block = f"{r.cpu_per_block:.4f}" if r.blocks else "-"
        vs = f"{r.cpu_per_block / pow_row.cpu_per_block * 100:.2f}%" if r.blocks else "-"
        lines.append(f"{r.name:32} {r.blocks:>6} {r.wall_s:>7.1f} {r.cpu_s:>7.2f} {r.cores * 100:>6.1f}% "
                     f"{per_block:>12} {vs:>8}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.bench_pos", description=__doc__.split("\n")[0])
    parser.add_argument("--blocks", type=int, default=40, help="blocks measured per network (default 40)")
    parser.add_argument("--json", metavar="FILE", help="write the figures and the environment as JSON")
    args = parser.parse_args(argv)
    log(f"PoS vs PoW CPU per block: {args.blocks} blocks each after {WARM_UP} of warm-up, "
        f"load {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-pos-") as tmp:
        root = Path(tmp)
        pos = run_pos(root, args.blocks)
        pow_ = run_pow(root, args.blocks)
        idle = run_pos(root, 0, producing=False, seconds=pos.wall_s)
    rows = [pow_, pos, idle]
    ratio = pos.cpu_per_block / pow_.cpu_per_block
    print()
    print(table(rows, pow_))
    verdict = "met" if ratio < GOAL else "MISSED"
    print(f"\nPoS / PoW CPU per block: {ratio * 100:.2f}% (goal < {GOAL * 100:g}%): {verdict}")
    print(f"of which an idle node's own upkeep: {idle.cores * pos.wall_s / pos.blocks:.4f} CPU s per "
          f"{pos.wall_s / pos.blocks:.2f} s interval; staking itself "
          f"{max(0.0, pos.cpu_per_block - idle.cores * pos.wall_s / pos.blocks):.4f} CPU s per block")
    print(f"{datetime.datetime.now().isoformat(timespec='seconds')}, {os.cpu_count()} CPUs, "
          f"{time.monotonic() - started:.0f} s, load at end {os.getloadavg()[0]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "figures": [dict(asdict(r), cpu_per_block=r.cpu_per_block) for r in rows],
            "pos_over_pow": ratio,
        }, indent=2) + "\n")
    return 0 if ratio < GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
