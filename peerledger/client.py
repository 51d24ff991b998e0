"""A small client of the node's HTTP API, for the CLI, the devnet launcher and tests."""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from typing import Any

TIMEOUT_S = 10.0


class ApiClientError(Exception):
    """The node answered with an error (code, message) or could not be reached (code 'unreachable')."""

    def __init__(self, code: str, message: str, status: int = 0) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


class ApiClient:
    """`admin_token` (the node's <data_dir>/api.cookie) is sent with admin requests."""

    def __init__(self, host: str, port: int, timeout: float = TIMEOUT_S, admin_token: str = "") -> None:
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        self.base = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        self.timeout = timeout
        self.admin_token = admin_token

    def _request(self, method: str, path: str, body: bytes | None = None, content_type: str = "",
                 timeout: float | None = None) -> Any:
        request = urllib.request.Request(self.base + path, data=body, method=method)
        if content_type:
            request.add_header("Content-Type", content_type)
        if path.startswith("/admin/") and self.admin_token:
            request.add_header("Authorization", f"Bearer {self.admin_token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            try:
                error = json.loads(e.read())["error"]
                raise ApiClientError(error["code"], error["message"], e.code) from None
            except (ValueError, KeyError, TypeError):
                raise ApiClientError("http_error", f"HTTP {e.code} from {self.base}{path}", e.code) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise ApiClientError("unreachable", f"cannot reach the node's API at {self.base}: {reason}") from None
        except http.client.HTTPException as e:  # the node went away in the middle of its answer
            raise ApiClientError("unreachable", f"the node's API at {self.base} broke off its answer: {e!r}") from None
        except ValueError:
            raise ApiClientError("bad_response", f"{self.base}{path} did not answer JSON") from None

    def get(self, path: str) -> Any:
        return self._request("GET", path)

    def status(self) -> dict[str, Any]:
        return self.get("/status")

    def account(self, address: str) -> dict[str, Any]:
        return self.get(f"/accounts/{address}")

    def tx(self, txid: str) -> dict[str, Any]:
        return self.get(f"/txs/{txid}")

    def block(self, ident: str | int) -> dict[str, Any]:
        return self.get(f"/blocks/{ident}")

    def peers(self) -> list[dict[str, Any]]:
        return self.get("/peers")

    def submit(self, raw: bytes) -> str:
        body = json.dumps({"tx": raw.hex()}).encode()
        return self._request("POST", "/txs", body, "application/json")["id"]

    def backup(self, path: str, timeout: float) -> dict[str, Any]:
        """POST /admin/backup; answers once the backup is written (a large store takes minutes)."""
        body = json.dumps({"path": path}).encode()
        return self._request("POST", "/admin/backup", body, "application/json", timeout=timeout)
