"""What every actor of the node shares: failure reporting to the supervisor, and the
shape of a log line.

Log lines are one line per event: a few words naming the event, then key=value pairs
(`peer=` and `block=` carry the first 16 hex digits of a node id or a block hash; free
text goes through `quoted`). Steady state is quiet at INFO: a line per block or per peer
event at most; anything per transaction or per message is DEBUG.
"""

from __future__ import annotations

import json
import logging
from typing import Protocol

import pykka

from storage.store import StoreError

log = logging.getLogger(__name__)


class Supervisor(Protocol):
    def actor_failed(self, name: str, error: BaseException) -> None: ...


class NodeActor(pykka.ThreadingActor):
    """An actor whose unexpected failure stops the whole node with a logged reason.

    A failing `tell` stops the actor (pykka calls on_failure); a node missing one of its
    actors would be silently broken, so the supervisor is told and shuts everything down.
    A failing `ask` goes back to the asker and the actor keeps running.
    """

    name = "actor"
    use_daemon_thread = True  # a stuck actor must not keep the process alive after stop

    def __init__(self, supervisor: Supervisor) -> None:
        super().__init__()
        self.supervisor = supervisor

    def on_failure(self, exception_type, exception_value, traceback) -> None:  # noqa: ANN001
        if isinstance(exception_value, StoreError):
            # An operational fault with its own clear message (disk full, damaged store):
            # what the operator needs is that message, not a traceback.
            log.error("actor failed actor=%s error=%s", self.name, quoted(str(exception_value)))
        else:
            log.error("actor failed actor=%s error=%s", self.name, quoted(repr(exception_value)),
                      exc_info=(exception_type, exception_value, traceback))
        self.supervisor.actor_failed(self.name, exception_value)


def quoted(text: str) -> str:
    """A value for a key=value log field: as is when it is one plain word, else in double
    quotes with JSON escapes (so that a line still splits into its fields)."""
    if text and all(c.isalnum() or c in "-_.:/@" for c in text):
        return text
    return json.dumps(text, ensure_ascii=False)


def peer_id(key: bytes | None) -> str:
    """A node id (or where a block or transaction came from) in a log line: its first 16
    hex digits, or "self" for this node's own (API, producer)."""
    return key.hex()[:16] if key else "self"
