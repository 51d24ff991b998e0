"""The node's metrics in the Prometheus text exposition format (GET /metrics).

Gathered at the edge, once per scrape: the store's tip and best header (read transactions
in the caller's thread), one "stats" ask to each actor, all at once under one deadline
(`Node.actor_stats`), the transport's counters, and this process's memory from
/proc/self/status. Actors keep their own counters and histograms (actors.stats) and are
never asked by one another. An actor that does not answer in time is left out of the
scrape and shows as `peerledger_actor_up{actor="..."} 0`.

Metric names are stable (configs/grafana-dashboard.json uses them):

    peerledger_info{...} 1                          network, consensus, node id, version
    peerledger_height, peerledger_best_header_height, peerledger_peer_best_height, peerledger_syncing
    peerledger_tip_timestamp_seconds, peerledger_chain_transactions
    peerledger_peers{direction}, peerledger_peers_banned, peerledger_bans_total,
    peerledger_peer_misbehaviours_total, peerledger_inbound_refused_total
    peerledger_mempool_transactions, peerledger_mempool_bytes,
    peerledger_mempool_{accepted,rejected,expired}_total
    peerledger_block_validation_seconds{stage="verify"|"connect"}      histogram
    peerledger_tx_validation_seconds{stage="verify"|"admit"}           histogram
    peerledger_blocks_{connected,disconnected,rejected}_total, peerledger_blocks_invalid_total
    peerledger_reorgs_total, peerledger_reorgs_refused_total, peerledger_reorg_depth (histogram)
    peerledger_sync_{blocks_requested,blocks_received,headers_received,timeouts,hedged}_total,
    peerledger_sync_orphans, peerledger_sync_in_flight
    peerledger_transport_messages_total{type,direction}, peerledger_transport_bytes_total{type,direction}
    peerledger_transport_drops_total{reason}, peerledger_transport_rejected_total{reason},
    peerledger_transport_send_queue, peerledger_transport_links{direction}
    peerledger_notifications_total{topic}, peerledger_notifications_dropped_total
    peerledger_producer_blocks_total, peerledger_producer_hash_rate
    peerledger_signatures_verified_total, peerledger_signature_cache_hits_total,
    peerledger_block_txs_unseen_total
    peerledger_clock_offset_seconds, peerledger_start_time_seconds
    peerledger_resident_memory_bytes, peerledger_resident_memory_peak_bytes
    peerledger_actor_up{actor}
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "peerledger_"
Labels = Mapping[str, str]


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape_label(str(v))}"' for k, v in labels.items()) + "}"


class Exposition:
    """Families written in order, each once: # HELP, # TYPE, then its samples."""

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._seen: set[str] = set()

    def _family(self, name: str, kind: str, doc: str) -> str:
        full = PREFIX + name
        if full in self._seen:
            raise ValueError(f"metric family {full} written twice")
        self._seen.add(full)
        self._lines.append(f"# HELP {full} {doc.replace(chr(92), chr(92) * 2).replace(chr(10), ' ')}")
        self._lines.append(f"# TYPE {full} {kind}")
        return full

    def gauge(self, name: str, doc: str, value: float | None = None,
              samples: Iterable[tuple[Labels, float]] = ()) -> None:
        self._simple(name, "gauge", doc, value, samples)

    def counter(self, name: str, doc: str, value: float | None = None,
                samples: Iterable[tuple[Labels, float]] = ()) -> None:
        """`name` ends in _total, as the format wants of counters."""
        self._simple(name, "counter", doc, value, samples)

    def _simple(self, name: str, kind: str, doc: str, value: float | None,
                samples: Iterable[tuple[Labels, float]]) -> None:
        samples = list(samples)  # may be empty (no drops yet): the family is still declared
        if value is not None:
            samples.insert(0, ({}, value))
        if kind == "counter" and not name.endswith("_total"):
            raise ValueError(f"counter {name} must end in _total")
        full = self._family(name, kind, doc)  # text format 0.0.4: # TYPE names the sample, _total included
        for labels, v in samples:
            self._lines.append(f"{full}{_labels(labels)} {_number(v)}")

    def histogram(self, name: str, doc: str, series: Iterable[tuple[Labels, Mapping[str, Any] | None]]) -> None:
        """`series`: (labels, actors.stats.Histogram snapshot) pairs; None entries are skipped."""
        series = [(labels, snap) for labels, snap in series if snap]
        if not series:
            return
        full = self._family(name, "histogram", doc)
        for labels, snap in series:
            cumulative = 0
            for bound, count in zip([*snap["bounds"], math.inf], snap["counts"]):
                cumulative += count
                le = "+Inf" if math.isinf(bound) else _number(float(bound))
                self._lines.append(f"{full}_bucket{_labels({**labels, 'le': le})} {cumulative}")
            self._lines.append(f"{full}_sum{_labels(labels)} {_number(float(snap['sum']))}")
            self._lines.append(f"{full}_count{_labels(labels)} {snap['count']}")

    def text(self) -> str:
        return "\n".join(self._lines) + "\n"


def process_memory(path: str = "/proc/self/status") -> dict[str, int]:
    """Resident memory of this process now and at its peak, in bytes (VmRSS, VmHWM); empty
    where /proc is not there."""
    found = {}
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    number, _, unit = rest.strip().partition(" ")
                    found[key] = int(number) * (1024 if unit.strip().lower() == "kb" else 1)
    except (OSError, ValueError):
        return {}
    return found


def render(node: Any, node_id: bytes, version: str) -> str:
    """Every metric of a running `actors.node.Node`, as Prometheus text."""
    out = Exposition()
    store = node.store
    tip = store.tip()
    _, best = store.best_header()
    stats = node.actor_stats()
    transport = node.transport.stats() if getattr(node, "transport", None) is not None else None
    storage, mempool, validation = stats.get("storage"), stats.get("mempool"), stats.get("validation")
    network, sync, producer, notifier = stats.get("network"), stats.get("sync"), stats.get("producer"), stats.get("notifier")
    params = node.params

    out.gauge("info", "the node and the network it belongs to (value 1)", samples=[({
        "network": params.name, "network_id": params.network_id.hex(), "consensus": params.consensus,
        "node_id": node_id.hex(), "version": version}, 1)])
    out.gauge("actor_up", "1 if the actor answered this scrape in time", samples=[
        ({"actor": name}, 0 if figures is None else 1) for name, figures in stats.items()])

    # chain and sync
    out.gauge("height", "height of the main chain's tip", tip.height)
    out.gauge("best_header_height", "height of the heaviest valid header known (blocks may still be missing)",
              best.height)
    if sync is not None:
        out.gauge("peer_best_height", "highest tip a connected peer claims", sync["best_peer_height"])
        out.gauge("syncing", "1 while a peer or a header is ahead of our tip", int(bool(sync["syncing"])))
        out.counter("sync_blocks_requested_total", "blocks asked of peers", sync["blocks_requested"])
        out.counter("sync_blocks_received_total", "requested blocks received", sync["blocks_received"])
        out.counter("sync_headers_received_total", "headers received", sync["headers_received"])
        out.counter("sync_timeouts_total", "block requests that timed out", sync["timeouts"])
        out.counter("sync_hedged_total", "late urgent blocks asked of one more peer", sync["hedged"])
        out.gauge("sync_orphans", "blocks waiting for their parent", sync["orphans"])
        out.gauge("sync_in_flight", "blocks asked and not yet received", sync["in_flight"])
    out.gauge("tip_timestamp_seconds", "timestamp of the tip block (Unix seconds)", tip.timestamp_ms / 1000)
    out.gauge("chain_transactions", "transactions on the main chain up to the tip", tip.tx_count)
    if storage is not None:
        out.counter("blocks_connected_total", "blocks connected to the main chain", storage["blocks_connected"])
        out.counter("blocks_disconnected_total", "blocks disconnected by reorganisations", storage["blocks_disconnected"])
        out.counter("blocks_rejected_total", "blocks refused by the checks against the chain", storage["blocks_rejected"])
        out.counter("reorgs_total", "reorganisations of the main chain", storage["reorgs"])
        out.counter("reorgs_refused_total", "reorganisations refused as deeper than max_reorg_depth",
                    storage["reorgs_refused"])
        out.histogram("reorg_depth", "blocks disconnected by one reorganisation", [({}, storage["reorg_depth"])])
    out.histogram("block_validation_seconds",
                  "time to validate a block: verify = decoding, header and signatures; connect = checks against "
                  "the chain and the write", [
                      ({"stage": "verify"}, validation and validation["block_seconds"]),
                      ({"stage": "connect"}, storage and storage["connect_seconds"]),
                  ])
    out.histogram("tx_validation_seconds",
                  "time to validate a transaction: verify = decoding and signature; admit = mempool rules against "
                  "the state (a batch counts each transaction at its mean)", [
                      ({"stage": "verify"}, validation and validation["tx_seconds"]),
                      ({"stage": "admit"}, mempool and mempool["admit_seconds"]),
                  ])
    if validation is not None:
        out.counter("blocks_invalid_total", "blocks refused before the chain checks (bad shape or signature)",
                    validation["blocks_invalid"])
        out.counter("signatures_verified_total", "signatures verified", validation["verified"])
        out.counter("signature_cache_hits_total", "signature checks saved by the cache", validation["cache_hits"])
        out.counter("block_txs_unseen_total", "transactions of arriving blocks not verified here before "
                    "(verified on the block's way; many: raise [producer] min_tx_age_ms)",
                    validation["block_txs_unseen"])

    # mempool
    if mempool is not None:
        out.gauge("mempool_transactions", "transactions waiting for a block", mempool["size"])
        out.gauge("mempool_bytes", "bytes of transactions waiting for a block", mempool["bytes"])
        out.counter("mempool_accepted_total", "transactions admitted to the mempool", mempool["accepted"])
        out.counter("mempool_rejected_total", "transactions the mempool refused", mempool["rejected"])
        out.counter("mempool_expired_total", "transactions dropped as too old", mempool["expired"])

    # peers and transport
    if network is not None:
        out.gauge("peers", "peers with a completed handshake", samples=[
            ({"direction": "inbound"}, network["peers_in"]), ({"direction": "outbound"}, network["peers_out"])])
        out.gauge("peers_banned", "peers banned now", network["bans_active"])
        out.counter("bans_total", "peers banned since start", network["banned"])
        out.counter("peer_misbehaviours_total", "misbehaviour points given to peers (events)", network["misbehaviours"])
        out.counter("inbound_refused_total", "inbound peers refused at max_inbound", network["inbound_refused"])
    if transport is not None:
        messages, sizes = [], []
        for direction, counts, bytes_ in (("in", transport.messages_in, transport.bytes_in),
                                          ("out", transport.messages_out, transport.bytes_out)):
            for kind in sorted(counts):
                labels = {"type": kind.lower(), "direction": direction}
                messages.append((labels, counts[kind]))
                sizes.append((labels, bytes_.get(kind, 0)))
        out.counter("transport_messages_total", "peer messages by type and direction", samples=messages)
        out.counter("transport_bytes_total", "bytes of peer messages by type and direction", samples=sizes)
        out.counter("transport_drops_total", "outbound messages and notifications not sent, by reason",
                    samples=[({"reason": r}, n) for r, n in sorted(transport.drops.items())])
        out.counter("transport_rejected_total", "inbound frames dropped as invalid, by reason",
                    samples=[({"reason": r}, n) for r, n in sorted(transport.rejected.items())])
        out.gauge("transport_send_queue", "frames waiting for the socket thread", transport.send_queue)
        out.gauge("transport_links", "zmq links up now", samples=[
            ({"direction": "inbound"}, transport.links_in), ({"direction": "outbound"}, transport.links_out)])
    if notifier is not None:
        topics = {"block": 0, "tx": 0, "reorg": 0, **notifier["published"]}
        out.counter("notifications_total", "notifications handed to the PUB socket, by topic",
                    samples=[({"topic": t}, n) for t, n in sorted(topics.items())])
        out.counter("notifications_dropped_total", "notifications dropped before the PUB socket (queue full)",
                    notifier["dropped"])

    # production
    if producer is not None:
        out.counter("producer_blocks_total", "blocks this node produced", producer["blocks"])
        out.gauge("producer_hash_rate", "hashes per second since start (Proof of Work)",
                  float(producer.get("hash_rate", 0.0)))

    # the process
    out.gauge("clock_offset_seconds", "network time minus this machine's clock", node.clock.offset_ms / 1000)
    out.gauge("start_time_seconds", "when the node started (Unix seconds)", node.started_at)
    memory = process_memory()
    if "VmRSS" in memory:
        out.gauge("resident_memory_bytes", "resident memory of the node process (not its worker processes)",
                  memory["VmRSS"])
    if "VmHWM" in memory:
        out.gauge("resident_memory_peak_bytes", "peak resident memory of the node process", memory["VmHWM"])
    return out.text()
