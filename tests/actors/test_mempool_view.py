"""The mempool actor judges admissions against the tip it has taken in, not against a store
that has already moved on (actors.mempool, "one view of the chain").

Storage commits a block and only then tells the mempool; transactions that reach the
mempool in between must neither be mistaken for replacements of what the block confirmed
nor refused for a gap that the block's TipChanged is about to fill. A real store in
tmp_path, a real MempoolActor; blocks are committed to the store directly, and the
TipChanged storage would send is told by the test when it chooses.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pykka
import pytest

from actors.directory import ActorDirectory
from actors.mempool import MempoolActor
from actors.messages import AddTxs, MempoolQuery, TipChanged
from chain.tx import Transaction
from storage.store import Store
from tests.chainbuilder import ChainBuilder

WAIT_S = 10.0


class _Supervisor:
    def __init__(self) -> None:
        self.failures: list[BaseException] = []

    def actor_failed(self, name: str, error: BaseException) -> None:
        self.failures.append(error)


@pytest.fixture
def builder() -> ChainBuilder:
    return ChainBuilder()


@pytest.fixture
def store(tmp_path: Path, builder: ChainBuilder) -> Iterator[Store]:
    s = Store.open(tmp_path / "data", builder.params)
    yield s
    s.close()


@pytest.fixture
def mempool(store: Store) -> Iterator[pykka.ActorRef]:
    refs = ActorDirectory()
    supervisor = _Supervisor()
    ref = MempoolActor.start(supervisor, refs, store, max_bytes=1_000_000, min_fee=1, max_per_sender=16,
                             expiry_s=3600)
    refs.mempool = ref
    yield ref
    ref.stop()
    assert not supervisor.failures


def submit(mempool: pykka.ActorRef, tx: Transaction) -> pykka.ThreadingFuture:
    reply = pykka.ThreadingFuture()
    mempool.tell(AddTxs((tx,), None, reply))
    return reply


def pending(mempool: pykka.ActorRef, tx: Transaction) -> bool:
    return mempool.ask(MempoolQuery(txid=tx.id), timeout=WAIT_S)["tx"] is not None


def connect(store: Store, block) -> TipChanged:  # noqa: ANN001 - a Block
    result = store.add_block(block, block.header.timestamp_ms)
    assert result.status in ("connected", "reorganized")
    return TipChanged(result.tip, result.connected, result.disconnected)


def test_next_nonce_arriving_before_the_tip_change_is_not_taken_for_a_replacement(
    builder: ChainBuilder, store: Store, mempool: pykka.ActorRef
) -> None:
    first = builder.transfer(0, 1, 10, nonce=0)
    second = builder.transfer(0, 1, 10, nonce=1)  # same fee: as a replacement of `first` it is refused
    assert submit(mempool, first).get(timeout=WAIT_S) == [None]
    change = connect(store, builder.mine([first]))  # committed; the mempool has not been told
    reply = submit(mempool, second)
    mempool.tell(change)
    assert reply.get(timeout=WAIT_S) == [None]
    assert pending(mempool, second) and not pending(mempool, first)


def test_a_gap_that_the_pending_reorganisation_fills_is_not_refused(
    builder: ChainBuilder, store: Store, mempool: pykka.ActorRef
) -> None:
    first = builder.transfer(0, 1, 10, nonce=0)
    second = builder.transfer(0, 1, 10, nonce=1)
    genesis = builder.tip.hash
    assert submit(mempool, first).get(timeout=WAIT_S) == [None]
    mempool.tell(connect(store, builder.mine([first])))  # first confirmed, and the mempool knows
    # A heavier branch without `first` wins: `first` is pending again once the mempool has
    # taken the reorganisation in, and `second`, arriving before that, must wait for it.
    side = builder.mine(parent=genesis)
    store.add_block(side, side.header.timestamp_ms)
    change = connect(store, builder.mine(parent=side.hash))
    assert change.disconnected
    reply = submit(mempool, second)
    mempool.tell(change)
    assert reply.get(timeout=WAIT_S) == [None]
    assert pending(mempool, first) and pending(mempool, second)


def test_tip_changes_told_while_the_store_is_further_on_are_applied_together(
    builder: ChainBuilder, store: Store, mempool: pykka.ActorRef
) -> None:
    txs = [builder.transfer(0, 1, 10, nonce=n) for n in range(3)]
    for tx in txs:
        assert submit(mempool, tx).get(timeout=WAIT_S) == [None]
    changes = [connect(store, builder.mine([tx])) for tx in txs[:2]]  # two blocks, nothing told yet
    late = builder.transfer(0, 1, 10, nonce=3)
    reply = submit(mempool, late)
    for change in changes:
        mempool.tell(change)
    assert reply.get(timeout=WAIT_S) == [None]
    assert [pending(mempool, tx) for tx in [*txs, late]] == [False, False, True, True]
