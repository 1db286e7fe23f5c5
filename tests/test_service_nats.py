"""The service's reaction to a NATS client that closed for good, without servers."""

from __future__ import annotations

from dataclasses import dataclass

from alertwarden.service.runtime import Service
from alertwarden.settings import Settings


@dataclass
class ClosedClient:
    """The part of nats-py's Client that the closed callback reads."""

    last_error: Exception | None


async def test_closed_connection_stops_with_status_1() -> None:
    service = Service(Settings())
    service.nats = ClosedClient(Exception("nats: maximum payload exceeded"))  # type: ignore[assignment]

    await service._nats_closed()

    assert service.exit_status == 1
    assert service._stop.is_set()


async def test_own_close_at_stop_is_no_failure() -> None:
    service = Service(Settings())
    service.nats = ClosedClient(None)  # type: ignore[assignment]
    service._nats_closing = True

    await service._nats_closed()

    assert service.exit_status == 0
    assert not service._stop.is_set()
