"""The FastAPI application factory, the body size limit and the health endpoints."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from nats.js import JetStreamContext
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from alertwarden.api import routes_history, routes_ingest, routes_metrics, routes_rules, routes_tenants
from alertwarden.api.auth import admin_digest
from alertwarden.api.deps import ApiContext, ServiceHooks
from alertwarden.api.error_handlers import add_error_handlers
from alertwarden.api.models import Health
from alertwarden.api.responses import BODY_REJECTED
from alertwarden.errors import ConfigError, StoreError
from alertwarden.logs import get_logger
from alertwarden.metrics import Metrics
from alertwarden.rules import RuleDefaults
from alertwarden.sources.jetstream import JetStreamSettings
from alertwarden.store.postgres import PostgresStore

log = get_logger(__name__)

MIN_ADMIN_TOKEN_CHARS = 16


def create_app(
    store: PostgresStore,
    *,
    admin_token: str,
    max_body_bytes: int = 1_048_576,
    clock: Callable[[], float] = time.time,
    jetstream: JetStreamContext | None = None,
    jetstream_settings: JetStreamSettings | None = None,
    max_ingest_events: int = routes_ingest.DEFAULT_MAX_EVENTS,
    max_message_bytes: int = routes_ingest.DEFAULT_MAX_MESSAGE_BYTES,
    metrics: Metrics | None = None,
    service: ServiceHooks | None = None,
    rule_defaults: RuleDefaults | None = None,
) -> FastAPI:
    """Build the REST API over an open PostgresStore.

    admin_token may call every endpoint. max_body_bytes caps each request body, and a larger
    one gets 413. clock returns the wall clock in UTC seconds for the groups view's counts.
    jetstream is where the ingest endpoint publishes, to the stream and subjects of
    jetstream_settings, at most max_ingest_events per request and max_message_bytes per event
    message, headers included; without it that endpoint returns 503. metrics is what GET /metrics returns; without it that endpoint returns 503.
    service is the running service: readiness includes its evaluators, rules show their
    run-time health, and rule or flag changes reach its evaluators at once. rule_defaults fills
    the fields that a PUT rule leaves out. Without it, they take the built-in defaults.
    """
    if len(admin_token) < MIN_ADMIN_TOKEN_CHARS:
        raise ConfigError(
            f"invalid admin token of {len(admin_token)} characters: use at least"
            f" {MIN_ADMIN_TOKEN_CHARS} random characters"
        )
    if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int) or max_body_bytes < 1:
        raise ConfigError(f"invalid max_body_bytes {max_body_bytes!r}: use a positive integer")
    if isinstance(max_ingest_events, bool) or not isinstance(max_ingest_events, int) or max_ingest_events < 1:
        raise ConfigError(f"invalid max_ingest_events {max_ingest_events!r}: use a positive integer")

    app = FastAPI(
        title="alertwarden",
        summary="Tenants, rules, group state and transition history of alertwarden.",
        version="1",
        # BodySizeLimit runs before routing, so every operation can return 413 and 415.
        responses=BODY_REJECTED,
    )
    app.state.api_context = ApiContext(
        store=store, admin_sha256=admin_digest(admin_token), clock=clock, service=service,
        rule_defaults=RuleDefaults() if rule_defaults is None else rule_defaults,
    )
    app.state.ingest = routes_ingest.IngestContext(
        js=jetstream,
        settings=jetstream_settings or JetStreamSettings(),
        max_events=max_ingest_events,
        max_message_bytes=max_message_bytes,
    )
    app.state.metrics = metrics
    app.add_middleware(BodySizeLimit, max_body_bytes=max_body_bytes)
    add_error_handlers(app)
    app.include_router(routes_tenants.router)
    app.include_router(routes_rules.router)
    app.include_router(routes_history.router)
    app.include_router(routes_ingest.router)
    app.include_router(routes_metrics.router)

    @app.get("/healthz", summary="Report that the process is up", response_model=Health,
             response_model_exclude_unset=True,
             responses={200: {"description": "The process serves requests."}})
    async def healthz() -> Health:
        return Health(status="ok")

    @app.get(
        "/readyz",
        summary="Report whether the store, JetStream and the evaluators are ready",
        response_model=Health,
        responses={
            200: {"description": "The store answered, JetStream is connected, the lease session works and"
                  " every evaluator of this node started."},
            503: {"description": "A check failed; `checks` names it.", "model": Health},
        },
    )
    async def readyz() -> Any:
        checks: dict[str, str] = {}
        try:
            await store.ping()
            checks["store"] = "ok"
        except StoreError as error:
            log.warning("readiness_check_failed", check="store", error=str(error))
            checks["store"] = "unreachable"
        if service is not None:
            checks.update(service.readiness().checks)
        ready = all(value == "ok" for value in checks.values())
        body = Health(status="ok" if ready else "unavailable", checks=checks)
        return JSONResponse(body.model_dump(), status_code=200 if ready else 503)

    return app


class BodySizeLimit:
    """ASGI middleware that returns 413 for a request body larger than max_body_bytes.

    It also returns 415 for a request with a Content-Encoding other than identity, which the
    API does not decode.

    It reads the whole body before the application runs, so a chunked body without
    Content-Length is counted too; a body within the limit is passed on unchanged.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        encoding = headers.get(b"content-encoding", b"").strip().lower()
        if encoding not in (b"", b"identity"):
            # Decoded as is, a gzip body fails as invalid UTF-8, which hides the cause.
            await self._reject_encoding(scope, receive, send, encoding)
            return
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._reject(scope, receive, send)
            return

        messages: list[Message] = []
        received = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:
                await self._reject(scope, receive, send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _reject_encoding(self, scope: Scope, receive: Receive, send: Send, encoding: bytes) -> None:
        encoding_text = encoding.decode("latin-1")[:40]
        response = JSONResponse(
            {"detail": f"unsupported Content-Encoding {encoding_text!r}: send the request body uncompressed"},
            status_code=415,
        )
        await response(scope, receive, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse(
            {"detail": f"request body is larger than {self.max_body_bytes} bytes: send a smaller body"},
            status_code=413,
        )
        await response(scope, receive, send)
