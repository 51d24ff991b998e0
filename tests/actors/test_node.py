"""A real node in this process: real actors, a real store in tmp_path, real mining processes.

The network is off; transactions come in through `Node.submit_tx` (the API's path) and
blocks through the validation actor (the peers' path). Every wait is bounded, and every
node a test starts is stopped by the fixture even when the test fails.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from actors.messages import AddBlock, BlockReceived, TxsReceived
from actors.node import Node
from actors.validation import SLICE_TXS
from chain.block import HEADER_VERSION, Block, Header, merkle_root
from chain.errors import ChainError, Code
from chain.params import ChainParams
from chain.pow import nonce_proof, search_nonce
from chain.state import Account, state_digest
from chain.tx import BOND, Transaction, sign_tx
from peerledger.config import settings_from_dict
from storage.store import Store, StoreLocked
from tests.chainbuilder import INITIAL_BALANCE, ChainBuilder, key, make_params
from tests.helpers import wait_until
from tests.storage.replay import replay_accounts, replay_state_digest

MINER = key(-1).address
# One mining process does some 10^5..10^6 hashes a second, less on a busy machine: blocks
# come every few tenths of a second, and ASERT holds them near the 200 ms interval.
DIFFICULTY = 30_000
BLOCK_INTERVAL_MS = 200
WAIT_S = 60.0  # generous: the machine may be busy; a healthy node takes a second or two
PARAMS = make_params(difficulty=DIFFICULTY, block_interval_ms=BLOCK_INTERVAL_MS)


def transfer(
    sender: int, recipient: int, amount: int, *, nonce: int, fee: int = 2, params: ChainParams = PARAMS
) -> Transaction:
    to = key(recipient).address
    return sign_tx(key(sender), params.network_id, nonce=nonce, fee=fee, recipient=to, amount=amount)


def node_settings(tmp_path: Path, name: str, *, producer: bool, sections: dict) -> object:
    data: dict = {
        "node": {"data_dir": str(tmp_path / name)},
        "network": {"enabled": False},
        "api": {"enabled": False},
        "producer": {"enabled": producer, "workers": 1, "chunk_nonces": 5_000},
        "validation": {"workers": 0},
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return settings_from_dict(data, tmp_path / f"{name}.toml")


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    """Start a node; every node started is stopped at teardown, whatever happened."""
    nodes: list[Node] = []

    def start(*, producer: bool = True, params: ChainParams = PARAMS, **sections: dict) -> Node:
        settings = node_settings(tmp_path, f"node{len(nodes)}", producer=producer, sections=sections)
        node = Node(settings, params, reward_address=MINER)
        nodes.append(node)
        node.start()
        return node

    yield start
    for node in nodes:
        node.stop()


def height(node: Node) -> int:
    return node.store.tip().height


def confirmed(node: Node, txid: bytes) -> tuple[bytes, int, int] | None:
    return node.store.tx_location(txid)


def reopen(node: Node) -> Store:
    """The stopped node's store, opened again to look at what it left on disk."""
    return Store.open(node.settings.node.data_dir, node.params)


# --- mining and confirming ---------------------------------------------------------------------


def test_node_mines_and_confirms_a_transfer(start_node: Callable[..., Node]) -> None:
    node = start_node()
    wait_until(lambda: height(node) >= 2, WAIT_S, message="the node to mine two blocks")
    assert node.mempool_info(key(0).address)["next_nonce"] == 0

    first = transfer(0, 1, 1_000, nonce=0)
    second = transfer(0, 2, 500, nonce=1, fee=3)
    assert node.submit_tx(first.raw) == first.id
    assert node.submit_tx(second.raw) == second.id
    info = node.mempool_info(key(0).address, txid=second.id)
    assert info["next_nonce"] == 2  # the pool counts its pending transactions
    assert info["tx"] == second or confirmed(node, second.id)

    where = wait_until(lambda: confirmed(node, second.id), WAIT_S, message="the transfers to be confirmed")
    block_hash, at, _ = where
    first_at = confirmed(node, first.id)
    assert first_at is not None and first_at[1] <= at
    block = node.store.block(block_hash)
    assert second in block.txs and node.store.hash_at(at) == block_hash
    assert node.store.account(key(0).address) == Account(INITIAL_BALANCE - 1_002 - 503, 2)
    assert node.store.account(key(1).address).balance == INITIAL_BALANCE + 1_000
    assert node.store.account(key(2).address).balance == INITIAL_BALANCE + 500
    wait_until(lambda: node.mempool_info()["size"] == 0, WAIT_S, message="the mempool to drop them")
    mined = height(node)
    wait_until(lambda: height(node) > mined, WAIT_S, message="mining to go on")

    node.stop()
    store = reopen(node)
    try:
        tip = store.tip()
        assert tip.height > mined
        assert store.state_digest() == replay_state_digest(store)
        accounts = replay_accounts(store)
        assert accounts[MINER].balance == tip.height * PARAMS.block_reward + 2 + 3
        assert sum(a.balance for a in accounts.values()) == 4 * INITIAL_BALANCE + tip.height * PARAMS.block_reward
    finally:
        store.close()


def test_blocks_leave_out_transactions_younger_than_min_tx_age(tmp_path: Path) -> None:
    settings = node_settings(tmp_path, "node", producer=True, sections={"producer": {"min_tx_age_ms": 60_000}})
    node = Node(settings, PARAMS, reward_address=MINER)
    node.start()
    try:
        wait_until(lambda: height(node) >= 1, WAIT_S, message="the node to mine a block")
        tx = transfer(0, 1, 1_000, nonce=0)
        submitted = time.monotonic()
        assert node.submit_tx(tx.raw) == tx.id
        start = height(node)
        wait_until(lambda: height(node) >= start + 3, WAIT_S, message="three more blocks")
        assert time.monotonic() - submitted < 50, "the blocks came too late to show anything"
        assert confirmed(node, tx.id) is None
        assert node.mempool_info(txid=tx.id)["tx"] == tx  # pending, for a later block
    finally:
        node.stop()


def test_a_transaction_index_left_behind_catches_up_when_the_node_starts(
    tmp_path: Path, start_node: Callable[..., Node]
) -> None:
    builder = ChainBuilder(PARAMS)
    blocks = [builder.mine(transfers=[(0, i + 1, 10)]) for i in range(3)]
    store = Store.open(tmp_path / "node0", PARAMS)  # node0's data directory
    for block in blocks:
        store.add_block(block, block.header.timestamp_ms)
    store.close()  # blocks committed, index not: what a power cut between the two commits leaves
    store = Store.open(tmp_path / "node0", PARAMS)
    assert store.index_behind() and store.tx_location(blocks[0].txs[0].id) is None
    store.close()
    node = start_node(producer=False)
    for block in blocks:
        wait_until(lambda block=block: confirmed(node, block.txs[0].id) == (block.hash, block.height, 0), WAIT_S)
    assert not node.store.index_behind()


def test_submit_tx_refusals_carry_their_codes(start_node: Callable[..., Node]) -> None:
    node = start_node(producer=False, mempool={"min_fee": 2})

    def code(raw: bytes) -> Code:
        with pytest.raises(ChainError) as info:
            node.submit_tx(raw)
        return info.value.code

    good = transfer(0, 1, 10, nonce=0)
    flipped_signature = good.raw[:-1] + bytes([good.raw[-1] ^ 1])
    assert code(flipped_signature) == Code.BAD_SIGNATURE
    amount_at = 1 + 32 + 8 + 8 + 20 + 7  # kind, sender, nonce, fee, recipient, low byte of amount
    flipped_amount = good.raw[:amount_at] + bytes([good.raw[amount_at] ^ 1]) + good.raw[amount_at + 1 :]
    assert code(flipped_amount) == Code.BAD_SIGNATURE
    assert code(transfer(0, 1, 10, nonce=0, params=make_params(name="elsewhere")).raw) == Code.BAD_SIGNATURE
    assert code(transfer(0, 1, 10, nonce=3).raw) == Code.WRONG_NONCE
    assert code(transfer(0, 1, INITIAL_BALANCE, nonce=0).raw) == Code.INSUFFICIENT_FUNDS
    assert code(transfer(5, 1, 10, nonce=0).raw) == Code.INSUFFICIENT_FUNDS  # an account with nothing
    assert code(transfer(0, 1, 10, nonce=0, fee=1).raw) == Code.FEE_TOO_LOW
    for junk in (good.raw[:-1], good.raw + b"\x00", b"", bytes([9]) + good.raw[1:]):
        assert code(junk) == Code.BAD_ENCODING
    assert node.submit_tx(good.raw) == good.id
    assert code(good.raw) == Code.DUPLICATE
    assert code(transfer(0, 1, 11, nonce=0, fee=2).raw) == Code.FEE_TOO_LOW  # replacing needs more
    bond = sign_tx(key(1), PARAMS.network_id, kind=BOND, nonce=0, fee=2, amount=10)
    assert code(bond.raw) == Code.BAD_BLOCK  # no Proof of Work block can hold a bond
    assert node.mempool_info() == {"size": 1, "bytes": good.size}


def test_a_transaction_no_block_can_hold_does_not_stall_mining(start_node: Callable[..., Node]) -> None:
    node = start_node()
    wait_until(lambda: height(node) >= 1, WAIT_S, message="the first block")
    bond = sign_tx(key(1), PARAMS.network_id, kind=BOND, nonce=0, fee=50, amount=10)
    with pytest.raises(ChainError):
        node.submit_tx(bond.raw)
    pay = transfer(1, 2, 10, nonce=0)
    node.submit_tx(pay.raw)
    wait_until(lambda: confirmed(node, pay.id), WAIT_S, message="the transfer to be confirmed")


# --- blocks from peers ---------------------------------------------------------------------------------


def test_blocks_from_peers_confirm_and_reorganisations_return_transactions(start_node: Callable[..., Node]) -> None:
    node = start_node(producer=False)
    builder = ChainBuilder(PARAMS)
    other = key(9).address

    def feed(*blocks: Block) -> None:
        for block in blocks:
            node.refs.validation.tell(BlockReceived(block.raw, b"peer-1"))
        wait_until(lambda: node.store.tip().hash == blocks[-1].hash, WAIT_S, message="the blocks to be connected")

    def pending() -> Transaction | None:
        return node.pending_tx(pay.id)

    pay = builder.transfer(0, 1, 100, nonce=0, fee=2)
    node.submit_tx(pay.raw)
    assert pending() == pay
    a1 = builder.mine([pay])
    a2 = builder.mine()
    feed(a1, a2)
    assert pending() is None and node.mempool_info()["size"] == 0  # confirmed: out of the pool
    assert confirmed(node, pay.id) == (a1.hash, 1, 0)

    # A heavier branch without it: the transaction is pending again, not lost.
    b = [builder.mine(parent=builder.genesis.hash, producer=other)]
    for _ in range(2):
        b.append(builder.mine(parent=b[-1].hash, producer=other))
    feed(*b)
    assert confirmed(node, pay.id) is None
    wait_until(lambda: pending() == pay, WAIT_S, message="the transaction to return to the mempool")
    assert node.mempool_info(key(0).address)["next_nonce"] == 1

    # And back: confirmed again, gone from the pool again.
    a3 = builder.mine(parent=a2.hash)
    a4 = builder.mine(parent=a3.hash)
    feed(a3, a4)
    assert confirmed(node, pay.id) == (a1.hash, 1, 0)
    wait_until(lambda: pending() is None, WAIT_S, message="the transaction to leave the mempool")
    assert node.store.state_digest() == state_digest(builder.state(a4.hash).items())


# --- the signature cache ----------------------------------------------------------------------------


def test_a_transaction_verified_at_submission_is_not_verified_again_in_its_block(
    start_node: Callable[..., Node],
) -> None:
    node = start_node()
    wait_until(lambda: height(node) >= 1, WAIT_S, message="the first block")
    start = node.validation_stats()
    pay = transfer(2, 3, 77, nonce=0)
    node.submit_tx(pay.raw)
    submitted = node.validation_stats()
    assert submitted["verified"] == start["verified"] + 1
    block_hash, _, _ = wait_until(lambda: confirmed(node, pay.id), WAIT_S, message="the transfer to be confirmed")

    # The mined block comes back from a "peer": its transaction is found in the cache.
    node.refs.validation.tell(BlockReceived(node.store.block_raw(block_hash), b"peer-1"))
    after = node.validation_stats()  # answered after the block: one inbox, in order
    assert after["verified"] == submitted["verified"]
    assert after["cache_hits"] == submitted["cache_hits"] + 1
    assert after["block_txs_unseen"] == start["block_txs_unseen"]

    # A block with a transaction never seen costs a verification (the counter is live).
    fresh = transfer(3, 2, 5, nonce=0)
    tip = node.store.tip()
    template = Header(HEADER_VERSION, tip.height + 1, tip.hash, merkle_root([fresh.id]), tip.timestamp_ms + 1,
                      1, MINER, nonce_proof(0))
    nonce = search_nonce(template.without_proof(), 1, 0, 10)
    stranger = Block(template.with_proof(nonce_proof(nonce)), (fresh,))
    node.refs.validation.tell(BlockReceived(stranger.raw, b"peer-1"))
    later = node.validation_stats()
    assert later["verified"] == after["verified"] + 1
    assert later["cache_hits"] == after["cache_hits"]
    assert later["block_txs_unseen"] == after["block_txs_unseen"] + 1
    # Its wrong difficulty is the storage actor's business: refused, the node goes on.
    assert node.store.index_entry(stranger.hash) is None
    mined = height(node)
    wait_until(lambda: height(node) > mined, WAIT_S, message="mining to go on")


def test_a_block_that_overtakes_a_batch_of_its_transactions_does_not_get_them_verified_twice(
    start_node: Callable[..., Node],
) -> None:
    # A node whose transaction pipeline lags its blocks: a batch of 200 transfers is queued
    # for verification when the block holding them arrives. Blocks go first, so the block
    # verifies them; the batch must then find them in the cache, not verify them again.
    node = start_node(producer=False)
    txs = [transfer(2, 3, 10, nonce=n) for n in range(200)]
    block = ChainBuilder(PARAMS).mine(txs)
    start = node.validation_stats()

    node.refs.validation.tell(TxsReceived(tuple(tx.raw for tx in txs), b"peer-1"))
    node.refs.validation.tell(BlockReceived(block.raw, b"peer-2"))
    wait_until(lambda: height(node) == 1, WAIT_S, message="the block to be connected")
    wait_until(lambda: node.validation_stats()["batches_queued"] == 0, WAIT_S, message="the batch to be done")
    end = node.validation_stats()
    assert end["verified"] - start["verified"] == len(txs), "a transaction's signature was verified twice"
    assert end["cache_hits"] - start["cache_hits"] >= len(txs) - SLICE_TXS  # the batch found the block's work


def test_chunks_waiting_for_a_worker_skip_what_another_job_verified_meanwhile(
    start_node: Callable[..., Node],
) -> None:
    # One worker, which holds three chunks at a time (one running, two queued): four batches
    # of 150 transfers (a chunk each) and the block holding all 600 arrive before it has
    # answered. Batches 1-3 go out; batch 4 and the block's chunk wait. When batch 1 is
    # answered, batch 4 goes out; when batch 2 is, the block's chunk goes, without the 300
    # verified by then: 900 verifications, where sending the chunk as it was queued made 1,200.
    node = start_node(producer=False, validation={"workers": 1, "batch_min": 10})
    txs = [transfer(2, 3, 10, nonce=n) for n in range(600)]
    block = ChainBuilder(PARAMS).mine(txs)
    start = node.validation_stats()

    for i in range(0, 600, 150):
        node.refs.validation.tell(TxsReceived(tuple(tx.raw for tx in txs[i : i + 150]), b"peer-1"))
    node.refs.validation.tell(BlockReceived(block.raw, b"peer-2"))
    wait_until(lambda: height(node) == 1, WAIT_S, message="the block to be connected")
    wait_until(lambda: node.validation_stats()["batches_queued"] == 0, WAIT_S, message="the batches to be done")
    end = node.validation_stats()
    assert end["verified_by_workers"] - start["verified_by_workers"] == 900
    assert end["verified"] - start["verified"] == 900
    assert all(confirmed(node, tx.id) is not None for tx in txs)


# --- stopping -----------------------------------------------------------------------------------------


def child_processes() -> list[str]:
    """Command lines of this process's live children, from /proc."""
    me = str(os.getpid())
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue  # gone meanwhile
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[1] == me and fields[0] != "Z":
            children.append(cmdline)
    return children


def node_children() -> list[str]:
    # multiprocessing's resource tracker is started once per process, on first use of a
    # spawn context, and serves it until exit: it is not the node's.
    return [c for c in child_processes() if "resource_tracker" not in c]


def test_stop_is_quick_and_leaves_no_threads_or_processes(start_node: Callable[..., Node]) -> None:
    threads_before = set(threading.enumerate())
    # Signatures in a process pool too (batch_min 1), so that both pools must be shut down.
    node = start_node(validation={"workers": 1, "batch_min": 1})
    wait_until(lambda: height(node) >= 1, WAIT_S, message="the first block")
    node.submit_tx(transfer(0, 1, 5, nonce=0).raw)
    assert node_children(), "the node runs its mining and verifying processes"

    started = time.monotonic()
    node.stop()
    assert time.monotonic() - started < 5.0
    node.stop()  # idempotent

    lingering = [t for t in threading.enumerate() if t not in threads_before and t.is_alive() and not t.daemon]
    assert lingering == []
    wait_until(lambda: not any(t.is_alive() for t in threading.enumerate() if t not in threads_before),
               10, message="the node's daemon threads to end")
    assert multiprocessing.active_children() == []
    assert node_children() == []
    with pytest.raises(TimeoutError):
        node.submit_tx(transfer(0, 1, 5, nonce=1).raw)


def test_a_second_node_on_the_same_data_directory_does_not_start(
    start_node: Callable[..., Node], tmp_path: Path
) -> None:
    first = start_node(producer=False, node={"data_dir": str(tmp_path / "shared")})
    with pytest.raises(StoreLocked, match="in use by another peerledger process"):
        start_node(producer=False, node={"data_dir": str(tmp_path / "shared")})
    pay = transfer(0, 1, 5, nonce=0)
    assert first.submit_tx(pay.raw) == pay.id  # the first one is undisturbed
    assert first.mempool_info()["size"] == 1


def test_an_actor_failure_stops_the_node_with_its_reason(
    start_node: Callable[..., Node], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="actors")
    node = start_node(producer=False)
    assert not node.wait(0.05)
    # The store closes under the storage actor: the next block it is told to add fails.
    node.store.close()
    block = ChainBuilder(PARAMS).mine()
    node.refs.storage.tell(AddBlock(block, None))
    assert node.wait(WAIT_S)
    assert "storage" in node.stop_reason and "closed" in node.stop_reason
    assert any("actor failed actor=storage" in r.getMessage() for r in caplog.records)
    started = time.monotonic()
    node.stop()
    assert time.monotonic() - started < 5.0


def test_a_mining_worker_killed_outside_a_stop_does_not_stop_mining(start_node):
    # The OOM killer, say: the worker's chunk is reported lost, a fresh worker takes its
    # place at once, and mining goes on.
    import signal

    node = start_node()
    wait_until(lambda: height(node) >= 2, WAIT_S)
    for child in multiprocessing.active_children():
        os.kill(child.pid, signal.SIGKILL)
    wait_until(lambda: node.producer_stats()["worker_restarts"] >= 1, WAIT_S)
    mined = height(node)
    wait_until(lambda: height(node) >= mined + 3, WAIT_S)
