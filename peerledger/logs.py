"""One line per event: UTC time, level, component, message with key=value pairs."""

from __future__ import annotations

import logging
import sys
import time


class _Formatter(logging.Formatter):
    converter = time.gmtime

    def __init__(self, node_name: str) -> None:
        prefix = f"{node_name} " if node_name else ""
        super().__init__(f"%(asctime)s.%(msecs)03dZ %(levelname)s {prefix}%(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")

    def formatException(self, ei) -> str:  # noqa: N802, ANN001 - keep tracebacks on one record, indented
        return "    " + super().formatException(ei).replace("\n", "\n    ")


def setup_logging(level: str = "INFO", node_name: str = "") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(node_name))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # pykka logs every failing actor with a traceback before calling its on_failure, which
    # logs the same failure as one of our lines (actors.base.NodeActor): keep only ours.
    logging.getLogger("pykka").setLevel(logging.CRITICAL)
