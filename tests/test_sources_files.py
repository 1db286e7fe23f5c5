"""File and stdin inputs: identity, resume, truncation and replacement detection."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from alertwarden.sources.files import FINGERPRINT_BYTES, FileIdentity, FileInput, StdinInput
from alertwarden.sources.lines import Line

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
