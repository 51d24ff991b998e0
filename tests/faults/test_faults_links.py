"""Flaky links, pauses and clock skew on a 5-node cluster in network namespaces, under load.

- packet loss: every link between two nodes drops each packet with probability 20%, then
  50% (iptables `statistic` match in the root namespace, both ways), for the profile's time;
- flapping links: every few seconds one or two nodes' links go down (carrier lost, as an
  unplugged cable) and come back up a moment later, for the profile's time;
- a pause: one miner SIGSTOPped longer than the peer timeout, then SIGCONT: its peers drop
  it, and it must come back, catch up and produce on the common chain;
- clock skew: one miner restarted with its clock moved (PEERLEDGER_CLOCK_OFFSET_MS, the
  testing aid of actors/clock.py: libfaketime 0.9.10 breaks Python 3.11's sleep, and time
  namespaces cannot move the wall clock), runs under load, then is restarted without skew.

After each: converged, nothing final lost, every accepted transaction confirmed, bounds held.

These nodes keep the shipped liveness settings (ping every 10 s, a peer silent 30 s is gone,
10 s for a handshake), not the seconds the other scenarios use to stay short: under 50% loss
a 6 s timeout drops every session whose TCP is only retransmitting, and the redials then
spend the whole fault in handshakes (the long profile's first run saw a relay node stuck 69 s).
"""

from __future__ import annotations

import random
import time

import pytest

from tests.faults.harness import Cluster, running
from tests.nodes import SHIPPED_LIVENESS

FAMILY = "links"


@pytest.fixture(scope="module")
def cluster(module_lab, module_dir, consensus, profile):
    c = Cluster.build(module_dir / consensus, consensus=consensus, finality=profile.finality[consensus],
                      size=5, lab=module_lab, config=SHIPPED_LIVENESS)
    try:
        c.start()
        yield c
    finally:
        problems = c.stop()
        print(c.describe())
        assert not problems, problems


@pytest.mark.parametrize("probability", [0.2, 0.5])
def test_packet_loss_on_every_link(cluster, profile, row, consensus, probability):
    r = row("flaky links: packet loss", consensus,
            f"{probability:.0%} on every link, {profile.loss_s:g} s")
    lab, hosts = cluster.lab, cluster.hosts
    with running(cluster, r) as run:
        cluster.network.wait_converged(cluster.nodes, 60)
        final = run.checkpoint()
        r.run()
        for i, a in enumerate(hosts):
            for b in hosts[i + 1:]:
                lab.loss(a, b, probability)
        time.sleep(profile.loss_s)
        lab.heal()
        took = run.after_heal(final)
        r.note(f"converged {took:.1f} s after the loss stopped")


def test_links_going_down_and_up(cluster, profile, row, consensus):
    r = row("flaky links: down / up", consensus,
            f"1-2 links down ~{profile.flap_period_s * 0.6:.1f} s every {profile.flap_period_s:g} s, "
            f"{profile.flap_s:g} s")
    lab, hosts, nodes = cluster.lab, cluster.hosts, cluster.nodes
    rng = random.Random(7)
    with running(cluster, r) as run:
        cluster.network.wait_converged(nodes, 60)
        final = run.checkpoint()
        ends = time.monotonic() + profile.flap_s
        while time.monotonic() < ends:
            down = rng.sample(range(len(hosts)), rng.randint(1, 2))
            r.run()
            with run.monitor.excusing(*(nodes[i] for i in down)):
                for i in down:
                    lab.link_down(hosts[i])
                time.sleep(profile.flap_period_s * 0.6)
                for i in down:
                    lab.link_up(hosts[i])
            time.sleep(profile.flap_period_s * 0.4)
        took = run.after_heal(final)
        r.note(f"converged {took:.1f} s after the last link came up")


def test_a_paused_producer_comes_back(cluster, profile, row, consensus):
    timeout = SHIPPED_LIVENESS["network"]["peer_timeout_s"]
    r = row("pause: SIGSTOP / SIGCONT", consensus, f"a producer stopped {profile.pause_s:g} s (peer timeout {timeout:g} s)")
    paused = cluster.producers[1]
    with running(cluster, r) as run:
        cluster.network.wait_converged(cluster.nodes, 60)
        final = run.checkpoint()
        r.run()
        with run.monitor.excusing(paused):
            paused.pause()
            time.sleep(profile.pause_s)
            paused.resume()
        took = run.after_heal(final)
        r.note(f"{paused.name} back on the common chain {took:.1f} s after SIGCONT")


def test_clock_skew_on_one_node(cluster, profile, row, consensus):
    skews = ", ".join(f"{s / 1000:+g} s" for s in profile.skews_ms)
    r = row("clock skew", consensus, f"one producer's clock moved by {skews} (PEERLEDGER_CLOCK_OFFSET_MS)")
    skewed = cluster.producers[-1]
    others = [n for n in cluster.nodes if n is not skewed]
    with running(cluster, r) as run:
        for skew in profile.skews_ms:
            cluster.network.wait_converged(cluster.nodes, 60)
            final = run.checkpoint()
            r.run()
            with run.monitor.excusing(skewed):
                skewed.stop()
                skewed.env["PEERLEDGER_CLOCK_OFFSET_MS"] = str(skew)
                skewed.start()
                cluster.network.wait_ready_peers(skewed, others[:2], 60)
                started = time.monotonic()
            height = skewed.height()
            time.sleep(8.0)  # it runs, produces, relays, with its clock wrong
            took = run.after_heal(final, started=started)
            assert skewed.height() > height, f"{skewed.name} did not move with its clock {skew / 1000:+g} s off"
            banned = {n.name for n in others if skewed.node_id in n.banned()}
            assert not banned, f"{sorted(banned)} banned the node whose clock is {skew / 1000:+g} s off"
            r.note(f"{skew / 1000:+g} s: converged {took:.1f} s after its start, offset it applied "
                   f"{skewed.status()['clock_offset_ms'] / 1000:+.1f} s")
        skewed.stop()
        skewed.env.pop("PEERLEDGER_CLOCK_OFFSET_MS", None)
        skewed.start()
