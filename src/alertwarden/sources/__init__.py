"""Inputs: line readers and the parsers that turn lines into events."""

from alertwarden.sources.files import FileIdentity, FileInput, LineInput, StdinInput
from alertwarden.sources.formats import FORMATS, AutoParser, Parser, make_parser
from alertwarden.sources.jsonl import JsonParser, OcsfParser, OtelParser
from alertwarden.sources.lines import DEFAULT_MAX_LINE_BYTES, Line, OversizedLine, read_lines
from alertwarden.sources.regex import RegexParser
from alertwarden.sources.syslog import SyslogParser
from alertwarden.sources.timestamps import load_timezone, parse_timestamp

__all__ = [
    "DEFAULT_MAX_LINE_BYTES",
    "FORMATS",
    "AutoParser",
    "FileIdentity",
    "FileInput",
    "JsonParser",
    "Line",
    "LineInput",
    "OcsfParser",
    "OtelParser",
    "OversizedLine",
    "Parser",
    "RegexParser",
    "StdinInput",
    "SyslogParser",
    "load_timezone",
    "make_parser",
    "parse_timestamp",
    "read_lines",
]
