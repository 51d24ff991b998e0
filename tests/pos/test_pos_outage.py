"""Two of five stakers stop: the other three keep the chain growing, and the two catch up
when they are started again.

With 3/5 of the stake online, a slot has a producer 3/5 as often: blocks come ~1.7 times
slower until ASERT lowers the difficulty (tests/chain/test_pos.py measures that part);
here what matters is that the chain never stalls and that returning stakers sync by
themselves (headers first, then blocks) and then agree on one tip and state hash.
"""

from __future__ import annotations

from tests.pos.posnet import add_stakers

BLOCKS_WHILE_AWAY = 12


def test_with_two_of_five_stakers_stopped_the_chain_grows_and_they_catch_up(nodes):
    stakers = add_stakers(nodes, 5)
    nodes.start(*stakers)
    nodes.wait_converged(stakers, 60, min_height=5)
    online, stopped = stakers[:3], stakers[3:]

    for node in stopped:
        assert node.stop() == 0
    left_at = online[0].height()
    target = left_at + BLOCKS_WHILE_AWAY
    # 12 blocks at up to ~1.7 s each (3/5 of the stake) on a loaded machine: 60 s is generous.
    online[0].wait_for_height(target, 60)
    common = nodes.wait_converged(online, 30, min_height=target)
    made = {online[0].client.block(h)["producer"] for h in range(left_at + 1, target + 1)}
    assert made <= {n.wallet_address() for n in online}, "a stopped staker produced"

    for node in stopped:  # what they hold while away (their stores, opened here)
        with node.open_store() as store:
            assert store.tip().height <= left_at + 1, f"{node.name} moved while stopped"
    nodes.start(*stopped)
    caught = nodes.wait_converged(stakers, 60, min_height=common["height"] + 2)
    print(f"stopped at {left_at}; three stakers went on to {common['height']}; all five at {caught['height']}")
