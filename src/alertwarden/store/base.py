"""The store interface that the runner writes through. SQLite is the embedded implementation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from alertwarden.engine.records import Checkpoint, FlushBatch, GroupSnapshot, Transition


@dataclass(slots=True)
class StoredState:
    """Result of a load: the last snapshot of every group and the checkpoint."""

    groups: dict[str, list[GroupSnapshot]] = field(default_factory=dict)
    checkpoint: Checkpoint | None = None


@dataclass(frozen=True, slots=True)
class HistoryRecord:
    """One row of transition history as stored."""

    id: int
    tenant: str
    rule_group: str
    transition_id: str
    at: float
    rule_id: str
    group: dict[str, str | None]
    kind: str
    count: int
    details: dict
    delivered: bool


class StateStore(Protocol):
    """Persistence for one or more tenants. Every method is scoped by tenant and rule group.

    Contract the runner relies on for exact recovery:
    - record_transitions writes the history rows and the group rows of their snapshots in one
      transaction, before any sink receives the transitions.
    - flush writes the changed groups, deletes the forgotten ones and stores the checkpoint in
      one transaction, so a crash leaves the old snapshot or the new one, never a mix.
    - A group row written by record_transitions carries a later `position` than the checkpoint;
      flush overwrites it only with a newer state of the same group.
    """

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def load(self, tenant: str, rule_group: str) -> StoredState: ...

    async def record_transitions(
        self, tenant: str, rule_group: str, transitions: Sequence[Transition]
    ) -> list[int]: ...

    async def flush(self, tenant: str, rule_group: str, batch: FlushBatch) -> None: ...

    async def undelivered(
        self, tenant: str, rule_group: str, *, after_id: int = 0, limit: int | None = None
    ) -> list[HistoryRecord]: ...

    async def mark_delivered(self, tenant: str, ids: Sequence[int]) -> None: ...

    async def prune_history(self, tenant: str, before_s: float) -> int: ...

    async def history(
        self,
        tenant: str,
        *,
        rule_id: str | None = None,
        kind: str | None = None,
        since_s: float | None = None,
        until_s: float | None = None,
        limit: int = 1000,
    ) -> list[HistoryRecord]: ...
