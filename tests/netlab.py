"""A network lab of Linux network namespaces: real links between real node processes that
a test can cut, degrade and heal. Needs root, `ip` (iproute2) and `iptables`.

    with NetLab() as lab:                        # or the `netlab` fixture of tests/p2p
        a, b, c = lab.add_hosts(3)               # one namespace each, reachable from the test
        node = nodes.add_node(P2P, host=a.address, netns=a.netns)
        lab.partition([a, b], [c])               # c cannot reach a or b, nor they c
        lab.heal()                               # every cut and every loss rule removed
    # everything the lab made is gone: namespaces, links, firewall rules, the forwarding switch

Layout. Each host is a namespace `<tag>n<i>` holding one end of a veth pair (`<tag>c<i>`,
address 10.B.i.2/24, default route via 10.B.i.1); the other end (`<tag>h<i>`, 10.B.i.1/24)
stays in the root namespace, which routes between the hosts (IPv4 forwarding on). So
every packet between two hosts crosses the root namespace's FORWARD hook, where the lab's
own iptables chain (jumped to first from FORWARD for packets from 10.B.0.0/16) drops what
the test asks for, then accepts what goes to another host of the lab (so the lab works
under a FORWARD policy of DROP) and rejects the rest: the lab reaches nothing outside, and
has no name server (a lookup fails at once). Packets between the test process and a host
(the node's HTTP API) do not cross FORWARD, so the test always reaches every node,
whatever the partition.

Faults, all undone by `heal()` (link state by `link_up`):

- `cut(a, b)` / `restore(a, b)`: no packet between two hosts, either way (a cable cut: TCP
  connections neither close nor carry anything, new ones hang in SYN).
- `partition(*groups)`: cut every pair of hosts that are in different groups. Hosts in no
  group keep every link: `partition([a], [c])` with b left out makes b a bridge.
- `isolate(a)`: cut a from every other host.
- `ring(hosts)`: only neighbours on the ring can talk.
- `loss(a, b, p)`: drop each packet between a and b with probability p (iptables
  `statistic` match), both ways.
- `link_down(a)` / `link_up(a)`: take the host's root-side link down (the namespace side
  sees carrier loss, as when a cable is unplugged).

`NetLab.unavailable()` says why the lab cannot run here (not root, a tool missing), for a
skip with a reason. Concurrent labs (several pytest runs on one machine) each reserve
their own 10.B.0.0/16 under a file lock; a reservation whose process is dead is reused.
Every command's failure raises NetLabError with the command and its stderr.
"""

from __future__ import annotations

import atexit
import fcntl
import ipaddress
import itertools
import os
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

STATE_DIR = Path("/run/peerledger-netlab")  # one file per live lab: its /16 and owner pid
SECOND_OCTETS = range(200, 250)  # labs use 10.200.0.0/16 .. 10.249.0.0/16
MAX_HOSTS = 250
COMMAND_TIMEOUT_S = 15.0
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
NETNS_ETC = Path("/etc/netns")  # per-namespace files `ip netns exec` mounts over /etc


class NetLabError(RuntimeError):
    """A command the lab ran failed; the message holds the command and its stderr."""


@dataclass(frozen=True)
class Host:
    """One namespace: where a node runs (`netns`) and the address it listens on."""

    index: int
    netns: str
    address: str  # the namespace side: nodes listen here, the test reaches them here
    gateway: str  # the root side of its link
    subnet: str  # its /24: what cut rules match
    link: str  # the root-side interface name

    @property
    def place(self) -> tuple[str, str]:
        """(host, netns), as tests.nodes.Network.add_nodes(places=...) takes them."""
        return self.address, self.netns


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False)
    if check and result.returncode != 0:
        raise NetLabError(f"`{' '.join(args)}` exited with {result.returncode}: {result.stderr.strip()}")
    return result


def _owner_alive(marker: Path) -> bool:
    """Whether the process that reserved a lab (its pid is in the marker file) still runs."""
    try:
        pid = int(marker.read_text().split()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return False
    return True


class NetLab:
    """Network namespaces joined through the root namespace, with faults a test controls."""

    def __init__(self) -> None:
        reason = self.unavailable()
        if reason:
            raise NetLabError(reason)
        self.hosts: list[Host] = []
        self._rules: dict[tuple, list[str]] = {}  # fault key -> the iptables rule it added
        self._closed = False
        self.octet = self._reserve()
        self.tag = f"pl{self.octet}"
        self.prefix = f"10.{self.octet}"
        self.chain = f"PEERLEDGER-{self.octet}"
        self._jump = ["FORWARD", "-s", f"{self.prefix}.0.0/16", "-j", self.chain]
        atexit.register(self.close)
        try:
            self._setup()
        except BaseException:
            self.close()
            raise

    # --- availability ------------------------------------------------------------------------

    @staticmethod
    def unavailable() -> str | None:
        """Why a lab cannot be built here, or None when it can."""
        if os.geteuid() != 0:
            return "network namespaces, veth links and iptables need root (CI runs as root)"
        for tool in ("ip", "iptables"):
            if shutil.which(tool) is None:
                return f"`{tool}` is not installed (apt-get install iproute2 iptables)"
        probe = _run("iptables", "-w", "5", "-S", "FORWARD", check=False)
        if probe.returncode != 0:
            return f"iptables does not work here: {probe.stderr.strip()}"
        return None

    # --- life cycle ------------------------------------------------------------------------------

    def _reserve(self) -> int:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        with open(STATE_DIR / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            routes = _run("ip", "-4", "route", "show", "table", "all").stdout
            for octet in SECOND_OCTETS:
                marker = STATE_DIR / str(octet)
                if marker.exists():
                    if _owner_alive(marker):
                        continue
                    _sweep(octet)  # left behind by a process that died without closing its lab
                if f"10.{octet}." in routes:
                    continue  # someone else's network
                marker.write_text(f"{os.getpid()}\n")
                return octet
        raise NetLabError(f"no free 10.B.0.0/16 for a lab (B in {SECOND_OCTETS.start}..{SECOND_OCTETS.stop - 1})")

    def _setup(self) -> None:
        with open(STATE_DIR / "lock", "w") as lock:  # the forwarding switch is shared by all labs
            fcntl.flock(lock, fcntl.LOCK_EX)
            saved = STATE_DIR / "ip_forward"  # its value before the first live lab turned it on
            if not saved.exists():
                saved.write_text(IP_FORWARD.read_text())
            IP_FORWARD.write_text("1\n")
        _run("iptables", "-w", "5", "-N", self.chain)
        _run("iptables", "-w", "5", "-A", self.chain, "-d", f"{self.prefix}.0.0/16", "-j", "ACCEPT")
        _run("iptables", "-w", "5", "-A", self.chain, "-j", "REJECT")  # the lab reaches nothing outside
        _run("iptables", "-w", "5", "-I", *self._jump[:1], "1", *self._jump[1:])

    def close(self) -> None:
        """Remove everything the lab made: processes left in its namespaces, namespaces and
        links, its iptables chain and jump, and the forwarding switch if it was off and no
        other lab is live. Safe to call twice; never raises."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        _sweep(self.octet, hosts=[h.netns for h in self.hosts])
        with open(STATE_DIR / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            (STATE_DIR / str(self.octet)).unlink(missing_ok=True)
            live = [p for p in STATE_DIR.iterdir() if p.name.isdigit() and _owner_alive(p)]
            saved = STATE_DIR / "ip_forward"
            if not live and saved.exists():  # the last lab out puts the switch back
                IP_FORWARD.write_text(saved.read_text())
                saved.unlink()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- hosts -------------------------------------------------------------------------------------

    def add_host(self) -> Host:
        """A new namespace linked to the root namespace, with its loopback up."""
        index = len(self.hosts) + 1
        if index > MAX_HOSTS:
            raise NetLabError(f"a lab holds at most {MAX_HOSTS} hosts")
        host = Host(
            index=index,
            netns=f"{self.tag}n{index}",
            address=f"{self.prefix}.{index}.2",
            gateway=f"{self.prefix}.{index}.1",
            subnet=f"{self.prefix}.{index}.0/24",
            link=f"{self.tag}h{index}",
        )
        inner = f"{self.tag}c{index}"
        self.hosts.append(host)  # before creating anything, so that close() removes it
        # No name server inside (`ip netns exec` mounts this over /etc/resolv.conf): a lookup
        # fails at once instead of waiting for a server the lab cannot reach.
        etc = NETNS_ETC / host.netns
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text("# tests/netlab.py: no DNS in the lab\nnameserver 127.0.0.1\n")
        _run("ip", "netns", "add", host.netns)
        _run("ip", "link", "add", host.link, "type", "veth", "peer", "name", inner)
        _run("ip", "link", "set", inner, "netns", host.netns)
        _run("ip", "addr", "add", f"{host.gateway}/24", "dev", host.link)
        _run("ip", "link", "set", host.link, "up")
        ns = ("ip", "netns", "exec", host.netns)
        _run(*ns, "ip", "link", "set", "lo", "up")
        _run(*ns, "ip", "addr", "add", f"{host.address}/24", "dev", inner)
        _run(*ns, "ip", "link", "set", inner, "up")
        _run(*ns, "ip", "route", "add", "default", "via", host.gateway)
        return host

    def add_hosts(self, count: int) -> list[Host]:
        return [self.add_host() for _ in range(count)]

    def exec_prefix(self, host: Host) -> list[str]:
        """Put this before a command to run it inside the host's namespace."""
        return ["ip", "netns", "exec", host.netns]

    def host_of(self, address: str) -> Host:
        for host in self.hosts:
            if host.address == address:
                return host
        raise KeyError(address)

    # --- faults ----------------------------------------------------------------------------------

    def _add_rule(self, key: tuple, rule: list[str]) -> None:
        if key in self._rules:
            return
        _run("iptables", "-w", "5", "-I", self.chain, "1", *rule)
        self._rules[key] = rule

    def _remove_rule(self, key: tuple) -> None:
        rule = self._rules.pop(key, None)
        if rule is not None:
            _run("iptables", "-w", "5", "-D", self.chain, *rule)

    def cut(self, a: Host, b: Host) -> None:
        """No packet between a and b, either way."""
        for x, y in ((a, b), (b, a)):
            self._add_rule(("cut", x.index, y.index), ["-s", x.subnet, "-d", y.subnet, "-j", "DROP"])

    def restore(self, a: Host, b: Host) -> None:
        for x, y in ((a, b), (b, a)):
            self._remove_rule(("cut", x.index, y.index))

    def partition(self, *groups: Sequence[Host]) -> None:
        """Cut every pair of hosts that sit in different groups."""
        for g1, g2 in itertools.combinations(groups, 2):
            for a in g1:
                for b in g2:
                    self.cut(a, b)

    def isolate(self, a: Host) -> None:
        """Cut `a` from every other host of the lab."""
        for b in self.hosts:
            if b is not a:
                self.cut(a, b)

    def ring(self, hosts: Sequence[Host]) -> None:
        """Only neighbours on the ring hosts[0] - hosts[1] - ... - hosts[-1] - hosts[0] talk."""
        n = len(hosts)
        for i, j in itertools.combinations(range(n), 2):
            if (j - i) % n not in (1, n - 1):
                self.cut(hosts[i], hosts[j])

    def loss(self, a: Host, b: Host, probability: float) -> None:
        """Drop each packet between a and b with `probability` (0 < p <= 1), both ways."""
        if not 0 < probability <= 1:
            raise ValueError(f"probability must be in (0, 1], got {probability}")
        for x, y in ((a, b), (b, a)):
            self._remove_rule(("loss", x.index, y.index))
            self._add_rule(
                ("loss", x.index, y.index),
                ["-s", x.subnet, "-d", y.subnet, "-m", "statistic", "--mode", "random",
                 "--probability", f"{probability:.4f}", "-j", "DROP"],
            )

    def heal(self) -> None:
        """Remove every cut and loss rule (links taken down stay down: see link_up)."""
        for key in list(self._rules):
            self._remove_rule(key)

    def link_down(self, a: Host) -> None:
        _run("ip", "link", "set", a.link, "down")

    def link_up(self, a: Host) -> None:
        _run("ip", "link", "set", a.link, "up")
        # Bringing a link up again drops its routes' state in some kernels: re-add if gone.
        ns = ("ip", "netns", "exec", a.netns)
        if "default" not in _run(*ns, "ip", "route").stdout:
            _run(*ns, "ip", "route", "add", "default", "via", a.gateway)

    def rules(self) -> list[str]:
        """The lab chain as iptables prints it (for failure messages)."""
        return _run("iptables", "-w", "5", "-S", self.chain, check=False).stdout.splitlines()


def _sweep(octet: int, hosts: Iterable[str] = ()) -> None:
    """Remove every trace of lab `octet`: processes in its namespaces, the namespaces (their
    veth links go with them), leftover root-side links, the iptables jump and chain."""
    tag, chain = f"pl{octet}", f"PEERLEDGER-{octet}"
    listed = _run("ip", "netns", "list", check=False).stdout.split()
    names = set(hosts) | {n for n in listed if n.startswith(f"{tag}n") and n[len(tag) + 1 :].isdigit()}
    for name in names:
        pids = _run("ip", "netns", "pids", name, check=False).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), 9)
            except (ProcessLookupError, ValueError):
                pass
        _run("ip", "netns", "delete", name, check=False)
        shutil.rmtree(NETNS_ETC / name, ignore_errors=True)
    links = _run("ip", "-o", "link", "show", check=False).stdout
    for line in links.splitlines():
        name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        if name.startswith(f"{tag}h") and name[len(tag) + 1 :].isdigit():
            _run("ip", "link", "delete", name, check=False)
    prefix = str(ipaddress.ip_network(f"10.{octet}.0.0/16"))
    jump = ["FORWARD", "-s", prefix, "-j", chain]
    while _run("iptables", "-w", "5", "-D", *jump, check=False).returncode == 0:
        pass
    _run("iptables", "-w", "5", "-F", chain, check=False)
    _run("iptables", "-w", "5", "-X", chain, check=False)
