"""What every actor of the node shares: failure reporting to the supervisor."""

from __future__ import annotations

import logging
from typing import Protocol

import pykka

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
        log.error("actor %s failed: %r", self.name, exception_value, exc_info=(exception_type, exception_value, traceback))
        self.supervisor.actor_failed(self.name, exception_value)
