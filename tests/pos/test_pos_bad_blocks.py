"""On a Proof of Stake network, blocks that break the staking rules are refused and the peer
that sent them is banned, while the honest stakers keep being served.

Three real nodes: a victim that does not stake, and two honest stakers that dial only the
victim, so every block one of them makes reaches the other across the victim. The genesis
also gives a little stake to a rogue staker that runs no node: its key is held by the test,
as a staker running hostile software would hold it. Hostile clients (tests/p2p/hostile.py:
CURVE DEALERs speaking the real wire format) offer the victim, one client per case, blocks
built on its real chain (headers read from its GET /blocks) that break one rule each:

- ineligible producer: a correctly signed child of the victim's tip by a key holding no stake,
  and one by the rogue staker in a slot it did not win;
- wrong signature: the victim's own tip block, made by an honest staker, one bit of its
  signature flipped;
- wrong slot: a child of the tip in the tip's own slot;
- bad timestamps: a child of the tip stamped at its median time past; children of genesis
  stamped at (and below) the median time past, genesis' time; a child of the tip stamped ten
  minutes ahead.

Every block is first checked in the test against the consensus code (chain.consensus,
chain.pos) to break exactly the rule the case is about. The victim must refuse each: it never
becomes its tip, is not served by GET /blocks/{hash}, and
never reaches the honest stakers. The sender is banned at once (an invalid block costs 100
points, the default ban threshold): GET /peers lists the ban, and the victim's log names the
rule (code bad_proof or time_too_old) and the sender.

Two behaviours the test asserts on purpose:

- The block ten minutes ahead is refused (time_too_new) without any penalty, and the sender
  stays connected. The node cannot tell a forger from an honest peer whose clock is ahead of
  its own, or from its own clock lagging: chain/errors.py makes time_too_new a "not yet",
  never a fault. It keeps no trace of the block (more than 120 s ahead, sync drops it rather
  than keep it as an orphan), so when the block is announced again the victim asks for it
  again; that second request is how the test knows the first copy has been dealt with.
- Stake is judged whether the block would become the tip or not: if an honest block at the
  same height reaches the victim first, the forged one would be a lighter sibling, and the
  store checks a side block's signer too (by the stake at its parent) before keeping it, so
  the sender is banned all the same and nothing is kept (tests/storage/test_pos_store.py
  shows that rule directly).

Between cases the victim must keep following the honest chain; at the end all three nodes
share one tip, a transfer submitted at the victim is confirmed on every node, the honest
stakers have score 0 and are not banned, and they hold nothing against the victim.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest

from chain.block import HEADER_VERSION, Block, Header, decode_block, merkle_root
from chain.consensus import HeaderContext, check_header_context, future_limit_ms
from chain.encoding import sha256
from chain.errors import ChainError, Code
from chain.keys import ZERO_ADDRESS, SigningKey, address_from_text, address_to_text
from chain.params import ChainParams, genesis_header
from chain.pos import (
    PROOF_SIZE,
    ProofOfStake,
    eligible,
    epoch_seed_height,
    sign_header,
    slot_of,
)
from peerledger.client import ApiClientError
from tests.helpers import wait_until
from tests.nodes import P2P, Network, NodeProcess, merge
from tests.p2p.hostile import HostileClient, connect, offer_block, peer_entry, score_of
from tests.pos.posnet import STAKE, add_stakers
from tests.posbuilder import staker
from transport.messages import Block as BlockMessage
from transport.messages import GetData, Inv, InvItem, InvKind

ROGUE = staker(0)  # a genesis staker whose node runs hostile software: the test holds its key
ROGUE_STAKE = STAKE // 10  # small: the slots it wins and leaves empty barely slow the honest chain
NO_STAKE = SigningKey.from_seed(sha256(b"peerledger/tests/pos-bad-blocks/no-stake"))
FAR_FUTURE_MS = 10 * 60_000

BAN_TIMEOUT_S = 15.0  # from offering a block to the ban showing in GET /peers
JUDGED_TIMEOUT_S = 15.0  # from offering a block to the victim being done with it
GROWTH_TIMEOUT_S = 30.0  # the honest chain must gain a block at the victim within this


def now_ms() -> int:
    return int(time.time() * 1000)


# --- the victim's chain, read through its API ----------------------------------------------------


def header_of(node: NodeProcess, ident: str | int) -> Header:
    """The header of a block `node` serves (GET /blocks/{height|hash}), rebuilt exactly."""
    b = node.client.block(ident)
    header = Header(HEADER_VERSION, b["height"], bytes.fromhex(b["prev_hash"]), bytes.fromhex(b["merkle_root"]),
                    b["timestamp_ms"], b["difficulty"],
                    address_from_text(b["producer"]) if b["producer"] else ZERO_ADDRESS, bytes.fromhex(b["proof"]))
    assert header.hash.hex() == b["hash"], f"block {ident}: the header rebuilt from GET /blocks has another hash"
    return header


def context_of(node: NodeProcess, params: ChainParams, parent: Header) -> HeaderContext:
    """What `node` judges a child of `parent` against (as storage.store builds it)."""
    chain = [parent]
    while len(chain) < max(params.median_time_span, 2) and chain[-1].height > 0:
        chain.append(header_of(node, chain[-1].prev_hash.hex()))
    grandparent = chain[1] if len(chain) > 1 and chain[1].height > 0 else None
    timestamps = tuple(h.timestamp_ms for h in chain[: params.median_time_span])
    seed = bytes.fromhex(node.client.block(epoch_seed_height(parent.height + 1, params.epoch_length))["hash"])
    return HeaderContext(chain[0], grandparent, timestamps, seed)


def stored(node: NodeProcess, block: Block) -> dict | None:
    """GET /blocks/{hash}: the block if `node` keeps it (confirmations 0 off the main chain)."""
    try:
        return node.client.block(block.hash.hex())
    except ApiClientError as e:
        if e.status == 404:
            return None
        raise


def rejection(node: NodeProcess, block: Block) -> tuple[str, str, str] | None:
    """(peer, code, reason) of the line in which `node` logged refusing `block`, if any."""
    found = re.search(rf"block rejected block={block.hash.hex()[:16]} (?:height=\d+ )?peer=(\S+) code=(\S+) "
                      r"reason=(.*)$", node.log_text(), re.MULTILINE)
    return None if found is None else (found[1], found[2], found[3].strip('"'))


# --- forging ------------------------------------------------------------------------------------------


@dataclass
class Forger:
    """Builds blocks on the victim's chain, checked here against the consensus code."""

    victim: NodeProcess
    params: ChainParams
    engine: ProofOfStake = field(init=False)
    total_stake: int = field(init=False)

    def __post_init__(self) -> None:
        self.engine = ProofOfStake(self.params)
        self.total_stake = sum(amount for _, amount in self.params.stakes)  # nobody bonds or unbonds here

    def slot(self, timestamp_ms: int) -> int:
        return slot_of(timestamp_ms, self.params.slot_ms)

    def tip(self) -> tuple[Header, HeaderContext]:
        tip = header_of(self.victim, self.victim.status()["tip"])
        return tip, context_of(self.victim, self.params, tip)

    def genesis(self) -> tuple[Header, HeaderContext]:
        genesis = genesis_header(self.params)
        return genesis, HeaderContext(genesis, None, (genesis.timestamp_ms,), genesis.hash)

    def stake(self, key: SigningKey) -> int:
        return self.victim.client.account(address_to_text(key.address))["stake"]

    def block(self, ctx: HeaderContext, signer: SigningKey, timestamp_ms: int) -> Block:
        """An empty child of ctx.parent, every field as a valid one would carry, signed by `signer`."""
        template = Header(HEADER_VERSION, ctx.parent.height + 1, ctx.parent.hash, merkle_root([]), timestamp_ms,
                          self.engine.next_difficulty(ctx), signer.address)
        return Block(sign_header(template, signer, self.params.network_id), ())

    def refused_here(self, block: Block, ctx: HeaderContext, code: Code) -> None:
        """Assert the consensus code refuses `block`'s header, now, with `code`."""
        with pytest.raises(ChainError) as refused:
            check_header_context(self.engine, block.header, ctx, now_ms())
        assert refused.value.code == code, refused.value

    def ineligible_on_tip(self, signer: SigningKey) -> Block:
        """A child of the tip, stamped now, by `signer` in a slot it did not win: valid in
        every respect but eligibility."""
        tip, ctx = self.tip()
        difficulty, stake = self.engine.next_difficulty(ctx), self.stake(signer)
        first = max(self.slot(now_ms()), self.slot(tip.timestamp_ms) + 1)
        slot = next((s for s in (first, first + 1)
                     if not eligible(ctx.epoch_seed, s, signer.public, stake, self.total_stake, difficulty)), None)
        assert slot is not None, "the signer won two slots in a row (odds of about 1 in 40,000): run again"
        block = self.block(ctx, signer, slot * self.params.slot_ms)
        check_header_context(self.engine, block.header, ctx, now_ms())  # every rule a header alone can break holds
        with pytest.raises(ChainError, match="not eligible"):
            self.engine.check_stake(block.header, ctx, stake, self.total_stake)
        return block


# --- the cases -----------------------------------------------------------------------------------------


@dataclass
class Outcome:
    blocks: list[Block]  # every block offered (race retries included)
    banned: bool
    log: tuple[str, str, str] | None  # (peer, code, reason) as the victim logged the refusal
    seconds: float = 0.0


def offer_and_wait_ban(victim: NodeProcess, client: HostileClient, block: Block) -> Outcome:
    offer_block(client, block)
    wait_until(lambda: client.node_id in victim.banned(), BAN_TIMEOUT_S, interval=0.05,
               message="the sender to be banned")
    return Outcome([block], True, rejection(victim, block))


def case_no_stake(forger: Forger, victim: NodeProcess, client: HostileClient) -> Outcome:
    return offer_and_wait_ban(victim, client, forger.ineligible_on_tip(NO_STAKE))


def case_rogue_not_eligible(forger: Forger, victim: NodeProcess, client: HostileClient) -> Outcome:
    assert forger.stake(ROGUE) == ROGUE_STAKE
    return offer_and_wait_ban(victim, client, forger.ineligible_on_tip(ROGUE))


def case_bad_signature(forger: Forger, victim: NodeProcess, client: HostileClient) -> Outcome:
    tip_hash = bytes.fromhex(victim.status()["tip"])
    client.send(GetData((InvItem(InvKind.BLOCK, tip_hash),)))  # the real block, from the victim itself
    real = decode_block(client.expect(BlockMessage).block)
    proof = real.header.proof
    assert real.hash == tip_hash and len(proof) == PROOF_SIZE and real.header.producer != ROGUE.address
    forged = Block(real.header.with_proof(proof[:-1] + bytes([proof[-1] ^ 0x01])), real.txs)
    forger.engine.precheck(real.header)  # the honest staker's header is sound...
    with pytest.raises(ChainError, match="signature is invalid"):  # ...one bit later it is not
        forger.engine.precheck(forged.header)
    return offer_and_wait_ban(victim, client, forged)


def case_same_slot_as_parent(forger: Forger, victim: NodeProcess, client: HostileClient) -> Outcome:
    tip, ctx = forger.tip()
    slot = forger.slot(tip.timestamp_ms)
    block = forger.block(ctx, ROGUE, slot * forger.params.slot_ms + forger.params.slot_ms - 1)
    forger.refused_here(block, ctx, Code.BAD_PROOF)
    return offer_and_wait_ban(victim, client, block)


def case_at_median_time_past_of_tip(forger: Forger, victim: NodeProcess, client: HostileClient) -> Outcome:
    # Timestamps strictly grow along a valid chain, so the median time past of the tip lies
    # in the tip's slot or before: the one-block-per-slot rule refuses it first (bad_proof).
    _, ctx = forger.tip()
    block = forger.block(ctx, ROGUE, ctx.median_time_past)
    forger.refused_here(block, ctx, Code.BAD_PROOF)
    return offer_and_wait_ban(victim, client, block)


def genesis_child_stamped(slots: int) -> Callable[[Forger, NodeProcess, HostileClient], Outcome]:
    """A child of genesis stamped `slots` slots after genesis' time (0: at it; -1: a slot before)."""

    # The slot rule skips children of genesis: only there does the median time rule speak.
    def case(forger: Forger, victim: NodeProcess, client: HostileClient) -> Outcome:
        genesis, ctx = forger.genesis()
        assert ctx.median_time_past == genesis.timestamp_ms
        block = forger.block(ctx, ROGUE, genesis.timestamp_ms + slots * forger.params.slot_ms)
        forger.refused_here(block, ctx, Code.TIME_TOO_OLD)
        return offer_and_wait_ban(victim, client, block)

    return case


def case_far_future(forger: Forger, victim: NodeProcess, client: HostileClient) -> Outcome:
    _, ctx = forger.tip()
    slot_ms = forger.params.slot_ms
    block = forger.block(ctx, ROGUE, (now_ms() + FAR_FUTURE_MS) // slot_ms * slot_ms)
    forger.refused_here(block, ctx, Code.TIME_TOO_NEW)
    assert not Code.TIME_TOO_NEW.penalise
    offer_block(client, block)

    def asked_again() -> bool:  # announced again, it is asked for again: the first copy was dealt with
        client.send(Inv((InvItem(InvKind.BLOCK, block.hash),)))
        return not client.nothing_for(0.3, GetData, lambda m: any(i.hash == block.hash for i in m.items))

    wait_until(asked_again, JUDGED_TIMEOUT_S, interval=0, message="the victim to ask for the block again")
    entry = peer_entry(victim, client.node_id)
    assert entry is not None and entry["ready"] and entry["score"] == 0, entry
    return Outcome([block], client.node_id in victim.banned(), rejection(victim, block))


@dataclass(frozen=True)
class Case:
    name: str
    run: Callable[[Forger, NodeProcess, HostileClient], Outcome]
    code: str | None  # as logged by the victim; None: not refused as invalid, no penalty
    reason: str = ""  # part of the logged reason


CASES = [
    Case("a key with no stake signs a child of the tip", case_no_stake, "bad_proof", "not eligible"),
    Case("a staker signs a child of the tip in a slot it did not win", case_rogue_not_eligible, "bad_proof",
         "not eligible"),
    Case("the tip block with one bit of its signature flipped", case_bad_signature, "bad_proof",
         "signature is invalid"),
    Case("a child of the tip in the tip's own slot", case_same_slot_as_parent, "bad_proof", "same slot"),
    Case("a child of the tip stamped at its median time past", case_at_median_time_past_of_tip, "bad_proof",
         "same slot"),
    Case("a child of genesis stamped at the median time past", genesis_child_stamped(0), "time_too_old"),
    Case("a child of genesis stamped a slot before it", genesis_child_stamped(-1), "time_too_old"),
    Case("a child of the tip stamped ten minutes ahead", case_far_future, None),
]


@contextmanager
def attacker(victim: NodeProcess, params: ChainParams) -> Iterator[HostileClient]:
    """A hostile client, handshaken and listed by the victim as a peer; closed afterwards."""
    client = connect(victim, params)
    try:
        assert client.handshake() == "ok"
        client.hello(params)
        wait_until(lambda: peer_entry(victim, client.node_id), 10, interval=0.05,
                   message="the victim to list the attacker as a peer")
        yield client
    finally:
        client.close()


@pytest.fixture
def pos_cluster(nodes: Network) -> tuple[NodeProcess, list[NodeProcess]]:
    """(victim, [staker, staker]): the stakers dial the victim only, and nobody else."""
    victim = nodes.add_node(merge(P2P, {"producer": {"enabled": False}}), name="victim")
    stakers = add_stakers(nodes, 2, {"network": {"max_outbound": 1}}, topology="none")
    for node in stakers:
        node.dial(victim)
    nodes.genesis["stakes"].append({"address": address_to_text(ROGUE.address), "amount": ROGUE_STAKE})
    nodes.write_genesis()
    nodes.start(victim, *stakers)
    nodes.wait_ready_peers(victim, stakers)
    nodes.wait_converged([victim, *stakers], 60, min_height=3)
    return victim, stakers


def test_invalid_pos_blocks_are_refused_and_their_senders_banned_while_honest_stakers_are_served(
        nodes, pos_cluster):
    victim, stakers = pos_cluster
    params = nodes.params
    assert params.consensus == "pos" and future_limit_ms(params) == 2 * params.slot_ms
    forger = Forger(victim, params)
    honest = {node.node_id for node in stakers}
    started_at = victim.height()
    penalised, spared, offered = set(), set(), []

    for case in CASES:
        started, height = time.monotonic(), victim.height()
        with attacker(victim, params) as client:
            outcome = case.run(forger, victim, client)
        outcome.seconds = time.monotonic() - started
        offered += outcome.blocks
        judged = outcome.blocks[-1]
        print(f"{case.name:58s} banned={outcome.banned} {outcome.seconds:4.1f} s "
              f"log={outcome.log}")

        assert stored(victim, judged) is None, f"{case.name}: the victim keeps the block"
        if case.code is None:
            assert not outcome.banned and outcome.log is None, f"{case.name}: {outcome}"
            spared.add(client.node_id)
        else:
            assert outcome.banned, case.name
            assert outcome.log is not None, f"{case.name}: the victim logged no refusal"
            peer, code, reason = outcome.log
            assert peer == client.node_id[:16] and code == case.code and case.reason in reason, (case.name, outcome.log)
            penalised.add(client.node_id)

        # The victim goes on following the honest chain, and no honest peer paid for the attack.
        victim.assert_running()
        victim.wait_for_height(height + 1, GROWTH_TIMEOUT_S)
        assert not honest & victim.banned()
        for node in stakers:
            assert score_of(victim, node.node_id) == 0, f"{case.name}: {node.name} was penalised"

    # One chain everywhere, made of honest blocks only; the victim still relays both ways.
    txid = victim.submit(nodes.transfer(0, 0, amount=4242))
    nodes.wait_confirmed([victim, *stakers], txid, 60)
    tip = nodes.wait_converged([victim, *stakers], 60, min_height=started_at + len(CASES))
    for block in offered:
        kept = stored(victim, block)
        assert kept is None or kept["confirmations"] == 0, f"forged block {block.hash.hex()[:16]} is in the chain"
        for node in stakers:
            assert stored(node, block) is None, f"the victim passed forged block {block.hash.hex()[:16]} on"

    assert victim.banned() == penalised and not spared & victim.banned()
    for node in stakers:
        entry = peer_entry(victim, node.node_id)
        assert entry is not None and entry["ready"] and entry["score"] == 0, entry
    assert Network.misbehaviour(stakers) == {}, "an honest staker holds something against the victim"
    print(f"victim at height {tip['height']} (from {started_at}); {len(penalised)} senders banned, "
          f"{len(spared)} spared; {len(offered)} blocks offered")
