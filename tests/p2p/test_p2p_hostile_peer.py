"""Hostile peers are banned while honest nodes keep relaying and confirming through the victim.

A victim node (not mining) sits between two honest nodes that dial it: one mines, the
other is where a steady stream of transfers is submitted, so every transfer has to cross
the victim to be mined, and its block has to cross the victim back to be confirmed there.

Hostile clients (tests/p2p/hostile.py: pyzmq CURVE DEALERs with their own keys, speaking
the real wire format) attack the victim one after the other, each with one kind of abuse:
malformed frames, oversized frames (over a type's limit, and over the socket's size
limit), frames and a handshake of another network, unrequested transactions, a block pushed
unasked without its proof of work, invalid blocks offered through the normal inventory exchange (bad proof of work; a valid
proof of work but a bad signature inside), and invalid transactions offered the same way.
Each attacker must end up banned: the victim's GET /peers lists the ban, a PING it sends
afterwards gets no PONG, and a fresh connection with the same key is refused by the
victim's CURVE authentication. Throughout, every transfer submitted at the honest node is
confirmed at the victim within a bounded time, and no honest node is ever penalised.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import Self

import pytest

from chain.encoding import sha256
from chain.tx import sign_tx
from peerledger.client import ApiClientError
from tests.helpers import wait_until
from tests.nodes import FUNDED, P2P, Network, NodeProcess, merge
from tests.p2p.hostile import (
    HostileClient,
    block_on_genesis,
    connect,
    malformed_frames,
    offer_block,
    oversized_frames,
    peer_entry,
    score_of,
    scored_or_banned,
    with_bad_signature,
)
from transport.loop import MAX_MESSAGE_BYTES
from transport.messages import Block, GetData, Inv, InvItem, InvKind, Ping, Pong, Txs

BAN_TIMEOUT_S = 15.0  # from the last offending message to the ban showing in GET /peers
CONFIRM_BOUND_S = 45.0  # the slowest a transfer may take to be confirmed at the victim
SILENCE_S = 2.0  # how long a banned peer's PING waits for a PONG that must not come


class TransferStream:
    """Submits transfers at one node, one at a time, each waited for (bounded) until it is
    confirmed at another node; records how long each took. Runs in a thread."""

    def __init__(self, network: Network, submit_at: NodeProcess, confirm_at: NodeProcess, sender: int) -> None:
        self.network, self.submit_at, self.confirm_at, self.sender = network, submit_at, confirm_at, sender
        self.latencies: list[float] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="transfers", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(CONFIRM_BOUND_S + 10)

    def _run(self) -> None:
        nonce = 0
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                txid = self.submit_at.submit(self.network.transfer(self.sender, nonce, amount=100 + nonce))
                nonce += 1
                wait_until(lambda txid=txid: self.confirm_at.tx_status(txid) == "confirmed", CONFIRM_BOUND_S, interval=0.1,
                           ignore=(ApiClientError,),
                           message=f"transfer {nonce} submitted at {self.submit_at.name} to be confirmed at "
                                   f"{self.confirm_at.name}")
                self.latencies.append(time.monotonic() - started)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e


@pytest.fixture
def cluster(nodes: Network):
    """(victim, miner, submitter): the honest miner and submitter dial the victim only."""
    # max_outbound 1: the honest nodes dial the victim and nobody else, so they never meet
    # directly through peer exchange and everything between them crosses the victim.
    only_victim = merge(P2P, {"network": {"max_outbound": 1}})
    victim = nodes.add_node(merge(P2P, {"producer": {"enabled": False}}), name="victim")
    miner = nodes.add_node(only_victim, name="miner")
    submitter = nodes.add_node(merge(only_victim, {"producer": {"enabled": False}}), name="submitter")
    miner.dial(victim)
    submitter.dial(victim)
    nodes.start(victim, miner, submitter)
    nodes.wait_ready_peers(victim, [miner, submitter])
    nodes.wait_converged([victim, miner, submitter], 60, min_height=2)
    return victim, miner, submitter


# --- the attacks: each gets a fresh, handshaken client and abuses the victim until it is banned


def attack_with_frames(frames: list[tuple[str, tuple[bytes, ...]]]) -> Callable:
    def attack(victim: NodeProcess, client: HostileClient, params, network: Network) -> None:
        for label, parts in frames * 10:  # bounded: every frame costs points, a ban must come
            if client.node_id in victim.banned():
                return
            before = score_of(victim, client.node_id) or 0
            client.send_frame(*parts)
            wait_until(lambda before=before: scored_or_banned(victim, client, before), BAN_TIMEOUT_S, interval=0.05,
                       message=f"the victim to penalise {label!r}")

    return attack


def attack_malformed(victim, client, params, network) -> None:
    attack_with_frames(malformed_frames(params.network_magic))(victim, client, params, network)


def attack_oversized(victim, client, params, network) -> None:
    # Over the socket's own limit: zmq closes the connection without reading it.
    client.send_frame(bytes(MAX_MESSAGE_BYTES + 1))
    client.wait_disconnected()
    assert client.handshake() == "ok"  # zmq redials by itself; the victim took no harm
    victim.status()
    client.hello(params)
    attack_with_frames(oversized_frames(params.network_magic))(victim, client, params, network)


def attack_wrong_network(victim, client, params, network) -> None:
    other = bytes(b ^ 0xFF for b in params.network_magic)
    frames = [("a PING of another network", (Ping(7),)), ("a PONG of another network", (Pong(7),))]
    for label, (message,) in frames * 5:
        if client.node_id in victim.banned():
            return
        before = score_of(victim, client.node_id) or 0
        client.send(message, magic=other)
        wait_until(lambda before=before: scored_or_banned(victim, client, before), BAN_TIMEOUT_S, interval=0.05,
                   message=f"the victim to penalise {label!r}")


def attack_unrequested_txs(victim, client, params, network) -> None:
    sent = []
    for nonce in range(10):
        if client.node_id in victim.banned():
            break
        tx = sign_tx(FUNDED[2], params.network_id, nonce=nonce, fee=1000, recipient=FUNDED[3].address, amount=7)
        before = score_of(victim, client.node_id) or 0
        client.send(Txs((tx.raw,)))
        sent.append(tx.id.hex())
        wait_until(lambda before=before: scored_or_banned(victim, client, before), BAN_TIMEOUT_S, interval=0.05,
                   message="the victim to penalise unrequested transactions")
    for txid in sent:  # valid transactions, but nobody asked for them: never taken
        assert victim.tx_status(txid) is None


def attack_unrequested_block(victim, client, params, network) -> None:
    # Pushed without an announcement (peers may push new blocks), on a parent the victim has:
    # it is checked like any other block, and its proof of work fails.
    client.send(Block(block_on_genesis(params, valid_work=False).raw))


def attack_block_bad_work(victim, client, params, network) -> None:
    offer_block(client, block_on_genesis(params, valid_work=False))


def attack_block_bad_signature(victim, client, params, network) -> None:
    tx = sign_tx(FUNDED[2], params.network_id, nonce=0, fee=1000, recipient=FUNDED[3].address, amount=9)
    offer_block(client, block_on_genesis(params, (with_bad_signature(tx),)))


def attack_invalid_txs(victim, client, params, network) -> None:
    for nonce in range(10):
        if client.node_id in victim.banned():
            return
        tx = sign_tx(FUNDED[2], params.network_id, nonce=nonce, fee=1000, recipient=FUNDED[3].address,
                     amount=random.randrange(1, 10**6))
        raw = with_bad_signature(tx).raw if nonce % 2 == 0 else tx.raw[:50]  # bad signature, or undecodable
        txid = sha256(raw)
        before = score_of(victim, client.node_id) or 0
        client.send(Inv((InvItem(InvKind.TX, txid),)))
        client.expect(GetData, lambda m, txid=txid: any(i.hash == txid for i in m.items))
        client.send(Txs((raw,)))
        wait_until(lambda before=before: scored_or_banned(victim, client, before), BAN_TIMEOUT_S, interval=0.05,
                   message="the victim to penalise an invalid transaction")


def attack_hello_of_another_network(victim, client, params, network) -> None:
    client.hello(params, network_id=bytes(32))  # right magic, wrong network id in the handshake


ATTACKS: list[tuple[str, Callable, bool]] = [  # (name, attack, handshake first)
    ("malformed frames", attack_malformed, True),
    ("oversized frames", attack_oversized, True),
    ("frames of another network", attack_wrong_network, True),
    ("a handshake of another network", attack_hello_of_another_network, False),
    ("unrequested transactions", attack_unrequested_txs, True),
    ("an unrequested block without its proof of work", attack_unrequested_block, True),
    ("a block without its proof of work", attack_block_bad_work, True),
    ("a block with a bad signature inside", attack_block_bad_signature, True),
    ("invalid transactions", attack_invalid_txs, True),
]


def test_hostile_peers_are_banned_while_honest_nodes_keep_confirming(nodes, cluster):
    victim, miner, submitter = cluster
    params = nodes.params
    honest = {miner.node_id, submitter.node_id}
    timings = []

    with TransferStream(nodes, submitter, victim, sender=0) as stream:
        for name, attack, handshake_first in ATTACKS:
            started = time.monotonic()
            client = connect(victim, params)
            try:
                assert client.handshake() == "ok", name
                if handshake_first:
                    client.hello(params)
                    wait_until(lambda client=client: peer_entry(victim, client.node_id), 10, interval=0.05,
                               message=f"the victim to list the attacker ({name}) as a peer")
                attack(victim, client, params, nodes)
                wait_until(lambda client=client: client.node_id in victim.banned(), BAN_TIMEOUT_S, interval=0.05,
                           message=f"the attacker sending {name} to be banned")

                # Banned: what it sends now is dropped unread...
                client.drain()
                nonce = random.getrandbits(64)
                client.send(Ping(nonce))
                assert client.nothing_for(SILENCE_S, Pong, lambda m, nonce=nonce: m.nonce == nonce), f"{name}: PING answered"
                assert peer_entry(victim, client.node_id) is None, f"{name}: still has a session"
            finally:
                client.close()
            # ...and the same key is refused at the door.
            again = connect(victim, params, client.keypair)
            try:
                assert again.handshake() == "refused", f"{name}: a fresh connection with the banned key got in"
            finally:
                again.close()
            timings.append((name, time.monotonic() - started))
            assert stream.error is None, stream.error
            victim.assert_running()

        wait_until(lambda: len(stream.latencies) >= 3 or stream.error, CONFIRM_BOUND_S, interval=0.2,
                   message="a few transfers to be confirmed at the victim")
    assert stream.error is None, stream.error

    for name, seconds in timings:
        print(f"{name:40s} banned and refused in {seconds:4.1f} s")
    print(f"{len(stream.latencies)} transfers confirmed at the victim during the attacks, slowest "
          f"{max(stream.latencies):.1f} s, median {sorted(stream.latencies)[len(stream.latencies) // 2]:.1f} s")
    assert stream.latencies and max(stream.latencies) < CONFIRM_BOUND_S

    # The honest nodes were never penalised, never banned, and are still connected.
    assert not honest & victim.banned()
    for node_id in honest:
        entry = peer_entry(victim, node_id)
        assert entry is not None and entry["ready"] and entry["score"] == 0, entry
    assert len(victim.banned()) == len(ATTACKS)
    for node in (miner, submitter):
        assert not node.banned(), f"{node.name} banned someone: {node.banned()}"
        assert node.ready_peers() == {victim.node_id}, f"{node.name} found a way around the victim"
