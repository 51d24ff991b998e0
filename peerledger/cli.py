"""The `peerledger` command.

    peerledger init --config FILE          create the data directory, node key and default wallet
    peerledger run --config FILE           run the node in the foreground until SIGINT/SIGTERM
    peerledger status --config FILE        one screen about the running node (--watch: live)
    peerledger peers --config FILE         the node's peers: address, height, latency, score, bans
    peerledger backup --config FILE DEST   a consistent copy of the running node's ledger
    peerledger restore --config FILE DIR   put a backup in place of a stopped node's ledger
    peerledger wallet new|address|balance|send --config FILE ...
    peerledger config check [FILE]         validate a node config (and its genesis spec)
    peerledger config show [FILE]          the effective configuration, defaults filled in
    peerledger devnet                      a small local network of real node processes

`--config` may be omitted when PEERLEDGER_CONFIG names the file. Errors are one line on
stderr, without a traceback; the exit status is 0 on success, 1 when something failed at
run time and 2 when the command or its configuration is wrong.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from chain.errors import ChainError
from chain.keys import ZERO_ADDRESS, address_from_text, address_to_text
from chain.params import ChainParams
from chain.tx import BOND, TRANSFER, UNBOND, sign_tx
from peerledger import console, keyfiles
from peerledger.client import ApiClient, ApiClientError
from peerledger.config import ConfigError, Settings, load_genesis, load_settings, render_settings, split_host_port
from transport.loop import TransportError

log = logging.getLogger("peerledger")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
PASSPHRASE_ENV = "PEERLEDGER_PASSPHRASE"


class CliError(Exception):
    def __init__(self, message: str, status: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.status = status


# --- shared helpers ---------------------------------------------------------------------------


def _config_path(args: argparse.Namespace) -> Path:
    path = args.config or os.environ.get("PEERLEDGER_CONFIG")
    if not path:
        raise CliError("no configuration: pass --config FILE or set PEERLEDGER_CONFIG", EXIT_USAGE)
    return Path(path)


def _load(args: argparse.Namespace) -> tuple[Settings, ChainParams]:
    settings = load_settings(_config_path(args))
    return settings, load_genesis(settings.node.genesis)


def _client(args: argparse.Namespace, settings: Settings | None = None) -> ApiClient:
    if getattr(args, "api", None):
        host, port = split_host_port(args.api)
    else:
        settings = settings or load_settings(_config_path(args))
        host, port = split_host_port(settings.api.listen)
    return ApiClient(host, port)


def _passphrase(confirm: bool) -> str | None:
    if PASSPHRASE_ENV in os.environ:
        return os.environ[PASSPHRASE_ENV]
    if not sys.stdin.isatty():
        raise CliError(f"a passphrase is needed: set {PASSPHRASE_ENV} or run in a terminal")
    first = getpass.getpass("wallet passphrase: ")
    if confirm and getpass.getpass("repeat passphrase: ") != first:
        raise CliError("the passphrases differ")
    return first


def _print(document: Any, as_json: bool, text: str) -> None:
    print(json.dumps(document, indent=2) if as_json else text)


# --- init and run ---------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    from storage.store import Store

    if args.keys_only:
        return _init_keys(load_settings(_config_path(args)), args.encrypt)
    settings, params = _load(args)
    data_dir = settings.node.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    created = []
    if not (data_dir / keyfiles.NODE_KEY_FILE).exists():
        keyfiles.create_node_key(data_dir)
        created.append("node key")
    if not keyfiles.wallet_exists(data_dir, keyfiles.DEFAULT_WALLET):
        keyfiles.create_wallet(data_dir, keyfiles.DEFAULT_WALLET, _passphrase(True) if args.encrypt else None)
        created.append("default wallet")
    store = Store.open(data_dir, params, map_size=settings.storage.map_size_mb << 20, sync=settings.storage.sync)
    store.close()
    public, _ = keyfiles.load_node_key(data_dir)
    address = keyfiles.wallet_address(data_dir, keyfiles.DEFAULT_WALLET)
    print(f"data directory  {data_dir}" + ("" if created else " (already initialised)"))
    print(f"network         {params.name} {params.network_id.hex()}")
    print(f"node id         {public.hex()}")
    print(f"default wallet  {address_to_text(address)}")
    host, port = split_host_port(settings.network.advertise or settings.network.listen)
    if host in ("0.0.0.0", "::"):
        host = "<this host's address>"
    print(f"peer address    {public.hex()}@{host}:{port}   (nodes that should dial you list this in seeds)")
    return EXIT_OK


def _init_keys(settings: Settings, encrypt: bool) -> int:
    """`init --keys-only`: the node key and default wallet, no ledger, so no genesis spec is
    needed yet (a cluster's genesis names the stakers' addresses, made here first)."""
    data_dir = settings.node.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    if not (data_dir / keyfiles.NODE_KEY_FILE).exists():
        keyfiles.create_node_key(data_dir)
    if not keyfiles.wallet_exists(data_dir, keyfiles.DEFAULT_WALLET):
        keyfiles.create_wallet(data_dir, keyfiles.DEFAULT_WALLET, _passphrase(True) if encrypt else None)
    public, _ = keyfiles.load_node_key(data_dir)
    print(f"data directory  {data_dir}")
    print(f"node id         {public.hex()}")
    print(f"default wallet  {address_to_text(keyfiles.wallet_address(data_dir, keyfiles.DEFAULT_WALLET))}")
    print("no ledger yet: run `peerledger init` again once the genesis spec is in place")
    return EXIT_OK


def _reward_address(settings: Settings) -> bytes:
    if settings.producer.reward_address:
        return address_from_text(settings.producer.reward_address)
    return keyfiles.wallet_address(settings.node.data_dir, keyfiles.DEFAULT_WALLET)


def _staking_key(settings: Settings) -> Any:
    """On Proof of Stake the node signs blocks with its default wallet's key."""
    data_dir = settings.node.data_dir
    encrypted = keyfiles.wallet_is_encrypted(data_dir, keyfiles.DEFAULT_WALLET)
    if encrypted and PASSPHRASE_ENV not in os.environ:
        raise CliError(
            f"staking needs the default wallet's key, which is encrypted: set {PASSPHRASE_ENV} "
            f"(or set [producer] enabled = false to run without staking)"
        )
    return keyfiles.load_wallet(data_dir, keyfiles.DEFAULT_WALLET, os.environ.get(PASSPHRASE_ENV) if encrypted else None)


def cmd_run(args: argparse.Namespace) -> int:
    from actors.node import Node
    from peerledger.api import Api, ApiServer
    from peerledger.logs import setup_logging

    settings, params = _load(args)
    setup_logging(settings.node.log_level, settings.node.name)
    public, secret = keyfiles.load_node_key(settings.node.data_dir)
    staking_key = _staking_key(settings) if params.consensus == "pos" and settings.producer.enabled else None
    node = Node(
        settings,
        params,
        reward_address=_reward_address(settings),
        node_keys=(public, secret),
        staking_key=staking_key,
    )

    def on_signal(signum: int, _frame: Any) -> None:
        node.request_stop(f"received {signal.Signals(signum).name}")

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    api_server = None
    cookie = ""
    try:
        node.start()
        if settings.api.enabled:
            host, port = split_host_port(settings.api.listen)
            api = Api(node, public, settings.node.name)
            api.admin_token = cookie = keyfiles.write_cookie(settings.node.data_dir)
            api_server = ApiServer(api, host, port, settings.api.max_body_bytes)
            api_server.start()
            log.info("api listening address=%s:%d", host, api_server.port)
        while not node.wait(0.5):
            pass
        log.info("stopping reason=%s", json.dumps(node.stop_reason))
    finally:
        if api_server is not None:
            api_server.stop()
        if cookie:
            keyfiles.remove_cookie(settings.node.data_dir, cookie)
        node.stop()
    return EXIT_OK if node.stop_reason.startswith("received") else EXIT_FAILED


# --- status and wallet ------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.json:
        _print(client.status(), True, "")
        return EXIT_OK
    if not args.watch:
        print(console.status_screen(client.status(), client.peers(), int(time.time() * 1000)))
        return EXIT_OK
    try:  # Ctrl-C is how a watch ends, whatever it interrupts
        while True:
            screen = console.status_screen(client.status(), client.peers(), int(time.time() * 1000))
            if sys.stdout.isatty():
                sys.stdout.write("\x1b[H\x1b[2J")  # home, clear: one screen redrawn in place
            print(screen + f"\n\n(every {args.watch:g} s; Ctrl-C to quit)", flush=True)
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return EXIT_OK


def cmd_peers(args: argparse.Namespace) -> int:
    peers = _client(args).peers()
    _print(peers, args.json, console.peers_table(peers, int(time.time() * 1000)))
    return EXIT_OK


def cmd_backup(args: argparse.Namespace) -> int:
    from storage.store import BACKUP_DATA

    settings = load_settings(_config_path(args))
    client = _client(args, settings)
    client.admin_token = keyfiles.read_cookie(settings.node.data_dir)
    dest = Path(os.path.abspath(args.dest))
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise CliError(f"{dest} already exists and is not an empty directory; choose a new path")
    data_file = dest / BACKUP_DATA

    def written() -> int:
        return data_file.stat().st_size if data_file.exists() else 0

    info = console.run_with_progress(lambda: client.backup(str(dest), args.timeout), written, "backing up")
    if not (dest / BACKUP_DATA).exists():
        raise CliError(
            f"the node wrote the backup to {dest}, but it is not visible here: a node run by systemd with "
            f"PrivateTmp has its own /tmp. Back up to a directory both can see, e.g. /var/backups/peerledger/..."
        )
    text = (
        f"backup of {info['network']} at height {info['height']} (tip {info['tip'][:16]}) written to {dest}: "
        f"{console.size(info['bytes'])} in {info['seconds']:.1f} s"
    )
    _print(info, args.json, text)
    return EXIT_OK


def cmd_restore(args: argparse.Namespace) -> int:
    from storage.store import restore_backup

    settings, params = _load(args)
    data_dir = settings.node.data_dir
    with console.Progress("restoring") as progress:
        info = restore_backup(args.backup, data_dir, params, force=args.force, progress=progress.update)
    created = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(info.created_ms / 1000))
    print(f"restored {info.network} at height {info.height} (tip {info.tip[:16]}, backed up {created}) "
          f"into {data_dir}")
    if not (data_dir / keyfiles.NODE_KEY_FILE).exists():
        print("this data directory has no node key yet: run `peerledger init` (it keeps the restored ledger)")
    print("start the node: it catches up with its peers from there")
    return EXIT_OK


def cmd_wallet(args: argparse.Namespace) -> int:
    settings = load_settings(_config_path(args))
    data_dir = settings.node.data_dir
    if args.wallet_command == "new":
        key = keyfiles.create_wallet(data_dir, args.name, _passphrase(True) if args.encrypt else None)
        print(address_to_text(key.address))
        return EXIT_OK
    if args.wallet_command == "address":
        print(address_to_text(keyfiles.wallet_address(data_dir, args.name)))
        return EXIT_OK
    client = _client(args, settings)
    if args.wallet_command == "balance":
        address = args.address or address_to_text(keyfiles.wallet_address(data_dir, args.name))
        account = client.account(address)
        _print(account, args.json, f"{account['address']}  balance {account['balance']}  nonce {account['nonce']}")
        return EXIT_OK
    # send, bond, unbond: sign one transaction and submit it
    kind = {"send": TRANSFER, "bond": BOND, "unbond": UNBOND}[args.wallet_command]
    recipient = address_from_text(args.to) if kind == TRANSFER else ZERO_ADDRESS
    passphrase = _passphrase(False) if keyfiles.wallet_is_encrypted(data_dir, args.name) else None
    key = keyfiles.load_wallet(data_dir, args.name, passphrase)
    network_id = bytes.fromhex(client.status()["network_id"])
    nonce = args.nonce if args.nonce is not None else client.account(address_to_text(key.address))["next_nonce"]
    tx = sign_tx(key, network_id, kind=kind, nonce=nonce, fee=args.fee, recipient=recipient, amount=args.amount)
    txid = client.submit(tx.raw)
    print(txid)
    if args.wait:
        deadline = time.monotonic() + args.wait
        while time.monotonic() < deadline:
            try:
                if client.tx(txid).get("status") == "confirmed":
                    print("confirmed", file=sys.stderr)
                    return EXIT_OK
            except ApiClientError as e:
                if e.code != "not_found":
                    raise
            time.sleep(0.5)
        raise CliError(f"transaction {txid} not confirmed within {args.wait:g} s")
    return EXIT_OK


# --- config -----------------------------------------------------------------------------------


def cmd_config(args: argparse.Namespace) -> int:
    if args.config_command == "check":
        path = Path(args.file) if args.file else _config_path(args)
        settings = load_settings(path)
        params = load_genesis(settings.node.genesis)
        for warning in config_warnings(settings):
            print(f"warning: {warning}", file=sys.stderr)
        print(f"{path}: ok (network {params.name}, consensus {params.consensus}, id {params.network_id.hex()[:16]})")
        return EXIT_OK
    settings = load_settings(Path(args.file) if args.file else _config_path(args))
    print(render_settings(settings), end="")
    return EXIT_OK


def config_warnings(settings: Settings) -> list[str]:
    """Valid settings that will still not do what the operator most likely wants."""
    net, warnings = settings.network, []
    own = ""
    if (settings.node.data_dir / keyfiles.NODE_KEY_FILE).exists():
        try:
            own = keyfiles.load_node_key(settings.node.data_dir)[0].hex()
        except (keyfiles.KeyFileError, OSError):
            pass
    seed_keys = [seed.partition("@")[0] for seed in net.seeds]
    if net.allow_list:
        for seed in net.seeds:
            if seed.partition("@")[0] not in net.allow_list:
                warnings.append(f"[network] seeds: {seed[:16]}... is not in allow_list: the connection will be refused")
        if own and own not in net.allow_list:
            warnings.append(f"[network] allow_list does not list this node's own id {own[:16]}...: "
                            f"nodes sharing this list will refuse it")
    if own and own in seed_keys:
        warnings.append(f"[network] seeds lists this node itself ({own[:16]}...)")
    if settings.api.enabled:
        host, _ = split_host_port(settings.api.listen)
        if host not in ("127.0.0.1", "::1", "localhost"):
            warnings.append(f"[api] listen {settings.api.listen} is reachable from other machines: anyone who "
                            f"reaches it can read the ledger and submit transactions")
    if sys.maxsize < 2**32 and settings.storage.map_size_mb >= 2048:
        warnings.append("[storage] map_size_mb is 2048 or more on a 32-bit system: the map is kept below 2 GiB")
    return warnings


def cmd_devnet(args: argparse.Namespace) -> int:
    from peerledger.devnet import run_devnet

    return run_devnet(args)


# --- argument parsing -------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="peerledger", description="A peer-to-peer ledger node.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", "-c", help="node TOML file (default: $PEERLEDGER_CONFIG)")
        return p

    def with_api(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--api", help="host:port of the node's API (default: [api] listen of the config)")
        p.add_argument("--json", action="store_true", help="print JSON")
        return p

    p = with_config(commands.add_parser("init", help="create the data directory, node key and default wallet"))
    p.add_argument("--encrypt", action="store_true", help="protect the default wallet with a passphrase")
    p.add_argument("--keys-only", action="store_true",
                   help="only the node key and default wallet (before the genesis spec exists)")
    p.set_defaults(func=cmd_init)
    with_config(commands.add_parser("run", help="run the node until SIGINT or SIGTERM")).set_defaults(func=cmd_run)
    p = with_api(with_config(commands.add_parser("status", help="show the running node's state")))
    p.add_argument("--watch", type=float, nargs="?", const=2.0, default=0, metavar="SECONDS",
                   help="redraw every SECONDS (default 2) until Ctrl-C")
    p.set_defaults(func=cmd_status)
    with_api(with_config(commands.add_parser("peers", help="list the running node's peers and bans"))).set_defaults(
        func=cmd_peers
    )
    p = with_api(with_config(commands.add_parser("backup", help="copy the running node's ledger to DEST")))
    p.add_argument("dest", metavar="DEST", help="a new directory on the node's machine (the node writes it)")
    p.add_argument("--timeout", type=float, default=3600, metavar="SECONDS", help="give up after (default 3600)")
    p.set_defaults(func=cmd_backup)
    p = with_config(commands.add_parser("restore", help="put a backup in place of a stopped node's ledger"))
    p.add_argument("backup", metavar="BACKUP", help="a directory written by `peerledger backup`")
    p.add_argument("--force", action="store_true", help="replace a ledger that holds blocks")
    p.set_defaults(func=cmd_restore)

    wallet = commands.add_parser("wallet", help="keys, balances and payments")
    wallet_commands = wallet.add_subparsers(dest="wallet_command", required=True, metavar="WALLET_COMMAND")
    p = with_config(wallet_commands.add_parser("new", help="create a wallet key"))
    p.add_argument("--name", default="default")
    p.add_argument("--encrypt", action="store_true", help=f"protect it with a passphrase (or ${PASSPHRASE_ENV})")
    p = with_config(wallet_commands.add_parser("address", help="print a wallet's address"))
    p.add_argument("--name", default="default")
    p = with_api(with_config(wallet_commands.add_parser("balance", help="balance and nonce of a wallet")))
    p.add_argument("--name", default="default")
    p.add_argument("--address", help="any address instead of a local wallet")
    for command, what in (
        ("send", "sign and submit a transfer"),
        ("bond", "Proof of Stake: move balance into stake"),
        ("unbond", "Proof of Stake: start returning stake to balance (spendable after unbonding_delay blocks)"),
    ):
        p = with_api(with_config(wallet_commands.add_parser(command, help=what)))
        p.add_argument("--name", default="default", help="wallet that signs and pays the fee")
        if command == "send":
            p.add_argument("--to", required=True, help="recipient address")
        p.add_argument("--amount", required=True, type=int, help="amount in units (1 coin = 100000000 units)")
        p.add_argument("--fee", type=int, default=1000, help="fee in units (default 1000)")
        p.add_argument("--nonce", type=int, help="override the nonce (default: the next one the node expects)")
        p.add_argument("--wait", type=float, default=0, metavar="SECONDS", help="wait for confirmation")
    wallet.set_defaults(func=cmd_wallet)

    config = commands.add_parser("config", help="check or show a configuration")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="CONFIG_COMMAND")
    p = with_config(config_commands.add_parser("check", help="validate a node TOML file"))
    p.add_argument("file", nargs="?", help="the file (default: --config or $PEERLEDGER_CONFIG)")
    p = with_config(config_commands.add_parser("show", help="print the effective configuration"))
    p.add_argument("file", nargs="?", help="the file (default: --config or $PEERLEDGER_CONFIG)")
    config.set_defaults(func=cmd_config)

    devnet = commands.add_parser("devnet", help="run a local network of real node processes")
    devnet.add_argument("--nodes", type=int, default=3, help="number of nodes (default 3)")
    devnet.add_argument("--duration", type=float, default=60, help="seconds to run (default 60)")
    devnet.add_argument("--tx-rate", type=float, default=20, help="transactions per second (default 20)")
    devnet.add_argument("--consensus", choices=("pow", "pos"), default="pow")
    devnet.add_argument("--data-dir", help="keep node data here instead of a temporary directory")
    devnet.add_argument("--quiet", action="store_true", help="no live view, only the summary")
    devnet.set_defaults(func=cmd_devnet)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"peerledger: configuration error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except CliError as e:
        print(f"peerledger: {e}", file=sys.stderr)
        return e.status
    except ApiClientError as e:
        print(f"peerledger: {e.message} ({e.code})", file=sys.stderr)
        return EXIT_FAILED
    except (ChainError, keyfiles.KeyFileError, TransportError, OSError) as e:
        print(f"peerledger: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_FAILED
    except Exception as e:  # noqa: BLE001 - StoreError and friends: one line, no traceback
        name = type(e).__name__
        if name.startswith("Store") or name == "BackupError":
            print(f"peerledger: {e}", file=sys.stderr)
            if name == "StoreCorrupt":
                print("peerledger: restore a backup with `peerledger restore --force`, or move the data directory's "
                      "ledger/ aside and start the node again to sync the chain from its peers (README, "
                      "\"A damaged store\")", file=sys.stderr)
            return EXIT_FAILED
        raise


if __name__ == "__main__":
    sys.exit(main())
