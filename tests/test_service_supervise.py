"""Tests of when the service's supervising loop reconciles the evaluators, without servers."""

from __future__ import annotations

import asyncio

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

