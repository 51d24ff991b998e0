"""The status page at GET /, rendered by a real headless Chromium against real nodes.

Chromium comes from Debian (`apt-get install chromium`; .ci/run installs it). Without it
the page test is skipped with the reason, except under CI, where a missing browser fails.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import subprocess
import time

import pytest

from peerledger.api import STATIC_FILES
from tests.helpers import wait_until
from tests.nodes import P2P, REPO_ROOT

BROWSERS = ("chromium", "chromium-browser")
RENDER_TIMEOUT_S = 90.0
# Virtual time lets the page's fetches and timers finish before the DOM is dumped; the page
# refreshes every 3 s, so this covers its first load and a refresh or two.
VIRTUAL_TIME_MS = 8000


def browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    reason = "no headless Chromium on this machine (apt-get install chromium; .ci/run installs it)"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}: CI must have it")
    pytest.skip(reason)


def render(url: str, profile) -> str:
    """The DOM of `url` after its scripts ran, as Chromium serialises it."""
    command = [
        browser(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
        f"--user-data-dir={profile}", f"--virtual-time-budget={VIRTUAL_TIME_MS}", "--dump-dom", url,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=RENDER_TIMEOUT_S,
                            stdin=subprocess.DEVNULL, check=False)
    assert result.returncode == 0, f"chromium exited with {result.returncode}:\n{result.stderr[-3000:]}"
    return result.stdout


def get(node, path: str) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection(*node.api_address, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def test_status_page_shows_the_live_tip_and_the_peers(nodes, tmp_path):
    browser()  # skip (or fail under CI) before starting anything
    miner, follower = nodes.add_nodes(2, P2P)
    follower.config["producer"]["enabled"] = False
    follower.write_config()
    nodes.start(miner, follower)
    nodes.wait_ready_peers(follower, [miner])
    nodes.wait_ready_peers(miner, [follower])
    follower.wait_for_height(5, 60)

    # Freeze the chain (the miner's workers stopped; both nodes stay up and connected) so
    # that the tip the page shows can be compared with the node's.
    paused = miner.pause_workers()
    try:
        common = nodes.wait_converged([miner, follower], 30)

        def steady() -> bool:
            time.sleep(0.5)
            return follower.status()["tip"] == common["tip"] == miner.status()["tip"]

        wait_until(steady, 30, interval=0, message="the tip to stay put")
        started = time.monotonic()
        for node, peer in ((follower, miner), (miner, follower)):
            host, port = node.api_address
            dom = render(f"http://{host}:{port}/", tmp_path / f"profile-{node.name}")
            shown = re.search(r'id="tip" data-tip="([0-9a-f]{64})">([0-9a-f]{64})<', dom)
            assert shown, f"no tip on {node.name}'s page:\n{dom[:3000]}"
            status = node.status()
            assert shown.group(1) == shown.group(2) == status["tip"] == common["tip"]
            assert f'id="height">{status["height"]}<' in dom
            assert re.search(rf'class="node self" data-node-id="{node.node_id}"', dom), "this node is not drawn"
            assert re.search(rf'class="node" data-node-id="{peer.node_id}"', dom), f"{peer.name} is not drawn"
            assert f"<title>{peer.node_id} " in dom and f'title="{peer.node_id}"' in dom  # graph and list
            # The recent blocks, newest first, down from the tip.
            rows = re.findall(r"<tr><td>(\d+)</td><td><code title=\"([0-9a-f]{64})\">", dom)
            assert rows and int(rows[0][0]) == status["height"] and rows[0][1] == status["tip"], rows[:3]
            assert [int(h) for h, _ in rows] == list(range(status["height"], status["height"] - len(rows), -1))
            assert len(rows) == min(30, status["height"] + 1)
            assert node.client.block(int(rows[-1][0]))["hash"] == rows[-1][1]
            assert "<polyline" in dom, "no block interval chart"
            assert "did not answer" not in dom
        elapsed = time.monotonic() - started
    finally:
        miner.resume_workers(paused)
    print(f"\nstatus page: tip {common['tip'][:16]} at height {common['height']} and the peer shown on both "
          f"nodes' pages, rendered by Chromium in {elapsed:.1f} s")


def test_status_page_files_are_served_by_the_node_alone(nodes):
    node = nodes.start_node()
    status, headers, body = get(node, "/")
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    assert "script-src 'self'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    assert b'src="/static/status.js"' in body and b'href="/static/status.css"' in body
    for name, content_type in STATIC_FILES.items():
        status, headers, body = get(node, f"/static/{name}")
        assert status == 200 and headers["content-type"] == content_type
        assert body == (REPO_ROOT / "peerledger" / "static" / name).read_bytes()
        # Nothing from elsewhere: the only URL is SVG's namespace name, never fetched.
        assert set(re.findall(rb"https?://[^\s\"'`)]+", body)) <= {b"http://www.w3.org/2000/svg"}, name
    status, headers, body = get(node, "/static/../api.py")
    assert status == 404 and headers["content-type"] == "application/json"
    status, _, _ = get(node, "/static/nope.js")
    assert status == 404
    assert node.http("POST", "/", b"x")[0] == 405
    assert set(STATIC_FILES) == {p.name for p in (REPO_ROOT / "peerledger" / "static").iterdir()}
