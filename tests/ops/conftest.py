"""Operating a node in the field: backups and restores, restarts with pending transactions,
deployment files, the operator's commands. Real node processes (tests/nodes.py)."""

from tests.nodes import nodes  # noqa: F401 - registers the fixture for this directory
