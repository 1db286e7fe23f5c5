"""FastAPI dependencies: the application context, the authenticated caller and the tenant scope."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Protocol

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from alertwarden.api.auth import ADMIN, Principal, admin_digest, digests_equal, secret_digest, split_token
from alertwarden.api.models import TenantId, check_tenant_id
from alertwarden.rules import RuleDefaults
from alertwarden.store.postgres import PostgresStore

_bearer = HTTPBearer(auto_error=False, description="The admin token or a tenant token.")
# Compared against when the token id is unknown, so that case costs a digest and a comparison too.
_UNKNOWN_DIGEST = bytes(32)


class ServiceHooks(Protocol):
    """Hooks through which the API reads from and notifies the running service (`alertwarden serve`)."""

    def readiness(self) -> Any: ...

    def rule_health(self, tenant: str, rule_id: str) -> dict[str, Any]: ...

    def rules_changed(self) -> None: ...

    def refresh_metrics(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ApiContext:
    """State shared by the routes: the store, the admin token's digest, the wall clock, the
    running service, which is None when the API runs without evaluators (tests, tools), and the
    rule defaults that a PUT fills in."""

    store: PostgresStore
    admin_sha256: bytes
    clock: Callable[[], float] = field(default=time.time)
    service: ServiceHooks | None = None
    rule_defaults: RuleDefaults = field(default_factory=RuleDefaults)

    def rules_changed(self) -> None:
        """Tell the service to apply rule or flag changes now rather than at its next poll."""
        if self.service is not None:
            self.service.rules_changed()


def context(request: Request) -> ApiContext:
    api_context: ApiContext = request.app.state.api_context
    return api_context


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(401, message, headers={"WWW-Authenticate": "Bearer"})


async def principal(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    api: Annotated[ApiContext, Depends(context)],
) -> Principal:
    """Authenticate the request's bearer token; raises 401 when it is missing or invalid."""
    if credentials is None:
        raise _unauthorized("missing bearer token: send the header Authorization: Bearer <token>")
    token = credentials.credentials
    if digests_equal(admin_digest(token), api.admin_sha256):
        return ADMIN
    parts = split_token(token)
    if parts is not None:
        token_id, secret = parts
        stored = await api.store.active_api_token(token_id)
        salt, expected = (b"", _UNKNOWN_DIGEST) if stored is None else stored[1:]
        if digests_equal(secret_digest(salt, secret), expected) and stored is not None:
            return Principal(tenant=stored[0], token_id=token_id)
    raise _unauthorized("invalid or revoked bearer token")


def not_found(what: str) -> HTTPException:
    return HTTPException(404, f"{what} not found")


def tenant_not_found(tenant: str) -> HTTPException:
    # One message for a missing tenant and another tenant's, so a tenant token cannot tell
    # which tenants exist.
    return not_found(f"tenant {tenant!r}")


async def tenant_scope(
    tenant: TenantId,
    caller: Annotated[Principal, Depends(principal)],
    api: Annotated[ApiContext, Depends(context)],
) -> str:
    """Return the path's tenant when the caller may use it and it exists; else 404."""
    check_tenant_id(tenant)
    if not caller.is_admin:
        if caller.tenant != tenant:
            raise tenant_not_found(tenant)
        return tenant
    if await api.store.tenant_flag(tenant) is None:
        raise tenant_not_found(tenant)
    return tenant


async def admin_scope(
    tenant: Annotated[str, Depends(tenant_scope)],
    caller: Annotated[Principal, Depends(principal)],
) -> str:
    """Like tenant_scope, but the caller's own tenant token gets 403: the route is admin-only."""
    if not caller.is_admin:
        raise HTTPException(403, "this endpoint requires the admin token")
    return tenant


Api = Annotated[ApiContext, Depends(context)]
Caller = Annotated[Principal, Depends(principal)]
TenantScope = Annotated[str, Depends(tenant_scope)]
AdminScope = Annotated[str, Depends(admin_scope)]
