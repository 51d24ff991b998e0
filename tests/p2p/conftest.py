"""Multi-node scenarios over real node processes; the `nodes` fixture comes from tests/nodes.py."""

from tests.nodes import nodes  # noqa: F401 - registers the fixture for this directory
