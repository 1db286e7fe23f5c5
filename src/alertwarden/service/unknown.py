"""Messages that publishers stored for tenants that do not exist.

No evaluator reads such a subject, so the messages would go unnoticed until the stream drops
them. The service reads the stream's message count per subject (JetStream stream info with a
subjects filter) at each poll and reports what was added for subjects of unknown tenants.
"""

from __future__ import annotations

from collections.abc import Mapping

from alertwarden.sources.jetstream import JetStreamSettings, tenant_of_subject

MAX_UNKNOWN_TENANTS = 100
"""Distinct unknown tenant ids reported by name. Publishers choose the ids, and each would become
a metric label, so the rest are reported as OTHER_TENANTS."""
OTHER_TENANTS = "_other"


class UnknownTenantCounter:
    """Turns per-subject message counts into new messages per unknown tenant since the last call."""

    def __init__(self, settings: JetStreamSettings, max_tenants: int = MAX_UNKNOWN_TENANTS) -> None:
        self.settings = settings
        self.max_tenants = max_tenants
        self._last_counts: dict[str, int] = {}
        self._named: set[str] = set()
        self._started = False

    def update(self, subject_counts: Mapping[str, int], known_tenants: set[str]) -> dict[str, int]:
        """Return the messages added per unknown tenant since the previous call.

        The first call only records the counts, so messages stored before this process started
        are not reported again at each start. A subject whose count fell (the stream dropped old
        messages) counts its current messages as new, which under-reports when messages were
        both dropped and added between two calls.
        """
        first = not self._started
        self._started = True
        added: dict[str, int] = {}
        counts: dict[str, int] = {}
        for subject, count in subject_counts.items():
            tenant = tenant_of_subject(self.settings, subject)
            if tenant is None or tenant in known_tenants:
                continue
            counts[subject] = count
            before = self._last_counts.get(subject, 0)
            new = count - before if count >= before else count
            if new <= 0 or first:
                continue
            label = self._label(tenant)
            added[label] = added.get(label, 0) + new
        self._last_counts = counts
        return added

    def _label(self, tenant: str) -> str:
        if tenant in self._named:
            return tenant
        if len(self._named) < self.max_tenants:
            self._named.add(tenant)
            return tenant
        return OTHER_TENANTS
