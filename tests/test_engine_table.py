"""GroupTable's ring layout: counts kept by bucket position, read back oldest first."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from alertwarden.engine.table import GroupTable


@given(
    n_buckets=st.integers(1, 12),
    head=st.integers(0, 10_000),
    counts=st.data(),
)
def test_ring_reads_oldest_first(n_buckets: int, head: int, counts: st.DataObject) -> None:
    table = GroupTable(n_buckets)
    # A neighbour on each side, so a slice that strays past the slot shows.
    slots = [table.add((f"k{i}",), head) for i in range(3)]
    ring = tuple(counts.draw(st.lists(st.integers(0, 1000), min_size=n_buckets, max_size=n_buckets)))
    for slot in slots:
        table.load_ring(slot, head, tuple(c + slot for c in ring))

    expected = tuple(
        table.counts[slots[1] * n_buckets + bucket % n_buckets] for bucket in range(head - n_buckets + 1, head + 1)
    )
    assert table.ring(slots[1]) == expected
    assert table.ring(slots[1]) == tuple(c + slots[1] for c in ring)
