"""Pin the verifier's verdict on every C2SP/CCTV Ed25519 edge-case vector.

Signature validity is a consensus rule. Ed25519 libraries (and versions of one library)
disagree on low-order points, mixed-order points and non-canonical encodings; two nodes that
disagree on one signature follow different chains. So two verdicts on each of the 914 vectors
are recorded in tests/data/ed25519/pinned_verdicts.json: pycryptodome's alone (424 accepted),
so that a library upgrade that changes behaviour fails here even where our own rule would
hide it, and `chain.keys.verify`'s (212 accepted: the library plus the refusal of public keys
of small order). If this test fails after a dependency upgrade, the upgrade must not ship: pin
the old version, or plan a coordinated network upgrade.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from Crypto.Signature import eddsa

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


def _library_verdict(vector: dict) -> str:
    try:
        key = eddsa.import_public_key(bytes.fromhex(vector["key"]))
        eddsa.new(key, "rfc8032").verify(vector["msg"].encode(), bytes.fromhex(vector["sig"]))
    except ValueError:
        return "reject"
    return "accept"


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


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: f"v{v['number']}")
def test_library_verdict_matches_pinned(vector):
    pinned = PINNED["library_verdicts"][str(vector["number"])]
    now = _library_verdict(vector)
    assert now == pinned, "pycryptodome " + CONSENSUS_WARNING.format(
        n=vector["number"], flags=",".join(vector["flags"]), pinned=pinned, now=now
    )


def test_accepted_counts():
    library = sum(_library_verdict(v) == "accept" for v in VECTORS)
    accepted = sum(_verdict(v) == "accept" for v in VECTORS)
    assert (PINNED["library_accepted"], PINNED["accepted"]) == (424, 212)
    assert library == 424, (
        f"pycryptodome now accepts {library} of 914 CCTV vectors instead of 424: "
        "signature validity is a consensus rule, this upgrade must not ship"
    )
    assert accepted == 212, f"chain.keys.verify now accepts {accepted} of 914 CCTV vectors instead of 212"


def test_small_order_keys_sign_nothing():
    # The all-zero key is of small order: pycryptodome accepts an all-zero signature by it
    # on any message. chain.keys.verify refuses every key of small order.
    zero_key, zero_sig = bytes(32), bytes(64)
    assert _library_verdict({"key": zero_key.hex(), "msg": "anything", "sig": zero_sig.hex()}) == "accept"
    assert not verify(zero_key, b"anything", zero_sig)
    small = [v for v in VECTORS if "low_order_A" in (v["flags"] or ())]
    assert small and not any(_verdict(v) == "accept" for v in small)


def test_verdict_does_not_depend_on_the_key_cache():
    # keys.verify caches parsed public keys; a cached key must give the same verdict as a
    # fresh one, whatever order the vectors arrive in.
    from chain.keys import _public_key

    forward = [_verdict(v) for v in VECTORS]
    _public_key.cache_clear()
    backward = [_verdict(v) for v in reversed(VECTORS)][::-1]
    assert forward == backward == [PINNED["verdicts"][str(v["number"])] for v in VECTORS]
