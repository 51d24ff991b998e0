"""The node's local HTTP JSON API (stdlib http.server; no framework needed for six routes).

    GET  /status                 network, tip, height, state hash, peers, mempool, sync state
    GET  /blocks/{height|hash}   a main-chain block by height, or any stored block by hash
    GET  /txs/{id}               a confirmed or pending transaction
    GET  /accounts/{address}     balance, nonce, stake and the next nonce to use
    POST /txs                    submit a signed transaction: {"tx": "<hex>"} or raw bytes
    GET  /peers                  connected peers
    GET  /metrics                Prometheus text format (peerledger.metrics)
    GET  /                       the status page (peerledger/static/, served from memory)

Errors are JSON, `{"error": {"code": "...", "message": "..."}}`, with a stable code: the
chain's rejection codes (bad_encoding, bad_signature, wrong_nonce, insufficient_funds,
fee_too_low, mempool_full, ...) and not_found, bad_request, body_too_large,
method_not_allowed, busy, unauthorized, backup_failed.

It listens on loopback unless the TOML says otherwise. Bodies, paths and concurrent
connections are bounded, and every socket has a timeout, so a slow or hostile client
cannot pin the node's memory or threads.

Admin routes need the token the node writes at each start to <data_dir>/api.cookie
(mode 0600), sent as `Authorization: Bearer <token>`; without it they answer 401
`unauthorized` (with `WWW-Authenticate: Bearer`), before anything else is looked at:

    POST /admin/backup           {"path": "/abs/dir"}: a consistent copy of the ledger, made
                                 while the node runs (storage.store.Store.backup); answers
                                 its manifest (height, tip, bytes, sha256) once written
"""

from __future__ import annotations

import hmac
import json
import logging
import socket
import socketserver
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from importlib import resources
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from chain.block import Block
from chain.errors import ChainError, Code
from chain.keys import address_from_text, address_of, address_to_text
from chain.state import EMPTY
from chain.tx import Transaction
from peerledger import metrics

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 32
SOCKET_TIMEOUT_S = 10.0
MAX_PATH = 512
VERSION = "0.1.0"

# HTTP status of each rejection: malformed input 400, rule violations 422, overload 503.
_STATUS_OF = {
    Code.BAD_ENCODING: 400,
    Code.OVERSIZE: 400,
    Code.BAD_ADDRESS: 400,
    Code.MEMPOOL_FULL: 503,
    Code.DUPLICATE: 409,
}


# The status page: every file it needs, served by the node itself (no CDN), read once.
STATIC_FILES = {
    "index.html": "text/html; charset=utf-8",
    "status.js": "text/javascript; charset=utf-8",
    "status.css": "text/css; charset=utf-8",
}
# The page may load only what the node serves, and talk only to the node.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


@dataclass(frozen=True, slots=True)
class Raw:
    """An answer that is not JSON: bytes with their content type."""

    body: bytes
    content_type: str
    headers: tuple[tuple[str, str], ...] = ()


def load_static() -> dict[str, Raw]:
    folder = resources.files("peerledger") / "static"
    return {
        name: Raw((folder / name).read_bytes(), content_type, tuple(PAGE_HEADERS.items()))
        for name, content_type in STATIC_FILES.items()
    }


# Codes of the errors http.server itself answers (malformed request line or headers).
_HTTP_ERROR_CODES = {
    HTTPStatus.METHOD_NOT_ALLOWED: "method_not_allowed",
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE: "body_too_large",
}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def tx_json(tx: Transaction) -> dict[str, Any]:
    return {
        "id": tx.id.hex(),
        "kind": tx.kind,
        "from": address_to_text(address_of(tx.sender)),
        "to": address_to_text(tx.recipient) if any(tx.recipient) else None,
        "amount": tx.amount,
        "fee": tx.fee,
        "nonce": tx.nonce,
        "size": tx.size,
    }


def block_json(block: Block, confirmations: int | None) -> dict[str, Any]:
    h = block.header
    return {
        "hash": h.hash.hex(),
        "height": h.height,
        "prev_hash": h.prev_hash.hex(),
        "merkle_root": h.merkle_root.hex(),
        "timestamp_ms": h.timestamp_ms,
        "difficulty": h.difficulty,
        "producer": address_to_text(h.producer) if any(h.producer) else None,
        "proof": h.proof.hex(),
        "size": block.size,
        "confirmations": confirmations,
        "txs": [tx_json(tx) for tx in block.txs],
    }


class Api:
    """The routes, over a running `actors.node.Node` (reads the store, asks the actors)."""

    admin_token = ""  # what admin routes require (the cookie's token); empty: they are refused
    _backup_lock = threading.Lock()  # one backup at a time

    def __init__(self, node: Any, node_id: bytes = b"", node_name: str = "") -> None:
        self.node = node
        self.node_id = node_id
        self.node_name = node_name
        self.static = load_static()

    def status(self) -> dict[str, Any]:
        node = self.node
        tip = node.store.tip()
        mempool = node.mempool_info()
        producer = node.producer_stats()
        peers = node.peers() if hasattr(node, "peers") else []
        return {
            "network_id": node.params.network_id.hex(),
            "network": node.params.name,
            "consensus": node.params.consensus,
            "node_id": self.node_id.hex(),
            "name": self.node_name,
            "version": VERSION,
            "height": tip.height,
            "tip": tip.hash.hex(),
            "tip_time_ms": tip.timestamp_ms,
            "cumulative_weight": str(tip.weight),
            "state_hash": tip.state_hash,
            "tx_count": tip.tx_count,
            "peers": sum(1 for p in peers if p.get("ready")),  # handshaken sessions, not bans
            "syncing": node.syncing() if hasattr(node, "syncing") else False,
            # What sync is heading for: the heaviest header stored, and the best height a peer
            # announced at its handshake (None without peers).
            "best_header_height": node.store.best_header()[1].height,
            "best_peer_height": max((p["height"] for p in peers if p.get("ready") and p.get("height") is not None),
                                    default=None),
            "mempool_size": mempool["size"],
            "mempool_bytes": mempool["bytes"],
            "clock_offset_ms": node.clock.offset_ms,
            "producing": producer is not None,
            "hash_rate": round(producer["hash_rate"]) if producer else 0,
            "blocks_produced": producer["blocks"] if producer else 0,
        }

    def block(self, ident: str) -> dict[str, Any]:
        store = self.node.store
        if ident.isdigit() and len(ident) < 20:
            block_hash = store.hash_at(int(ident))
        else:
            block_hash = _parse_hash(ident, "block")
        block = store.block(block_hash) if block_hash else None
        if block is None:
            raise ApiError(404, "not_found", f"no block {ident}")
        tip = store.tip()
        on_main = store.hash_at(block.height) == block.hash
        return block_json(block, tip.height - block.height + 1 if on_main else 0)

    def tx(self, ident: str) -> dict[str, Any]:
        txid = _parse_hash(ident, "transaction id")
        store = self.node.store
        location = store.tx_location(txid)
        if location is not None:
            block_hash, height, position = location
            block = store.block(block_hash)
            body = tx_json(block.txs[position])
            body.update(
                status="confirmed",
                block_hash=block_hash.hex(),
                height=height,
                confirmations=store.tip().height - height + 1,
            )
            return body
        pending = self.node.pending_tx(txid) if hasattr(self.node, "pending_tx") else None
        if pending is not None:
            return dict(tx_json(pending), status="pending")
        raise ApiError(404, "not_found", f"no transaction {ident} on the main chain or in the mempool")

    def account(self, text: str) -> dict[str, Any]:
        try:
            address = address_from_text(text)
        except ChainError as e:
            raise ApiError(400, e.code.text, e.message) from None
        account = self.node.store.account(address) or EMPTY
        mempool = self.node.mempool_info(address)
        return {
            "address": address_to_text(address),
            "balance": account.balance,
            "nonce": account.nonce,
            "stake": account.stake,
            "unbonding": account.unbonding,
            "unbonding_height": account.unbonding_height,
            "next_nonce": mempool["next_nonce"],
        }

    def submit(self, body: bytes, content_type: str) -> dict[str, Any]:
        if content_type.startswith("application/json"):
            try:
                document = json.loads(body)
                raw = bytes.fromhex(document["tx"])
            except (ValueError, KeyError, TypeError):
                raise ApiError(400, "bad_request", 'expected a JSON object {"tx": "<hex of the signed transaction>"}')
        else:
            raw = body
        try:
            txid = self.node.submit_tx(raw)
        except ChainError as e:
            raise ApiError(_STATUS_OF.get(e.code, 422), e.code.text, e.message) from None
        return {"id": txid.hex()}

    def backup(self, body: bytes) -> dict[str, Any]:
        """POST /admin/backup: the copy is made in this request's thread, from a read snapshot."""
        from storage.store import BackupError, StoreError

        try:
            path = json.loads(body)["path"]
        except (ValueError, KeyError, TypeError):
            raise ApiError(400, "bad_request", 'expected a JSON object {"path": "<absolute directory>"}') from None
        if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
            raise ApiError(400, "bad_request", "path must be an absolute path on the node's machine")
        if not self._backup_lock.acquire(blocking=False):
            raise ApiError(409, "busy", "a backup is already being written; try again when it is done")
        try:
            started = time.monotonic()
            info = self.node.store.backup(path)
        except BackupError as e:
            raise ApiError(422, "backup_failed", str(e)) from None
        except StoreError as e:
            raise ApiError(500, "backup_failed", str(e)) from None
        finally:
            self._backup_lock.release()
        return dict(info.to_json(), path=path, seconds=round(time.monotonic() - started, 3))

    def peers(self) -> list[dict[str, Any]]:
        return self.node.peers() if hasattr(self.node, "peers") else []

    def metrics(self) -> Raw:
        return Raw(metrics.render(self.node, self.node_id, VERSION).encode(), metrics.CONTENT_TYPE)

    def page(self, name: str) -> Raw:
        try:
            return self.static[name]
        except KeyError:
            raise ApiError(404, "not_found", f"no file /static/{name}") from None


def _parse_hash(text: str, what: str) -> bytes:
    try:
        value = bytes.fromhex(text)
    except ValueError:
        value = b""
    if len(value) != 32:
        raise ApiError(400, "bad_request", f"{what} must be 64 hex digits")
    return value


class _Handler(BaseHTTPRequestHandler):
    server_version = f"peerledger/{VERSION}"
    protocol_version = "HTTP/1.1"
    timeout = SOCKET_TIMEOUT_S
    api: Api
    max_body: int

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("api %s %s", self.address_string(), format % args)

    def parse_request(self) -> bool:
        self._body_read = False
        return super().parse_request()

    def _unread_body(self) -> bool:
        """Whether the request announced a body that was not read (refused before reading)."""
        if self._body_read:
            return False
        length = (self.headers.get("Content-Length") or "0").strip()
        return self.headers.get("Transfer-Encoding") is not None or length != "0"

    def _send(self, status: int, document: Any, headers: tuple[tuple[str, str], ...] = ()) -> None:
        if isinstance(document, Raw):
            payload, content_type, headers = document.body, document.content_type, document.headers + headers
        else:
            payload, content_type = json.dumps(document, separators=(",", ":")).encode(), "application/json"
        self.send_response(status)
        if self._unread_body():  # on a kept-alive connection it would be read as the next request
            self.send_header("Connection", "close")
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def _error(self, error: ApiError) -> None:
        # RFC 9110: a 401 names the scheme that would be accepted.
        headers = (("WWW-Authenticate", 'Bearer realm="peerledger admin"'),) if error.status == 401 else ()
        self._send(error.status, {"error": {"code": error.code, "message": error.message}}, headers)

    def _route(self, method: str) -> None:
        try:
            if len(self.path) > MAX_PATH:
                raise ApiError(414, "bad_request", "path too long")
            parts = [p for p in urlsplit(self.path).path.split("/") if p]
            self._send(200, self._dispatch(method, parts))
        except ApiError as e:
            self._error(e)
        except TimeoutError:
            self._error(ApiError(503, "busy", "the node did not answer in time; try again"))
        except Exception as e:  # noqa: BLE001 - a bug must answer 500, not kill the server
            log.exception("api: internal error on %s %s", method, self.path)
            self._error(ApiError(500, "internal", f"internal error: {type(e).__name__}"))

    def _dispatch(self, method: str, parts: list[str]) -> Any:
        api = self.api
        if parts[:1] == ["admin"]:
            self._authorize()  # before anything else: no route or error says more
            if parts == ["admin", "backup"]:
                if method != "POST":
                    raise ApiError(405, "method_not_allowed", "use POST /admin/backup")
                return api.backup(self._body())
            raise ApiError(404, "not_found", f"no route {method} /{'/'.join(parts)}")
        if method == "GET":
            match parts:
                case ["status"]:
                    return api.status()
                case ["blocks", ident]:
                    return api.block(ident)
                case ["txs", ident]:
                    return api.tx(ident)
                case ["accounts", address]:
                    return api.account(address)
                case ["peers"]:
                    return api.peers()
                case ["metrics"]:
                    return api.metrics()
                case [] | ["index.html"]:
                    return api.page("index.html")
                case ["static", name]:
                    return api.page(name)
                case ["txs"]:
                    raise ApiError(405, "method_not_allowed", "use POST /txs to submit")
        elif method == "POST":
            match parts:
                case ["txs"]:
                    return api.submit(self._body(), self.headers.get("Content-Type", ""))
                case ["status"] | ["blocks", _] | ["txs", _] | ["accounts", _] | ["peers"] | ["metrics"] | []:
                    raise ApiError(405, "method_not_allowed", f"{'/'.join(parts)} is read-only")
        raise ApiError(404, "not_found", f"no route {method} /{'/'.join(parts)}")

    def _authorize(self) -> None:
        token = self.api.admin_token
        sent = self.headers.get("Authorization", "")
        scheme, _, value = sent.partition(" ")
        if not token or scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
            why = "no admin token was sent" if not sent else "the admin token is wrong"
            raise ApiError(401, "unauthorized", f"{why}: send 'Authorization: Bearer <token>' with the token "
                                                f"in <data_dir>/api.cookie (the peerledger CLI does)")

    def _body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise ApiError(411, "bad_request", "Content-Length is required")
        if int(length) > self.max_body:
            raise ApiError(413, "body_too_large", f"body of {length} bytes exceeds {self.max_body}")  # left unread
        body = self.rfile.read(int(length))
        self._body_read = True
        return body

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._route("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._route("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._error(ApiError(405, "method_not_allowed", "only GET and POST"))

    do_DELETE = do_PATCH = do_OPTIONS = do_PUT

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors http.server finds itself (request line, headers, unknown methods) are JSON
        with a stable code too, instead of its HTML page."""
        if code == HTTPStatus.NOT_IMPLEMENTED:  # a method with no do_* (HEAD, or any other word)
            code, message = HTTPStatus.METHOD_NOT_ALLOWED, "only GET and POST"
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "error"
        payload = json.dumps(
            {"error": {"code": _HTTP_ERROR_CODES.get(code, "bad_request"), "message": message or phrase}},
            separators=(",", ":"),
        ).encode()
        self.log_message("code %d, message %s", code, message or phrase)
        self.send_response(code, phrase)
        self.send_header("Connection", "close")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type) -> None:
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.address_family = family
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # http.server looks up the host's FQDN here: a reverse DNS query that stalls ~10 s on
        # a Pi whose name server is unreachable. The name is only cosmetic; skip it.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def process_request(self, request, client_address) -> None:  # noqa: ANN001
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # over the connection bound: refuse, don't queue
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:  # noqa: ANN001
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class ApiServer:
    def __init__(self, api: Api, host: str, port: int, max_body: int) -> None:
        handler = type("Handler", (_Handler,), {"api": api, "max_body": max_body})
        try:
            self._server = _Server((host, port), handler)
        except OSError as e:
            raise OSError(f"cannot listen for the API on {host}:{port}: {e.strerror}") from None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> ApiServer:
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.2,), name="api", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(2.0)
        self._server.server_close()
