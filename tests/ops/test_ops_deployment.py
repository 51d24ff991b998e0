"""The deployment files: the example 5-Pi cluster (configs/cluster/) and the systemd unit
(configs/peerledger.service).

The cluster's files are checked as an operator uses them (`peerledger config check`), for
what makes five files one cluster (seeds, allow_list and advertised addresses that agree),
and by following configs/cluster/README.md with five real nodes on this machine: keys made
by `init --keys-only`, example ids and addresses replaced, `config check`, `init`, start.
Only what cannot be on one machine changes: loopback addresses and free ports instead of
the LAN's, temporary data directories, and (for a test of seconds, not minutes) a block a
second instead of every ten.

The unit is checked with `systemd-analyze verify` against a temporary root holding what it
names: the system's own units (the targets it orders itself after), the console script at
/opt/peerledger/.venv/bin/peerledger (this installation's), and /etc/peerledger/node.toml.
`verify` does not look users up, so none is created.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from peerledger.cli import build_parser
from peerledger.config import load_genesis, load_settings, split_seed
from tests.nodes import STOP_TIMEOUT_S, free_ports, peerledger

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "configs" / "cluster"
UNIT = ROOT / "configs" / "peerledger.service"
NODE_FILES = [CLUSTER / f"node{i}.toml" for i in range(1, 6)]
FAST = {"block_interval_ms": 1000, "slot_ms": 100, "initial_difficulty": 10}  # the only genesis change


def unit_entries(path: Path = UNIT) -> dict[tuple[str, str], list[str]]:
    """(section, key) -> values, in order (keys such as SystemCallFilter repeat)."""
    entries: dict[tuple[str, str], list[str]] = {}
    section = ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.setdefault((section, key.strip()), []).append(value.strip())
    return entries


# --------------------------------------------------------------------------- the cluster's files


def test_the_cluster_files_pass_config_check_and_make_one_cluster():
    settings = {}
    for path in NODE_FILES:
        result = peerledger("config", "check", str(path))
        assert result.returncode == 0, result.stderr
        assert result.stderr == "", f"{path.name}: {result.stderr}"  # no warnings either
        assert "network field-cluster, consensus pos" in result.stdout
        settings[path.name] = load_settings(path)

    allow_lists = {s.network.allow_list for s in settings.values()}
    assert len(allow_lists) == 1, "every node must share one allow_list"
    (allow,) = allow_lists
    assert len(set(allow)) == 5
    advertised = {}  # node id -> the address it advertises
    for name, s in settings.items():
        seed_ids = {split_seed(seed)[0].hex() for seed in s.network.seeds}
        assert seed_ids <= set(allow), name
        (own,) = set(allow) - seed_ids  # the other four are its seeds; what is left is itself
        advertised[own] = s.network.advertise
        assert re.fullmatch(r"192\.168\.1\.1[1-5]:9700", s.network.advertise), s.network.advertise
        assert s.node.data_dir == Path("/var/lib/peerledger")
        assert s.node.genesis == CLUSTER / "genesis.toml"
        assert s.storage.map_size_mb == 512  # a 32-bit Pi maps less than 2 GiB
        assert s.producer.workers == 1 and s.validation.workers <= 1
        assert s.api.listen.startswith("127.0.0.1:")
    assert len(set(advertised.values())) == 5
    for name, s in settings.items():  # every seed names the address its node advertises
        for seed in s.network.seeds:
            key, host, port = split_seed(seed)
            assert advertised[key.hex()] == f"{host}:{port}", (name, seed)

    params = load_genesis(CLUSTER / "genesis.toml")
    assert params.consensus == "pos" and len(params.stakes) == 5
    assert len({amount for _, amount in params.stakes}) == 1, "equal stakes"


def test_the_cluster_readme_procedure_gives_five_nodes_that_stake_together(nodes):
    examples = [load_settings(path) for path in NODE_FILES]
    genesis_text = (CLUSTER / "genesis.toml").read_text()
    example_wallets = re.findall(r'address = "(pl[a-z0-9]+)"  # pi\d', genesis_text)
    example_ids = [next(iter(set(s.network.allow_list) - {split_seed(x)[0].hex() for x in s.network.seeds}))
                   for s in examples]
    pis = [nodes.add_node(name=f"pi{i}") for i in range(1, 6)]
    ports = free_ports(5)
    lan = {}  # what only a LAN has -> this machine's equivalent
    for i, example in enumerate(examples):
        lan[example.network.advertise] = f"127.0.0.1:{ports[i]}"
    for i, pi in enumerate(pis):
        local = dict(lan)
        local['listen = "0.0.0.0:9700"'] = f'listen = "127.0.0.1:{ports[i]}"'
        local['listen = "127.0.0.1:9701"'] = f'listen = "127.0.0.1:{free_ports(1)[0]}"'
        local['data_dir = "/var/lib/peerledger"'] = f'data_dir = "{pi.dir / "data"}"'
        local['genesis = "genesis.toml"'] = f'genesis = "{nodes.genesis_path}"'
        pi.config_path.write_text(_replace_all(NODE_FILES[i].read_text(), local))

    # Step 2: each Pi makes its keys; no genesis exists yet.
    nodes.genesis_path.unlink()
    made = []
    for pi in pis:
        out = pi.cli("init", "--keys-only").stdout
        made.append((re.search(r"^node id\s+([0-9a-f]{64})$", out, re.MULTILINE)[1],
                     re.search(r"^default wallet\s+(pl\w+)$", out, re.MULTILINE)[1]))
    assert not any((pi.dir / "data" / "ledger").exists() for pi in pis)

    # Step 3: their ids and addresses replace the examples.
    ids = dict(zip(example_ids, (node_id for node_id, _ in made)))
    wallets = dict(zip(example_wallets, (wallet for _, wallet in made)))
    for key, value in FAST.items():
        genesis_text = re.sub(rf"^{key} = .*$", f"{key} = {value}", genesis_text, flags=re.MULTILINE)
    nodes.genesis_path.write_text(_replace_all(genesis_text, wallets))
    for pi in pis:
        pi.config_path.write_text(_replace_all(pi.config_path.read_text(), ids))
        pi.config = tomllib.loads(pi.config_path.read_text())  # what the harness reads (ports, data_dir)

    # Step 4: config check without a warning, init, start.
    for pi in pis:
        result = pi.cli("config", "check")
        assert result.stderr == "", result.stderr
        assert "network field-cluster, consensus pos" in result.stdout
    nodes.start(*pis)
    for pi in pis:
        nodes.wait_ready_peers(pi, [p for p in pis if p is not pi], 90)
    common = nodes.wait_converged(pis, 90, min_height=8)
    producers = {pis[0].client.block(h)["producer"] for h in range(1, common["height"] + 1)}
    assert len(producers) >= 2 and producers <= {wallet for _, wallet in made}, producers
    status = pis[0].cli("status").stdout
    assert re.search(r"^producing\s+staking", status, re.MULTILINE), status
    assert re.search(r"^peers\s+4 connected", status, re.MULTILINE), status
    assert not nodes.misbehaviour(pis)


def _replace_all(text: str, replace: dict[str, str]) -> str:
    for old, new in replace.items():
        assert old in text, f"{old} is not in the file"
        text = text.replace(old, new)
    return text


# --------------------------------------------------------------------------- the systemd unit


def test_the_systemd_unit_passes_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (.ci/run installs the systemd package)")
    system_units = next((p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir()), None)
    if system_units is None:
        pytest.skip("no systemd unit directory on this machine")
    root = tmp_path / "root"
    shutil.copytree(system_units, root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(UNIT, root / "etc/systemd/system/peerledger.service")
    exe = root / "opt/peerledger/.venv/bin/peerledger"
    exe.parent.mkdir(parents=True)
    shutil.copy2(Path(sys.executable).parent / "peerledger", exe)  # this installation's console script
    (root / "etc/peerledger").mkdir(parents=True)
    for name in ("node1.toml", "genesis.toml"):
        shutil.copy(CLUSTER / name, root / "etc/peerledger" / (name if name == "genesis.toml" else "node.toml"))

    unit = "/etc/systemd/system/peerledger.service"
    result = subprocess.run([analyze, "verify", f"--root={root}", unit], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr

    # The command it runs, with `config check` for `run`, accepts the file it is given.
    (command,) = unit_entries()[("Service", "ExecStart")]
    program, *argv = command.split()
    assert argv[:1] == ["run"] and build_parser().parse_args(argv).func.__name__ == "cmd_run"
    config = root / argv[argv.index("--config") + 1].lstrip("/")
    check = subprocess.run([str(root / program.lstrip("/")), "config", "check", "--config", str(config)],
                           capture_output=True, text=True, timeout=60, check=False)
    assert check.returncode == 0 and ": ok (network field-cluster" in check.stdout, check.stdout + check.stderr

    # Hardened (systemd's own scale: 0 is fully confined, 10 not at all; below 2 is "OK").
    security = subprocess.run([analyze, "security", "--offline=true", f"--root={root}", unit],
                              capture_output=True, text=True, timeout=60, check=False)
    if "offline" in security.stderr and security.returncode != 0:
        return  # an older systemd-analyze without offline analysis
    level = re.search(r"Overall exposure level for peerledger.service: ([0-9.]+)", security.stdout)
    assert level and float(level[1]) < 2.0, security.stdout[-2000:]


def test_the_unit_and_the_cluster_files_agree():
    entries = unit_entries()
    service = {key: values for (section, key), values in entries.items() if section == "Service"}
    assert service["Type"] == ["simple"] and service["Restart"] == ["on-failure"]
    assert service["User"] == ["peerledger"]
    assert service["KillMode"][0] in ("mixed", "process")
    # systemd's stop timeout leaves the node the time it needs to stop by itself.
    assert float(service["TimeoutStopSec"][0]) >= STOP_TIMEOUT_S * 2
    assert "2" in service["RestartPreventExitStatus"][0].split(), "a configuration error must not loop"
    # The data directory systemd makes is the one the node files name.
    (state,) = service["StateDirectory"]
    for path in NODE_FILES:
        assert load_settings(path).node.data_dir == Path("/var/lib") / state
    # ProtectSystem=strict: the node may write its data directory and the backup directory
    # README tells operators to use, nothing else.
    assert service["ProtectSystem"] == ["strict"]
    assert "-/var/backups/peerledger" in " ".join(service["ReadWritePaths"]).split()
    assert "/var/backups/peerledger" in (ROOT / "README.md").read_text()
    command = service["ExecStart"][0].split()
    assert command[0] == "/opt/peerledger/.venv/bin/peerledger"
    assert command[command.index("--config") + 1] == "/etc/peerledger/node.toml"

