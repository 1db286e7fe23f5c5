"""Counting messages stored for tenants that do not exist, from per-subject counts."""

from __future__ import annotations

from alertwarden.service.unknown import OTHER_TENANTS, UnknownTenantCounter
from alertwarden.sources.jetstream import JetStreamSettings, tenant_of_subject

SETTINGS = JetStreamSettings(logs_subject="logs.{tenant}.>", events_subject="ocsf.v1.{tenant}")


def test_tenant_of_subject() -> None:
    assert tenant_of_subject(SETTINGS, "logs.acme.sshd") == "acme"
    assert tenant_of_subject(SETTINGS, "ocsf.v1.globex") == "globex"
    assert tenant_of_subject(SETTINGS, "logs.acme") is None
    assert tenant_of_subject(SETTINGS, "ocsf.v1.globex.extra") is None
    assert tenant_of_subject(SETTINGS, "metrics.acme.cpu") is None


def test_counter_reports_added_messages() -> None:
    counter = UnknownTenantCounter(SETTINGS)
    known = {"acme"}
    # Messages stored before the first call are not reported at each start.
    assert counter.update({"logs.ghost.a": 5, "logs.acme.a": 9}, known) == {}
    assert counter.update({"logs.ghost.a": 8, "logs.ghost.b": 1, "logs.acme.a": 20}, known) == {"ghost": 4}
    assert counter.update({"logs.ghost.a": 8, "logs.ghost.b": 1}, known) == {}
    # The stream dropped old messages: the current count is taken as new.
    assert counter.update({"logs.ghost.a": 2, "logs.ghost.b": 1}, known) == {"ghost": 2}


def test_counter_first_call_without_unknown() -> None:
    counter = UnknownTenantCounter(SETTINGS)
    assert counter.update({}, set()) == {}
    assert counter.update({"ocsf.v1.ghost": 3}, set()) == {"ghost": 3}


def test_counter_stops_for_created_tenant() -> None:
    counter = UnknownTenantCounter(SETTINGS)
    counter.update({}, set())
    assert counter.update({"logs.new.a": 2}, set()) == {"new": 2}
    assert counter.update({"logs.new.a": 5}, {"new"}) == {}


def test_counter_caps_tenant_labels() -> None:
    counter = UnknownTenantCounter(SETTINGS, max_tenants=2)
    counter.update({}, set())
    added = counter.update({f"logs.t{index}.a": 1 for index in range(5)}, set())
    assert added == {"t0": 1, "t1": 1, OTHER_TENANTS: 3}
