"""The sink interface and the notification every sink receives."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from alertwarden.engine.records import format_time


@dataclass(frozen=True, slots=True)
class Notification:
    """A transition made ready for delivery: identity, rendered labels and annotations.

    `transition_id` is stable across redeliveries, so a receiver can drop duplicates.
    """

    transition_id: str
    tenant: str
    rule_group: str
    rule_id: str
    rule_name: str
    at: float
    kind: str
    count: int
    threshold: int
    window_s: int
    group: dict[str, str | None]
    severity: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.transition_id,
            "at": format_time(self.at),
            "tenant": self.tenant,
            "rule_group": self.rule_group,
            "rule": self.rule_id,
            "rule_name": self.rule_name,
            "group": self.group,
            "kind": self.kind,
            "count": self.count,
            "threshold": self.threshold,
            "window_s": self.window_s,
            "severity": self.severity,
            "labels": self.labels,
            "annotations": self.annotations,
            **({"reason": self.reason} if self.reason else {}),
        }


class Sink(Protocol):
    """Delivers notifications. `send` raises SinkError once its own retries are exhausted."""

    async def send(self, notification: Notification) -> None: ...

    async def close(self) -> None: ...
