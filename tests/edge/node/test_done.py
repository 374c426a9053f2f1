"""The finished-frames set: exact membership, a moving watermark, bounded size, a durable form."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from edge.node.done import DoneSet


def test_out_of_order_frames_advance_the_watermark_once_contiguous() -> None:
    """Frames finished out of order (two workers) are all members, and the watermark closes the gap."""
    done = DoneSet()
    for seq in (0, 2, 3):
        done.add(seq)
    assert done.through == 0 and done.above == {2, 3}
    assert 1 not in done and all(s in done for s in (0, 2, 3))
    done.add(1)
    assert done.through == 3 and done.above == set()


def test_a_gap_that_never_fills_does_not_grow_the_set_for_ever() -> None:
    """A seq that never arrives is passed once max_above later frames have finished."""
    done = DoneSet(max_above=8)
    done.add(0)
    for seq in range(2, 200):
        done.add(seq)
        assert len(done.above) <= 8
    assert done.through == 199 and 1 in done


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=300), max_size=200))
def test_every_added_seq_is_a_member_and_the_json_round_trips(seqs: list[int]) -> None:
    """Whatever order frames finish in, each is remembered, and the stored form reads back equal."""
    done = DoneSet(max_above=16)
    for seq in seqs:
        done.add(seq)
    assert all(seq in done for seq in seqs)
    back = DoneSet.from_json(done.to_json())
    assert (back.through, back.above) == (done.through, done.above)
    assert 0 not in DoneSet.from_json(None)
