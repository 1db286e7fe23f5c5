"""Line reader: offsets, terminators, oversized lines, resume line numbers."""

from __future__ import annotations

import io
from collections.abc import Generator

from hypothesis import given, settings
from hypothesis import strategies as st

from alertwarden.events import SkipReason
from alertwarden.sources.lines import Line, OversizedLine, read_lines


class ChunkedStream(io.RawIOBase):
    """A stream whose reads return at most the next of a list of sizes, like a pipe."""

    def __init__(self, data: bytes, sizes: list[int]) -> None:
        self._data = data
        self._sizes = sizes or [len(data) or 1]
        self._pos = 0
        self._read_count = 0

    def readable(self) -> bool:
        return True

    def read1(self, size: int = -1) -> bytes:
        step = self._sizes[self._read_count % len(self._sizes)]
        self._read_count += 1
        chunk = self._data[self._pos : self._pos + min(step, size)]
        self._pos += len(chunk)
        return chunk


def test_reader_offsets_contiguous() -> None:
    data = b"alpha\nbeta\n\ngamma\n"
    lines = list(read_lines(io.BytesIO(data)))
    assert [line.data for line in lines] == [b"alpha", b"beta", b"", b"gamma"]
    assert [line.offset for line in lines] == [0, 6, 11, 12]
    assert [line.end_offset for line in lines] == [6, 11, 12, 18]
    assert [line.line_number for line in lines] == [1, 2, 3, 4]


def test_reader_crlf_stripped() -> None:
    lines = list(read_lines(io.BytesIO(b"one\r\ntwo\r\n")))
    assert [line.data for line in lines] == [b"one", b"two"]
    assert lines[0].end_offset == 5
    assert lines[1].offset == 5
    assert lines[1].end_offset == 10


def test_reader_last_line_without_newline() -> None:
    lines = list(read_lines(io.BytesIO(b"one\ntwo")))
    assert lines[-1] == Line(4, 7, 2, b"two")


def test_reader_empty_stream() -> None:
    assert list(read_lines(io.BytesIO(b""))) == []


def test_reader_oversized_in_middle() -> None:
    data = b"short\n" + b"x" * 100 + b"\nafter\nlast\n"
    lines = list(read_lines(io.BytesIO(data), max_line_bytes=10, chunk_bytes=16))
    assert lines[0] == Line(0, 6, 1, b"short")
    assert lines[1] == OversizedLine(6, 107, 2, 100, 10)
    assert lines[2] == Line(107, 113, 3, b"after")
    assert lines[3] == Line(113, 118, 4, b"last")


def test_reader_oversized_crlf_and_at_end() -> None:
    data = b"y" * 40 + b"\r\nok\n" + b"z" * 30
    lines = list(read_lines(io.BytesIO(data), max_line_bytes=10, chunk_bytes=8))
    assert lines[0] == OversizedLine(0, 42, 1, 40, 10)
    assert lines[1] == Line(42, 45, 2, b"ok")
    assert lines[2] == OversizedLine(45, 75, 3, 30, 10)


def test_reader_line_at_limit_kept() -> None:
    data = b"a" * 10 + b"\r\n" + b"b" * 11 + b"\n"
    lines = list(read_lines(io.BytesIO(data), max_line_bytes=10, chunk_bytes=4))
    assert lines[0] == Line(0, 12, 1, b"a" * 10)
    assert isinstance(lines[1], OversizedLine)
    assert lines[1].length_bytes == 11


def test_oversized_error_message() -> None:
    error = OversizedLine(6, 107, 2, 100, 10).error()
    assert error.reason == SkipReason.OVERSIZED
    assert "line 2" in str(error)
    assert "100 bytes" in str(error)
    assert "10 bytes" in str(error)


def test_reader_resume_line_numbers() -> None:
    data = b"".join(b"line %d\n" % number for number in range(1, 101))
    full = list(read_lines(io.BytesIO(data)))
    resumed = list(read_lines(io.BytesIO(data), full[41].offset, chunk_bytes=7))
    assert resumed == full[41:]
    assert resumed[0].line_number == 42


line_strategy = st.binary(max_size=40).map(lambda raw: raw.replace(b"\n", b"."))


@settings(max_examples=200)
@given(
    st.lists(line_strategy, max_size=30),
    st.booleans(),
    st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=10),
    st.integers(min_value=1, max_value=64),
)
def test_reader_random_splits(
    lines: list[bytes], trailing_newline: bool, sizes: list[int], chunk_bytes: int
) -> None:
    data = b"\n".join(lines) + (b"\n" if trailing_newline and lines else b"")
    expected = data.split(b"\n")
    if expected[-1] == b"":
        expected.pop()
    result = list(read_lines(ChunkedStream(data, sizes), max_line_bytes=30, chunk_bytes=chunk_bytes))

    assert len(result) == len(expected)
    offset = 0
    for number, (item, raw) in enumerate(zip(result, expected, strict=True), 1):
        assert item.offset == offset
        assert item.line_number == number
        content = raw[:-1] if raw.endswith(b"\r") else raw
        if len(content) > 30:
            assert isinstance(item, OversizedLine)
            assert item.length_bytes == len(content)
        else:
            assert isinstance(item, Line)
            assert item.data == content
        offset = item.end_offset
    assert offset == len(data)


def read_with_result(reader: Generator[Line | OversizedLine, None, int]) -> tuple[list, int]:
    """Collect the items of a read_lines generator and its return value."""
    items = []
    while True:
        try:
            items.append(next(reader))
        except StopIteration as stop:
            return items, stop.value


def test_hold_partial_last_line_on() -> None:
    lines, held_bytes = read_with_result(
        read_lines(io.BytesIO(b"one\ntwo"), hold_partial_last_line=True)
    )
    assert lines == [Line(0, 4, 1, b"one")]
    assert held_bytes == 3


def test_hold_partial_last_line_off() -> None:
    lines, held_bytes = read_with_result(read_lines(io.BytesIO(b"one\ntwo")))
    assert lines == [Line(0, 4, 1, b"one"), Line(4, 7, 2, b"two")]
    assert held_bytes == 0


def test_hold_terminated_last_line() -> None:
    lines, held_bytes = read_with_result(
        read_lines(io.BytesIO(b"one\ntwo\r\n"), hold_partial_last_line=True)
    )
    assert lines == [Line(0, 4, 1, b"one"), Line(4, 9, 2, b"two")]
    assert held_bytes == 0


def test_hold_partial_ending_in_cr() -> None:
    lines, held_bytes = read_with_result(
        read_lines(io.BytesIO(b"one\ntwo\r"), hold_partial_last_line=True)
    )
    assert lines == [Line(0, 4, 1, b"one")]
    assert held_bytes == 4


def test_hold_oversized_partial_discarding() -> None:
    data = b"ok\n" + b"z" * 30
    lines, held_bytes = read_with_result(
        read_lines(io.BytesIO(data), max_line_bytes=10, chunk_bytes=8, hold_partial_last_line=True)
    )
    assert lines == [Line(0, 3, 1, b"ok")]
    assert held_bytes == 30


def test_hold_oversized_partial_pending() -> None:
    # 11 bytes stay pending (the reader allows one more byte for a `\r`), not discarded.
    data = b"ok\n" + b"z" * 11
    lines, held_bytes = read_with_result(
        read_lines(io.BytesIO(data), max_line_bytes=10, hold_partial_last_line=True)
    )
    assert lines == [Line(0, 3, 1, b"ok")]
    assert held_bytes == 11


@settings(max_examples=200)
@given(
    st.lists(line_strategy, max_size=30),
    st.booleans(),
    st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=10),
    st.integers(min_value=1, max_value=64),
)
def test_hold_random_splits(
    lines: list[bytes], trailing_newline: bool, sizes: list[int], chunk_bytes: int
) -> None:
    data = b"\n".join(lines) + (b"\n" if trailing_newline and lines else b"")
    complete = list(read_lines(io.BytesIO(data), max_line_bytes=30))
    held, held_bytes = read_with_result(
        read_lines(
            ChunkedStream(data, sizes),
            max_line_bytes=30,
            chunk_bytes=chunk_bytes,
            hold_partial_last_line=True,
        )
    )

    unterminated = bool(data) and not data.endswith(b"\n")
    expected = complete[:-1] if unterminated else complete
    assert held == expected
    end_offset = held[-1].end_offset if held else 0
    assert end_offset + held_bytes == len(data)
    assert (held_bytes > 0) == unterminated
