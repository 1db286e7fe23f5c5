"""File and standard-input inputs: line iteration plus the identity used to resume a file."""

from __future__ import annotations

import hashlib
import os
import re
import sys
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from alertwarden.sources.lines import (
    DEFAULT_MAX_LINE_BYTES,
    Line,
    OversizedLine,
    read_lines,
)

FINGERPRINT_BYTES = 4096
"""Bytes at the start of a file that its fingerprint covers."""

_IDENTITY = re.compile(r"file:dev=(\d+):ino=(\d+):prefix=(\d+):sha256=([0-9a-f]{64})")


class LineInput(Protocol):
    """A source of lines that a checkpoint may resume."""

    name: str
    held_back_bytes: int
    """Bytes of an unterminated last line that the latest `lines()` did not yield, or 0."""

    def identity(self) -> str | None: ...

    def resume_offset(
        self, stored_identity: str | None, stored_offset: int
    ) -> tuple[int, str | None]: ...

    def lines(
        self, start_offset: int = 0, *, hold_partial_last_line: bool = False
    ) -> Iterator[Line | OversizedLine]: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class FileIdentity:
    """Device, inode and SHA-256 of the first `prefix_bytes` bytes of a file."""

    device: int
    inode: int
    prefix_bytes: int
    sha256: str

    def __str__(self) -> str:
        return (
            f"file:dev={self.device}:ino={self.inode}:prefix={self.prefix_bytes}"
            f":sha256={self.sha256}"
        )

    @classmethod
    def parse(cls, text: str) -> FileIdentity | None:
        """Read the form produced by `str()`; return None for any other string."""
        match = _IDENTITY.fullmatch(text)
        if match is None:
            return None
        device, inode, prefix_bytes, sha256 = match.groups()
        return cls(int(device), int(inode), int(prefix_bytes), sha256)


class FileInput:
    """A regular file read from a byte offset.

    The file is opened once, on first use, and identity, resume checks and reading all use that
    one open file, so a rename or replacement in between cannot mix two files.
    """

    def __init__(self, path: str | os.PathLike[str], *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        self.path = Path(path)
        self.name = str(path)
        self.max_line_bytes = max_line_bytes
        self.held_back_bytes = 0
        self._file: BinaryIO | None = None

    def __enter__(self) -> FileInput:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _open(self) -> BinaryIO:
        if self._file is None:
            self._file = open(self.path, "rb")  # noqa: SIM115 - closed by close()
        return self._file

    def _fingerprint(self, prefix_bytes: int) -> str:
        # pread leaves the file position alone, so this is safe while lines() is iterating.
        data = os.pread(self._open().fileno(), prefix_bytes, 0)
        return hashlib.sha256(data).hexdigest()

    def file_identity(self) -> FileIdentity:
        status = os.fstat(self._open().fileno())
        prefix_bytes = min(FINGERPRINT_BYTES, status.st_size)
        return FileIdentity(status.st_dev, status.st_ino, prefix_bytes, self._fingerprint(prefix_bytes))

    def identity(self) -> str:
        """Return `file:dev=D:ino=I:prefix=N:sha256=H`, N being the bytes that H covers."""
        return str(self.file_identity())

    def resume_offset(self, stored_identity: str | None, stored_offset: int) -> tuple[int, str | None]:
        """Return the offset to start reading at and a warning when a checkpoint is discarded.

        The checkpoint holds when the device and inode match, the file is at least
        `stored_offset` bytes long and its first N bytes (N from the stored identity) have the
        stored hash. Otherwise reading starts at 0 and the warning names the file and the change.
        """
        if stored_identity is None or stored_offset <= 0:
            return 0, None
        stored = FileIdentity.parse(stored_identity)
        if stored is None:
            return 0, (
                f"{self.name}: the checkpoint source {stored_identity!r} is not a file identity; "
                "reading from the start"
            )

        status = os.fstat(self._open().fileno())
        if (status.st_dev, status.st_ino) != (stored.device, stored.inode):
            return 0, (
                f"{self.name} was replaced: device/inode changed from "
                f"{stored.device}/{stored.inode} to {status.st_dev}/{status.st_ino}; "
                "reading from the start"
            )
        if status.st_size < stored_offset:
            return 0, (
                f"{self.name} was truncated: its size is {status.st_size} bytes, below the "
                f"checkpoint offset {stored_offset}; reading from the start"
            )
        if self._fingerprint(stored.prefix_bytes) != stored.sha256:
            return 0, (
                f"{self.name} was rewritten: its first {stored.prefix_bytes} bytes changed since "
                "the checkpoint; reading from the start"
            )
        return stored_offset, None

    def lines(
        self, start_offset: int = 0, *, hold_partial_last_line: bool = False
    ) -> Iterator[Line | OversizedLine]:
        """Yield the lines from `start_offset`; see `read_lines` for `hold_partial_last_line`.

        `held_back_bytes` is 0 while the lines are read and is set once they are exhausted.
        """
        self.held_back_bytes = 0
        file = self._open()
        # read_lines seeks only for a start offset above 0, and an earlier read of this open
        # file may have moved the position.
        file.seek(0)
        reader = read_lines(
            file,
            start_offset,
            max_line_bytes=self.max_line_bytes,
            hold_partial_last_line=hold_partial_last_line,
        )
        return self._record_held_back(reader)

    def _record_held_back(
        self, reader: Generator[Line | OversizedLine, None, int]
    ) -> Generator[Line | OversizedLine, None, None]:
        self.held_back_bytes = yield from reader


class StdinInput:
    """Standard input. It has no identity and always starts at offset 0."""

    def __init__(self, stream: BinaryIO | None = None, *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        self.name = "<stdin>"
        self.max_line_bytes = max_line_bytes
        self.held_back_bytes = 0
        self._stream = stream

    def identity(self) -> None:
        return None

    def resume_offset(self, stored_identity: str | None, stored_offset: int) -> tuple[int, None]:
        return 0, None

    def lines(
        self, start_offset: int = 0, *, hold_partial_last_line: bool = False
    ) -> Iterator[Line | OversizedLine]:
        """Yield the lines of standard input.

        `hold_partial_last_line` is ignored, so `held_back_bytes` stays 0: standard input ends
        only when the writer closes it, so an unterminated last line is complete, and no later
        read could resume inside it.
        """
        if start_offset != 0:
            raise ValueError(f"standard input cannot start at offset {start_offset}: use 0")
        stream = self._stream if self._stream is not None else sys.stdin.buffer
        return read_lines(stream, 0, max_line_bytes=self.max_line_bytes)

    def close(self) -> None:
        # The process owns sys.stdin, so it is left open.
        return None
