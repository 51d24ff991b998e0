"""Pin the verifier's verdict on every C2SP/CCTV Ed25519 edge-case vector.

Signature validity is a consensus rule. Ed25519 libraries (and versions of one library)
disagree on low-order points, mixed-order points and non-canonical encodings; two nodes that
disagree on one signature follow different chains. So the verdict of `chain.keys.verify` on
each of the 914 vectors is recorded in tests/data/ed25519/pinned_verdicts.json, and any change
fails here. If this test fails after a dependency upgrade, the upgrade must not ship: pin the
old version, or plan a coordinated network upgrade.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chain.keys import verify

DATA = Path(__file__).resolve().parent.parent / "data" / "ed25519"
VECTORS = json.loads((DATA / "cctv_ed25519vectors.json").read_text())
PINNED = json.loads((DATA / "pinned_verdicts.json").read_text())

CONSENSUS_WARNING = (
    "chain.keys.verify changed its verdict on CCTV vector {n} (flags {flags}): pinned {pinned}, "
    "now {now}. Signature validity is a consensus rule: nodes with the old and new verifier "
    "would disagree on which transactions and blocks are valid and split the network. "
    "Do not ship this upgrade (pin the previous pycryptodome) and never regenerate "
    "pinned_verdicts.json to make this pass."
)


def _verdict(vector: dict) -> str:
    ok = verify(bytes.fromhex(vector["key"]), vector["msg"].encode(), bytes.fromhex(vector["sig"]))
    return "accept" if ok else "reject"


def test_every_vector_is_pinned_and_data_is_complete():
    numbers = [v["number"] for v in VECTORS]
    assert numbers == list(range(914))
    assert set(PINNED["verdicts"]) == {str(n) for n in numbers}
    assert set(PINNED["verdicts"].values()) == {"accept", "reject"}


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: f"v{v['number']}")
def test_verdict_matches_pinned(vector):
    pinned = PINNED["verdicts"][str(vector["number"])]
    now = _verdict(vector)
    assert now == pinned, CONSENSUS_WARNING.format(
        n=vector["number"], flags=",".join(vector["flags"]), pinned=pinned, now=now
    )


def test_accepted_count_is_424():
    accepted = sum(_verdict(v) == "accept" for v in VECTORS)
    assert PINNED["accepted"] == 424
    assert accepted == 424, (
        f"the verifier now accepts {accepted} of 914 CCTV vectors instead of 424: "
        "signature validity is a consensus rule, this upgrade must not ship"
    )


def test_verdict_does_not_depend_on_the_key_cache():
    # keys.verify caches parsed public keys; a cached key must give the same verdict as a
    # fresh one, whatever order the vectors arrive in.
    from chain.keys import _verifier

    forward = [_verdict(v) for v in VECTORS]
    _verifier.cache_clear()
    backward = [_verdict(v) for v in reversed(VECTORS)][::-1]
    assert forward == backward == [PINNED["verdicts"][str(v["number"])] for v in VECTORS]
