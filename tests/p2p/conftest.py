"""Multi-node scenarios over real node processes.

`nodes` (tests/nodes.py) makes the nodes; `netlab` (tests/netlab.py) gives them network
namespaces whose links a test can cut. Ask for `netlab` before `nodes`, so that the nodes
are stopped before their namespaces go (the lab kills anything left in them anyway).
"""

from collections.abc import Iterator

import pytest

from tests.netlab import NetLab
from tests.nodes import nodes  # noqa: F401 - registers the fixture for this directory


@pytest.fixture
def netlab() -> Iterator[NetLab]:
    """A NetLab removed at teardown, whatever the test did; skipped (with the reason) where
    namespaces cannot be made (not root, no iproute2 or iptables)."""
    reason = NetLab.unavailable()
    if reason:
        pytest.skip(f"network namespaces unavailable: {reason}")
    lab = NetLab()
    try:
        yield lab
    finally:
        lab.close()
