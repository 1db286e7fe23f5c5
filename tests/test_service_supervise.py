"""Tests of the service's supervising loop and the evaluators it starts, without servers."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
import structlog

from alertwarden.service.catalog import GroupId, GroupSpec
from alertwarden.service import runtime
from alertwarden.service.runtime import Service
from alertwarden.settings import Settings


class ScriptedService(Service):
    """A service whose reconcile records each call and runs a step the test gives for it."""

    def __init__(self, settings: Settings, steps: list[str]) -> None:
        super().__init__(settings)
        self.steps = steps
        self.reconciles = 0

    async def _reconcile(self) -> None:
        step = self.steps[self.reconciles]
        self.reconciles += 1
        # A real reconcile awaits the store many times, and an API change can arrive at any of them.
        await asyncio.sleep(0)
        if step == "change":
            self.rules_changed()
        elif step == "stop":
            self.request_stop()

    async def _count_unknown_tenants(self) -> None:
        return None

    def refresh_metrics(self) -> None:
        return None


async def supervise(service: Service) -> None:
    api = asyncio.get_running_loop().create_future()
    try:
        # A poll of ten minutes: only a wake-up ends the wait before this deadline.
        async with asyncio.timeout(10):
            await service._supervise(api)  # type: ignore[arg-type]
    finally:
        api.cancel()


async def test_change_during_reconcile_starts_another_at_once() -> None:
    service = ScriptedService(Settings(rules_poll_s=600), ["change", "stop"])

    await supervise(service)

    assert service.reconciles == 2



class StopOnAcquire:
    """Leases that grant each request and request a stop meanwhile, as a SIGTERM can do."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.acquired: list[GroupId] = []
        self.released: list[GroupId] = []

    async def try_acquire(self, group_id: GroupId) -> int:
        self.acquired.append(group_id)
        self.service.request_stop()
        return 1

    async def release(self, group_id: GroupId) -> None:
        self.released.append(group_id)


async def test_stop_during_lease_starts_no_evaluator() -> None:
    service = Service(Settings())
    leases = StopOnAcquire(service)
    service.leases = leases  # type: ignore[assignment]
    service._worker_config = object()  # type: ignore[assignment]
    desired = {
        (tenant, "default"): GroupSpec(tenant, "default", rules=(), versions=((f"{tenant}-rule", 1),))
        for tenant in ("acme", "globex")
    }

    changed = await service._start_desired_workers(desired, take=10)

    assert changed is False
    assert service.workers == {}
    # The lease taken as the stop arrived goes back at once, and the next group is not tried.
    assert leases.acquired == [("acme", "default")]
    assert leases.released == [("acme", "default")]


class EmptyStream:
    """The part of nats-py's JetStream context that the unknown-tenant count reads."""

    async def stream_info(self, name: str, subjects_filter: str) -> SimpleNamespace:
        return SimpleNamespace(state=SimpleNamespace(subjects={}))


class ConnectedNats:
    is_connected = True

    def jetstream(self) -> EmptyStream:
        return EmptyStream()


class UnresponsiveStore:
    """A store whose queries wait, as they do for a pooled connection while the server is down."""

    async def tenant_ids(self) -> set[str]:
        await asyncio.sleep(3600)
        return set()


async def test_unknown_tenant_count_gives_up_on_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "UNKNOWN_TENANT_COUNT_TIMEOUT_S", 0.05)
    service = Service(Settings())
    service.nats = ConnectedNats()  # type: ignore[assignment]
    service.store = UnresponsiveStore()  # type: ignore[assignment]

    # The supervising loop, which reconnects the lease session, goes on within the bound.
    with structlog.testing.capture_logs() as logs:
        async with asyncio.timeout(10):
            await service._count_unknown_tenants()

    assert [entry["event"] for entry in logs] == ["unknown_tenant_count_failed"]
    assert logs[0]["error"] == "TimeoutError"


class ReopenedLeases:
    """A lease session that was lost and opens again at once, as after a short database outage."""

    connected = True

    async def alive(self) -> bool:
        return False

    async def open(self) -> None:
        return None


async def test_readiness_after_lost_leases_until_reconcile() -> None:
    service = Service(Settings())
    service.nats = ConnectedNats()  # type: ignore[assignment]
    service.leases = ReopenedLeases()  # type: ignore[assignment]
    service.rules_loaded = True
    service._evaluators_placed = True
    assert service.readiness().ready

    reopened = await service._leases_ready()

    # The session is back, but the rule groups have no evaluator until the next reconcile.
    assert reopened
    readiness = service.readiness()
    assert not readiness.ready
    assert readiness.checks["evaluators"] == "rule groups not assigned to evaluators yet"
