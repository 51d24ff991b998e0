"""Proof of Stake networks of real node processes.

`nodes` (tests/nodes.py) makes the nodes, `netlab` (tests/netlab.py, the fixture of
tests/p2p) gives them network namespaces whose links a test can cut; tests/pos/posnet.py
turns them into stakers of one PoS genesis. Ask for `netlab` before `nodes`.
"""

from tests.nodes import nodes  # noqa: F401 - registers the fixture for this directory
from tests.p2p.conftest import netlab  # noqa: F401 - the same lab fixture as tests/p2p
