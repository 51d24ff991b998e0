"""The fault matrix: one row per fault scenario run, written to tests/faults/RESULTS.md (short
profile) or RESULTS-long.md (long profile).

Each test asks `results.row(fault, consensus, parameters)` for its row, calls
`row.convergence(seconds)` after every heal, `row.note(...)` for figures worth reading,
and `row.passed()` once every checker held; a row never marked passed is a failure (the
test's own error is attached by the conftest hook). The file is written at the end of a
session that ran the whole fault suite; a partial run (-k, a single file) writes its matrix
into pytest's temporary directory instead, so the committed matrix is always a whole one.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from pathlib import Path

# profile -> its matrix (CI runs the short one)
RESULTS_PATHS = {"short": Path(__file__).with_name("RESULTS.md"), "long": Path(__file__).with_name("RESULTS-long.md")}


@dataclasses.dataclass
class Row:
    fault: str
    consensus: str
    parameters: str
    runs: int = 0
    outcome: str = "FAIL"
    worst_convergence_s: float | None = None
    notes: list[str] = dataclasses.field(default_factory=list)
    peaks: dict[str, float] = dataclasses.field(default_factory=dict)
    started: float = dataclasses.field(default_factory=time.monotonic)
    seconds: float = 0.0

    def run(self, count: int = 1) -> None:
        self.runs += count

    def convergence(self, seconds: float) -> None:
        if self.worst_convergence_s is None or seconds > self.worst_convergence_s:
            self.worst_convergence_s = seconds

    def maxima(self, figures: dict[str, float]) -> None:
        for name, value in figures.items():
            self.peaks[name] = max(self.peaks.get(name, 0), value)

    def note(self, text: str) -> None:
        self.notes.append(text)

    def passed(self) -> None:
        self.outcome = "pass"
        self.seconds = time.monotonic() - self.started

    def failed(self, reason: str) -> None:
        self.outcome = "FAIL"
        self.seconds = time.monotonic() - self.started
        self.notes.append(f"failed: {reason}")


class Results:
    def __init__(self, profile: str) -> None:
        self.profile = profile
        self.rows: list[Row] = []
        self.started = time.monotonic()
        self.tests_run = 0
        self.tests_selected = 0
        self.tests_defined = 0
        self.modules_missing: set[str] = set()  # fault test files this session did not collect

    def row(self, fault: str, consensus: str, parameters: str) -> Row:
        row = Row(fault, consensus, parameters)
        self.rows.append(row)
        return row

    def markdown(self) -> str:
        elapsed = time.monotonic() - self.started
        lines = [
            "# Fault matrix",
            "",
            "Written by the fault suite itself (`tests/faults`, marker `faults`) at the end of its last "
            "complete run; what each fault does is in the docstring of its tests/faults/test_faults_*.py.",
            "",
            f"- profile: **{self.profile}** (`pytest tests/faults --fault-profile={self.profile}`; the default "
            "test run uses `short`)",
            f"- when: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; machine: {os.cpu_count()} cores, "
            f"Python {platform.python_version()}, load average at the end {os.getloadavg()[0]:.1f}",
            f"- fault suite wall time: {elapsed:.0f} s ({self.tests_run} tests)",
            "- every row is checked by: convergence (one tip and state hash on every honest node within "
            "60 s + 2 s x blocks behind), progress (no height stuck 20 s while a producer runs), nothing "
            "lost (the block at the finality depth before the fault is still on every main chain), every "
            "accepted transaction confirmed, and bounds (memory, descriptors, queues) held throughout",
            "",
            "| fault | consensus | parameters | runs | outcome | worst convergence | peaks (node RSS MB / fds / "
            "mempool) | notes |",
            "| --- | --- | --- | ---: | --- | ---: | --- | --- |",
        ]
        for r in self.rows:
            worst = "-" if r.worst_convergence_s is None else f"{r.worst_convergence_s:.1f} s"
            peaks = "-"
            if r.peaks:
                peaks = (f"{r.peaks.get('rss_mb', 0):.0f} / {r.peaks.get('fds', 0):.0f} / "
                         f"{r.peaks.get('mempool_size', 0):.0f}")
            notes = "; ".join(n.replace("|", "/").replace("\n", " ") for n in r.notes)
            if len(notes) > 400:
                notes = notes[:397] + "..."
            lines.append(f"| {r.fault} | {r.consensus} | {r.parameters} | {r.runs} | {r.outcome} | {worst} | "
                         f"{peaks} | {notes} ({r.seconds:.0f} s) |")
        return "\n".join(lines) + "\n"

    def write(self, fallback_dir: Path | None) -> Path | None:
        if not self.rows:
            return None
        complete = (self.tests_run and not self.modules_missing
                    and self.tests_selected == self.tests_defined == self.tests_run)
        path = RESULTS_PATHS[self.profile] if complete else (fallback_dir or Path("/tmp")) / "fault-RESULTS.partial.md"
        path.write_text(self.markdown())
        return path
