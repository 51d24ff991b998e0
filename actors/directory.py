"""The node's actor references, filled in by the supervisor before any message flows.

Actors are started one by one, but some must know others started after them (storage
tells the mempool and the producer about new tips). The supervisor starts them all, then
fills this directory, and only then lets the outside world (API, network) in.
"""

from __future__ import annotations

from dataclasses import dataclass

import pykka


@dataclass(slots=True)
class ActorDirectory:
    storage: pykka.ActorRef | None = None
    validation: pykka.ActorRef | None = None
    mempool: pykka.ActorRef | None = None
    producer: pykka.ActorRef | None = None
    network: pykka.ActorRef | None = None
    sync: pykka.ActorRef | None = None
    notifier: pykka.ActorRef | None = None

    def tell(self, name: str, message: object) -> None:
        """Tell the named actor if it runs in this node (a node without network has none)."""
        ref = getattr(self, name)
        if ref is not None:
            try:
                ref.tell(message)
            except pykka.ActorDeadError:
                pass  # shutting down: the supervisor is already stopping everything
