"""Columnar storage of one rule's groups: bucket rings, times and flags in flat arrays.

One object per group cost about 370 bytes per group key in CPython 3.11 (measured with tracemalloc
for 10 buckets, key included). Flat arrays indexed by a slot number bring that to about
250 + 4.2 * N bytes, key string, key tuple and dict entry included, N being the number of
buckets (bench/engine_throughput.py, 100,000 one-field keys).

Ring layout: slot s owns counts[s * N : (s + 1) * N]. Bucket b lives at position b % N. The ring
contains the buckets (head - N, head], head being the newest bucket that received an event, and
`totals[s]` is their sum, so the count of a group whose head is the current bucket is one lookup.
"""

from __future__ import annotations

import heapq
import math
from array import array

from alertwarden.engine.records import GroupKey

FIRING = 1
"""Flag bit: the group's state is firing (otherwise ok)."""
SUPPRESSED = 2
"""Flag bit: a cooldown_hit episode is open; the next cooldown_hit of it is not written."""
NO_TIME = math.nan
"""Stored in the time arrays for 'never'; NaN compares false with everything."""
GROWTH_MIN_SLOTS = 1024
"""Minimum number of slots the arrays grow by at once."""


def _nan_block(count: int) -> array:
    return array("d", [NO_TIME]) * count


class GroupTable:
    """Group state of one rule, plus the schedule of when each window empties."""

    def __init__(self, n_buckets: int) -> None:
        self.n_buckets = n_buckets
        self.slots: dict[GroupKey, int] = {}
        self.keys: list[GroupKey | None] = []
        self.counts = array("I")
        self.totals = array("I")
        self.heads = array("q")
        self.last_seen = array("d")
        self.last_fired = array("d")
        self.last_notified = array("d")
        self.flags = bytearray()
        # Changed since the last flush: a flag per slot plus the list of flagged slots. A set of
        # slots would cost about 40 bytes more per changed group.
        self.dirty_flags = bytearray()
        self.dirty_slots: list[int] = []
        # Slots of forgotten groups, reused first; slots from _used on were never used.
        self._free: list[int] = []
        self._used = 0
        # Expiry schedule: bucket index -> slots whose window may be empty from that bucket on.
        # Entries may be stale (the group got newer events, or the slot was reused); the reader
        # re-checks the group, so a stale entry costs one lookup and never forgets a live group.
        self._due: dict[int, list[int]] = {}
        self._due_heap: list[int] = []

    def __len__(self) -> int:
        return len(self.slots)

    def add(self, key: GroupKey, head: int) -> int:
        """Create a group with an empty ring whose newest bucket is `head`; return its slot."""
        if self._free:
            slot = self._free.pop()
        else:
            if self._used == len(self.keys):
                self._grow()
            slot = self._used
            self._used += 1
        self.keys[slot] = key
        self.heads[slot] = head
        self.slots[key] = slot
        self.schedule(slot, head + self.n_buckets)
        return slot

    def _grow(self) -> None:
        """Add a block of free, zeroed slots: one extend per array instead of one per group."""
        old = len(self.keys)
        # A 32nd keeps unused capacity, and so memory per group, within about 3 %.
        extra = max(GROWTH_MIN_SLOTS, old // 32)
        self.keys.extend([None] * extra)
        self.counts.frombytes(bytes(4 * self.n_buckets * extra))
        self.totals.frombytes(bytes(4 * extra))
        self.heads.frombytes(bytes(8 * extra))
        self.last_seen.extend(_nan_block(extra))
        self.last_fired.extend(_nan_block(extra))
        self.last_notified.extend(_nan_block(extra))
        self.flags.extend(bytes(extra))
        self.dirty_flags.extend(bytes(extra))

    def mark_dirty(self, slot: int) -> None:
        if not self.dirty_flags[slot]:
            self.dirty_flags[slot] = 1
            self.dirty_slots.append(slot)

    def take_dirty(self) -> list[int]:
        """Return the changed slots that still hold a group, and clear every mark."""
        slots = [slot for slot in self.dirty_slots if self.dirty_flags[slot]]
        for slot in self.dirty_slots:
            self.dirty_flags[slot] = 0
        self.dirty_slots = []
        return slots

    def remove(self, slot: int) -> GroupKey:
        """Forget the group in `slot`, reset the slot for reuse, and return its key."""
        key = self.keys[slot]
        assert key is not None
        del self.slots[key]
        self.keys[slot] = None
        n = self.n_buckets
        self.counts[slot * n : (slot + 1) * n] = array("I", bytes(4 * n))
        self.totals[slot] = 0
        self.last_seen[slot] = NO_TIME
        self.last_fired[slot] = NO_TIME
        self.last_notified[slot] = NO_TIME
        self.flags[slot] = 0
        self.dirty_flags[slot] = 0
        self._free.append(slot)
        return key

    def advance_head(self, slot: int, bucket: int) -> None:
        """Move the ring forward so its newest bucket is `bucket`, zeroing the buckets it drops."""
        n = self.n_buckets
        head = self.heads[slot]
        base = slot * n
        if bucket - head >= n:
            self.counts[base : base + n] = array("I", bytes(4 * n))
            self.totals[slot] = 0
        else:
            counts = self.counts
            total = self.totals[slot]
            for b in range(head + 1, bucket + 1):
                i = base + b % n
                total -= counts[i]
                counts[i] = 0
            self.totals[slot] = total
        self.heads[slot] = bucket
        self.schedule(slot, bucket + n)

    def window_count(self, slot: int, now_bucket: int) -> int:
        """Return the sum of the buckets (now_bucket - N, now_bucket] for a group with head <= now_bucket."""
        head = self.heads[slot]
        gap = now_bucket - head
        if gap <= 0:
            return self.totals[slot]
        n = self.n_buckets
        if gap >= n:
            return 0
        # Buckets (head - N, now_bucket - N] are in the ring but already out of the window.
        counts = self.counts
        base = slot * n
        total = self.totals[slot]
        for b in range(head - n + 1, now_bucket - n + 1):
            total -= counts[base + b % n]
        return total

    def ring(self, slot: int) -> tuple[int, ...]:
        """Return the bucket counts oldest first; the last one belongs to the head bucket."""
        n = self.n_buckets
        base = slot * n
        # The oldest bucket, head - N + 1, sits at position (head + 1) % N, so the ring is the
        # slot's counts from there to the end, then from the start: two slices in C.
        oldest = base + (self.heads[slot] + 1) % n
        counts = self.counts
        return tuple(counts[oldest : base + n]) + tuple(counts[base:oldest])

    def load_ring(self, slot: int, head: int, ring: tuple[int, ...]) -> None:
        """Fill a slot's ring from counts given oldest first, ending at bucket `head`."""
        n = self.n_buckets
        base = slot * n
        for offset, count in enumerate(ring):
            self.counts[base + (head - n + 1 + offset) % n] = count
        self.totals[slot] = sum(ring)
        self.heads[slot] = head

    def schedule(self, slot: int, bucket: int) -> None:
        """Ask for `slot` to be looked at when the boundary of `bucket` is evaluated."""
        entries = self._due.get(bucket)
        if entries is None:
            self._due[bucket] = [slot]
            heapq.heappush(self._due_heap, bucket)
        else:
            entries.append(slot)

    def next_due(self) -> int | None:
        """Return the earliest bucket with scheduled slots, or None."""
        return self._due_heap[0] if self._due_heap else None

    def pop_due(self, bucket: int) -> list[int]:
        """Remove and return every slot scheduled at or before `bucket`."""
        found: list[int] = []
        heap = self._due_heap
        while heap and heap[0] <= bucket:
            found.extend(self._due.pop(heapq.heappop(heap)))
        return found
