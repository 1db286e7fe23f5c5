"""Sinks that write notifications to a text stream: a human-readable line or a JSON line."""

from __future__ import annotations

import sys
from typing import TextIO

import orjson
from rich.console import Console
from rich.text import Text

from alertwarden.rules.durations import format_duration
from alertwarden.engine.records import format_time
from alertwarden.errors import OutputClosedError, SinkError
from alertwarden.sinks.base import Notification

_KIND_STYLES = {
    "fired": "bold red",
    "recovered": "green",
    "cooldown_hit": "dim",
    "renotified": "yellow",
}
# Width of the longest kind, so the rule column lines up for every kind.
_KIND_WIDTH = len("COOLDOWN_HIT")
_MISSING_VALUE = "<missing>"

# Group values and annotations come from the input logs. Escaping C0 and C1 control characters
# keeps one notification on one line and stops an input line from sending terminal escape codes.
_CONTROL_ESCAPES = {
    code: f"\\x{code:02x}" for code in [*range(0x00, 0x20), *range(0x7F, 0xA0)]
} | {ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"}

def escape_control(text: str) -> str:
    """Replace control characters (newline, tab, ESC and others) with backslash escapes."""
    return text.translate(_CONTROL_ESCAPES)


def console_fields(notification: Notification) -> list[tuple[str, str]]:
    """Return the console line as (text, kind of column) pairs, in order.

    The column kinds are `time`, `kind`, `rule`, `group`, `count` and `message`. The colour mode
    styles the `kind` column by transition kind. Empty group and message columns are left out.
    """
    fields = [
        (format_time(notification.at), "time"),
        (notification.kind.upper().ljust(_KIND_WIDTH), "kind"),
        (escape_control(notification.rule_id), "rule"),
    ]
    group_text = _format_group(notification.group)
    if group_text:
        fields.append((group_text, "group"))
    count_text = (
        f"count={notification.count}/{notification.threshold}"
        f" in {format_duration(notification.window_s)}"
    )
    fields.append((count_text, "count"))
    message = _pick_message(notification)
    if message:
        fields.append((escape_control(message), "message"))
    return fields


def format_console_line(notification: Notification) -> str:
    """Format one notification as the plain console line, without a trailing newline."""
    parts = []
    for index, (text, _) in enumerate(console_fields(notification)):
        parts.append(_separator(index) + text)
    return "".join(parts)


def _separator(index: int) -> str:
    # One space after the time and after the padded kind, two between the other columns.
    if index == 0:
        return ""
    return " " if index < 3 else "  "


def _format_group(group: dict[str, str | None]) -> str:
    pairs = []
    for name, value in group.items():
        pairs.append(f"{escape_control(name)}={_format_value(value)}")
    return " ".join(pairs)


def _format_value(value: str | None) -> str:
    if value is None:
        return _MISSING_VALUE
    if value == "" or any(char in value for char in ' "='):
        # JSON quoting makes the boundaries of a value with spaces or quotes unambiguous.
        return escape_control(orjson.dumps(value).decode())
    return escape_control(value)


def _pick_message(notification: Notification) -> str | None:
    """Return the summary annotation, else the first annotation, else a distinct rule name."""
    annotations = notification.annotations
    if "summary" in annotations:
        return annotations["summary"]
    for value in annotations.values():
        return value
    if notification.rule_name and notification.rule_name != notification.rule_id:
        return notification.rule_name
    return None


class ConsoleSink:
    """Writes one human-readable line per notification, flushed at once for `tail -f`.

    `color=None` enables colour only when the stream is a terminal, so pipes and files get
    plain text. The NO_COLOR environment variable turns colour off in either case.
    """

    def __init__(self, stream: TextIO | None = None, *, color: bool | None = None) -> None:
        self._stream = stream if stream is not None else sys.stdout
        if color is None:
            color = _is_terminal(self._stream)
        self._console = _make_console(self._stream) if color else None

    @property
    def name(self) -> str:
        return "console"

    async def send(self, notification: Notification) -> None:
        try:
            if self._console is None:
                self._stream.write(format_console_line(notification) + "\n")
            else:
                self._console.print(_styled_line(notification))
            self._stream.flush()
        except BrokenPipeError as exc:
            raise OutputClosedError("standard output was closed by its reader") from exc
        except OSError as exc:
            raise SinkError(f"writing a notification to the console failed: {exc}") from exc

    async def close(self) -> None:
        # The stream belongs to the caller (usually sys.stdout), so it is flushed, not closed.
        try:
            self._stream.flush()
        except (OSError, ValueError):
            pass


class JsonLinesSink:
    """Writes each notification as one JSON object per line (Notification.as_dict)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream if stream is not None else sys.stdout

    @property
    def name(self) -> str:
        return "jsonl"

    async def send(self, notification: Notification) -> None:
        line = orjson.dumps(notification.as_dict(), option=orjson.OPT_APPEND_NEWLINE).decode()
        try:
            self._stream.write(line)
            self._stream.flush()
        except BrokenPipeError as exc:
            raise OutputClosedError("standard output was closed by its reader") from exc
        except OSError as exc:
            raise SinkError(f"writing a JSON notification line failed: {exc}") from exc

    async def close(self) -> None:
        try:
            self._stream.flush()
        except (OSError, ValueError):
            pass


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:
        # isatty() on a closed stream raises ValueError.
        return False


def _make_console(stream: TextIO) -> Console:
    # force_terminal keeps colour when the caller asks for it on a non-terminal stream, and
    # soft_wrap stops rich from breaking a long line at the terminal width. Markup and
    # highlighting are off because the text comes from input logs, not from us.
    return Console(
        file=stream,
        force_terminal=True,
        color_system="standard",
        soft_wrap=True,
        markup=False,
        highlight=False,
        emoji=False,
    )


def _styled_line(notification: Notification) -> Text:
    line = Text()
    fields = console_fields(notification)
    for index, (text, column) in enumerate(fields):
        line.append(_separator(index))
        line.append(text, style=_column_style(column, notification.kind))
    return line


def _column_style(column: str, kind: str) -> str:
    if column == "kind":
        return _KIND_STYLES.get(kind, "")
    if column == "time":
        return "dim"
    if column == "rule":
        return "bold"
    return ""
