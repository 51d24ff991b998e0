"""The notifier: turns the node's events into notifications for outside subscribers.

Like bitcoind's -zmqpub*: new blocks on the main chain, transactions accepted into the
mempool and reorganisations are published on a ZeroMQ PUB socket that the transport's
socket thread owns (this actor only hands it bytes through `publish`, which never
blocks). Every message is [topic, body, sequence] (see transport.loop): the topic and body
are made here, the sequence by the transport.

Topics and bodies (compact JSON, UTF-8; hashes and ids as lowercase hex):

    block  {"hash", "height", "prev_hash", "timestamp_ms", "tx_count", "size"}
           one per block connected to the main chain, in the order connected
    tx     {"id", "fee", "size"}
           one per transaction accepted into the mempool (from the API or a peer)
    reorg  {"old_tip", "old_height", "new_tip", "new_height", "depth",
            "disconnected": [hashes, old tip first], "connected": [hashes, oldest first]}
           before the block messages of the blocks it connected; `depth` is the number of
           blocks disconnected; the lists hold at most MAX_REORG_HASHES (the first ones)

Transactions that come back to the mempool after a reorganisation get no tx message:
they are those of the reorg's disconnected blocks.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable

from actors.base import NodeActor, Supervisor
from actors.messages import TipChanged, TxsAccepted

log = logging.getLogger(__name__)

MAX_REORG_HASHES = 1000
TOPIC_BLOCK = b"block"
TOPIC_TX = b"tx"
TOPIC_REORG = b"reorg"


def _json(document: dict) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


class NotifierActor(NodeActor):
    name = "notifier"

    def __init__(self, supervisor: Supervisor, publish: Callable[[bytes, bytes], bool]) -> None:
        super().__init__(supervisor)
        self.publish = publish
        self.published: Counter[str] = Counter()
        self.dropped = 0

    def on_receive(self, message: object) -> object:
        match message:
            case TipChanged(tip, connected, disconnected):
                if disconnected:
                    self._send(TOPIC_REORG, {
                        "old_tip": disconnected[0].hash.hex(),
                        "old_height": disconnected[0].height,
                        "new_tip": tip.hash.hex(),
                        "new_height": tip.height,
                        "depth": len(disconnected),
                        "disconnected": [b.hash.hex() for b in disconnected[:MAX_REORG_HASHES]],
                        "connected": [b.hash.hex() for b in connected[:MAX_REORG_HASHES]],
                    })
                for block in connected:
                    h = block.header
                    self._send(TOPIC_BLOCK, {
                        "hash": h.hash.hex(),
                        "height": h.height,
                        "prev_hash": h.prev_hash.hex(),
                        "timestamp_ms": h.timestamp_ms,
                        "tx_count": len(block.txs),
                        "size": block.size,
                    })
            case TxsAccepted(txs, _origin):
                for tx in txs:
                    self._send(TOPIC_TX, {"id": tx.id.hex(), "fee": tx.fee, "size": tx.size})
            case "stats":
                return {"published": dict(self.published), "dropped": self.dropped}
            case _:
                log.warning("unexpected message actor=notifier type=%s", type(message).__name__)
        return None

    def _send(self, topic: bytes, document: dict) -> None:
        if self.publish(topic, _json(document)):
            self.published[topic.decode()] += 1
        else:
            self.dropped += 1
