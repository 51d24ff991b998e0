"""kill -9 a mining node again and again, with transfers flowing in, and check after every
crash that nothing the node had reported was lost and that its ledger is exactly the replay
of its own chain.

What the node's API reports is committed (LMDB with sync on commits before the tip moves in
memory), so after a crash the node must come back at or above the last height it showed,
with every tip it showed still on its main chain and every state hash it showed equal to
the state replayed from genesis up to that block. A lone node never reorganises, so nothing
it reported may be taken back.

The kill moments are random but seeded (CRASH_SEED in the environment replays a run).
"""

from __future__ import annotations

import os
import random
import threading
import time
from dataclasses import dataclass, field

from chain.block import check_block_shape
from chain.consensus import check_header_context
from chain.keys import address_to_text, verify
from chain.params import POS, genesis_accounts
from chain.state import Account, TxContext, apply_block, state_digest, state_hash_hex
from chain.tx import sign_tx
from peerledger.client import ApiClient, ApiClientError
from tests.nodes import FUNDED, NodeProcess
from tests.storage.replay import replay_state_digest

KILLS = 30
SEED = int(os.environ.get("CRASH_SEED", "20240611"))
MAX_RUN_S = 3.0  # longest stretch a node runs before it is killed (the first block takes ~1 s)
BUDGET_S = 150.0  # stop early (with at least MIN_KILLS) rather than run past ~3 minutes
MIN_KILLS = 20
TRICKLE_PER_S = 15


@dataclass
class Seen:
    """What the API reported: height -> (tip hash, state hash), and the highest height."""

    tips: dict[int, tuple[str, str]] = field(default_factory=dict)
    last_height: int = 0

    def record(self, status: dict) -> None:
        height = status["height"]
        tip = (status["tip"], status["state_hash"])
        old = self.tips.setdefault(height, tip)
        assert old == tip, f"the API reported two different tips at height {height}: {old} and {tip}"
        self.last_height = max(self.last_height, height)


class Trickle(threading.Thread):
    """Submits transfers through the API at a steady rate, whether the node is up or not."""

    def __init__(self, node: NodeProcess, rng: random.Random) -> None:
        super().__init__(name="trickle", daemon=True)
        self.client = ApiClient(*node.api_address, timeout=2.0)
        self.rng = rng
        self.stopping = threading.Event()
        self.accepted = 0
        self.refused: dict[str, int] = {}
        self.crashed: BaseException | None = None  # anything but ApiClientError is a bug to report

    def run(self) -> None:
        network_id = None
        period = 1.0 / TRICKLE_PER_S
        while not self.stopping.wait(period):
            try:
                network_id = network_id or bytes.fromhex(self.client.status()["network_id"])
                sender = self.rng.choice(FUNDED)
                recipient = self.rng.choice([k for k in FUNDED if k is not sender])
                nonce = self.client.account(address_to_text(sender.address))["next_nonce"]
                tx = sign_tx(sender, network_id, nonce=nonce, fee=self.rng.randint(1, 5000),
                             recipient=recipient.address, amount=self.rng.randint(1, 10_000))
                self.client.submit(tx.raw)
                self.accepted += 1
            except ApiClientError as e:  # the node is down or restarting, or lost its mempool
                self.refused[e.code] = self.refused.get(e.code, 0) + 1
            except Exception as e:  # noqa: BLE001 - kept for the test to fail on
                self.crashed = e
                return

    def stop(self) -> None:
        self.stopping.set()
        self.join(10)
        assert not self.is_alive(), "the transaction trickle did not stop"
        assert self.crashed is None, f"the API client failed outside its contract: {self.crashed!r}"


def check_store(node: NodeProcess, seen: Seen) -> tuple[int, int]:
    """Open the stopped node's store and check it against everything the API reported.

    Replays the main chain from genesis (every header against its context, every block's
    shape and signatures, every state transition) and compares the state after each block
    with what the API said at that height. Answers (height, transactions on the chain).
    """
    with node.open_store() as store:
        params = store.params
        tip = store.tip()
        assert tip.height >= seen.last_height, (
            f"the store is at height {tip.height} after the crash, but the API had shown {seen.last_height}"
        )
        accounts: dict[bytes, Account] = genesis_accounts(params)
        staking = params.consensus == POS
        now_ms = int(time.time() * 1000)
        txs = 0
        for height in range(1, tip.height + 1):
            block = store.block(store.hash_at(height))
            assert block is not None, f"main-chain block at height {height} is missing"
            check_header_context(store.engine, block.header, store.header_context(block.header.prev_hash), now_ms)
            check_block_shape(block, params.max_block_bytes, params.max_block_txs)
            for tx in block.txs:
                assert verify(tx.sender, tx.signing_message(params.network_id), tx.signature), (
                    f"bad signature in block {height}"
                )
            change = apply_block(accounts.get, block.txs, block.header.producer, params.block_reward,
                                 TxContext(height, params.unbonding_delay, staking))
            accounts.update(change.updated)
            txs += len(block.txs)
            if height in seen.tips:
                shown_tip, shown_state = seen.tips[height]
                assert block.hash.hex() == shown_tip, f"the block the API showed at height {height} was lost"
                assert state_hash_hex(state_digest(accounts.items())) == shown_state, (
                    f"the API showed state {shown_state[:16]} at height {height}; the replay gives another"
                )
        digest = state_digest(accounts.items())
        assert digest == replay_state_digest(store) == store.state_digest(), "replay and store disagree"
        assert dict(store.iter_accounts()) == accounts, "stored accounts differ from the replay"
        return tip.height, txs


def test_kill_9_at_random_moments_loses_nothing_reported(nodes):
    rng = random.Random(SEED)
    node = nodes.start_node()
    seen = Seen()
    trickle = Trickle(node, random.Random(SEED + 1))
    trickle.start()
    started = time.monotonic()
    rounds: list[str] = []
    height = txs = 0
    try:
        for round_number in range(1, KILLS + 1):
            status = node.status()
            seen_before = seen.last_height
            assert status["height"] >= seen_before, (
                f"restart {round_number}: height {status['height']} is below {seen_before}, shown before the kill"
            )
            seen.record(status)
            delay = rng.uniform(0.05, MAX_RUN_S)
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline:  # watch what the API reports until the kill
                seen.record(node.status())
                time.sleep(0.02)
            this_run = _last_start(node.log_text())
            assert "ERROR" not in this_run and "Traceback" not in this_run, node.describe()
            node.kill()
            node.assert_nothing_left()  # orphaned workers notice and exit by themselves
            height, txs = check_store(node, seen)
            rounds.append(f"kill {round_number:2d} after {delay:4.2f} s: shown {seen.last_height:3d}, "
                          f"stored {height:3d}, {txs} txs on chain")
            node.start()
            this_run = _last_start(node.log_text())
            assert "node started" in this_run and "damaged" not in this_run, node.describe()
            elapsed = time.monotonic() - started
            if round_number >= MIN_KILLS and elapsed > BUDGET_S:
                break
        status = node.status()
        assert status["height"] >= seen.last_height
        seen.record(status)
        trickle.stop()
        assert node.stop() == 0
        height, txs = check_store(node, seen)
        assert txs > 0, "no transaction reached a block: the crashes were not tested under load"
        assert "damaged" not in node.log_text()
    finally:
        trickle.stopping.set()
        trickle.join(10)
        print(f"\ncrash safety (seed {SEED}): {len(rounds)} kills in {time.monotonic() - started:.1f} s, "
              f"final height {height}, {txs} transactions on chain, {trickle.accepted} submitted, "
              f"refused {trickle.refused}")
        print("\n".join(rounds))


def _last_start(log: str) -> str:
    """The log of the latest run only (the harness marks each start)."""
    return log.rsplit("----- start ", 1)[-1]
