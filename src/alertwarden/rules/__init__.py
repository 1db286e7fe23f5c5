"""Alert rules: YAML rule files, their validation, the compiled match filter and annotation templates."""

from alertwarden.rules.compiled import CompiledRule, compile_rule
from alertwarden.rules.defaults import RuleDefaults
from alertwarden.rules.durations import default_bucket_s, format_duration, parse_duration
from alertwarden.rules.explain import explain_rule, explain_rules
from alertwarden.rules.loader import (
    MAX_RULE_FILE_BYTES,
    RuleFileError,
    load_rules_file,
    load_rules_files,
    load_rules_text,
    validate_rule_entries,
)
from alertwarden.rules.match import NO_CAPTURES, REGEX_TIMEOUT_S, Captures, IndexHint, Matcher, RegexTimeoutCounter
from alertwarden.rules.model import MissingKeyPolicy, RuleDefinition, RuleFieldErrors

__all__ = [
    "MAX_RULE_FILE_BYTES",
    "NO_CAPTURES",
    "REGEX_TIMEOUT_S",
    "Captures",
    "CompiledRule",
    "IndexHint",
    "Matcher",
    "RegexTimeoutCounter",
    "MissingKeyPolicy",
    "RuleDefaults",
    "RuleDefinition",
    "RuleFieldErrors",
    "RuleFileError",
    "compile_rule",
    "default_bucket_s",
    "explain_rule",
    "explain_rules",
    "format_duration",
    "load_rules_file",
    "load_rules_files",
    "load_rules_text",
    "parse_duration",
    "validate_rule_entries",
]
