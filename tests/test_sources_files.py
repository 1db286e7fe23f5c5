"""File and stdin inputs: identity, resume, truncation and replacement detection."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from alertwarden.sources.files import FINGERPRINT_BYTES, FileIdentity, FileInput, StdinInput
from alertwarden.sources.lines import Line, OversizedLine

LOG = b"".join(b"Dec 10 06:55:%02d host app: message %d\n" % (n % 60, n) for n in range(200))


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    path = tmp_path / "app.log"
    path.write_bytes(LOG)
    return path


def test_identity_fields(log_path: Path) -> None:
    with FileInput(log_path) as source:
        identity = FileIdentity.parse(source.identity())
    status = os.stat(log_path)
    assert identity is not None
    assert identity.device == status.st_dev
    assert identity.inode == status.st_ino
    assert identity.prefix_bytes == FINGERPRINT_BYTES


def test_identity_small_file_prefix(tmp_path: Path) -> None:
    path = tmp_path / "small.log"
    path.write_bytes(b"one line\n")
    with FileInput(path) as source:
        identity = FileIdentity.parse(source.identity())
    assert identity is not None
    assert identity.prefix_bytes == 9


def test_resume_same_file(log_path: Path) -> None:
    with FileInput(log_path) as source:
        identity = source.identity()
        lines = list(source.lines())
    offset = lines[120].offset

    with log_path.open("ab") as handle:
        handle.write(b"Dec 10 07:00:00 host app: appended\n")
    with FileInput(log_path) as source:
        start, warning = source.resume_offset(identity, offset)
        resumed = list(source.lines(start))
    assert start == offset
    assert warning is None
    assert resumed[0] == lines[120]
    assert resumed[-1].data == b"Dec 10 07:00:00 host app: appended"
    assert resumed[-1].line_number == 201


def test_resume_grown_small_file(tmp_path: Path) -> None:
    path = tmp_path / "grow.log"
    path.write_bytes(b"first\n")
    with FileInput(path) as source:
        identity = source.identity()
    with path.open("ab") as handle:
        handle.write(b"x" * 5000 + b"\n")
    with FileInput(path) as source:
        assert source.resume_offset(identity, 6) == (6, None)


def test_resume_truncated(log_path: Path) -> None:
    with FileInput(log_path) as source:
        identity = source.identity()
    with log_path.open("r+b") as handle:
        handle.truncate(100)
    with FileInput(log_path) as source:
        start, warning = source.resume_offset(identity, 5000)
    assert start == 0
    assert warning is not None
    assert str(log_path) in warning
    assert "truncated" in warning
    assert "5000" in warning


def test_resume_replaced_inode(log_path: Path, tmp_path: Path) -> None:
    with FileInput(log_path) as source:
        identity = source.identity()
    replacement = tmp_path / "new.log"
    replacement.write_bytes(LOG)
    os.replace(replacement, log_path)
    with FileInput(log_path) as source:
        start, warning = source.resume_offset(identity, 500)
    assert start == 0
    assert warning is not None
    assert "replaced" in warning
    assert str(log_path) in warning


def test_resume_rewritten_prefix(log_path: Path) -> None:
    with FileInput(log_path) as source:
        identity = source.identity()
    with log_path.open("r+b") as handle:
        handle.write(b"Jan")
    with FileInput(log_path) as source:
        start, warning = source.resume_offset(identity, 500)
    assert start == 0
    assert warning is not None
    assert "first 4096 bytes changed" in warning


def test_resume_without_checkpoint(log_path: Path) -> None:
    with FileInput(log_path) as source:
        assert source.resume_offset(None, 0) == (0, None)
        start, warning = source.resume_offset("stdin", 40)
    assert start == 0
    assert warning is not None
    assert "'stdin'" in warning


def test_stdin_reads_stream() -> None:
    source = StdinInput(io.BytesIO(b"a\nb\n"))
    assert source.identity() is None
    assert source.resume_offset("file:dev=1:ino=2:prefix=0:sha256=" + "0" * 64, 10) == (0, None)
    assert list(source.lines()) == [Line(0, 2, 1, b"a"), Line(2, 4, 2, b"b")]


def test_stdin_rejects_offset() -> None:
    with pytest.raises(ValueError, match="offset 5"):
        StdinInput(io.BytesIO(b"")).lines(5)


def test_file_hold_growing_line(tmp_path: Path) -> None:
    path = tmp_path / "grow.log"
    path.write_bytes(b"first\nsecond ha")
    with FileInput(path) as source:
        identity = source.identity()
        lines = list(source.lines(0, hold_partial_last_line=True))
        held_bytes = source.held_back_bytes
    assert lines == [Line(0, 6, 1, b"first")]
    assert held_bytes == 9

    with path.open("ab") as handle:
        handle.write(b"lf\nthird\n")
    with FileInput(path) as source:
        start, warning = source.resume_offset(identity, lines[-1].end_offset)
        resumed = list(source.lines(start, hold_partial_last_line=True))
        held_bytes = source.held_back_bytes
    assert warning is None
    assert start == 6
    assert resumed == [Line(6, 18, 2, b"second half"), Line(18, 24, 3, b"third")]
    assert held_bytes == 0


def test_file_without_hold_yields_partial(tmp_path: Path) -> None:
    path = tmp_path / "done.log"
    path.write_bytes(b"first\nlast")
    with FileInput(path) as source:
        lines = list(source.lines())
        held_bytes = source.held_back_bytes
    assert lines == [Line(0, 6, 1, b"first"), Line(6, 10, 2, b"last")]
    assert held_bytes == 0


def test_file_held_back_reset(tmp_path: Path) -> None:
    path = tmp_path / "partial.log"
    path.write_bytes(b"first\nlast")
    with FileInput(path) as source:
        list(source.lines(0, hold_partial_last_line=True))
        assert source.held_back_bytes == 4
        reader = source.lines(0)
        assert source.held_back_bytes == 0
        assert len(list(reader)) == 2
        assert source.held_back_bytes == 0


def test_file_hold_oversized_partial(tmp_path: Path) -> None:
    path = tmp_path / "big.log"
    path.write_bytes(b"ok\n" + b"z" * 30)
    with FileInput(path, max_line_bytes=10) as source:
        lines = list(source.lines(0, hold_partial_last_line=True))
        held_bytes = source.held_back_bytes
    assert lines == [Line(0, 3, 1, b"ok")]
    assert held_bytes == 30

    with path.open("ab") as handle:
        handle.write(b"z" * 5 + b"\r\nafter\n")
    with FileInput(path, max_line_bytes=10) as source:
        resumed = list(source.lines(3, hold_partial_last_line=True))
        held_bytes = source.held_back_bytes
    assert resumed == [OversizedLine(3, 40, 2, 35, 10), Line(40, 46, 3, b"after")]
    assert held_bytes == 0


def test_stdin_ignores_hold() -> None:
    source = StdinInput(io.BytesIO(b"a\nb"))
    lines = list(source.lines(hold_partial_last_line=True))
    assert lines == [Line(0, 2, 1, b"a"), Line(2, 3, 2, b"b")]
    assert source.held_back_bytes == 0
