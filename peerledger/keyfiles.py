"""Key files in the data directory: the node's CURVE identity and the wallets.

Every key file is created with mode 0600 and refused when others can read it, as ssh
does: a leaked wallet key is a loss nobody can undo. Wallet keys can be protected by a
passphrase (PKCS#8 with scrypt and AES-256-GCM); the address is kept beside the key in
clear, so the node can credit rewards to a wallet without ever unlocking it.

    <data_dir>/node.key               node public and secret CURVE keys (hex), 0600
    <data_dir>/wallets/<name>.pem     wallet private key (PKCS#8 PEM), 0600
    <data_dir>/wallets/<name>.address its text address
    <data_dir>/api.cookie             the API's admin token, new at every start, 0600 (as
                                      bitcoind's .cookie: whoever can read the data
                                      directory may administer the node)
"""

from __future__ import annotations

import json
import os
import re
import secrets
import stat
from pathlib import Path

from chain.keys import SigningKey, address_from_text, address_to_text
from transport.keys import generate_node_keypair, public_key_of

NODE_KEY_FILE = "node.key"
COOKIE_FILE = "api.cookie"
WALLET_DIR = "wallets"
DEFAULT_WALLET = "default"
_WALLET_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class KeyFileError(Exception):
    """A key file is missing, unsafe or unreadable; the message says what to do."""


def write_private(path: Path, data: bytes) -> None:
    """Create `path` with mode 0600, whole or not at all; never overwrite an existing key.

    The key is written to a temporary file, flushed, then linked into place: a power cut
    leaves either no key or a complete one, never an empty file that `init` would refuse
    to replace.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        raise KeyFileError(f"{path} already exists; refusing to overwrite a key")
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(temporary, path)  # fails if the key appeared meanwhile: no overwrite
        except FileExistsError:
            raise KeyFileError(f"{path} already exists; refusing to overwrite a key") from None
        _fsync_directory(path.parent)
    finally:
        temporary.unlink(missing_ok=True)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_private(path: Path) -> bytes:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise KeyFileError(f"{path} does not exist") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"{path} is accessible by other users (mode {stat.S_IMODE(mode):04o}); run `chmod 600 {path}`"
        )
    return path.read_bytes()


# --- node identity ----------------------------------------------------------------------------


def create_node_key(data_dir: Path) -> bytes:
    public, secret = generate_node_keypair()
    payload = json.dumps({"public": public.hex(), "secret": secret.hex()}).encode()
    write_private(data_dir / NODE_KEY_FILE, payload + b"\n")
    return public


def load_node_key(data_dir: Path) -> tuple[bytes, bytes]:
    path = data_dir / NODE_KEY_FILE
    if not path.exists():
        raise KeyFileError(f"{path} does not exist: initialise the node first with `peerledger init --config FILE`")
    try:
        record = json.loads(read_private(path))
        public, secret = bytes.fromhex(record["public"]), bytes.fromhex(record["secret"])
    except (ValueError, KeyError, TypeError):
        raise KeyFileError(f"{path} is not a valid node key file") from None
    if public_key_of(secret) != public:
        raise KeyFileError(f"{path}: the public key does not match the secret key")
    return public, secret


# --- the API's admin cookie --------------------------------------------------------------------


def write_cookie(data_dir: Path) -> str:
    """A fresh random admin token in <data_dir>/api.cookie (0600, replacing any left by an
    earlier run); answers it."""
    token = secrets.token_hex(32)
    path, tmp = data_dir / COOKIE_FILE, data_dir / (COOKIE_FILE + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.replace(tmp, path)
    return token


def read_cookie(data_dir: Path) -> str:
    """The running node's admin token; KeyFileError says what to do when it cannot be read."""
    path = data_dir / COOKIE_FILE
    try:
        token = read_private(path).decode().strip()
    except PermissionError:
        raise KeyFileError(f"cannot read {path}: run this command as the user the node runs as") from None
    except KeyFileError as e:
        if not path.exists():
            raise KeyFileError(f"{path} does not exist: is the node running with its API enabled?") from None
        raise KeyFileError(str(e)) from None
    if len(token) != 64:
        raise KeyFileError(f"{path} does not hold a token; restart the node to write a new one")
    return token


def remove_cookie(data_dir: Path, token: str) -> None:
    """Remove the cookie at stop, unless another run has replaced it meanwhile."""
    path = data_dir / COOKIE_FILE
    try:
        if path.read_text().strip() == token:
            path.unlink()
    except OSError:
        pass


# --- wallets ---------------------------------------------------------------------------------


def _wallet_paths(data_dir: Path, name: str) -> tuple[Path, Path]:
    if not _WALLET_NAME.fullmatch(name):
        raise KeyFileError(f"wallet name {name!r} may use letters, digits, '.', '_' and '-' only")
    folder = data_dir / WALLET_DIR
    return folder / f"{name}.pem", folder / f"{name}.address"


def create_wallet(data_dir: Path, name: str, passphrase: str | None) -> SigningKey:
    key_path, address_path = _wallet_paths(data_dir, name)
    if key_path.exists():
        raise KeyFileError(f"{key_path} already exists; refusing to overwrite a key")
    key = SigningKey.generate()
    # The address first: a wallet exists once its key does, and then its address is there.
    address_path.parent.mkdir(parents=True, exist_ok=True)
    address_path.write_text(address_to_text(key.address) + "\n")
    write_private(key_path, key.export_pkcs8(passphrase))
    return key


def wallet_exists(data_dir: Path, name: str) -> bool:
    return _wallet_paths(data_dir, name)[0].exists()


def wallet_is_encrypted(data_dir: Path, name: str) -> bool:
    return b"ENCRYPTED" in read_private(_wallet_paths(data_dir, name)[0])


def wallet_address(data_dir: Path, name: str) -> bytes:
    key_path, address_path = _wallet_paths(data_dir, name)
    if not key_path.exists():
        raise KeyFileError(f"no wallet named {name!r} in {key_path.parent}; create it with `peerledger wallet new`")
    try:
        return address_from_text(address_path.read_text().strip())
    except (OSError, ValueError) as e:
        raise KeyFileError(f"{address_path} is missing or damaged: {e}") from None


def load_wallet(data_dir: Path, name: str, passphrase: str | None) -> SigningKey:
    key_path, _ = _wallet_paths(data_dir, name)
    data = read_private(key_path)
    try:
        return SigningKey.import_pkcs8(data, passphrase)
    except (ValueError, IndexError, TypeError):
        if b"ENCRYPTED" in data:
            raise KeyFileError(f"cannot unlock {key_path}: wrong passphrase") from None
        raise KeyFileError(f"{key_path} is not a valid wallet key") from None
