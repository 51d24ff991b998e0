"""kill -9 at random moments across a 5-node cluster under load: during mining, during a
catch-up sync, and during the reorganisation that follows a healed cut. After every kill the
dead node's store is opened (in this process, as the node opens it) and its state hash must
equal the replay of its own main chain from genesis (tests/storage/replay.py); the node is
restarted and must come back on the common chain. The moments are random but seeded
(FAULT_CRASH_SEED replays a run).
"""

from __future__ import annotations

import os
import random
import time

import pytest

from tests.faults.harness import Cluster, running
from tests.storage.replay import replay_state_digest

FAMILY = "crash"
SEED = int(os.environ.get("FAULT_CRASH_SEED", "20251126"))
PHASES = ("mining", "sync", "reorg")


@pytest.fixture(scope="module")
def cluster(module_lab, module_dir, consensus, profile):
    c = Cluster.build(module_dir / consensus, consensus=consensus, finality=profile.finality[consensus],
                      size=5, lab=module_lab)
    try:
        c.start()
        yield c
    finally:
        problems = c.stop()
        print(c.describe())
        assert not problems, problems


def check_store(node) -> int:
    """The killed node's store opens, and its state is the replay of its main chain."""
    with node.open_store() as store:
        tip = store.tip()
        replayed = replay_state_digest(store)
        assert store.state_digest() == replayed, (
            f"{node.name}: state hash after kill -9 differs from the replay of its {tip.height} blocks"
        )
        return tip.height


def test_kill_9_during_mining_sync_and_reorgs(cluster, profile, row, consensus):
    r = row("crash: kill -9", consensus, f"{profile.crash_kills} kills at random moments, nodes at random, "
            f"phases {'/'.join(PHASES)}; store replayed after each (seed {SEED})")
    rng = random.Random(SEED)
    lab, nodes, hosts = cluster.lab, cluster.nodes, cluster.hosts
    counts = {p: 0 for p in PHASES}
    with running(cluster, r) as run:
        cluster.network.wait_converged(nodes, 60)
        for number in range(profile.crash_kills):
            phase = PHASES[number % len(PHASES)]
            victim = rng.choice(nodes if phase == "mining" else cluster.producers)
            final = run.checkpoint(next(n for n in nodes if n is not victim))
            with run.monitor.excusing(victim):
                if phase == "mining":
                    time.sleep(rng.uniform(0.1, 2.0))
                elif phase == "sync":
                    victim.kill()
                    check_store(victim)
                    time.sleep(rng.uniform(2.0, 4.0))  # the others move on without it
                    victim.spawn()
                    victim.wait_ready()
                    time.sleep(rng.uniform(0.0, 1.0))  # killed again while it catches up
                else:  # reorg: its own branch loses when the cut heals
                    lab.isolate(hosts[nodes.index(victim)])
                    time.sleep(rng.uniform(2.0, 4.0))
                    lab.heal()
                    time.sleep(rng.uniform(0.0, 1.5))
                victim.kill()
                victim.assert_nothing_left()
                height = check_store(victim)
                counts[phase] += 1
                r.run()
                started = time.monotonic()
                victim.start()
            run.after_heal(final, started=started)
        r.note(f"kills by phase: {counts}; last stored height {height}")
