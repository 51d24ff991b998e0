"""SIGTERM at every stage of a node's start-up, and stores damaged beyond repair.

Start-up stages, told apart from the outside at the moment the signal is sent:
  exec     the interpreter runs, the store is not open yet (the data directory's LOCK file
           does not hold the node's pid);
  store    the store is open (LOCK holds its pid), its actors' threads not started yet;
  actors   actor threads are running (/proc/<pid>/status Threads grew), the network is not
           listening yet;
  network  "listening for peers" is in its log (the API may or may not answer yet).
The middle stages last milliseconds, so a delay alone rarely hits them: each start targets
one stage in turn, the test polls the process every half millisecond and sends SIGTERM the
moment that stage is seen (after a random 0-2 ms more), and the stage is read again right
after the signal to record where it really landed. Each time the node must end within 10 s
leaving no process behind, and its store must open with the state hash of a replay of its
own main chain.

Damaged stores: copies of a stopped node's data directory with data.mdb truncated, its meta
pages overwritten, or pages of its B-trees overwritten. The node must stop with a nonzero
status and a message naming the data directory - or, if the damage missed everything it
reads, run with exactly the state a replay of its chain gives: never silently on a broken
ledger.
"""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import time

from tests.nodes import Network
from tests.storage.replay import replay_state_digest

STOP_WITHIN_S = 10.0
STAGES = ("exec", "store", "actors", "network")


def threads(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Threads:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def lock_holder(node) -> str:
    try:
        return (node.data_dir / "LOCK").read_text().strip()
    except OSError:
        return ""


class Stages:
    """Where a starting node is, read from the outside."""

    def __init__(self, node) -> None:
        self.node = node
        self.threads_at_store: int | None = None

    def now(self) -> str:
        node = self.node
        if "listening for peers" in node._last_run_log():
            return "network"
        if lock_holder(node) != str(node.pid):
            return "exec"
        count = threads(node.pid)
        if self.threads_at_store is None:
            self.threads_at_store = count
        return "actors" if count >= self.threads_at_store + 2 else "store"


def replay_matches(node) -> tuple[int, bool]:
    with node.open_store() as store:
        return store.tip().height, store.state_digest() == replay_state_digest(store)


def test_sigterm_at_every_startup_stage(tmp_path, profile, row):
    r = row("startup: SIGTERM at every stage", "pow",
            f"{profile.startup_rounds}+ starts, SIGTERM the moment a stage is seen: {'/'.join(STAGES)}")
    network = Network(tmp_path / "net")
    try:
        node = network.add_node({"network": {"enabled": True}})
        node.init()
        t0 = time.monotonic()
        node.start()
        full = time.monotonic() - t0
        node.wait_for_height(2, 30)
        assert node.stop() == 0
        hits = {s: 0 for s in STAGES}
        codes: dict[int, int] = {}
        rng = random.Random(5)
        attempt = 0
        while attempt < profile.startup_rounds or (min(hits.values()) == 0 and attempt < profile.startup_rounds * 4):
            target = STAGES[attempt % len(STAGES)]
            attempt += 1
            node.spawn()
            stages = Stages(node)
            deadline = time.monotonic() + 30
            if target == "exec":
                time.sleep(rng.uniform(0, 0.3))
            else:
                while STAGES.index(stages.now()) < STAGES.index(target):
                    assert node.running, f"the node ended by itself during start-up\n{node.describe()}"
                    assert time.monotonic() < deadline, f"stage {target} never came\n{node.describe()}"
                    time.sleep(0.0005)
                time.sleep(rng.uniform(0, 0.002))
            node.proc.send_signal(signal.SIGTERM)
            stage = stages.now() if node.running else target
            try:
                code = node.proc.wait(STOP_WITHIN_S)
            except subprocess.TimeoutExpired:
                node.kill_group()
                raise AssertionError(f"no exit within {STOP_WITHIN_S:g} s of SIGTERM at stage {stage}"
                                     f"\n{node.describe()}") from None
            node._close_log()
            node.assert_nothing_left()
            assert code in (0, -signal.SIGTERM), f"exit status {code} after SIGTERM at stage {stage}\n{node.describe()}"
            assert "Traceback" not in node._last_run_log(), node.describe()
            height, same = replay_matches(node)
            assert same, f"after SIGTERM at stage {stage}: the state hash is not the replay of {height} blocks"
            hits[stage] += 1
            codes[code] = codes.get(code, 0) + 1
            r.run()
        missing = [s for s, n in hits.items() if not n]
        assert not missing, f"stages never hit: {missing} (hits {hits})"
        r.note(f"full start-up {full:.2f} s; SIGTERMs by stage {hits}; exit statuses {codes}")
        r.passed()
    finally:
        network.cleanup()


def _pages_in_use(path) -> int:
    """Pages the store uses (data.mdb itself is as long as the memory map, sparsely)."""
    import lmdb

    env = lmdb.open(str(path.parent), readonly=True, lock=False, max_dbs=32)
    try:
        return env.info()["last_pgno"] + 1
    finally:
        env.close()


def _truncate(path, rng) -> str:
    used = _pages_in_use(path) * 4096
    with open(path, "r+b") as f:
        f.truncate(used // 3)
    return "data.mdb truncated to a third of its pages"


def _meta_pages(path, rng) -> str:
    with open(path, "r+b") as f:
        f.write(bytes(rng.randrange(256) for _ in range(8192)))
    return "both meta pages overwritten"


def _btree_pages(path, rng) -> str:
    pages = max(3, _pages_in_use(path))
    with open(path, "r+b") as f:
        for page in rng.sample(range(2, pages), min(pages - 2, 40)):
            f.seek(page * 4096 + 16)
            f.write(bytes(rng.randrange(256) for _ in range(512)))
    return "40 B-tree pages overwritten"


# B-tree damage three times over: where it lands decides what LMDB trips on.
DAMAGES = [_truncate, _meta_pages, _btree_pages, _btree_pages, _btree_pages]


def test_a_store_damaged_beyond_repair_stops_the_node_with_a_clear_message(tmp_path, row):
    r = row("startup: damaged store", "pow", "copies of a stopped node's data.mdb: truncated, meta pages "
            "overwritten, B-tree pages overwritten (3 ways)")
    network = Network(tmp_path / "net")
    rng = random.Random(11)
    try:
        node = network.add_node({"network": {"enabled": False}})
        node.init()
        node.start()
        node.wait_for_height(30, 60)
        assert node.stop() == 0
        original = node.data_dir
        outcomes = []
        for index, damage in enumerate(DAMAGES):
            copy = tmp_path / f"copy-{index}-{damage.__name__.strip('_')}"
            shutil.copytree(original, copy)
            what = damage(copy / "ledger" / "data.mdb", rng)
            node.config["node"]["data_dir"] = str(copy)
            node.write_config()
            node.spawn()
            try:
                code = node.proc.wait(20)
            except subprocess.TimeoutExpired:
                code = None
            log = node._last_run_log()
            if code is None:  # it runs: the damage must have missed all it reads, and it must be right
                assert node.stop() == 0
                height, same = replay_matches(node)
                assert same, f"{what}: the node ran on a store whose state is not the replay of its chain"
                outcomes.append(f"{what}: damage unseen, the node ran with the replayed state (height {height})")
            else:
                node._close_log()
                assert code > 0, f"{what}: exit status {code}" + (" (killed by a signal, no message)" if code < 0 else "")
                assert str(copy) in log, f"{what}: the message does not name the data directory\n{log[-2000:]}"
                assert "Traceback" not in log, f"{what}: a traceback instead of a message\n{log[-3000:]}"
                message = [line for line in log.splitlines() if str(copy) in line][-1]
                outcomes.append(f"{what}: exit {code}, \"{message.strip()[:140]}\"")
            r.run()
        for outcome in outcomes:
            r.note(outcome)
        r.passed()
    finally:
        network.cleanup()
