"""The mempool: verified transactions waiting for a block.

Policy, as a node operator expects it:
- per sender, transactions form a gap-free run of nonces starting at the account's nonce,
  and together they may not spend more than the account holds;
- a pending transaction is replaced by one with the same sender and nonce and a higher fee;
- the pool is capped in bytes; when full, a newcomer evicts the cheapest transaction that
  is last in its sender's run (evicting one in the middle would strand the ones after it),
  and is refused if it pays no more than that;
- transactions expire after a while; blocks are filled by fee per byte, each sender's
  transactions in nonce order, with those that came less than the producer's
  `min_tx_age_ms` ago left for a later block (by then the peers have verified them);
- after every new tip or reorganisation the pool drops what was confirmed or became
  invalid, and takes back the transactions of disconnected blocks.
Signatures were checked before anything gets here.

One view of the chain. Storage commits a block, then tells the mempool (TipChanged), and
the message may wait in the mempool's inbox behind transactions that arrived meanwhile.
Judged against the store as it is then, such a transaction would meet a pool that has not
yet dropped what the block confirmed (the next nonce of a sender then looks like a
replacement of the confirmed one, refused for its equal fee) or, after a reorganisation,
has not yet taken back what the block disconnected (a gap): it would be lost, on the one
node that had it. So the pool is judged only against the tip it has taken in: admissions
and block templates asked for while the store is ahead of the pool wait, in order, until
the TipChanged messages of the store's tip have been applied; tip changes that arrive
while the store is already further on are merged and applied together against it; and
the accounts of a batch come from one snapshot that names its own tip.

Pending transactions survive a restart or a power cut: once a second at most, the actor
tells storage what entered and left the pool since the last time (a bounded batch; the
rest follows a second later), and at start it reloads them. Reloaded transactions go
through the validation actor again, as if a peer had sent them, before the pool takes
them back against the current tip: signatures are verified again because LMDB keeps no
checksums (a bit flipped on an SD card would otherwise reach a block this node produces
and that every peer refuses), and doing it there fills the shared signature cache, so the
blocks that confirm them cost nothing more.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from actors.base import NodeActor, Supervisor
from actors.stats import Histogram
from actors.directory import ActorDirectory
from actors.messages import (
    AddTxs,
    BlockTemplateTxs,
    MempoolQuery,
    RestoreMempool,
    SaveMempool,
    Tick,
    TipChanged,
    TxRejected,
    TxsAccepted,
    TxsReceived,
    WantTxs,
)
from chain.errors import ChainError, Code
from chain.keys import address_of
from chain.params import POS
from chain.state import EMPTY, Account, Overlay, TxContext, apply_tx, spendable, tx_cost
from chain.tx import Transaction, decode_tx
from storage.store import Store

log = logging.getLogger(__name__)

PERSIST_MAX_BYTES = 4 << 20  # transactions written per batch (one a second), so that a write stays short
RESTORE_CHUNK = 1000  # reloaded transactions per batch sent for verification
RESTORE_GRACE_MS = 120_000  # reloaded ones not back from verification by then are forgotten
OUT_OF_STEP_S = 10.0  # a store tip ahead of the pool this long was never told to us (see _check_in_step)
_DEFERRED = object()  # _add's answer when the store is ahead of the pool: the batch waits


@dataclass(slots=True)
class Entry:
    tx: Transaction
    sender: bytes  # address
    added_ms: int

    @property
    def fee_rate(self) -> float:
        return self.tx.fee / self.tx.size


@dataclass(slots=True)
class _RunState:
    """A sender's pending run applied over the confirmed state: the accounts it changes (the
    sender and those it pays), which the next transaction of the run is checked against, and
    what the run spends.

    Kept so that appending to a run costs one transaction, not the whole run again; valid
    only for the block context and the sender's confirmed account it was computed from, and
    dropped whenever the run changes other than by an append (replacement, removal, expiry,
    eviction) and at every rebuild, that is at every new tip.
    """

    ctx: TxContext
    account: Account
    length: int  # entries of the run applied
    cost: int  # what they take from the sender's spendable balance (tx_cost)
    accounts: dict[bytes, Account]


class TxPool:
    """The mempool's data and rules, free of threads so that they can be tested alone."""

    def __init__(
        self,
        get_account: Callable[[bytes], Account | None],
        *,
        max_bytes: int,
        min_fee: int,
        max_per_sender: int,
        expiry_ms: int,
        next_height: Callable[[], int] = lambda: 0,
        tx_context: Callable[[], TxContext] | None = None,
    ) -> None:
        self.get_account = get_account
        # The context of the next block, in which every admitted transaction must apply
        # (chain.state.apply_tx); default: a Proof of Work network's.
        self.tx_context = tx_context or (lambda: TxContext(self.next_height()))
        self.max_bytes = max_bytes
        self.min_fee = min_fee
        self.max_per_sender = max_per_sender
        self.expiry_ms = expiry_ms
        self.next_height = next_height
        self.by_id: dict[bytes, Entry] = {}
        self.by_sender: dict[bytes, list[Entry]] = {}  # each list in nonce order, gap-free
        self.bytes = 0
        self._runs: dict[bytes, _RunState] = {}  # by sender; see _RunState

    def __len__(self) -> int:
        return len(self.by_id)

    def __contains__(self, txid: bytes) -> bool:
        return txid in self.by_id

    def next_nonce(self, address: bytes) -> int:
        account = self.get_account(address) or EMPTY
        return account.nonce + len(self.by_sender.get(address, ()))

    # --- admission ---------------------------------------------------------------------

    def add(self, tx: Transaction, now_ms: int) -> list[Entry]:
        """Admit `tx` or raise ChainError with the reason; returns the entries it evicted."""
        if tx.id in self.by_id:
            raise ChainError(Code.DUPLICATE, f"transaction {tx.id.hex()[:16]} is already pending")
        if tx.fee < self.min_fee:
            raise ChainError(Code.FEE_TOO_LOW, f"fee {tx.fee} is below this node's minimum of {self.min_fee}")
        sender = address_of(tx.sender)
        account = self.get_account(sender) or EMPTY
        run = self.by_sender.get(sender, [])
        position = tx.nonce - account.nonce
        if position < 0:
            raise ChainError(Code.WRONG_NONCE, f"nonce {tx.nonce} is already used (account nonce {account.nonce})")
        if position > len(run):
            raise ChainError(
                Code.WRONG_NONCE, f"nonce {tx.nonce} leaves a gap: the next nonce for this sender is {account.nonce + len(run)}"
            )
        replaced = run[position] if position < len(run) else None
        if replaced is not None and tx.fee <= replaced.tx.fee:
            raise ChainError(
                Code.FEE_TOO_LOW, f"replacing pending nonce {tx.nonce} needs a fee above {replaced.tx.fee}"
            )
        if replaced is None and len(run) >= self.max_per_sender:
            raise ChainError(Code.MEMPOOL_FULL, f"this sender already has {len(run)} pending transactions")
        ctx = self.tx_context()
        state = self._runs.get(sender)
        if state is not None and not (
            position == len(run) == state.length and state.ctx == ctx and state.account == account
        ):
            state = None  # not an append, or computed against another state: apply the run again
        if replaced is not None:
            # Later nonces must still be affordable, or the replacement would strand them.
            spending = sum(tx_cost(e.tx) for e in run) - tx_cost(replaced.tx) + tx_cost(tx)
        else:
            spending = (state.cost if state is not None else sum(tx_cost(e.tx) for e in run)) + tx_cost(tx)
        if spending > spendable(account, self.next_height()):
            raise ChainError(
                Code.INSUFFICIENT_FUNDS,
                f"account holds {spendable(account, self.next_height())}, pending spending would be {spending}",
            )
        # Every rule a block applies, after the sender's earlier pending transactions: a kind
        # the network does not hold, an unbond beyond the stake... would otherwise make every
        # block template that includes it invalid, and stall production.
        if state is None:
            state = self._apply_run(run[:position], account, ctx)
        pending = state.accounts
        changes = apply_tx(lambda a: pending[a] if a in pending else self.get_account(a), tx, ctx)
        freed = replaced.tx.size if replaced else 0
        evicted = self._make_room(tx, sender, tx.size - freed)
        entry = Entry(tx, sender, now_ms)
        if replaced is not None:
            run[position] = entry
            del self.by_id[replaced.tx.id]
            self.bytes -= replaced.tx.size
            self._runs.pop(sender, None)
        else:
            run.append(entry)
            self.by_sender[sender] = run
            pending.update(changes)
            state.length += 1
            state.cost += tx_cost(tx)
            self._runs[sender] = state
        self.by_id[tx.id] = entry
        self.bytes += tx.size
        return evicted

    def _apply_run(self, entries: list[Entry], account: Account, ctx: TxContext) -> _RunState:
        """A sender's pending `entries` applied over its confirmed `account`."""
        overlay = Overlay(self.get_account)
        for earlier in entries:
            overlay.put(apply_tx(overlay.get, earlier.tx, ctx))
        return _RunState(ctx, account, len(entries), sum(tx_cost(e.tx) for e in entries), overlay.changes)

    def _make_room(self, tx: Transaction, sender: bytes, needed: int) -> list[Entry]:
        if self.bytes + needed <= self.max_bytes:
            return []
        rate = tx.fee / tx.size
        tails = [(run[-1].fee_rate, s) for s, run in self.by_sender.items() if s != sender and run]
        heapq.heapify(tails)
        victims: list[Entry] = []
        freed = 0
        while self.bytes + needed - freed > self.max_bytes:
            if not tails or tails[0][0] >= rate:
                raise ChainError(Code.MEMPOOL_FULL, "the mempool is full and this fee does not outbid the cheapest")
            _, victim_sender = heapq.heappop(tails)
            run = self.by_sender[victim_sender]
            index = len(run) - 1 - sum(1 for v in victims if v.sender == victim_sender)
            victims.append(run[index])
            freed += run[index].tx.size
            if index > 0:
                heapq.heappush(tails, (run[index - 1].fee_rate, victim_sender))
        for victim in victims:
            self._remove_from(victim.sender, victim.tx.nonce)
        return victims

    # --- removal -------------------------------------------------------------------------

    def _remove_from(self, sender: bytes, nonce: int) -> list[Entry]:
        """Remove the sender's transactions from `nonce` on (later ones would have a gap)."""
        run = self.by_sender.get(sender)
        if not run:
            return []
        self._runs.pop(sender, None)
        cut = next((i for i, e in enumerate(run) if e.tx.nonce >= nonce), len(run))
        removed, kept = run[cut:], run[:cut]
        for entry in removed:
            del self.by_id[entry.tx.id]
            self.bytes -= entry.tx.size
        if kept:
            self.by_sender[sender] = kept
        else:
            del self.by_sender[sender]
        return removed

    def rebuild(self, senders: Iterable[bytes], returned: Iterable[Transaction], now_ms: int) -> tuple[int, int]:
        """Re-admit these senders' transactions, plus `returned` ones, against the current state.

        Called after the tip moved: what was confirmed now fails its nonce check, what became
        unaffordable fails its balance check, and transactions of disconnected blocks take
        their place again in nonce order. Answers (kept, dropped).
        """
        candidates: dict[bytes, Entry] = {}
        self._runs.clear()  # the confirmed state moved
        for sender in set(senders):
            for entry in self.by_sender.pop(sender, []):
                del self.by_id[entry.tx.id]
                self.bytes -= entry.tx.size
                candidates[entry.tx.id] = entry
        for tx in returned:
            if tx.id not in candidates and tx.id not in self.by_id:
                candidates[tx.id] = Entry(tx, address_of(tx.sender), now_ms)
        kept = 0
        # Same sender and nonce twice (a replacement): the higher fee goes first and wins.
        for entry in sorted(candidates.values(), key=lambda e: (e.sender, e.tx.nonce, -e.tx.fee)):
            try:
                self.add(entry.tx, entry.added_ms)
                kept += 1
            except ChainError:
                pass
        return kept, len(candidates) - kept

    def expire(self, now_ms: int) -> list[Entry]:
        expired: list[Entry] = []
        for sender in list(self.by_sender):
            run = self.by_sender[sender]
            old = next((e for e in run if now_ms - e.added_ms > self.expiry_ms), None)
            if old is not None:
                expired += self._remove_from(sender, old.tx.nonce)
        return expired

    # --- selection -----------------------------------------------------------------------

    def select(self, max_bytes: int, max_txs: int, now_ms: int = 0, min_age_ms: int = 0) -> list[Transaction]:
        """Best fee per byte first, each sender's transactions in nonce order, none that came
        less than `min_age_ms` before `now_ms` (nor, then, the later nonces of its sender).

        An entry "from the future" counts as old: the wall clock stepped back since it came
        (a Pi setting its clock after boot), and waiting for the clock to catch up could
        hold transactions out of blocks for hours."""

        def settled(entry: Entry) -> bool:
            return not 0 <= now_ms - entry.added_ms < min_age_ms

        heap = [(-run[0].fee_rate, sender, 0) for sender, run in self.by_sender.items() if settled(run[0])]
        heapq.heapify(heap)
        chosen: list[Transaction] = []
        size = 0
        while heap and len(chosen) < max_txs:
            _, sender, index = heapq.heappop(heap)
            tx = self.by_sender[sender][index].tx
            if size + tx.size > max_bytes:
                continue  # this sender's later nonces cannot come without this one
            chosen.append(tx)
            size += tx.size
            run = self.by_sender[sender]
            if index + 1 < len(run) and settled(run[index + 1]):
                heapq.heappush(heap, (-run[index + 1].fee_rate, sender, index + 1))
        return chosen


def _now_ms() -> int:
    return int(time.time() * 1000)


class MempoolActor(NodeActor):
    name = "mempool"
    TEMPLATE_OVERHEAD = 512  # header and count, kept free in every block template

    def __init__(
        self,
        supervisor: Supervisor,
        refs: ActorDirectory,
        store: Store,
        *,
        max_bytes: int,
        min_fee: int,
        max_per_sender: int,
        expiry_s: int,
    ) -> None:
        super().__init__(supervisor)
        self.refs = refs
        self.store = store
        self._snapshot: dict[bytes, Account | None] | None = None  # see _account
        # The tip the pool is judged against, the last one storage told us of, and the
        # changes told but not applied yet (see the module docstring, "one view").
        self._tip = store.tip()
        self._told = self._tip
        self._backlog_senders: set[bytes] = set()
        self._backlog_returned: list[Transaction] = []
        self._backlog_reorg = False
        self._waiting: deque[AddTxs | WantTxs] = deque()  # held while the store is ahead of the pool
        self._ahead: tuple[bytes, float] | None = None  # the store's tip a tick found ahead of the pool, when
        self.pool = TxPool(
            self._account,
            max_bytes=max_bytes,
            min_fee=min_fee,
            max_per_sender=max_per_sender,
            expiry_ms=expiry_s * 1000,
            next_height=lambda: self._tip.height + 1,
            tx_context=self._tx_context,
        )
        self.stats = {"accepted": 0, "rejected": 0, "expired": 0}
        self.admit_seconds = Histogram()  # per transaction: the mempool's rules against the state
        self.max_bytes = max_bytes
        # Persistence (see the module docstring): ids storage was told to keep; reloaded ids
        # out for verification (-> when they were first added); whether the pool changed.
        self._persisted: set[bytes] = set()
        self._restoring: dict[bytes, int] = {}
        self._restore_deadline_ms = 0
        self._restored = [0, 0]  # reloaded transactions taken back, refused
        self._dirty = False

    def _account(self, address: bytes) -> Account | None:
        """A confirmed account: from the snapshot of the batch being admitted, else the store."""
        snapshot = self._snapshot
        if snapshot is not None and address in snapshot:
            return snapshot[address]
        return self.store.account(address)

    def _tx_context(self) -> TxContext:
        params, staking = self.store.params, self.store.params.consensus == POS
        return TxContext(
            self._tip.height + 1,
            params.unbonding_delay,
            staking,
            self.store.engine.check_evidence if staking else None,
        )

    def on_receive(self, message: object) -> object:
        match message:
            case AddTxs() | WantTxs():
                if self._waiting or not self._handle(message):
                    self._waiting.append(message)  # in arrival order, after what waits already
            case TipChanged():
                self._on_tip(message)
            case MempoolQuery(address, txid):
                info = {"size": len(self.pool), "bytes": self.pool.bytes}
                if address is not None:
                    info["next_nonce"] = self.pool.next_nonce(address)
                if txid is not None:
                    entry = self.pool.by_id.get(txid)
                    info["tx"] = entry.tx if entry else None
                return info
            case Tick(now_ms):
                self._check_in_step()
                expired = self.pool.expire(now_ms)
                if expired:
                    self._dirty = True
                    self.stats["expired"] += len(expired)
                    log.info("mempool expired txs=%d pending=%d", len(expired), len(self.pool))
                self._persist(now_ms)
            case RestoreMempool():
                self._restore()
            case "stats":
                return dict(self.stats, size=len(self.pool), bytes=self.pool.bytes,
                            admit_seconds=self.admit_seconds.snapshot())
            case _:
                log.warning("unexpected message actor=mempool type=%s", type(message).__name__)
        return None

    def on_stop(self) -> None:
        self._persist(_now_ms(), final=True)  # storage stops after us: it writes this
        for message in self._waiting:  # whoever waits on an answer gets one
            if isinstance(message, AddTxs) and message.reply is not None:
                message.reply.set([ChainError(Code.MEMPOOL_FULL, "the node is stopping")] * len(message.txs))

    def _handle(self, message: AddTxs | WantTxs) -> bool:
        """Admit a batch or answer a template request; False if it must wait for a tip change."""
        if self.store.tip().hash != self._tip.hash:
            return False
        if isinstance(message, WantTxs):
            txs = self.pool.select(max(0, message.max_bytes - self.TEMPLATE_OVERHEAD), message.max_txs,
                                   _now_ms(), message.min_age_ms)
            message.reply_to.tell(BlockTemplateTxs(message.tip_hash, tuple(txs)))
            return True
        results = self._add(message.txs, message.origin)
        if results is _DEFERRED:
            return False
        if message.reply is not None:
            message.reply.set(results)
        return True

    def _drain(self) -> None:
        """Handle what waited for the pool to take in the store's tip, in order, until one has
        to wait again (the store moved on meanwhile)."""
        while self._waiting and self._handle(self._waiting[0]):
            self._waiting.popleft()

    def _add(self, txs: tuple[Transaction, ...], origin: bytes | None) -> list[ChainError | None] | object:
        """Admit each transaction; answers, in order, None for accepted or the error, or
        _DEFERRED (nothing done) if the store has moved past the pool's tip."""
        now = _now_ms()
        started = time.perf_counter()
        results: list[ChainError | None] = []
        accepted: list[Transaction] = []
        # The senders' and recipients' accounts from one read transaction, not one each,
        # and from the state of the pool's tip, not of a block it has not taken in yet.
        addresses = {address_of(tx.sender) for tx in txs}
        addresses.update(tx.recipient for tx in txs)
        tip_hash, self._snapshot = self.store.accounts_at_tip(list(addresses))
        if tip_hash != self._tip.hash:
            self._snapshot = None
            return _DEFERRED
        try:
            restoring = bool(self._restoring)
            for tx in txs:
                # A reloaded transaction keeps the time it first came, for expiry.
                added_ms = self._restoring.pop(tx.id, None) if restoring else None
                try:
                    self.pool.add(tx, added_ms or now)
                except ChainError as e:
                    if added_ms is not None:
                        self._restored[1] += 1
                    results.append(e)
                    if origin is not None:
                        self.refs.tell("network", TxRejected(tx.id, origin, e))
                    continue
                results.append(None)
                accepted.append(tx)
                if added_ms is not None:
                    self._restored[0] += 1
            if restoring and not self._restoring:
                self._end_restore()
        finally:
            self._snapshot = None
        if txs:
            self.admit_seconds.observe((time.perf_counter() - started) / len(txs), len(txs))
        self.stats["accepted"] += len(accepted)
        self.stats["rejected"] += len(txs) - len(accepted)
        if accepted:
            self._dirty = True
            event = TxsAccepted(tuple(accepted), origin)
            self.refs.tell("network", event)
            self.refs.tell("notifier", event)
        return results

    def _on_tip(self, change: TipChanged) -> None:
        """Take the change in the backlog; apply the backlog once the store is at its tip."""
        self._backlog_senders.update(
            address_of(tx.sender) for block in change.connected + change.disconnected for tx in block.txs
        )
        # Disconnected blocks are listed tip first; their transactions return oldest first.
        self._backlog_returned.extend(tx for block in reversed(change.disconnected) for tx in block.txs)
        self._backlog_reorg = self._backlog_reorg or bool(change.disconnected)
        self._told = change.tip
        if self._apply_backlog():
            self._drain()

    def _apply_backlog(self) -> bool:
        """Rebuild the senders the told changes touched against the store's state, if that
        state is the last told tip's (else a later TipChanged is on its way: wait for it)."""
        if self.store.tip().hash != self._told.hash:
            return False
        # Only senders with transactions pending here have anything to rebuild (during a
        # sync: none, and reading thousands of accounts per block would be wasted).
        senders = self._backlog_senders & self.pool.by_sender.keys()
        returned = self._backlog_returned
        addresses = set(senders)
        for sender in senders:
            addresses.update(e.tx.recipient for e in self.pool.by_sender.get(sender, ()))
        for tx in returned:
            addresses.add(address_of(tx.sender))
            addresses.add(tx.recipient)
        tip_hash, self._snapshot = self.store.accounts_at_tip(list(addresses))
        if tip_hash != self._told.hash:
            self._snapshot = None
            return False
        self._tip = self._told
        try:
            kept, dropped = self.pool.rebuild(senders, returned, _now_ms())
        finally:
            self._snapshot = None
        self._dirty = self._dirty or bool(senders)
        if self._backlog_reorg:
            log.info("mempool after reorganisation kept=%d dropped=%d pending=%d", kept, dropped, len(self.pool))
        self._backlog_senders, self._backlog_returned, self._backlog_reorg = set(), [], False
        return True

    def _check_in_step(self) -> None:
        """Liveness guard, at each tick. Storage tells us of a tip right after committing it,
        so a store tip that has been ahead of the pool for OUT_OF_STEP_S, with the pool still
        not at it, means a tip change never reached us: rebuild every pending sender against
        the store rather than hold admissions for ever."""
        store_tip = self.store.tip()
        if store_tip.hash == self._tip.hash:
            self._ahead = None
            return
        if self._ahead is None or self._ahead[0] != store_tip.hash:
            self._ahead = (store_tip.hash, time.monotonic())
            return
        if time.monotonic() - self._ahead[1] < OUT_OF_STEP_S:
            return
        log.warning("mempool out of step with the store tip=%s pool_tip=%s pending=%d action=rebuild",
                    store_tip.hash.hex()[:16], self._tip.hash.hex()[:16], len(self.pool))
        self._backlog_senders.update(self.pool.by_sender)
        self._told = store_tip
        self._ahead = None
        if self._apply_backlog():
            self._drain()

    # --- persistence ---------------------------------------------------------------------

    def _persist(self, now_ms: int, final: bool = False) -> None:
        """Tell storage what entered and left the pool since the last call: at most
        PERSIST_MAX_BYTES of new transactions (the rest at the next tick), unless `final`."""
        if not self._dirty:
            return
        if self._restoring and now_ms > self._restore_deadline_ms:
            self._end_restore()  # the rest were refused by validation (bad signature): never coming back
        by_id = self.pool.by_id
        removed = self._persisted - by_id.keys() - self._restoring.keys()
        added, size, more = [], 0, False
        for txid in by_id.keys() - self._persisted:
            if size >= PERSIST_MAX_BYTES and not final:
                more = True
                break
            entry = by_id[txid]
            added.append((txid, entry.added_ms, entry.tx.raw))
            size += len(entry.tx.raw)
        if added or removed:
            self.refs.tell("storage", SaveMempool(tuple(added), tuple(removed)))
            self._persisted -= removed
            self._persisted.update(txid for txid, _, _ in added)
        self._dirty = more or bool(self._restoring)

    def _end_restore(self) -> None:
        kept, refused = self._restored
        log.info("mempool restored kept=%d dropped=%d unverified=%d pending=%d", kept, refused,
                 len(self._restoring), len(self.pool))
        self._restoring.clear()
        self._restored = [0, 0]

    def _restore(self) -> None:
        """Send the transactions persisted before the last stop to be verified again; they
        come back as AddTxs, each sender's in nonce order, and are admitted against the tip."""
        records = self.store.load_mempool(self.max_bytes)
        self._persisted = {txid for txid, _, _ in records}
        self._dirty = bool(records)  # what is not taken back is forgotten at the next tick
        ordered, now, expired = [], _now_ms(), 0
        for txid, added_ms, raw in records:
            if now - added_ms > self.pool.expiry_ms:
                expired += 1  # expired while the node was down
                continue
            try:
                tx = decode_tx(raw)
            except ChainError:
                continue
            if tx.id == txid:
                ordered.append(((address_of(tx.sender), tx.nonce, -tx.fee), txid, added_ms, raw))
        if records:
            log.info("mempool restoring txs=%d expired=%d (verified again before they are taken back)",
                     len(ordered), expired)
        if not ordered:
            return
        ordered.sort(key=lambda item: item[0])
        self._restoring = {txid: added_ms for _, txid, added_ms, _ in ordered}
        self._restore_deadline_ms = now + RESTORE_GRACE_MS
        raws = [raw for _, _, _, raw in ordered]
        for start in range(0, len(raws), RESTORE_CHUNK):
            self.refs.tell("validation", TxsReceived(tuple(raws[start : start + RESTORE_CHUNK]), None))
