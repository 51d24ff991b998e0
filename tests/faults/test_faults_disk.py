"""A full disk: a node whose data directory lives on a small tmpfs (mounted by the test,
unmounted at teardown) that a filler file has almost filled, in a 5-node cluster under load.
It must stop writing with a clear error naming its data directory (no traceback, no silent
stall), its store must be exactly the replay of its chain, and once space returns (the
filler deleted) it restarts, resumes where it was and syncs with the others.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from tests.faults.harness import Cluster, running
from tests.storage.replay import replay_state_digest

FAMILY = "disk"
TMPFS_MB = 24
LEFT_KB = 192  # free space left by the filler


@pytest.fixture(scope="module")
def cluster(module_dir, consensus, profile):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    c = Cluster.build(module_dir / consensus, consensus=consensus, finality=profile.finality[consensus],
                      size=5, lab=None)
    try:
        c.start()
        yield c
    finally:
        problems = c.stop()
        print(c.describe())
        assert not problems, problems


@pytest.fixture
def tmpfs(cluster):
    victim = cluster.nodes[1]
    mount = victim.dir / "disk"
    mount.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MB}m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        if victim.running:
            victim.kill_group()
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_stops_the_node_cleanly_and_it_resumes_when_space_returns(cluster, tmpfs, row, consensus):
    r = row("full disk", consensus, f"data directory on a {TMPFS_MB} MB tmpfs filled to {LEFT_KB} kB free; "
            "space returns by deleting the filler")
    victim = cluster.nodes[1]
    with running(cluster, r) as run:
        final = run.checkpoint(cluster.nodes[0])
        r.run()
        with run.monitor.excusing(victim):
            victim.stop()
            target = tmpfs / "data"
            # data.mdb is as long as the map but sparse: copy it sparse, as a user would (cp -a).
            subprocess.run(["cp", "-a", "--sparse=always", str(victim.data_dir), str(target)], check=True)
            victim.config["node"]["data_dir"] = str(target)
            victim.write_config()
            stat = os.statvfs(tmpfs)
            free = stat.f_bavail * stat.f_frsize
            filler = tmpfs / "filler"
            with open(filler, "wb") as f:
                f.write(b"\0" * max(0, free - LEFT_KB * 1024))
            victim.spawn()
            try:
                code = victim.proc.wait(90)
            except subprocess.TimeoutExpired:
                code = None
            log = victim._last_run_log()
            assert code is not None, f"the node ran on for 90 s with {LEFT_KB} kB free\n{victim.describe()}"
            victim._close_log()
            assert code != 0, f"exit status 0 on a full disk\n{victim.describe()}"
            lines = [line for line in log.splitlines() if "full" in line and str(target) in line]
            assert lines, f"no message naming {target} and a full disk\n{log[-3000:]}"
            with victim.open_store() as store:
                stored = store.tip().height
                assert store.state_digest() == replay_state_digest(store), "the full disk corrupted the store"
            r.note(f"exit {code} at height {stored}: \"{lines[-1].strip()[:160]}\"")
            filler.unlink()
            started = time.monotonic()
            victim.start()
        took = run.after_heal(final, started=started)
        r.note(f"resumed from height {stored} and converged {took:.1f} s after space returned")
