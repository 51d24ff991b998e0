"""The node supervisor: opens the store, starts the actors in order, stops them all.

Start order follows the flow of data backwards, so that no actor receives a message
before the actor it tells exists: storage, mempool, validation, producer, then the timer
and, last, whatever lets the outside world in (API, network). Stop is the reverse. If any
actor fails, the supervisor records why and the node stops as a whole: a node missing an
actor would look alive while being broken.

`settings` is the application's typed configuration; the node reads only its attributes
(`settings.storage.map_size_mb`, ...), so this layer does not import the application.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pykka

from actors.clock import NetworkClock
from actors.directory import ActorDirectory
from actors.mempool import MempoolActor
from actors.messages import AddTxs, CheckTx, MempoolQuery, RestoreMempool, Tick
from actors.network import NetworkActor
from actors.notifier import NotifierActor
from actors.producer import ProducerActor
from actors.staker import StakerActor
from actors.storage import StorageActor
from actors.sync import SyncActor
from actors.validation import ValidationActor
from chain.errors import ChainError
from chain.keys import SigningKey
from chain.params import POS, ChainParams
from storage.store import Store
from transport.keys import key_from_hex
from transport.loop import Transport

log = logging.getLogger(__name__)

TICK_S = 1.0
ASK_TIMEOUT_S = 10.0
STATS_TIMEOUT_S = 2.0  # all the actors' figures for one metrics scrape, asked together
STATS_ACTORS = ("storage", "mempool", "validation", "producer", "network", "sync", "notifier")
STOP_BUDGET_S = 4.0  # the whole stop, so that SIGTERM to exit stays within 5 s


class Node:
    def __init__(
        self,
        settings: Any,
        params: ChainParams,
        *,
        reward_address: bytes,
        node_keys: tuple[bytes, bytes] | None = None,
        staking_key: SigningKey | None = None,
    ) -> None:
        self.settings = settings
        self.params = params
        self.reward_address = reward_address
        self.node_keys = node_keys  # (public, secret) CURVE keys; needed with the network on
        self.staking_key = staking_key  # signs blocks on a Proof of Stake network
        self.transport: Transport | None = None
        self.refs = ActorDirectory()
        self.store: Store | None = None
        self.clock = NetworkClock(settings.network.max_clock_offset_s * 1000)
        self.started_at = time.time()
        self._stop_requested = threading.Event()
        self._stop_reason = ""
        self._timer: threading.Thread | None = None
        self._stopped = False

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        s = self.settings
        self.store = Store.open(
            s.node.data_dir, self.params, map_size=s.storage.map_size_mb << 20, sync=s.storage.sync
        )
        try:
            self.refs.storage = StorageActor.start(self, self.refs, self.store, self.clock)
            self.refs.mempool = MempoolActor.start(
                self,
                self.refs,
                self.store,
                max_bytes=s.mempool.max_bytes,
                min_fee=s.mempool.min_fee,
                max_per_sender=s.mempool.max_per_sender,
                expiry_s=s.mempool.expiry_s,
            )
            self.refs.validation = ValidationActor.start(
                self,
                self.refs,
                self.params,
                workers=s.validation.workers,
                batch_min=s.validation.batch_min,
                cache_size=s.validation.cache_size,
            )
            self.refs.tell("mempool", RestoreMempool())  # pending transactions from before the last stop
            if s.producer.enabled and self.params.consensus == POS:
                if self.staking_key is None:
                    raise ValueError("staking on a Proof of Stake network needs the wallet key")
                self.refs.producer = StakerActor.start(
                    self, self.refs, self.store, self.clock, self.params, key=self.staking_key,
                    min_tx_age_ms=s.producer.min_tx_age_ms,
                )
            elif s.producer.enabled and s.producer.workers > 0:
                self.refs.producer = ProducerActor.start(
                    self,
                    self.refs,
                    self.store,
                    self.clock,
                    self.params,
                    workers=s.producer.workers,
                    reward_address=self.reward_address,
                    chunk_nonces=s.producer.chunk_nonces,
                    min_tx_age_ms=s.producer.min_tx_age_ms,
                )
            if s.network.enabled:
                self._start_network()
        except BaseException:
            self.stop()
            raise
        self._timer = threading.Thread(target=self._tick_loop, name="node-timer", daemon=True)
        self._timer.start()
        tip = self.store.tip()
        log.info(
            "node started network=%s height=%d tip=%s producer=%s",
            self.params.network_id.hex()[:16], tip.height, tip.hash.hex()[:16],
            "on" if self.refs.producer else "off",
        )

    def _start_network(self) -> None:
        """Network and sync actors first, then the transport whose events they receive."""
        net = self.settings.network
        if self.node_keys is None:
            raise ValueError("the network needs the node's keys")
        host, port = _split_listen(net.listen)
        notifications = self.settings.notifications
        self.transport = Transport(
            public_key=self.node_keys[0],
            secret_key=self.node_keys[1],
            network_magic=self.params.network_magic,
            on_event=lambda event: self.refs.tell("network", event),
            host=host,
            port=port,
            allow_list=frozenset(key_from_hex(k) for k in net.allow_list) or None,
            publish_listen=_split_listen(notifications.listen) if notifications.enabled else None,
            publish_hwm=notifications.high_water_mark,
        )
        if notifications.enabled:
            self.refs.notifier = NotifierActor.start(self, self.transport.publish)
        self.refs.sync = SyncActor.start(self, self.refs, self.store, self.clock, self.transport)
        self.refs.network = NetworkActor.start(
            self, self.refs, self.store, self.clock, self.params, self.transport, net, self._advertise()
        )
        self.transport.start()
        log.info("listening for peers address=%s:%d node_id=%s", host, self.transport.bound_port,
                 self.node_keys[0].hex())
        if notifications.enabled:
            log.info("publishing notifications address=%s:%d", _split_listen(notifications.listen)[0],
                     self.transport.publish_port)
        self.refs.tell("network", Tick(self.clock.now_ms()))

    def _advertise(self) -> str:
        net = self.settings.network
        if net.advertise:
            return net.advertise
        host, port = _split_listen(net.listen)
        # A node listening on a concrete address can advertise it; 0.0.0.0 says nothing.
        if host not in ("0.0.0.0", "::") and port != 0:
            return net.listen
        return ""

    @property
    def listen_port(self) -> int | None:
        return self.transport.bound_port if self.transport is not None else None

    def _tick_loop(self) -> None:
        while not self._stop_requested.wait(TICK_S):
            tick = Tick(self.clock.now_ms())
            for name in ("mempool", "producer", "network", "sync"):
                self.refs.tell(name, tick)

    def actor_failed(self, name: str, error: BaseException) -> None:
        self.request_stop(f"actor {name} failed: {error}")

    def request_stop(self, reason: str) -> None:
        if not self._stop_requested.is_set():
            self._stop_reason = reason
            self._stop_requested.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a stop is requested (signal, failure); True if one was."""
        return self._stop_requested.wait(timeout)

    @property
    def stop_reason(self) -> str:
        return self._stop_reason

    def stop(self) -> None:
        """Stop every actor, then the storage actor, then close the store. Idempotent.

        The whole stop stays within STOP_BUDGET_S: the other actors stop together, and
        storage last, so that what they tell it while stopping (the peer book) is written.
        """
        if self._stopped:
            return
        self._stopped = True
        self._stop_requested.set()
        deadline = time.monotonic() + STOP_BUDGET_S
        if self.transport is not None:
            self.transport.stop(timeout=1.0)  # no more events from peers
        pending = []
        for name in ("network", "sync", "producer", "validation", "mempool", "notifier"):
            ref = getattr(self.refs, name)
            if ref is not None:
                pending.append((name, ref.stop(block=False)))
        for name, future in pending:
            self._await_stop(name, future, deadline - 0.5)  # keep time for storage
        storage_stopped = True
        if self.refs.storage is not None:
            storage_stopped = self._await_stop("storage", self.refs.storage.stop(block=False), deadline)
        for name in ("network", "sync", "producer", "validation", "mempool", "notifier", "storage"):
            setattr(self.refs, name, None)
        if self._timer is not None:
            self._timer.join(max(0.1, deadline - time.monotonic()))
        if self.store is not None and storage_stopped:
            self.store.close()  # never under a storage actor still writing: LMDB recovers at next open
        log.info("node stopped%s", f": {self._stop_reason}" if self._stop_reason else "")

    @staticmethod
    def _await_stop(name: str, future: Any, deadline: float) -> bool:
        try:
            future.get(timeout=max(0.05, deadline - time.monotonic()))
            return True
        except pykka.Timeout:
            log.error("actor %s did not stop in time; abandoning it", name)
        except pykka.ActorDeadError:
            return True
        return False

    # --- the edge: queries and submissions from the API, CLI and tests ----------------------

    def submit_tx(self, raw: bytes) -> bytes:
        """Verify and admit one transaction; answers its id or raises ChainError."""
        tx = self._ask("validation", CheckTx(raw))
        # Told with a reply, not asked: the mempool may hold it until it has taken in a new tip.
        reply = pykka.ThreadingFuture()
        if self.refs.mempool is None:
            raise TimeoutError("the node is not running (mempool is stopped)")
        try:
            self.refs.mempool.tell(AddTxs((tx,), None, reply))
            (error,) = reply.get(timeout=ASK_TIMEOUT_S)
        except pykka.Timeout:
            raise TimeoutError(f"mempool did not answer within {ASK_TIMEOUT_S:g} s") from None
        except pykka.ActorDeadError:
            raise TimeoutError("the node is stopping (mempool is stopped)") from None
        if error is not None:
            raise error
        return tx.id

    def mempool_info(self, address: bytes | None = None, txid: bytes | None = None) -> dict:
        return self._ask("mempool", MempoolQuery(address, txid))

    def pending_tx(self, txid: bytes):  # noqa: ANN201 - Transaction | None
        return self.mempool_info(txid=txid)["tx"]

    def peers(self) -> list[dict]:
        if self.refs.network is None:
            return []
        return self._ask("network", "peers")

    def syncing(self) -> bool:
        if self.refs.sync is None:
            return False
        return self._ask("sync", "syncing")

    def producer_stats(self) -> dict | None:
        if self.refs.producer is None:
            return None
        return self._ask("producer", "stats")

    def validation_stats(self) -> dict:
        return self._ask("validation", "stats")

    def actor_stats(self, timeout: float = STATS_TIMEOUT_S) -> dict[str, dict | None]:
        """Every running actor's figures ("stats"), asked all at once with one deadline: a
        busy actor costs the caller at most `timeout`, and its entry is None."""
        futures = {}
        for name in STATS_ACTORS:
            ref = getattr(self.refs, name)
            if ref is None:
                continue
            try:
                futures[name] = ref.ask("stats", block=False)
            except pykka.ActorDeadError:
                futures[name] = None
        deadline = time.monotonic() + timeout
        out: dict[str, dict | None] = {}
        for name, future in futures.items():
            try:
                out[name] = future.get(timeout=max(0.0, deadline - time.monotonic())) if future else None
            except (pykka.Timeout, pykka.ActorDeadError):
                out[name] = None
            except Exception:  # a bug in an actor's figures: the others still count
                log.exception("actor stats failed actor=%s", name)
                out[name] = None
        return out

    def _ask(self, name: str, message: object) -> Any:
        """Ask an actor from outside the actor system; a slow or stopped node is a TimeoutError."""
        ref = getattr(self.refs, name)
        if ref is None:
            raise TimeoutError(f"the node is not running ({name} is stopped)")
        try:
            return ref.ask(message, timeout=ASK_TIMEOUT_S)
        except pykka.Timeout:
            raise TimeoutError(f"{name} did not answer within {ASK_TIMEOUT_S:g} s") from None
        except pykka.ActorDeadError:
            raise TimeoutError(f"the node is stopping ({name} is stopped)") from None




def _split_listen(text: str) -> tuple[str, int]:
    """("host", port) of a listen address the configuration already validated (port 0 allowed)."""
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)
