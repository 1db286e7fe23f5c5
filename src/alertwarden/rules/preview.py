"""Short previews of YAML values for error messages, bounded in time and memory.

YAML aliases let a file of a few hundred bytes build a value whose JSON form is gigabytes long
(each level of aliases multiplies the size). Serialising such a value in full before cutting it
would take that time and memory, so the preview writes JSON-like text piece by piece and stops
as soon as it has enough characters.
"""

from __future__ import annotations

import json

PREVIEW_MAX_CHARS = 80


class _BudgetSpent(Exception):
    """The preview has all the characters it needs."""


class _PreviewWriter:
    def __init__(self, budget_chars: int) -> None:
        self.parts: list[str] = []
        self.remaining = budget_chars

    def emit(self, text: str) -> None:
        self.parts.append(text[: self.remaining])
        self.remaining -= len(text)
        if self.remaining <= 0:
            raise _BudgetSpent

    def write(self, value: object) -> None:
        if isinstance(value, dict):
            self._write_mapping(value)
        elif isinstance(value, (list, tuple)):
            self._write_sequence(value)
        elif isinstance(value, str):
            # Only the first `remaining` characters can appear, so a long string is cut first.
            self.emit(json.dumps(value[: self.remaining], ensure_ascii=False))
        else:
            self.emit(_scalar_text(value, self.remaining))

    def _write_mapping(self, mapping: dict[object, object]) -> None:
        self.emit("{")
        for index, (key, item) in enumerate(mapping.items()):
            if index:
                self.emit(", ")
            key_text = key if isinstance(key, str) else _scalar_text(key, self.remaining)
            self.emit(json.dumps(key_text[: self.remaining], ensure_ascii=False))
            self.emit(": ")
            self.write(item)
        self.emit("}")

    def _write_sequence(self, items: list[object] | tuple[object, ...]) -> None:
        self.emit("[")
        for index, item in enumerate(items):
            if index:
                self.emit(", ")
            self.write(item)
        self.emit("]")


def _scalar_text(value: object, max_chars: int) -> str:
    if value is None or isinstance(value, (bool, float)):
        return json.dumps(value)
    if isinstance(value, int):
        try:
            return str(value)
        except ValueError:
            # Python refuses to convert integers of more than 4300 digits to text by default.
            return f'"<integer of {value.bit_length()} bits>"'
    # Other YAML types (dates, bytes, sets) show as their quoted repr, as json.dumps(default=repr) did.
    return json.dumps(repr(value)[:max_chars], ensure_ascii=False)


def preview(value: object, max_chars: int = PREVIEW_MAX_CHARS) -> str:
    """Quote a value as JSON for an error message, cut to `max_chars` characters ending in `...`.

    The text equals json.dumps(value, ensure_ascii=False) when that fits. The work done is
    proportional to `max_chars`, plus the length of one repr for values JSON has no form for,
    whatever the size of the value.
    """
    # One character beyond max_chars shows whether the text had to be cut.
    writer = _PreviewWriter(max_chars + 1)
    try:
        writer.write(value)
    except _BudgetSpent:
        pass
    text = "".join(writer.parts)
    return text if len(text) <= max_chars else text[: max_chars - 3] + "..."
