"""The whole benchmark suite in one command: bench_node, bench_network and bench_pos, one
after the other (each a process of its own, so that none inherits another's state), then
every figure in one Markdown table.

    python -m tests.benchmarks                    # full runs, about 20 minutes
    python -m tests.benchmarks --quick            # short runs, about 8 minutes
    python -m tests.benchmarks --long             # bench_network's cost growth too (long; its stores are built once)
    python -m tests.benchmarks --out DIR          # where the table and the JSON go (default: bench-results/)

It writes DIR/results.md (the tables, the environment, the published anchors) and
DIR/<bench>.json (every figure, round and baseline). The exit status is 1 when any goal
was missed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SUITE = ("bench_node", "bench_network", "bench_pos")
ANCHORS = ("Published anchors: Hathor's highest stable stress rate 200 tx/s; CometBFT saturates near 400 tx/s "
           "on a 200-node testnet.")


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return ""
    if unit == "H/s":
        return f"{value / 1e6:.2f} MH/s"
    if unit == "ms":
        return f"{value:.2f} ms" if value < 1 else f"{value:.1f} ms"
    if unit.startswith("MB"):
        return f"{value:.1f} {unit}"
    if unit == "x":
        return f"{value:.3f}"
    if unit == "s":
        return f"{value:.2f} s"
    return f"{value:,.0f} {unit}"


def figures_table(figures: list[dict]) -> list[str]:
    units = {f["name"].split(":")[0]: f["unit"] for f in figures}
    units.setdefault("zmq RTT", "ms")
    units.setdefault("B/5", "tx/s")
    lines = ["| figure | measured | baseline (same run) | ratio | goal | result | cpu ratio |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for f in figures:
        base = f"{f['baseline_name']} {fmt(f['baseline'], units.get(f['baseline_name'], f['unit']))}" \
            if f.get("baseline") else ""
        ratio = f"{f['ratio']:.2f}" if f.get("ratio") is not None else ""
        result = "" if f.get("ok") is None else ("PASS" if f["ok"] else "**MISS**")
        cpu = f"{f['cpu_ratio']:.2f}" if f.get("cpu_ratio") is not None else ""
        name = f["name"].strip()
        if f.get("goal"):
            name = f"**{name}**"
        lines.append(f"| {name} | {fmt(f['value'], f['unit'])} | {base} | {ratio} | {f.get('goal', '')} | "
                     f"{result} | {cpu} |")
    return lines


def pos_table(document: dict) -> list[str]:
    lines = ["| network (1 node, 1 s interval) | blocks | wall s | CPU s | CPU s / block |",
             "| --- | --- | --- | --- | --- |"]
    for f in document["figures"]:
        per_block = f"{f['cpu_per_block']:.4f}" if f["blocks"] else "-"
        lines.append(f"| {f['name']} | {f['blocks']} | {f['wall_s']:.1f} | {f['cpu_s']:.2f} | {per_block} |")
    ratio = document["pos_over_pow"]
    lines.append("")
    lines.append(f"PoS / PoW CPU per block: {ratio * 100:.2f}% (goal < 1%): {'PASS' if ratio < 0.01 else '**MISS**'}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks", description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="short runs")
    size.add_argument("--long", action="store_true", help="bench_network's cost growth too")
    parser.add_argument("--out", metavar="DIR", default="bench-results", help="where results.md and the JSON go")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    sections, failed = [], []
    for bench in SUITE:
        command = [sys.executable, "-m", f"tests.benchmarks.{bench}", "--json", str(out / f"{bench}.json")]
        if args.quick:
            command.append("--blocks=15" if bench == "bench_pos" else "--quick")
        elif args.long and bench == "bench_network":
            command.append("--long")
        path = out / f"{bench}.json"
        path.unlink(missing_ok=True)  # a bench that fails must not leave an older run's figures in the table
        print(f"=== {' '.join(command[1:])}", flush=True)
        status = subprocess.run(command, check=False).returncode
        if status != 0:
            failed.append(bench)
        if not path.exists():
            sections.append((bench, [f"(no results: exit status {status})"]))
            continue
        document = json.loads(path.read_text())
        sections.append((bench, pos_table(document) if bench == "bench_pos" else figures_table(document["figures"])))
    lines = [f"# peerledger benchmarks, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
             "",
             f"`python -m tests.benchmarks{' --quick' if args.quick else ' --long' if args.long else ''}`: "
             f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, {time.monotonic() - started:.0f} s, "
             f"load at end {os.getloadavg()[0]:.2f}. Goals in bold; every baseline was measured in the same run "
             f"(tests/benchmarks/README.md says how).",
             ""]
    for bench, table in sections:
        lines += [f"## {bench}", "", *table, ""]
    lines += [ANCHORS, ""]
    (out / "results.md").write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"written: {out / 'results.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
