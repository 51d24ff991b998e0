"""Node settings and genesis specs: defaults, the shipped files, and every kind of mistake.

Every bad config must raise ConfigError whose one-line message names the file, the key and
what is wrong; nothing else may escape, and loading never writes anything.
"""

import dataclasses
import os
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from chain.keys import SigningKey, address_to_text
from chain.params import ChainParams
from peerledger.config import (
    ConfigError,
    Settings,
    default_genesis_path,
    genesis_from_dict,
    load_genesis,
    load_settings,
    render_settings,
    schema,
    settings_from_dict,
    split_host_port,
    split_seed,
)

ROOT = Path(__file__).resolve().parents[2]
NODE_TOML = ROOT / "configs" / "node.toml"
GENESIS_POW = ROOT / "configs" / "genesis-pow.toml"
KEY = "ab" * 32
ADDRESS = address_to_text(SigningKey.from_seed(bytes(range(32))).address)


def _typo(address: str) -> str:
    """The same address with one character changed, as a person would mistype it."""
    i = 10
    return address[:i] + ("b" if address[i] != "b" else "c") + address[i + 1 :]


def write(tmp_path: Path, text: str, name: str = "node.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def settings_error(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert "\n" not in message
    return message


GENESIS_MINIMAL = """
name = "test"
consensus = "pow"
genesis_time_ms = 1767225600000
block_interval_ms = 5000
initial_difficulty = 1000
block_reward = 100
max_block_bytes = 100000
max_block_txs = 100
"""


def genesis_error(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text, "genesis.toml")
    with pytest.raises(ConfigError) as info:
        load_genesis(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    return message


# ----------------------------------------------------------------------------- defaults and shipped files


def test_empty_config_gives_the_schema_defaults(tmp_path):
    s = settings_from_dict({}, tmp_path / "node.toml")
    assert s.source == tmp_path / "node.toml"
    assert s.node.data_dir == tmp_path / "data"
    assert s.node.genesis == default_genesis_path()
    assert s.node.name == "" and s.node.log_level == "INFO"
    assert s.network.listen == "0.0.0.0:9700" and s.network.seeds == () and s.network.allow_list == ()
    assert (s.network.max_outbound, s.network.max_inbound) == (8, 32)
    assert (s.network.ping_interval_s, s.network.peer_timeout_s) == (10.0, 30.0)
    assert s.network.max_clock_offset_s == 4200
    assert (s.storage.map_size_mb, s.storage.sync) == (1024, True)
    assert s.mempool.max_bytes == 16_000_000
    assert (s.producer.workers, s.producer.reward_address, s.producer.chunk_nonces) == (1, "", 200_000)
    assert (s.validation.workers, s.validation.batch_min) == (2, 256)
    assert (s.api.listen, s.api.max_body_bytes) == ("127.0.0.1:9701", 65536)
    for section in schema():  # the dataclass defaults are the schema's defaults (paths have none)
        values = getattr(s, section)
        paths = {key: getattr(values, key) for key in ("data_dir", "genesis") if hasattr(values, key)}
        assert type(values)(**paths) == values


def test_settings_are_frozen_and_slotted(tmp_path):
    s = settings_from_dict({}, tmp_path / "node.toml")
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.network.max_outbound = 3  # type: ignore[misc]
    assert not hasattr(s.network, "__dict__") and not hasattr(s, "__dict__")


def test_embedded_default_genesis():
    assert default_genesis_path().is_file()
    params = load_genesis(default_genesis_path())
    assert isinstance(params, ChainParams)
    assert (params.name, params.consensus) == ("peerledger-local", "pow")
    assert params.genesis_time_ms == 1767225600000
    assert params.block_interval_ms == 5000
    assert params.block_reward == 5_000_000_000
    assert (params.max_block_bytes, params.max_block_txs) == (1_000_000, 5000)
    assert params.allocations == () and params.stakes == ()
    assert len(params.network_id) == 32


def test_shipped_node_config_loads_to_the_defaults():
    assert load_settings(NODE_TOML) == settings_from_dict({}, NODE_TOML)


def test_shipped_pow_genesis_example_loads():
    params = load_genesis(GENESIS_POW)
    assert params.consensus == "pow"
    assert len(params.allocations) == 2
    assert all(amount > 0 for _, amount in params.allocations)


def test_annotated_node_config_documents_exactly_the_schema():
    """configs/node.toml is the operators' documentation: it may not drift from the schema."""
    text = NODE_TOML.read_text()
    data = tomllib.loads(text)
    expected = {section: {key: spec.default for key, spec in keys.items()} for section, keys in schema().items()}
    assert list(data) == list(expected), "sections missing, extra or out of order"
    for section, keys in expected.items():
        assert list(data[section]) == list(keys), f"[{section}]: keys missing, extra or out of order"
        for key, default in keys.items():
            value = data[section][key]
            assert (type(value), value) == (type(default), default), f"[{section}] {key}: {value!r} != {default!r}"
    lines = text.splitlines()
    for number, line in enumerate(lines):  # every key has at least one comment line right above it
        if "=" in line and not line.lstrip().startswith("#"):
            assert lines[number - 1].startswith("#"), f"line {number + 1} is not documented: {line}"
    for keys in schema().values():
        for spec in keys.values():
            assert spec.doc and "\n" not in spec.doc


def test_render_settings_shows_every_key_and_reads_back(tmp_path):
    source = write(
        tmp_path,
        f'[node]\nname = "pi-3"\ndata_dir = "~/ledger"\n[network]\nseeds = ["{KEY.upper()}@10.0.0.2:9700"]\n'
        f'peer_timeout_s = 45\n[producer]\nreward_address = "{ADDRESS}"\n',
    )
    s = load_settings(source)
    text = render_settings(s)
    data = tomllib.loads(text)
    assert {section: list(keys) for section, keys in data.items()} == {
        section: list(keys) for section, keys in schema().items()
    }
    assert data["node"]["data_dir"] == str(Path.home() / "ledger")
    assert data["network"]["seeds"] == [f"{KEY}@10.0.0.2:9700"]
    assert data["network"]["peer_timeout_s"] == 45.0
    (tmp_path / "elsewhere").mkdir()
    reread = load_settings(write(tmp_path / "elsewhere", text, "shown.toml"))  # paths are absolute now
    assert dataclasses.replace(reread, source=s.source) == s


# ----------------------------------------------------------------------------- paths


def test_paths_are_relative_to_the_config_file_and_expand_home(tmp_path):
    (tmp_path / "etc").mkdir()
    path = write(tmp_path / "etc", '[node]\ndata_dir = "../var/node1"\ngenesis = "net.toml"\n')
    s = load_settings(path)
    assert s.node.data_dir == tmp_path / "var" / "node1"
    assert s.node.genesis == tmp_path / "etc" / "net.toml"
    assert s.node.data_dir.is_absolute() and s.node.genesis.is_absolute()
    home = load_settings(write(tmp_path, '[node]\ndata_dir = "~/pl"\ngenesis = "/srv/g.toml"\n'))
    assert home.node.data_dir == Path.home() / "pl"
    assert home.node.genesis == Path("/srv/g.toml")


def test_relative_source_path_resolves_against_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "[node]\nlog_level = \"debug\"\n", "n.toml")
    s = load_settings("n.toml")
    assert s.source == tmp_path / "n.toml"
    assert s.node.data_dir == tmp_path / "data"
    assert s.node.log_level == "DEBUG"


# ----------------------------------------------------------------------------- bad node configs


def test_the_documented_example_message(tmp_path):
    message = settings_error(tmp_path, '[network]\nmax_outbound = "eight"\n')
    assert message.endswith(': [network] max_outbound: expected an integer in 0..1024, got "eight"')


@pytest.mark.parametrize(
    "text, expected",
    [
        # TOML syntax: the line is named
        ("[network]\nmax_outbound = 8\nmax_inbound = \n", ["TOML syntax error at line 3"]),
        ("[network\n", ["TOML syntax error at line 1"]),
        # unknown sections and keys, with suggestions
        ("[netwrok]\nenabled = true\n", ["[netwrok]", "unknown section", "did you mean [network]?"]),
        ("[wallet]\n", ["[wallet]", "unknown section", "sections: node, network"]),
        ("[network]\nmax_outbund = 8\n", ["[network] max_outbund", "unknown key", "did you mean 'max_outbound'?"]),
        ("[node]\nmax_outbound = 8\n", ["[node] max_outbound", "unknown key", "belongs in [network]"]),
        ("[api]\nfoo = 1\n", ["[api] foo", "unknown key"]),
        ("max_outbound = 8\n", ["max_outbound", "outside any section", "belongs in [network]"]),
        ("colour = 8\n", ["colour", "unknown key outside any section"]),
        ("network = 8\n", ["[network]", "expected a [network] table, got 8"]),
        ("[[network]]\nenabled = true\n", ["[network]", "expected a [network] table"]),
        # wrong types; booleans are not integers, integers are not booleans
        ("[network]\nmax_outbound = true\n", ["[network] max_outbound", "expected an integer in 0..1024, got true"]),
        ("[network]\nmax_outbound = 8.0\n", ["[network] max_outbound", "got 8.0", "without a decimal point"]),
        ('[network]\nmax_outbound = "8"\n', ["[network] max_outbound", 'got "8"', "without quotes"]),
        ("[storage]\nsync = 1\n", ["[storage] sync", "expected true or false, got 1"]),
        ('[storage]\nsync = "yes"\n', ["[storage] sync", 'expected true or false, got "yes"']),
        ("[network]\nseeds = \"abc\"\n", ["[network] seeds", "expected a list of", 'got "abc"']),
        ("[node]\nname = 5\n", ["[node] name", "expected a string of at most 64", "got 5"]),
        ('[node]\nlog_level = "VERBOSE"\n', ["[node] log_level", 'one of "DEBUG", "INFO", "WARNING", "ERROR"', '"VERBOSE"']),
        ("[network]\nping_interval_s = true\n", ["[network] ping_interval_s", "got true", "boolean"]),
        # out of range
        ("[network]\nmax_outbound = 5000\n", ["[network] max_outbound", "expected an integer in 0..1024, got 5000"]),
        ("[network]\nmax_inbound = -1\n", ["[network] max_inbound", "0..4096, got -1"]),
        ("[storage]\nmap_size_mb = 8\n", ["[storage] map_size_mb", "16..1048576, got 8"]),
        ("[mempool]\nmax_bytes = 100\n", ["[mempool] max_bytes", "expected an integer >= 10000, got 100"]),
        ("[network]\nban_threshold = 0\n", ["[network] ban_threshold", ">= 1, got 0"]),
        ("[producer]\nworkers = 65\n", ["[producer] workers", "0..64, got 65"]),
        ("[producer]\nchunk_nonces = 10\n", ["[producer] chunk_nonces", ">= 1000, got 10"]),
        ("[validation]\nbatch_min = 0\n", ["[validation] batch_min", ">= 1, got 0"]),
        ("[api]\nmax_body_bytes = 100\n", ["[api] max_body_bytes", "1024..10000000, got 100"]),
        ("[network]\nhandshake_timeout_s = 0\n", ["[network] handshake_timeout_s", "> 0", "got 0"]),
        ("[network]\nping_interval_s = inf\n", ["[network] ping_interval_s", "got inf"]),
        ("[network]\nping_interval_s = nan\n", ["[network] ping_interval_s", "got nan"]),
        ("[network]\nping_interval_s = 20\npeer_timeout_s = 20\n",
         ["[network] peer_timeout_s", "> ping_interval_s (20), got 20"]),
        # addresses to listen on and to dial
        ('[network]\nlisten = "localhost"\n', ["[network] listen", '"host:port"', 'got "localhost"']),
        ('[network]\nlisten = "0.0.0.0:70000"\n', ["[network] listen", "port 70000 is above 65535"]),
        ('[network]\nlisten = "bad_host!:9700"\n', ["[network] listen", "not a valid host name"]),
        ('[network]\nlisten = "300.1.1.1:9700"\n', ["[network] listen", "not an IPv4 address"]),
        ('[network]\nadvertise = "0.0.0.0:9700"\n', ["[network] advertise", "cannot dial"]),
        ('[api]\nlisten = "127.0.0.1:9700"\n', ["[api] listen", "port 9700 is also [network] listen"]),
        ('[notifications]\nenabled = true\nlisten = "127.0.0.1:9701"\n',
         ["[notifications] listen", "port 9701 is also [api] listen"]),
        ('[network]\nenabled = false\n[notifications]\nenabled = true\n',
         ["[notifications] enabled", "needs [network] enabled = true"]),
        ("[notifications]\nhigh_water_mark = 0\n", ["[notifications] high_water_mark", "1..1000000, got 0"]),
        # seeds and allow-list
        (f'[network]\nseeds = ["{KEY}"]\n', ["[network] seeds", "entry 1", 'missing "@"']),
        (f'[network]\nseeds = ["{KEY}@10.0.0.2:9700", "abcd@10.0.0.3:9700"]\n',
         ["[network] seeds", "entry 2", "64 hex digits", '"abcd@10.0.0.3:9700"']),
        (f'[network]\nseeds = ["{KEY}@10.0.0.2"]\n', ["[network] seeds", "entry 1", '"host:port"']),
        (f'[network]\nseeds = ["{KEY}@10.0.0.2:0"]\n', ["[network] seeds", "port 0 cannot be dialled"]),
        (f'[network]\nseeds = ["{KEY}@pi1.local:9700", "{KEY.upper()}@pi1.local:9700"]\n',
         ["[network] seeds", "entry 2", "listed twice"]),
        ('[network]\nallow_list = ["xyz"]\n', ["[network] allow_list", "entry 1", "64 hex digits", '"xyz"']),
        ("[network]\nallow_list = [123]\n", ["[network] allow_list", "entry 1", "got 123"]),
        # reward address
        (f'[producer]\nreward_address = "{_typo(ADDRESS)}"\n',
         ["[producer] reward_address", _typo(ADDRESS), "checksum", "mistyped"]),
        ('[producer]\nreward_address = "pl123"\n', ["[producer] reward_address", '"pl123"', "not a peerledger address"]),
        # paths
        ('[node]\ndata_dir = ""\n', ["[node] data_dir", "may not be empty"]),
        ("[node]\ngenesis = 3\n", ["[node] genesis", "expected", "got 3"]),
    ],
)
def test_bad_node_config_names_file_key_and_problem(tmp_path, text, expected):
    message = settings_error(tmp_path, text)
    for fragment in expected:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_missing_file(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert str(info.value) == f"{path}: file not found (looked for {path})"
    with pytest.raises(ConfigError, match="file not found"):
        load_genesis(path)


def test_directory_and_binary_files(tmp_path):
    with pytest.raises(ConfigError, match="is a directory"):
        load_settings(tmp_path)
    path = tmp_path / "bin.toml"
    path.write_bytes(b"[node]\nname = \"\xff\xfe\"\n")
    with pytest.raises(ConfigError, match=r"bin.toml: not UTF-8 text \(line 2\)"):
        load_settings(path)


def test_syntax_error_carries_the_line(tmp_path):
    path = write(tmp_path, "[node]\nname = \"a\"\nname = \"b\"\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert info.value.line == 3 and info.value.path == path and info.value.key == ""


def test_error_attributes(tmp_path):
    path = write(tmp_path, "[network]\nmax_outbound = 5000\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert (info.value.path, info.value.key) == (path, "[network] max_outbound")
    assert info.value.message == "expected an integer in 0..1024, got 5000"


def test_values_that_are_accepted(tmp_path):
    s = load_settings(
        write(
            tmp_path,
            f"""
[network]
listen = "[::]:0"
advertise = "pi-7.lan:9700"
seeds = ["{KEY.upper()}@[fe80::1]:9700", "{'cd' * 32}@192.168.1.20:9700"]
allow_list = ["{KEY.upper()}"]
handshake_timeout_s = 2.5
[producer]
workers = 0
reward_address = "{ADDRESS}"
[api]
enabled = false
listen = "0.0.0.0:9700"
""",
        )
    )
    assert s.network.listen == "[::]:0"
    assert s.network.seeds[0] == f"{KEY}@[fe80::1]:9700"  # keys are stored in lower case
    assert s.network.allow_list == (KEY,)
    assert s.network.handshake_timeout_s == 2.5
    assert s.producer.reward_address == ADDRESS and s.producer.workers == 0


def test_split_helpers():
    assert split_host_port("127.0.0.1:9700") == ("127.0.0.1", 9700)
    assert split_host_port("[::1]:1") == ("::1", 1)
    assert split_host_port("pi-1.local:80") == ("pi-1.local", 80)
    assert split_seed(f"{KEY}@pi-1:9700") == (bytes.fromhex(KEY), "pi-1", 9700)
    for bad in ("pi-1", "pi-1:", ":80", "a:b", "::1:80", "[zz]:80", "-a:80"):
        with pytest.raises(ValueError):
            split_host_port(bad)


# ----------------------------------------------------------------------------- genesis specs


def test_genesis_required_and_defaulted_keys_follow_chain_params(tmp_path):
    params = load_genesis(write(tmp_path, GENESIS_MINIMAL, "genesis.toml"))
    defaults = {f.name: f.default for f in dataclasses.fields(ChainParams)}
    for name in ("difficulty_half_life", "min_difficulty", "median_time_span", "max_future_ms",
                 "max_reorg_depth", "unbonding_delay"):
        assert getattr(params, name) == defaults[name]
    required = [f.name for f in dataclasses.fields(ChainParams) if f.default is dataclasses.MISSING]
    for name in required:
        lines = [line for line in GENESIS_MINIMAL.splitlines() if not line.startswith(f"{name} =")]
        message = genesis_error(tmp_path, "\n".join(lines))
        assert f": {name}: missing" in message


def test_genesis_from_dict_and_network_id_follow_the_values(tmp_path):
    data = tomllib.loads(GENESIS_MINIMAL)
    a = genesis_from_dict(data, tmp_path / "a.toml")
    b = genesis_from_dict({**data, "block_reward": 101}, tmp_path / "b.toml")
    assert a.network_id != b.network_id
    c = genesis_from_dict(
        {**data, "allocations": [{"address": ADDRESS, "amount": 5}], "stakes": [{"address": ADDRESS, "amount": 7}]},
        "c.toml",
    )
    assert c.allocations == ((SigningKey.from_seed(bytes(range(32))).address, 5),)
    assert c.stakes == ((SigningKey.from_seed(bytes(range(32))).address, 7),)


@pytest.mark.parametrize(
    "extra, expected",
    [
        ("block_rewrd = 5\n", ["block_rewrd", "unknown key", "did you mean 'block_reward'?"]),
        ("network_id = \"00\"\n", ["network_id", "derived from the spec"]),
        ("[allocation]\naddress = \"x\"\n", ["allocation", "did you mean 'allocations'?"]),
        ("difficulty_half_life = \"six\"\n", ["difficulty_half_life", 'expected an integer, got "six"']),
        ("difficulty_half_life = true\n", ["difficulty_half_life", "expected an integer, got true"]),
        ("max_reorg_depth = 0\n", ["max_reorg_depth: must be an integer in 1..1000000, got 0"]),
        ("min_difficulty = 5000\n", ["initial_difficulty is below min_difficulty"]),
        ("max_future_ms = 1.5\n", ["max_future_ms", "expected an integer, got 1.5"]),
        ("allocations = 5\n", ["allocations", "expected [[allocations]] tables", "got 5"]),
        (f'[[allocations]]\naddress = "{ADDRESS}"\namount = 10\n[[allocations]]\naddress = "{_typo(ADDRESS)}"\namount = 1\n',
         ["[[allocations]] entry 2 address", _typo(ADDRESS), "checksum"]),
        (f'[[allocations]]\naddress = "{ADDRESS}"\namount = 10\n[[allocations]]\naddress = "{ADDRESS}"\namount = 1\n',
         ["[[allocations]] entry 2 address", "already listed in [[allocations]] entry 1"]),
        (f'[[allocations]]\naddress = "{ADDRESS}"\namount = 0\n', ["[[allocations]] entry 1 amount", "got 0"]),
        (f'[[allocations]]\naddress = "{ADDRESS}"\namount = true\n', ["[[allocations]] entry 1 amount", "got true"]),
        (f'[[allocations]]\naddress = "{ADDRESS}"\n', ["[[allocations]] entry 1", "missing amount"]),
        (f'[[stakes]]\naddress = "{ADDRESS}"\namount = 1\nweight = 2\n', ["[[stakes]] entry 1 weight", "unknown key"]),
        ('[[stakes]]\naddress = 12\namount = 1\n', ["[[stakes]] entry 1 address", "got 12"]),
        ("genesis_time_ms = \n", ["TOML syntax error at line 10"]),
    ],
)
def test_bad_genesis_names_file_key_and_problem(tmp_path, extra, expected):
    message = genesis_error(tmp_path, GENESIS_MINIMAL + extra)
    for fragment in expected:
        assert fragment in message, f"{fragment!r} not in {message!r}"


@pytest.mark.parametrize(
    "old, new, expected",
    [
        ('consensus = "pow"', 'consensus = "pos"', ["a Proof of Stake network needs at least one genesis stake"]),
        ('consensus = "pow"', 'consensus = "sha"', ["consensus: must be 'pow' or 'pos', not 'sha'"]),
        ('name = "test"', 'name = ""', ['name: must be 1 to 64 bytes (got "")']),
        ("block_interval_ms = 5000", "block_interval_ms = 10", ["block_interval_ms: must be an integer in 100..86400000, got 10"]),
        ("block_reward = 100", "block_reward = -1", ["block_reward: must be an integer in 0..", "got -1"]),
    ],
)
def test_genesis_values_refused_by_chain_rules(tmp_path, old, new, expected):
    message = genesis_error(tmp_path, GENESIS_MINIMAL.replace(old, new))
    for fragment in expected:
        assert fragment in message, f"{fragment!r} not in {message!r}"


# ----------------------------------------------------------------------------- purity and robustness


def _snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else b"")
        for p in sorted(root.rglob("*"))
    }


def test_loading_writes_nothing(tmp_path):
    good = write(tmp_path, '[node]\ndata_dir = "data"\n')
    bad = write(tmp_path, '[node]\ndata_dir = "data"\n[network]\nmax_outbound = -1\n', "bad.toml")
    spec = write(tmp_path, GENESIS_MINIMAL + "max_reorg_depth = 0\n", "genesis.toml")
    before = _snapshot(tmp_path)
    load_settings(good)
    with pytest.raises(ConfigError):
        load_settings(bad)
    with pytest.raises(ConfigError):
        load_genesis(spec)
    assert _snapshot(tmp_path) == before
    assert not (tmp_path / "data").exists()


_KEYS = [(section, key) for section, keys in schema().items() for key in keys]
_VALUES = st.one_of(
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**60).map(lambda n: n**4),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.lists(st.one_of(st.text(max_size=70), st.integers()), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


@hsettings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_KEYS), _VALUES), max_size=4))
def test_any_value_gives_settings_or_config_error(entries):
    data: dict = {}
    for (section, key), value in entries:
        data.setdefault(section, {})[key] = value
    try:
        s = settings_from_dict(data, "/tmp/fuzz/node.toml")
    except ConfigError as e:
        assert str(e).startswith("/tmp/fuzz/node.toml: ")
    else:
        assert isinstance(s, Settings)
        settings_from_dict(tomllib.loads(render_settings(s)), "/tmp/fuzz/node.toml")


_GENESIS_KEYS = [f.name for f in dataclasses.fields(ChainParams)] + ["bogus"]


@hsettings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.sampled_from(_GENESIS_KEYS), _VALUES, max_size=4),
    st.lists(st.dictionaries(st.sampled_from(["address", "amount", "x"]), st.one_of(_VALUES, st.just(ADDRESS))), max_size=3),
)
def test_any_genesis_gives_params_or_config_error(changes, entries):
    data = {**tomllib.loads(GENESIS_MINIMAL), **changes, "allocations": entries}
    try:
        params = genesis_from_dict(data, "/tmp/fuzz/genesis.toml")
    except ConfigError as e:
        assert str(e).startswith("/tmp/fuzz/genesis.toml: ")
    else:
        assert isinstance(params, ChainParams)


def test_rendered_strings_are_valid_toml(tmp_path):
    odd = tmp_path / 'a "quoted" \\ back\tslash\x7fdel'
    s = settings_from_dict({"node": {"data_dir": str(odd), "name": "pi \u00e9"}}, tmp_path / "node.toml")
    data = tomllib.loads(render_settings(s))
    assert data["node"]["data_dir"] == str(odd) and data["node"]["name"] == "pi \u00e9"
