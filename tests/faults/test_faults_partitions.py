"""Partitions of a 5-node cluster in network namespaces, under load; heal, then every checker.

Nodes n0..n4 each live in their own namespace (tests/netlab.py); the root namespace's
firewall drops packets between the groups, so open connections neither close nor carry
anything (a dead uplink). On Proof of Work the miners are n0, n2 and n4, so that every
scenario below has a producer on each side.

- one node cut off: n0 alone (a miner: it builds a branch of its own that loses at the heal);
- majority / minority: {n0, n1, n2} against {n3, n4};
- a bridge: {n0, n1} and {n3, n4} cannot talk, n2 talks to both: the cluster must stay on
  one chain through n2 during the cut, not only after it;
- a ring: each node talks only to its two neighbours, so each sees a majority (itself and
  two of five) and no two see the same one: blocks must go round the ring.

Each holds for the profile's partition time (short: 8 s, longer than the 6 s peer timeout,
so sessions across the cut are dropped and must come back by the nodes' own redialling).
"""

from __future__ import annotations

import time

import pytest

from tests.faults.harness import Cluster, running

FAMILY = "partitions"


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


def _scenario(cluster: Cluster, row, profile, apply, *, excused=(), during=None) -> None:
    """Apply a partition under load, hold it, heal; every checker after the heal."""
    lab = cluster.lab
    with running(cluster, row) as run:
        cluster.network.wait_converged(cluster.nodes, 60)
        before = run.checkpoint()
        row.run()
        apply(lab, cluster.hosts)
        with run.monitor.excusing(*excused):
            held_from = time.monotonic()
            if during is not None:
                during(run)
            left = profile.partition_s - (time.monotonic() - held_from)
            if left > 0:
                time.sleep(left)
        lab.heal()
        took = run.after_heal(before)
        row.note(f"converged {took:.1f} s after the heal")


def test_one_node_cut_off(cluster, profile, row, consensus):
    r = row("partition: one node cut off", consensus, f"n0 isolated {profile.partition_s:g} s")
    _scenario(cluster, r, profile, lambda lab, h: lab.isolate(h[0]))


def test_majority_and_minority(cluster, profile, row, consensus):
    r = row("partition: majority / minority", consensus, f"{{n0,n1,n2}} / {{n3,n4}} {profile.partition_s:g} s")
    _scenario(cluster, r, profile, lambda lab, h: lab.partition(h[:3], h[3:]))


def test_bridge_node(cluster, profile, row, consensus):
    r = row("partition: bridge node", consensus, f"{{n0,n1}} / {{n3,n4}}, n2 bridges, {profile.partition_s:g} s")

    def through_the_bridge(run) -> None:
        # Sessions across the cut die after the peer timeout; blocks must still cross n2.
        time.sleep(7.0)
        took = run.converge(cluster.nodes, extra_s=0)
        r.note(f"one chain through the bridge during the cut ({took:.1f} s)")

    _scenario(cluster, r, profile, lambda lab, h: lab.partition(h[:2], h[3:]), during=through_the_bridge)


def test_ring_without_a_common_majority(cluster, profile, row, consensus):
    r = row("partition: ring", consensus, f"5 nodes, each sees its 2 neighbours, {profile.partition_s:g} s")

    def round_the_ring(run) -> None:
        time.sleep(7.0)
        took = run.converge(cluster.nodes)
        r.note(f"one chain round the ring during the cut ({took:.1f} s)")

    _scenario(cluster, r, profile, lambda lab, h: lab.ring(h), during=round_the_ring)
