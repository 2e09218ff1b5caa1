"""Byte ranges changed since a file's last journal record (store/journal.py), kept sorted and
coalesced: overlapping or adjacent writes are one range, so a record holds each byte once."""

import bisect


class Ranges:
    """A set of bytes as sorted, disjoint, non-adjacent [start, end) intervals."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []

    def __bool__(self) -> bool:
        return bool(self._starts)

    def add(self, start: int, end: int) -> None:
        if start >= end:
            return
        # Every interval that overlaps or touches [start, end) is merged into it.
        first = bisect.bisect_left(self._ends, start)
        last = bisect.bisect_right(self._starts, end)
        if first < last:
            start = min(start, self._starts[first])
            end = max(end, self._ends[last - 1])
        self._starts[first:last] = [start]
        self._ends[first:last] = [end]

    def clip(self, size: int) -> None:
        """Forget every byte at or past `size` (a truncation)."""
        keep = bisect.bisect_left(self._starts, size)
        del self._starts[keep:], self._ends[keep:]
        if self._ends and self._ends[-1] > size:
            self._ends[-1] = size

    def covers(self, start: int, end: int) -> bool:
        """Whether every byte of [start, end) is in the set."""
        at = bisect.bisect_right(self._starts, start) - 1
        return at >= 0 and self._ends[at] >= end

    def total(self) -> int:
        return sum(self._ends) - sum(self._starts)

    def spans(self) -> list[tuple[int, int]]:
        """(offset, length) of each range, in order."""
        return [(s, e - s) for s, e in zip(self._starts, self._ends, strict=True)]

    def __len__(self) -> int:
        return len(self._starts)
