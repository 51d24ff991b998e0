"""Node settings and genesis specs, read from TOML and checked before anything starts.

A node is configured by one TOML file (see configs/node.toml, which documents every key).
The schema is declared once, below, as frozen dataclasses whose fields carry a `Spec`:
the kind of value (which validates and converts it), the default as written in TOML, and a
one-line doc. Validation, defaults, `render_settings` and the test that keeps
configs/node.toml in step all read that one declaration.

Loading is pure: it reads files and never writes. Every mistake raises `ConfigError`, whose
text names the file, the [section] and key, what was expected and what was found, e.g.

    configs/node.toml: [network] max_outbound: expected an integer in 0..1024, got "eight"

Unknown sections and keys are errors (with a "did you mean" for near misses) because a
misspelt key silently left at its default is the worst kind of configuration bug.

A genesis spec (configs/genesis-pow.toml) maps 1:1 onto `chain.params.ChainParams`; its
rules are checked by `chain.params.check_params`, whose verdict is reported here against the
file.
"""

import dataclasses
import difflib
import ipaddress
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chain.errors import ChainError
from chain.keys import address_from_text
from chain.params import ChainParams
from chain.tx import MAX_AMOUNT

__all__ = [
    "ApiSettings",
    "ConfigError",
    "MempoolSettings",
    "NetworkSettings",
    "NodeSettings",
    "NotificationsSettings",
    "ProducerSettings",
    "Settings",
    "Spec",
    "StorageSettings",
    "ValidationSettings",
    "default_genesis_path",
    "genesis_from_dict",
    "load_genesis",
    "load_settings",
    "render_settings",
    "schema",
    "settings_from_dict",
    "split_host_port",
    "split_seed",
]


class ConfigError(Exception):
    """A configuration file says something wrong. str() is the whole message for the user.

    `path` is the file as the user named it, `key` where in it ("[network] max_outbound",
    "block_reward", "[[allocations]] entry 2 address", or "" for the file as a whole),
    `message` what is wrong. `line` is set for TOML syntax errors.
    """

    def __init__(self, path: str | Path, key: str, message: str, line: int | None = None) -> None:
        self.path = Path(path)
        self.key = key
        self.message = message
        self.line = line
        super().__init__(f"{path}: {key}: {message}" if key else f"{path}: {message}")


# --------------------------------------------------------------------------- value kinds


class _Invalid(Exception):
    """Raised by a kind; the loader adds the file and key."""


def _show(value: Any, limit: int = 80) -> str:
    """A value as it would be written in TOML, shortened, for error messages."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, float):
        text = "nan" if math.isnan(value) else ("inf" if value == math.inf else "-inf" if value == -math.inf else repr(value))
    elif isinstance(value, (list, tuple)):
        text = "[" + ", ".join(_show(v, limit) for v in value) + "]"
    elif isinstance(value, Mapping):
        text = "a table {" + ", ".join(f"{k} = {_show(v, limit)}" for k, v in value.items()) + "}"
    else:
        text = str(value)  # int, datetime
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Kind:
    """How one setting is written in TOML: what it accepts, what it becomes."""

    expected = "a value"

    def convert(self, value: Any, base: Path) -> Any:
        raise NotImplementedError

    def fail(self, value: Any, hint: str = "") -> _Invalid:
        return _Invalid(f"expected {self.expected}, got {_show(value)}" + (f"; {hint}" if hint else ""))

    def _type_hint(self, value: Any) -> str:
        if isinstance(value, bool):
            return "true/false is a boolean, not a number"
        if isinstance(value, str):
            try:
                float(value)
            except ValueError:
                return ""
            return "a number is written without quotes"
        return ""


class Bool(Kind):
    expected = "true or false"

    def convert(self, value: Any, base: Path) -> bool:
        if not isinstance(value, bool):
            hint = 'write true or false without quotes' if isinstance(value, str) and value.lower() in ("true", "false") else ""
            raise self.fail(value, hint)
        return value


class Int(Kind):
    def __init__(self, low: int, high: int | None = None) -> None:
        self.low, self.high = low, high
        self.expected = f"an integer in {low}..{high}" if high is not None else f"an integer >= {low}"

    def convert(self, value: Any, base: Path) -> int:
        if isinstance(value, float) and value.is_integer():
            raise self.fail(value, "write it without a decimal point")
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.fail(value, self._type_hint(value))
        if value < self.low or (self.high is not None and value > self.high):
            raise self.fail(value)
        return value


class Seconds(Kind):
    """A finite number of seconds > 0; integers are accepted and become floats."""

    def __init__(self, high: float = 86_400.0) -> None:
        self.high = high
        self.expected = f"a number of seconds > 0 and <= {high:g}"

    def convert(self, value: Any, base: Path) -> float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise self.fail(value, self._type_hint(value))
        if not 0 < value <= self.high:  # also refuses nan and inf
            raise self.fail(value)
        return float(value)


class Choice(Kind):
    def __init__(self, *options: str) -> None:
        self.options = options
        self.expected = "one of " + ", ".join(json.dumps(o) for o in options)

    def convert(self, value: Any, base: Path) -> str:
        if isinstance(value, str) and value.upper() in self.options:
            return value.upper()
        raise self.fail(value)


class Text(Kind):
    def __init__(self, max_chars: int) -> None:
        self.max_chars = max_chars
        self.expected = f"a string of at most {max_chars} printable characters"

    def convert(self, value: Any, base: Path) -> str:
        if not isinstance(value, str) or len(value) > self.max_chars or not value.isprintable():
            raise self.fail(value)
        return value


class PathKind(Kind):
    """A file system path, relative to the config file's directory; `~` is expanded.

    `empty` (if given) is what an empty string stands for; without it "" is refused.
    """

    def __init__(self, empty: Callable[[], Path] | None = None, empty_doc: str = "") -> None:
        self.empty = empty
        self.expected = "a path (relative to this file's directory, or absolute)"
        if empty is not None:
            self.expected = f'"" ({empty_doc}) or {self.expected}'

    def convert(self, value: Any, base: Path) -> Path:
        if isinstance(value, Path):
            value = str(value)
        if not isinstance(value, str) or "\0" in value:
            raise self.fail(value)
        if value == "":
            if self.empty is None:
                raise self.fail(value, "a path may not be empty")
            return self.empty()
        return Path(os.path.abspath(base / os.path.expanduser(value)))


_HOST_PORT = re.compile(r"\[(?P<ip6>[0-9A-Fa-f:.]+)\]:(?P<port6>[0-9]{1,5})|(?P<host>[^:\[\]@\s]+):(?P<port>[0-9]{1,5})")
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_PUBLIC_KEY_HEX = re.compile(r"[0-9A-Fa-f]{64}")


def split_host_port(text: str) -> tuple[str, int]:
    """Parse "host:port" ("[v6]:port" for IPv6); ValueError says what is wrong."""
    if not isinstance(text, str):
        raise ValueError("not a string")
    match = _HOST_PORT.fullmatch(text)
    if not match:
        raise ValueError('not of the form "host:port" (IPv6 as "[::1]:port")')
    if match["ip6"] is not None:
        host, port = match["ip6"], int(match["port6"])
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    else:
        host, port = match["host"], int(match["port"])
        if re.fullmatch(r"[0-9.]+", host):
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise ValueError(f"{host!r} is not an IPv4 address") from None
        elif len(host) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in host.split(".")):
            raise ValueError(f"{host!r} is not a valid host name")
    if port > 65535:
        raise ValueError(f"port {port} is above 65535")
    return host, port


def _is_unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


class HostPort(Kind):
    """An address to listen on (port 0 = any free port) or to reach a node at."""

    def __init__(self, *, dial: bool = False, allow_empty: bool = False, empty_doc: str = "") -> None:
        self.dial, self.allow_empty = dial, allow_empty
        low = 1 if dial else 0
        self.expected = f'"host:port" with a port in {low}..65535'
        if allow_empty:
            self.expected = f'"" ({empty_doc}) or {self.expected}'

    def convert(self, value: Any, base: Path) -> str:
        if not isinstance(value, str):
            raise self.fail(value)
        if value == "" and self.allow_empty:
            return value
        try:
            host, port = split_host_port(value)
        except ValueError as e:
            raise self.fail(value, str(e)) from None
        if self.dial and port == 0:
            raise self.fail(value, "port 0 cannot be dialled")
        if self.dial and _is_unspecified(host):
            raise self.fail(value, f"{host} means 'every interface'; other nodes cannot dial it")
        return value


def split_seed(text: str) -> tuple[bytes, str, int]:
    """Parse "<64 hex public key>@host:port" into (public key, host, port)."""
    key, at, address = text.partition("@")
    if not at:
        raise ValueError('missing "@" between the public key and host:port')
    if not _PUBLIC_KEY_HEX.fullmatch(key):
        raise ValueError(f"the public key must be 64 hex digits, got {len(key)} characters")
    host, port = split_host_port(address)
    if port == 0:
        raise ValueError("port 0 cannot be dialled")
    if _is_unspecified(host):
        raise ValueError(f"{host} means 'every interface'; it cannot be dialled")
    return bytes.fromhex(key), host, port


class Seed(Kind):
    expected = '"<64 hex digit node public key>@host:port"'

    def convert(self, value: Any, base: Path) -> str:
        if not isinstance(value, str):
            raise self.fail(value)
        try:
            split_seed(value)
        except ValueError as e:
            raise self.fail(value, str(e)) from None
        key, _, address = value.partition("@")
        return f"{key.lower()}@{address}"


class PublicKeyHex(Kind):
    expected = "a node public key of 64 hex digits"

    def convert(self, value: Any, base: Path) -> str:
        if not isinstance(value, str) or not _PUBLIC_KEY_HEX.fullmatch(value):
            raise self.fail(value)
        return value.lower()


class Address(Kind):
    """A peerledger address; "" means the node's default wallet."""

    expected = '"" (the node\'s default wallet) or a peerledger address ("pl" + 39 characters)'

    def convert(self, value: Any, base: Path) -> str:
        if not isinstance(value, str):
            raise self.fail(value)
        if value == "":
            return value
        try:
            address_from_text(value)
        except ChainError as e:
            raise self.fail(value, _address_reason(value, e)) from None
        return value


def _address_reason(value: Any, error: ChainError) -> str:
    """chain.keys' reason without the repeated value, with a hint at the usual cause."""
    reason = error.message.removeprefix(repr(value)).strip() if isinstance(value, str) else error.message
    return reason if "mistyped" in reason else f"{reason} (mistyped?)"


class ListOf(Kind):
    def __init__(self, item: Kind, what: str) -> None:
        self.item = item
        self.expected = f"a list of {what}"

    def convert(self, value: Any, base: Path) -> tuple[Any, ...]:
        if not isinstance(value, (list, tuple)):  # tuples: settings built in memory
            raise self.fail(value)
        out: list[Any] = []
        for number, raw in enumerate(value, 1):
            try:
                item = self.item.convert(raw, base)
            except _Invalid as e:
                raise _Invalid(f"entry {number}: {e}") from None
            if item in out:
                raise _Invalid(f"entry {number}: {_show(raw)} is listed twice")
            out.append(item)
        return tuple(out)


# --------------------------------------------------------------------------- the schema


@dataclass(frozen=True, slots=True)
class Spec:
    """One setting: its kind, its default as written in TOML, and its one-line doc."""

    kind: Kind
    default: Any
    doc: str


def _setting(kind: Kind, default: Any, doc: str, *, python_default: bool = True) -> Any:
    spec = Spec(kind, default, doc)
    if not python_default:  # paths: resolved against the config file, so no fixed default
        return field(metadata={"spec": spec})
    return field(default=kind.convert(default, Path("/")), metadata={"spec": spec})


def default_genesis_path() -> Path:
    """The embedded default genesis spec (PoW, "peerledger-local")."""
    return Path(__file__).resolve().parent / "defaults" / "genesis.toml"


_KW = dict(frozen=True, slots=True, kw_only=True)


@dataclass(**_KW)
class NodeSettings:
    name: str = _setting(Text(64), "", "this node's name in logs and the API; empty: the host name")
    data_dir: Path = _setting(PathKind(), "data", "ledger, keys and peer book; relative to this file", python_default=False)
    genesis: Path = _setting(
        PathKind(default_genesis_path, "the embedded default genesis"),
        "",
        "genesis spec file of the network to join; empty: the embedded default",
        python_default=False,
    )
    log_level: str = _setting(Choice("DEBUG", "INFO", "WARNING", "ERROR"), "INFO", "DEBUG, INFO, WARNING or ERROR")


@dataclass(**_KW)
class NetworkSettings:
    enabled: bool = _setting(Bool(), True, "false: no peer connections at all (a lone node)")
    listen: str = _setting(HostPort(), "0.0.0.0:9700", "host:port to accept peers on; port 0 picks a free port")
    advertise: str = _setting(
        HostPort(dial=True, allow_empty=True, empty_doc="do not advertise"),
        "",
        "host:port other nodes should dial to reach us (behind NAT); empty: do not advertise",
    )
    seeds: tuple[str, ...] = _setting(
        ListOf(Seed(), '"<64 hex public key>@host:port" strings'), [], "nodes to dial at start and to keep redialling"
    )
    allow_list: tuple[str, ...] = _setting(
        ListOf(PublicKeyHex(), "64 hex digit node public keys"), [], "only these node keys may connect; empty: anyone"
    )
    max_outbound: int = _setting(Int(0, 1024), 8, "connections we open")
    max_inbound: int = _setting(Int(0, 4096), 32, "connections we accept")
    handshake_timeout_s: float = _setting(Seconds(), 10.0, "a peer must complete the hello within this")
    ping_interval_s: float = _setting(Seconds(), 10.0, "ping an idle peer this often")
    peer_timeout_s: float = _setting(Seconds(), 30.0, "drop a peer silent this long; must exceed ping_interval_s")
    ban_threshold: int = _setting(Int(1), 100, "misbehaviour score at which a peer is banned")
    ban_seconds: int = _setting(Int(0), 3600, "how long a ban lasts")
    max_clock_offset_s: int = _setting(Int(0), 4200, "peer clock offsets beyond this are ignored for network time")


@dataclass(**_KW)
class StorageSettings:
    map_size_mb: int = _setting(
        Int(16, 1_048_576), 1024, "initial LMDB map size (grown when full); keep below 2048 on 32-bit Raspberry Pi OS"
    )
    sync: bool = _setting(Bool(), True, "flush every commit to disk; false risks losing the last blocks on power loss")


@dataclass(**_KW)
class MempoolSettings:
    max_bytes: int = _setting(Int(10_000), 16_000_000, "total size of pending transactions kept")
    min_fee: int = _setting(Int(0), 1, "transactions paying less are refused (units)")
    expiry_s: int = _setting(Int(1), 3600, "pending transactions older than this are dropped")
    max_per_sender: int = _setting(Int(1), 64, "pending transactions kept per sending account")


@dataclass(**_KW)
class ProducerSettings:
    enabled: bool = _setting(Bool(), True, "produce blocks (mine with PoW, stake with PoS)")
    workers: int = _setting(Int(0, 64), 1, "PoW mining processes; 0: enabled but mines nothing")
    reward_address: str = _setting(Address(), "", "where block rewards go; empty: the node's default wallet")
    chunk_nonces: int = _setting(Int(1000), 200_000, "nonces per worker chunk; smaller reacts faster to new tips")
    min_tx_age_ms: int = _setting(
        Int(0, 60_000), 300, "transactions that came this recently wait for a later block, which peers then have verified"
    )


@dataclass(**_KW)
class ValidationSettings:
    workers: int = _setting(Int(0, 64), 2, "processes for large signature batches; 0: verify in the node process")
    batch_min: int = _setting(Int(1), 256, "batches at least this large go to the process pool")
    cache_size: int = _setting(Int(0), 200_000, "verified transaction ids remembered")


@dataclass(**_KW)
class ApiSettings:
    enabled: bool = _setting(Bool(), True, "serve the local HTTP JSON API")
    listen: str = _setting(HostPort(), "127.0.0.1:9701", "host:port of the API; keep it on loopback unless needed")
    max_body_bytes: int = _setting(Int(1024, 10_000_000), 65536, "largest request body accepted")


@dataclass(**_KW)
class NotificationsSettings:
    enabled: bool = _setting(Bool(), False, "publish new blocks, transactions and reorganisations on a zmq PUB socket")
    listen: str = _setting(HostPort(), "127.0.0.1:9702", "host:port of the PUB socket; keep it on loopback unless needed")
    high_water_mark: int = _setting(
        Int(1, 1_000_000), 1000, "messages queued per subscriber; beyond, a slow subscriber misses some (a gap)"
    )


@dataclass(**_KW)
class Settings:
    """Everything a node is configured with; `source` is the absolute path of its file."""

    node: NodeSettings
    network: NetworkSettings
    storage: StorageSettings
    mempool: MempoolSettings
    producer: ProducerSettings
    validation: ValidationSettings
    api: ApiSettings
    notifications: NotificationsSettings
    source: Path


_SECTIONS: dict[str, type] = {f.name: f.type for f in dataclasses.fields(Settings) if f.name != "source"}


def schema() -> dict[str, dict[str, Spec]]:
    """{section: {key: Spec}} in file order: the one declaration of the node config."""
    return {
        name: {f.name: f.metadata["spec"] for f in dataclasses.fields(cls)} for name, cls in _SECTIONS.items()
    }


# --------------------------------------------------------------------------- loading settings


def _read_toml(path: str | Path) -> dict[str, Any]:
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(path, "", f"file not found (looked for {os.path.abspath(path)})") from None
    except IsADirectoryError:
        raise ConfigError(path, "", "is a directory, not a TOML file") from None
    except OSError as e:
        raise ConfigError(path, "", f"cannot read the file: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(path, "", f"not UTF-8 text (line {line})", line) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        message = str(e)
        where = re.search(r"\s*\(at line (\d+), column (\d+)\)$", message)
        if where:
            line = int(where[1])
            detail = message[: where.start()]
            raise ConfigError(path, "", f"TOML syntax error at line {line}, column {where[2]}: {detail}", line) from None
        raise ConfigError(path, "", f"TOML syntax error: {message}") from None


def _suggest(word: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def load_settings(path: str | Path) -> Settings:
    """Read and check a node's TOML file. Raises ConfigError; writes nothing."""
    return settings_from_dict(_read_toml(path), Path(path))


def settings_from_dict(data: Mapping[str, Any], source: str | Path) -> Settings:
    """Check settings already parsed (or built in memory); paths resolve against source's directory."""
    source = Path(source)
    base = Path(os.path.abspath(source)).parent
    specs = schema()
    owners: dict[str, list[str]] = {}
    for section, keys in specs.items():
        for key in keys:
            owners.setdefault(key, []).append(section)

    if not isinstance(data, Mapping):
        raise ConfigError(source, "", f"expected a table of [sections], got {_show(data)}")
    for name, value in data.items():
        if name in specs:
            if not isinstance(value, Mapping):
                raise ConfigError(source, f"[{name}]", f"expected a [{name}] table, got {_show(value)}")
        elif isinstance(value, Mapping):
            close = difflib.get_close_matches(name, list(specs), n=1, cutoff=0.6)
            hint = f"; did you mean [{close[0]}]?" if close else f" (sections: {', '.join(specs)})"
            raise ConfigError(source, f"[{name}]", "unknown section" + hint)
        elif name in owners:
            where = " or ".join(f"[{s}]" for s in owners[name])
            raise ConfigError(source, name, f"a key outside any section; it belongs in {where}")
        else:
            sections_list = ", ".join(f"[{s}]" for s in specs)
            raise ConfigError(source, name, f"unknown key outside any section (settings go in {sections_list})")

    sections: dict[str, Any] = {}
    for section, keys in specs.items():
        raw = data.get(section, {})
        for key in raw:
            if key not in keys:
                hint = _suggest(key, list(keys))
                if not hint and key in owners:
                    hint = "; it belongs in " + " or ".join(f"[{s}]" for s in owners[key])
                raise ConfigError(source, f"[{section}] {key}", "unknown key" + hint)
        values = {}
        for key, spec in keys.items():
            value = raw.get(key, spec.default)
            try:
                values[key] = spec.kind.convert(value, base)
            except _Invalid as e:
                raise ConfigError(source, f"[{section}] {key}", str(e)) from None
        sections[section] = _SECTIONS[section](**values)

    settings = Settings(**sections, source=Path(os.path.abspath(source)))
    _check_together(settings, source)
    return settings


def _check_together(s: Settings, source: Path) -> None:
    """Rules that involve more than one key."""
    net = s.network
    if net.peer_timeout_s <= net.ping_interval_s:
        raise ConfigError(
            source,
            "[network] peer_timeout_s",
            f"expected a number of seconds > ping_interval_s ({net.ping_interval_s:g}), got {net.peer_timeout_s:g}",
        )
    if s.notifications.enabled and not net.enabled:
        raise ConfigError(
            source,
            "[notifications] enabled",
            "needs [network] enabled = true (the network's socket thread publishes them)",
        )
    listeners = [
        (f"[{section}] listen", getattr(s, section).listen)
        for section in ("network", "api", "notifications")
        if getattr(s, section).enabled
    ]
    for number, (key, address) in enumerate(listeners):
        host, port = split_host_port(address)
        for earlier_key, earlier in listeners[:number]:
            earlier_host, earlier_port = split_host_port(earlier)
            overlap = host == earlier_host or _is_unspecified(host) or _is_unspecified(earlier_host)
            if port == earlier_port != 0 and overlap:
                raise ConfigError(
                    source, key, f"port {port} is also {earlier_key} ({_show(earlier)}); give them different ports"
                )


# --------------------------------------------------------------------------- rendering


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str):
        # JSON escapes quotes, backslashes and control characters as TOML does, except DEL.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def render_settings(settings: Settings) -> str:
    """The effective configuration as TOML: every key with its resolved value."""
    lines = [f"# Effective configuration read from {settings.source}, with every default filled in."]
    for section, keys in schema().items():
        values = getattr(settings, section)
        lines += ["", f"[{section}]"]
        for key, spec in keys.items():
            lines += [f"# {spec.doc}", f"{key} = {_toml_value(getattr(values, key))}"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- genesis specs

_ENTRY_LISTS = ("allocations", "stakes")
_GENESIS_FIELDS = {
    f.name: f for f in dataclasses.fields(ChainParams) if f.name not in _ENTRY_LISTS and f.name != "network_id"
}


def load_genesis(path: str | Path) -> ChainParams:
    """Read and check a genesis spec. Raises ConfigError naming the file; writes nothing."""
    return genesis_from_dict(_read_toml(path), Path(path))


def genesis_from_dict(data: Mapping[str, Any], source: str | Path) -> ChainParams:
    """ChainParams from a parsed genesis spec: top-level keys are ChainParams fields."""
    source = Path(source)
    if not isinstance(data, Mapping):
        raise ConfigError(source, "", f"expected a table, got {_show(data)}")
    known = [*_GENESIS_FIELDS, *_ENTRY_LISTS]
    for key in data:
        if key == "network_id":
            raise ConfigError(source, key, "is derived from the spec (its hash) and cannot be set; remove it")
        if key not in known:
            raise ConfigError(source, key, "unknown key" + _suggest(key, known))

    values: dict[str, Any] = {}
    for name, f in _GENESIS_FIELDS.items():
        expected = "a string" if f.type in ("str", str) else "an integer"
        if name not in data:
            if f.default is dataclasses.MISSING:
                raise ConfigError(source, name, f"missing: a genesis spec must set it ({expected})")
            continue
        value = data[name]
        good = isinstance(value, str) if expected == "a string" else isinstance(value, int) and not isinstance(value, bool)
        if not good:
            raise ConfigError(source, name, f"expected {expected}, got {_show(value)}")
        values[name] = value

    for label in _ENTRY_LISTS:  # an address may be both allocated and staked, but not twice in one list
        values[label] = tuple(_genesis_entries(data.get(label, []), label, source))

    try:
        return ChainParams(**values)
    except ChainError as e:
        key, message = "", e.message
        for name in known:
            if message.startswith(f"{name} must "):
                key, message = name, message[len(name) + 1 :]
                break
            if message.startswith(f"{name}:"):
                key, message = name, message[len(name) + 1 :].strip()
                break
            if message.startswith(f"{name} "):
                key = name
                break
        if key in values and "got" not in message and " not " not in message:
            message += f" (got {_show(values[key])})"
        raise ConfigError(source, key, message) from None


def _genesis_entries(entries: Any, label: str, source: Path) -> list[tuple[bytes, int]]:
    if not isinstance(entries, list):
        raise ConfigError(source, label, f"expected [[{label}]] tables of address and amount, got {_show(entries)}")
    out = []
    seen: dict[bytes, str] = {}
    for number, entry in enumerate(entries, 1):
        where = f"[[{label}]] entry {number}"
        if not isinstance(entry, Mapping):
            raise ConfigError(source, where, f"expected a table with address and amount, got {_show(entry)}")
        for key in entry:
            if key not in ("address", "amount"):
                raise ConfigError(source, f"{where} {key}", "unknown key" + _suggest(key, ["address", "amount"]))
        for key in ("address", "amount"):
            if key not in entry:
                raise ConfigError(source, where, f"missing {key}")
        text, amount = entry["address"], entry["amount"]
        try:
            address = address_from_text(text)
        except ChainError as e:
            reason = _address_reason(text, e)
            raise ConfigError(
                source, f"{where} address", f'expected a peerledger address ("pl" + 39 characters), got {_show(text)}; {reason}'
            ) from None
        if not isinstance(amount, int) or isinstance(amount, bool) or not 0 < amount <= MAX_AMOUNT:
            raise ConfigError(source, f"{where} amount", f"expected an integer in 1..{MAX_AMOUNT} (units), got {_show(amount)}")
        if address in seen:
            raise ConfigError(source, f"{where} address", f"{text} is already listed in {seen[address]}")
        seen[address] = where
        out.append((address, amount))
    return out
