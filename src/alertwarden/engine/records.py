"""Records the engine hands to stores and sinks: transitions, group snapshots, checkpoints."""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

GroupKey = tuple[str | None, ...]
"""Values of a rule's `group_by` fields, in order. None is the explicit missing value."""


class TransitionKind(enum.StrEnum):
    FIRED = "fired"
    RECOVERED = "recovered"
    COOLDOWN_HIT = "cooldown_hit"
    RENOTIFIED = "renotified"


class GroupStatus(enum.StrEnum):
    OK = "ok"
    FIRING = "firing"


def group_identity(tenant: str, rule_id: str, key: GroupKey) -> str:
    """Build the one canonical identity string of a tenant + rule + group key.

    Stores use it as the primary key of a group's row and sinks as the alert fingerprint, so it
    must stay stable across releases: JSON of the three parts, without whitespace.
    """
    return orjson.dumps([tenant, rule_id, list(key)]).decode()


def format_time(at_s: float) -> str:
    """Format UTC seconds as RFC 3339 with a `Z` suffix; whole seconds drop the fraction."""
    moment = datetime.fromtimestamp(at_s, UTC)
    if moment.microsecond:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class GroupSnapshot:
    """The stored state of one rule + group key, enough to rebuild its window exactly.

    Fields:
    - window_s, bucket_s: the rule's window and bucket when the snapshot was taken. A restore with
      different values starts the group afresh, because the bucket counts no longer fit.
    - counts: the N = window_s / bucket_s bucket counts, oldest first; the last one is
      `head_bucket`, so counts[i] belongs to bucket head_bucket - (N - 1) + i.
    - head_bucket: the newest bucket index (floor(t / bucket_s)) that received an event.
    - last_seen_at: greatest time at which an event was counted for the group (UTC seconds).
    - last_fired_at, last_notified_at: time of the last `fired`, and of the last `fired` or
      `renotified`; None when there was none. Cooldown and re-notify are measured from
      last_notified_at.
    - status: ok or firing.
    - suppressed: True while a cooldown_hit episode is open, so the episode is written once.
    - position: input step after which this state was taken (see Checkpoint.position). A restore
      skips replayed steps up to it for this group only, so a state written at a transition,
      ahead of the last checkpoint, is never counted twice.
    """

    rule_id: str
    key: GroupKey
    window_s: int
    bucket_s: int
    counts: tuple[int, ...]
    head_bucket: int
    last_seen_at: float
    last_fired_at: float | None
    last_notified_at: float | None
    status: GroupStatus
    suppressed: bool
    position: int


@dataclass(frozen=True, slots=True)
class Transition:
    """One state change of a rule + group key, made by the evaluation at time `at`.

    `group` pairs each `group_by` field with its value. `count` is the window count at `at`.
    `snapshot` is the group's state right after the transition; stores write it together with
    the history row.
    """

    at: float
    rule_id: str
    group: tuple[tuple[str, str | None], ...]
    kind: TransitionKind
    count: int
    threshold: int
    window_s: int
    snapshot: GroupSnapshot
    captures: dict[str, Any] = field(default_factory=dict, compare=False)
    reason: str | None = None
    """Reason for a transition made outside the rules, such as a group reset by a rule change."""

    @property
    def key(self) -> GroupKey:
        return tuple(value for _, value in self.group)

    def transition_id(self, tenant: str, rule_group: str) -> str:
        """Return a stable id for deduplicating deliveries of this transition."""
        raw = orjson.dumps(
            [tenant, rule_group, self.rule_id, list(self.key), self.kind.value, round(self.at, 6)]
        )
        return hashlib.sha256(raw).hexdigest()[:32]

    def as_dict(self) -> dict[str, Any]:
        """Return the JSON form used by the jsonl output, webhooks and history details."""
        return {
            "at": format_time(self.at),
            "rule": self.rule_id,
            "group": dict(self.group),
            "kind": self.kind.value,
            "count": self.count,
            "threshold": self.threshold,
            "window_s": self.window_s,
            **({"reason": self.reason} if self.reason else {}),
        }


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Position of a rule group's input at its last flush, and its clock at that point.

    - source: identity of the input (for a file: device, inode and a fingerprint of its start).
    - offset: byte offset (or stream sequence) of the first record not yet applied.
    - position: step number of the flush. The boundary ticks a record triggers run at step
      base + 2 * offset and the record itself at the next step. The base stays fixed while an
      input is replayed, so the base is position - 2 * offset.
    - now: the evaluator clock in UTC seconds, None before the first event.
    - ticked: per rule id, the last bucket index whose boundary was evaluated.
    """

    source: str
    offset: int
    position: int
    now: float | None
    ticked: dict[str, int]


@dataclass(slots=True)
class FlushBatch:
    """Changed groups, forgotten groups and the checkpoint of one flush, written in one transaction.

    A forgotten group's row is deleted only when it is not newer than the checkpoint. An
    obsolete group's row is deleted whatever its position: its rule was removed, or its window
    or bucket changed, so no state of that row is current.
    """

    changed: list[GroupSnapshot]
    forgotten: list[tuple[str, GroupKey]]
    checkpoint: Checkpoint
    obsolete: list[tuple[str, GroupKey]] = field(default_factory=list)
