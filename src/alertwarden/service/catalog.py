"""The rules the service evaluates: stored definitions, rule files, and the last good versions.

Definitions live in the `rule_definitions` table, written by the API and by rule files that
the service syncs into it. Every poll compiles what changed. A definition that no longer
compiles (written by another version, or edited in the database) keeps the previous compiled
version of its rule in force and is reported, so one bad update never stops a rule.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from alertwarden.errors import ConfigError, RuleError
from alertwarden.logs import get_logger
from alertwarden.rules import CompiledRule, RuleDefaults, RuleDefinition, compile_rule, load_rules_file
from alertwarden.settings import RuleFile
from alertwarden.sources.jetstream import validate_tenant
from alertwarden.store.postgres import PostgresStore

log = get_logger(__name__)

GroupId = tuple[str, str]
"""(tenant, rule group)."""


@dataclass(frozen=True, slots=True)
class GroupSpec:
    """The compiled rules of one tenant + rule group and the versions they were compiled from."""

    tenant: str
    rule_group: str
    rules: tuple[CompiledRule, ...]
    versions: tuple[tuple[str, int], ...]


@dataclass(slots=True)
class RuleProblem:
    """A stored definition that failed to compile, and whether an older version stays in force."""

    version: int
    message: str
    previous_in_force: bool


@dataclass(slots=True)
class RuleCatalog:
    """Loads rule files into the store and compiles the active definitions of every tenant."""

    store: PostgresStore
    rule_files: Sequence[RuleFile] = ()
    rule_defaults: RuleDefaults = field(default_factory=RuleDefaults)
    """Defaults that rule file rules take when the files are loaded. Stored definitions are
    compiled without them, because an API PUT stores its rule with them filled in."""
    problems: dict[tuple[str, str], RuleProblem] = field(default_factory=dict)
    """(tenant, rule id) -> the problem of its current stored definition."""
    rule_files_valid: dict[str, bool] = field(default_factory=dict)
    """Tenant -> whether the last read of its rule files loaded them."""
    _compiled: dict[tuple[str, str], tuple[int, str, CompiledRule]] = field(default_factory=dict)
    _file_stamps: dict[str, tuple[int, int] | None] = field(default_factory=dict)
    _invalid_tenants: set[str] = field(default_factory=set)

    def definition_entry(self, rule: CompiledRule) -> dict[str, Any]:
        """Return the rule as the API stores it: field names as in a rule file."""
        return rule.definition.model_dump(mode="json", by_alias=True)

    async def sync_files(self) -> bool:
        """Store the rules of changed rule files; return True when any file was synced.

        A tenant's files load together: when one of them is invalid or unreadable, none of
        that tenant's file rules change and the previous ones stay in force.
        """
        by_tenant: dict[str, list[RuleFile]] = defaultdict(list)
        for entry in self.rule_files:
            by_tenant[entry.tenant].append(entry)
        synced = False
        for tenant, entries in sorted(by_tenant.items()):
            stamps = {str(entry.path): _stamp(entry.path) for entry in entries}
            if all(self._file_stamps.get(path, ()) == stamp for path, stamp in stamps.items()):
                continue
            rules: list[CompiledRule] = []
            try:
                for entry in entries:
                    rules.extend(load_rules_file(entry.path, self.rule_defaults))
            except RuleError as error:
                log.error(
                    "rule_file_rejected",
                    tenant=tenant,
                    error=str(error),
                    note="the tenant's file rules stay as they were stored, none if the files never"
                    " loaded; fix the file, which is read again when it changes",
                )
                self._file_stamps.update(stamps)
                self.rule_files_valid[tenant] = False
                continue
            await self._store_file_rules(tenant, rules)
            self._file_stamps.update(stamps)
            self.rule_files_valid[tenant] = True
            synced = True
            log.info("rule_files_loaded", tenant=tenant, files=len(entries), rules=len(rules))
        return synced

    async def _store_file_rules(self, tenant: str, rules: list[CompiledRule]) -> None:
        await self.store.create_tenant(tenant)
        by_group: dict[str, list[CompiledRule]] = defaultdict(list)
        for rule in rules:
            by_group[rule.group].append(rule)
        # Groups that lost all their file rules get an empty sync, which disables those rules.
        stored = await self.store.rule_definitions(tenant)
        for _, rule_group, _, _, _, source, _ in stored:
            if source == "file":
                by_group.setdefault(rule_group, [])
        for rule_group, group_rules in sorted(by_group.items()):
            definitions = [(rule.id, self.definition_entry(rule), rule.enabled) for rule in group_rules]
            await self.store.sync_rules(tenant, rule_group, definitions, source="file")

    async def load(self) -> dict[GroupId, GroupSpec]:
        """Compile the active definitions and return them by tenant and rule group.

        Raises StoreError when the store cannot be read; the caller keeps its current rules.
        """
        rows = await self.store.active_rule_definitions()
        groups: dict[GroupId, list[tuple[str, int, CompiledRule]]] = defaultdict(list)
        seen: set[tuple[str, str]] = set()
        for tenant, rule_group, rule_id, definition, version in rows:
            if not self._usable_tenant(tenant):
                continue
            key = (tenant, rule_id)
            seen.add(key)
            compiled = self._compile(tenant, rule_group, rule_id, definition, version)
            if compiled is not None:
                groups[(tenant, compiled[1])].append((rule_id, compiled[0], compiled[2]))
        for key in [k for k in self._compiled if k not in seen]:
            del self._compiled[key]
        for key in [k for k in self.problems if k not in seen]:
            del self.problems[key]
        return {
            group_id: GroupSpec(
                tenant=group_id[0],
                rule_group=group_id[1],
                rules=tuple(rule for _, _, rule in entries),
                versions=tuple((rule_id, version) for rule_id, version, _ in entries),
            )
            for group_id, entries in sorted(groups.items())
        }

    def _usable_tenant(self, tenant: str) -> bool:
        """Return False, logging it once, for a tenant id stored before ids were restricted.

        Such a tenant's subjects cannot be built, so its evaluator would fail at every restart.
        """
        try:
            validate_tenant(tenant)
        except ConfigError as error:
            if tenant not in self._invalid_tenants:
                self._invalid_tenants.add(tenant)
                log.error(
                    "tenant_not_evaluated",
                    tenant=tenant,
                    error=str(error),
                    note="create the tenant again under a valid id and move its rules there",
                )
            return False
        return True

    def _compile(
        self, tenant: str, rule_group: str, rule_id: str, definition: Any, version: int
    ) -> tuple[int, str, CompiledRule] | None:
        key = (tenant, rule_id)
        cached = self._compiled.get(key)
        if cached is not None and cached[0] == version:
            return cached
        try:
            if not isinstance(definition, dict):
                raise RuleError(f"the stored definition is a JSON {type(definition).__name__}, not an object")
            model = RuleDefinition.model_validate({**definition, "id": rule_id, "group": rule_group})
            rule = compile_rule(model)
        except (ValidationError, RuleError, ValueError) as error:
            reason = _describe(error)
            message = f"rule {rule_id!r} of tenant {tenant!r}, version {version}, is invalid: {reason}"
            known = self.problems.get(key)
            if known is None or known.version != version:
                log.error(
                    "rule_definition_invalid",
                    tenant=tenant,
                    rule=rule_id,
                    version=version,
                    error=reason,
                    previous_in_force=cached is not None,
                )
            self.problems[key] = RuleProblem(version, message, cached is not None)
            return cached
        self.problems.pop(key, None)
        compiled = (version, rule_group, rule)
        self._compiled[key] = compiled
        return compiled


def _describe(error: Exception) -> str:
    """Return a validation error as `field 'x': message` parts, without pydantic's links."""
    if not isinstance(error, ValidationError):
        return str(error)
    parts = []
    for detail in error.errors(include_url=False, include_input=False):
        location = ".".join(str(part) for part in detail["loc"]) or "rule"
        parts.append(f"field '{location}': {detail['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


def _stamp(path: os.PathLike[str] | str) -> tuple[int, int] | None:
    """Return (mtime in ns, size) of a file, or None when it cannot be read."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_mtime_ns, info.st_size

