"""Runs of blocks connected in one write transaction (Store.add_blocks, used during a sync):
the same ledger as block by block, nothing written when any block of the run is refused,
and a crash in the middle of a run leaves the tip where it was before the run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from chain.block import Block
from storage.store import Store
from tests.chainbuilder import ChainBuilder
from tests.storage.replay import replay_state_digest
from tests.storage.test_store import assert_state, assert_tx_index, snapshot

REPO = Path(__file__).resolve().parents[2]


def chain(builder: ChainBuilder, count: int) -> list[Block]:
    return [builder.mine(transfers=[(i % 4, (i + 1) % 4, 10 + i), ((i + 2) % 4, i % 4, 3)]) for i in range(count)]


@pytest.fixture
def builder() -> ChainBuilder:
    return ChainBuilder()


def test_a_run_gives_the_ledger_block_by_block_gives(tmp_path: Path, builder: ChainBuilder) -> None:
    blocks = chain(builder, 12)
    one = Store.open(tmp_path / "one", builder.params)
    run = Store.open(tmp_path / "run", builder.params)
    try:
        singles = [one.add_block(block, block.header.timestamp_ms) for block in blocks]
        results = run.add_blocks(blocks[:5], blocks[-1].header.timestamp_ms)
        assert [r.status for r in results] == ["connected"] * 5
        assert [r.connected for r in results] == [(b,) for b in blocks[:5]]
        assert [r.tip for r in results] == [r.tip for r in singles[:5]]  # heights, weights, state hashes, counts
        assert run.tip() == results[-1].tip
        assert run.add_blocks(blocks[5:], blocks[-1].header.timestamp_ms) is not None
        assert run.tip() == one.tip()
        assert dict(run.iter_accounts()) == dict(one.iter_accounts())
        assert_state(run, builder, blocks[-1].hash)
        assert_tx_index(run, blocks)
    finally:
        one.close()
        run.close()


def test_a_run_with_an_invalid_block_writes_nothing(tmp_path: Path, builder: ChainBuilder) -> None:
    store = Store.open(tmp_path / "node", builder.params)
    try:
        good = chain(builder, 3)
        store.add_block(good[0], good[0].header.timestamp_ms)
        before = snapshot(store)
        # A block that breaks a state rule (spends what its sender does not hold) in the middle.
        bad = builder.mine(transfers=[(0, 1, 10**12)], allow_invalid=True)  # on good[2]
        run = [good[1], good[2], bad]
        assert store.add_blocks(run, bad.header.timestamp_ms) is None
        assert snapshot(store) == before
        assert store.index_entry(good[1].hash) is None  # not even stored as a side block
        # One by one, the good blocks go in and the bad one is refused (and remembered).
        for block in good[1:]:
            assert store.add_block(block, block.header.timestamp_ms).status == "connected"
        assert store.tip().hash == good[2].hash
        assert replay_state_digest(store) == store.state_digest()
    finally:
        store.close()


def test_blocks_that_do_not_extend_the_tip_are_not_a_run(tmp_path: Path, builder: ChainBuilder) -> None:
    store = Store.open(tmp_path / "node", builder.params)
    try:
        blocks = chain(builder, 4)
        now = blocks[-1].header.timestamp_ms
        assert store.add_blocks(blocks[1:], now) is None  # does not start on the tip
        assert store.add_blocks([blocks[0], blocks[2]], now) is None  # a gap
        assert store.tip().height == 0
        assert store.add_blocks(blocks[:2], now) is not None
        assert store.add_blocks(blocks[1:3], now) is None  # blocks[1] is stored already
        assert store.tip().hash == blocks[1].hash
        assert store.add_blocks([], now) == []
    finally:
        store.close()


def test_a_crash_in_the_middle_of_a_run_leaves_the_old_tip(tmp_path: Path, builder: ChainBuilder) -> None:
    """The process dies (os._exit) inside the write transaction, after the run's blocks were
    written but before the commit: reopened, the store is at the tip before the run."""
    blocks = chain(builder, 6)
    store = Store.open(tmp_path / "node", builder.params)
    try:
        store.add_block(blocks[0], blocks[0].header.timestamp_ms)
        tip = store.tip()
    finally:
        store.close()
    raws = tmp_path / "raws"
    raws.mkdir()
    for i, block in enumerate(blocks[1:]):
        (raws / f"{i:03d}").write_bytes(block.raw)
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(REPO)!r})
        from pathlib import Path
        from chain.block import decode_block
        from storage.store import Store
        from tests.chainbuilder import ChainBuilder
        params = ChainBuilder().params
        store = Store.open(Path({str(tmp_path / "node")!r}), params)
        blocks = [decode_block(p.read_bytes()) for p in sorted(Path({str(raws)!r}).iterdir())]
        original = store._switch_to
        done = []
        def dying(txn, block, *args):
            result = original(txn, block, *args)
            done.append(block)
            if len(done) == len(blocks):
                os._exit(9)  # every block of the run written in the transaction, no commit
            return result
        store._switch_to = dying
        store.add_blocks(blocks, blocks[-1].header.timestamp_ms)
        os._exit(0)
    """)
    process = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    assert process.returncode == 9, process.stderr
    store = Store.open(tmp_path / "node", builder.params)
    try:
        assert store.tip() == tip
        assert_state(store, builder, blocks[0].hash)
        assert store.index_entry(blocks[1].hash) is None
        results = store.add_blocks(blocks[1:], blocks[-1].header.timestamp_ms)
        assert results is not None and store.tip().hash == blocks[-1].hash
        assert_state(store, builder, blocks[-1].hash)
    finally:
        store.close()


def test_the_storage_actor_connects_a_sync_in_runs(tmp_path: Path, builder: ChainBuilder) -> None:
    """Blocks far below the best header (a sync) are queued and connected in runs; the last
    ones, near the best header, one by one as they come."""
    import time

    import pykka

    from actors.clock import NetworkClock
    from actors.directory import ActorDirectory
    from actors.messages import AddBlock
    from actors.storage import MAX_RUN_BLOCKS, SYNC_GAP, StorageActor

    class Supervisor:
        failures: list = []

        def actor_failed(self, name: str, error: BaseException) -> None:
            self.failures.append(error)

    blocks = chain(builder, MAX_RUN_BLOCKS + 2 * SYNC_GAP)
    store = Store.open(tmp_path / "node", builder.params)
    supervisor = Supervisor()
    ref = StorageActor.start(supervisor, ActorDirectory(), store, NetworkClock(0))
    try:
        store.add_headers([b.header for b in blocks], blocks[-1].header.timestamp_ms)  # headers first
        for block in blocks:
            ref.tell(AddBlock(block, b"peer"))
        deadline = time.monotonic() + 30
        while store.tip().hash != blocks[-1].hash and time.monotonic() < deadline:
            time.sleep(0.01)
        stats = ref.ask("stats", timeout=10)
    finally:
        ref.stop()
        store.close()
    assert not supervisor.failures
    assert stats["blocks_connected"] == len(blocks)
    assert stats["runs"] >= 1
    store = Store.open(tmp_path / "node", builder.params)
    try:
        assert_state(store, builder, blocks[-1].hash)
    finally:
        store.close()
    assert pykka.ActorRegistry.get_by_class(StorageActor) == []


def test_a_full_run_leaves_room_for_the_blocks_being_fetched() -> None:
    """Queued blocks count against the sync actor's window: a run as long as the window
    would stop the downloads until the timer commits it, a second each time."""
    from actors.storage import MAX_RUN_BLOCKS
    from actors.sync import MAX_IN_FLIGHT, MAX_IN_FLIGHT_PER_PEER

    assert MAX_RUN_BLOCKS + MAX_IN_FLIGHT_PER_PEER <= MAX_IN_FLIGHT
