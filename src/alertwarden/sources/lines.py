"""A line reader over binary streams that tracks byte offsets and line numbers."""

from __future__ import annotations

from collections.abc import Generator
from typing import BinaryIO, NamedTuple

from alertwarden.errors import EventError
from alertwarden.events import SkipReason

DEFAULT_MAX_LINE_BYTES = 1_048_576
"""Longest accepted line (1 MiB), not counting its `\\n` or `\\r\\n` terminator."""

DEFAULT_CHUNK_BYTES = 1_048_576


# NamedTuple rather than a frozen dataclass: it is immutable too and about 1.7 times as fast
# to create (timeit, CPython 3.11), which matters at one object per input line.
class Line(NamedTuple):
    """One input line. `data` excludes the `\\n` or `\\r\\n` terminator.

    `offset` is the byte offset of the first byte and `end_offset` the offset just past the
    terminator, so it equals the next line's `offset`. `line_number` counts from 1 at the start
    of the stream.
    """

    offset: int
    end_offset: int
    line_number: int
    data: bytes


class OversizedLine(NamedTuple):
    """A line longer than the reader's limit. Its bytes were discarded while reading."""

    offset: int
    end_offset: int
    line_number: int
    length_bytes: int
    max_line_bytes: int

    def error(self) -> EventError:
        """Return the skip error the engine counts for this line."""
        return EventError(
            SkipReason.OVERSIZED,
            f"line {self.line_number} at byte {self.offset} is {self.length_bytes} bytes long, "
            f"over the limit of {self.max_line_bytes} bytes; raise the limit or split the record",
        )


def count_newlines(stream: BinaryIO, length_bytes: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Count `\\n` bytes in the next `length_bytes` of `stream`, reading in chunks."""
    newlines = 0
    remaining = length_bytes
    while remaining > 0:
        chunk = stream.read(min(chunk_bytes, remaining))
        if not chunk:
            break
        newlines += chunk.count(b"\n")
        remaining -= len(chunk)
    return newlines


def read_lines(
    stream: BinaryIO,
    start_offset: int = 0,
    *,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    hold_partial_last_line: bool = False,
) -> Generator[Line | OversizedLine, None, int]:
    """Yield the lines of `stream` from `start_offset`, which must be the start of a line.

    A start offset above 0 needs a seekable stream: the prefix is read once to count its
    newlines, so line numbers stay the same as in a read from the start.

    A last line without a `\\n` terminator is yielded by default, because a finished file may
    lack the final newline. With `hold_partial_last_line`, it is not yielded, oversized or not,
    because a writer may still be appending to it: the last yielded `end_offset` then stays at
    its start, so a later read from there gets the whole line. The generator's return value
    (`StopIteration.value`, or the result of `yield from`) is the number of bytes held back,
    0 when none were.
    """
    line_number = 1
    if start_offset > 0:
        stream.seek(0)
        line_number += count_newlines(stream, start_offset, chunk_bytes)
        stream.seek(start_offset)

    # read1 returns what is available, so a pipe delivers each line without waiting for a full
    # chunk; a plain read would block until chunk_bytes arrive.
    read = getattr(stream, "read1", None) or stream.read
    offset = start_offset
    pending = b""  # start of the current line, carried over from earlier chunks
    discarding = False  # True while skipping the rest of an oversized line
    discarded_bytes = 0
    discarded_last = b""

    while True:
        chunk = read(chunk_bytes)
        if not chunk:
            break

        if discarding:
            newline_at = chunk.find(b"\n")
            if newline_at < 0:
                discarded_bytes += len(chunk)
                discarded_last = chunk[-1:]
                continue
            discarded_bytes += newline_at
            if newline_at > 0:
                discarded_last = chunk[newline_at - 1 : newline_at]
            if discarded_last == b"\r":
                discarded_bytes -= 1
            end = offset + discarded_bytes + (2 if discarded_last == b"\r" else 1)
            yield OversizedLine(offset, end, line_number, discarded_bytes, max_line_bytes)
            offset = end
            line_number += 1
            discarding = False
            chunk = chunk[newline_at + 1 :]

        data = pending + chunk if pending else chunk
        pieces = data.split(b"\n")
        pending = pieces.pop()
        for piece in pieces:
            end = offset + len(piece) + 1
            if piece[-1:] == b"\r":
                piece = piece[:-1]
            if len(piece) > max_line_bytes:
                yield OversizedLine(offset, end, line_number, len(piece), max_line_bytes)
            else:
                yield Line(offset, end, line_number, piece)
            offset = end
            line_number += 1

        # A partial line may end in the `\r` of its terminator, so allow one byte more here.
        if len(pending) > max_line_bytes + 1:
            discarding = True
            discarded_bytes = len(pending)
            discarded_last = pending[-1:]
            pending = b""

    if hold_partial_last_line:
        return discarded_bytes if discarding else len(pending)
    if discarding:
        end = offset + discarded_bytes
        if discarded_last == b"\r":
            discarded_bytes -= 1
        yield OversizedLine(offset, end, line_number, discarded_bytes, max_line_bytes)
    elif pending:
        end = offset + len(pending)
        if pending[-1:] == b"\r":
            pending = pending[:-1]
        if len(pending) > max_line_bytes:
            yield OversizedLine(offset, end, line_number, len(pending), max_line_bytes)
        else:
            yield Line(offset, end, line_number, pending)
    return 0
