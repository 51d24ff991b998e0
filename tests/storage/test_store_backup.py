"""Backups of a real LMDB store and their restore; the persisted mempool records.

What a restore must refuse (another network, a truncated or altered copy, an unfinished
one, a ledger that holds blocks, a locked directory) and that closing a store never waits
for a backup in progress. The scenarios over real node processes are in tests/ops.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from storage.store import (
    BACKUP_DATA,
    BACKUP_MANIFEST,
    BackupError,
    Store,
    StoreLocked,
    read_backup,
    restore_backup,
)
from tests.chainbuilder import ChainBuilder, make_params


@pytest.fixture
def chain() -> tuple[ChainBuilder, list]:
    builder = ChainBuilder()
    blocks = [builder.mine(transfers=[(0, 1, 1000)]) for _ in range(3)] + builder.mine_many(2)
    return builder, blocks


def filled(path: Path, builder: ChainBuilder, blocks: list) -> Store:
    store = Store.open(path, builder.params)
    for block in blocks:
        store.add_block(block, block.header.timestamp_ms)
    return store


def test_a_backup_restores_to_the_same_tip_and_state(tmp_path, chain):
    builder, blocks = chain
    store = filled(tmp_path / "a", builder, blocks)
    store.save_peers({b"p" * 32: b"record"})
    store.save_mempool([(b"t" * 32, 7, b"raw")], [])
    info = store.backup(tmp_path / "bk")
    tip, digest = store.tip(), store.state_digest()
    store.close()

    assert (info.height, info.tip, info.state_hash) == (tip.height, tip.hash.hex(), tip.state_hash)
    manifest = json.loads((tmp_path / "bk" / BACKUP_MANIFEST).read_text())
    assert manifest["format"] == 1 and manifest["network_id"] == builder.params.network_id.hex()
    assert read_backup(tmp_path / "bk") == info
    assert restore_backup(tmp_path / "bk", tmp_path / "b", builder.params) == info
    restored = Store.open(tmp_path / "b", builder.params)
    try:
        assert restored.tip() == tip and restored.state_digest() == digest
        assert restored.load_mempool(1000) == [(b"t" * 32, 7, b"raw")]
        assert restored.load_peers() == {}, "the peer book belongs to the node that made the backup"
    finally:
        restored.close()


def test_restore_refuses_what_it_should(tmp_path, chain):
    builder, blocks = chain
    store = filled(tmp_path / "a", builder, blocks)
    store.backup(tmp_path / "bk")
    with pytest.raises(BackupError, match="not an empty directory"):
        store.backup(tmp_path / "bk")
    with pytest.raises(StoreLocked, match="Stop the node"):
        restore_backup(tmp_path / "bk", tmp_path / "a", builder.params, force=True)
    store.close()
    with pytest.raises(BackupError, match="at height 5.*--force"):
        restore_backup(tmp_path / "bk", tmp_path / "a", builder.params)
    with pytest.raises(BackupError, match="network"):
        restore_backup(tmp_path / "bk", tmp_path / "c", make_params(block_reward=1))

    altered = tmp_path / "altered"
    altered.mkdir()
    for name in (BACKUP_DATA, BACKUP_MANIFEST):
        (altered / name).write_bytes((tmp_path / "bk" / name).read_bytes())
    with open(altered / BACKUP_DATA, "r+b") as f:
        f.seek(8192 + 100)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(BackupError, match="checksum"):
        restore_backup(altered, tmp_path / "d", builder.params)
    assert not (tmp_path / "d" / "ledger").exists(), "a damaged copy was put in place"
    with open(altered / BACKUP_DATA, "r+b") as f:
        f.truncate(4096)
    with pytest.raises(BackupError, match="truncated"):
        restore_backup(altered, tmp_path / "d", builder.params)
    (altered / BACKUP_MANIFEST).unlink()
    with pytest.raises(BackupError, match="did not finish"):
        restore_backup(altered, tmp_path / "d", builder.params)

    restore_backup(tmp_path / "bk", tmp_path / "a", builder.params, force=True)  # forced: fine


def test_closing_the_store_abandons_a_backup_in_progress(tmp_path, chain):
    builder, blocks = chain
    store = filled(tmp_path / "a", builder, blocks)
    for _ in range(16):  # ~40 MB, so that the copy is likely to be running when the store closes
        store.save_mempool([(os.urandom(32), 1, bytes(220)) for _ in range(10_000)], [])
    outcome: dict[str, object] = {}

    def back_up() -> None:
        try:
            outcome["info"] = store.backup(tmp_path / "bk")
        except BackupError as e:
            outcome["error"] = str(e)

    thread = threading.Thread(target=back_up)
    thread.start()
    time.sleep(0.02)
    started = time.monotonic()
    store.close()
    closed_after = time.monotonic() - started
    thread.join(10)
    assert not thread.is_alive()
    assert closed_after < 2.0, f"close waited {closed_after:.1f} s for the backup"
    if "error" in outcome:  # abandoned (the usual case): nothing half-written is left
        assert "abandoned" in outcome["error"] or "closing" in outcome["error"], outcome
        assert not (tmp_path / "bk").exists()
    else:  # it had finished first: then it is whole
        assert read_backup(tmp_path / "bk") == outcome["info"]


def test_mempool_records_are_saved_removed_and_loaded_within_a_bound(tmp_path, chain):
    builder, _ = chain
    store = Store.open(tmp_path / "a", builder.params)
    try:
        store.save_mempool([(bytes([i]) * 32, i, bytes(100)) for i in range(10)], [])
        store.save_mempool([], [bytes([i]) * 32 for i in range(5)])
        assert [txid[0] for txid, _, _ in store.load_mempool(10_000)] == [5, 6, 7, 8, 9]
        assert len(store.load_mempool(250)) == 2  # the mempool's own byte cap
    finally:
        store.close()
