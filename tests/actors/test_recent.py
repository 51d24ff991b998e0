"""RecentSet: a bounded memory of recent ids (signature cache, ids known to a peer, confirmed)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from actors.recent import RecentSet


def ids(n: int) -> list[bytes]:
    return [i.to_bytes(32, "big") for i in range(n)]


def test_it_remembers_at_least_the_last_half_of_its_capacity_and_forgets_the_oldest():
    recent = RecentSet(1000)
    added = ids(5000)
    for item in added:
        recent.add(item)
    assert all(item in recent for item in added[-500:])
    assert not any(item in recent for item in added[:3000])
    assert len(recent) <= 1000


def test_discard_forgets_an_id_and_a_zero_capacity_remembers_nothing():
    recent = RecentSet(10)
    recent.add(b"a")
    recent.discard(b"a")
    recent.discard(b"never added")
    assert b"a" not in recent
    off = RecentSet(0)
    off.add(b"a")
    assert b"a" not in off and len(off) == 0


@given(st.integers(1, 200), st.lists(st.integers(0, 400), max_size=600))
def test_it_never_holds_more_than_its_capacity_and_always_holds_the_last_half(capacity, stream):
    recent = RecentSet(capacity)
    for value in stream:
        recent.add(value.to_bytes(2, "big"))
        assert len(recent) <= capacity
    last = stream[len(stream) - max(1, capacity // 2):] if stream else []
    assert all(value.to_bytes(2, "big") in recent for value in last)
