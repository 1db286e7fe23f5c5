"""Routes of tenants, their feature flags and their API tokens."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, HTTPException, Response

from alertwarden.api.auth import issue_token
from alertwarden.api.deps import AdminScope, Api, Caller, TenantScope, not_found
from alertwarden.api.models import (
    Feature,
    FeatureBody,
    IssuedTokenOut,
    Tenant,
    TenantId,
    TokenList,
    TokenOut,
    TokenRequest,
    check_tenant_id,
    rfc3339,
)
from alertwarden.api.responses import (
    ADMIN_ONLY,
    STORE_FAILED,
    TENANT_NOT_FOUND,
    UNAUTHORIZED,
    Responses,
    error,
    invalid,
)

STATEFUL_RULES = "stateful-rules"

_SCOPED: Responses = {
    **UNAUTHORIZED,
    **TENANT_NOT_FOUND,
    422: invalid("Invalid tenant id."),
    **STORE_FAILED,
}
_ADMIN_ONLY: Responses = {**_SCOPED, **ADMIN_ONLY}

router = APIRouter(prefix="/v1/tenants", tags=["tenants"])


@router.put(
    "/{tenant}",
    summary="Create a tenant (admin)",
    response_model=Tenant,
    responses={
        200: {"description": "The tenant already existed and is unchanged."},
        201: {"description": "The tenant was created with stateful-rules off.", "model": Tenant},
        **_ADMIN_ONLY,
        403: error("The tenant's own token, because creating a tenant requires the admin token."),
        404: error("Another tenant's token, which may not see this tenant."),
    },
)
async def put_tenant(
    tenant: TenantId,
    caller: Caller,
    api: Api,
    response: Response,
) -> Tenant:
    check_tenant_id(tenant)
    if not caller.is_admin:
        # Another tenant's id returns 404, like every tenant path, so a token cannot probe tenants.
        if caller.tenant != tenant:
            raise not_found(f"tenant {tenant!r}")
        raise HTTPException(403, "this endpoint requires the admin token")
    created = await api.store.create_tenant(tenant)
    response.status_code = 201 if created else 200
    flag = await api.store.tenant_flag(tenant)
    return Tenant(tenant=tenant, stateful_rules=bool(flag))


@router.get("/{tenant}", summary="Read a tenant", response_model=Tenant, responses=_SCOPED)
async def get_tenant(tenant: TenantScope, api: Api) -> Tenant:
    flag = await api.store.tenant_flag(tenant)
    if flag is None:
        raise not_found(f"tenant {tenant!r}")
    return Tenant(tenant=tenant, stateful_rules=flag)


@router.get(
    "/{tenant}/features/stateful-rules",
    summary="Read the stateful-rules flag",
    response_model=Feature,
    responses=_SCOPED,
)
async def get_stateful_rules(tenant: TenantScope, api: Api) -> Feature:
    flag = await api.store.tenant_flag(tenant)
    if flag is None:
        raise not_found(f"tenant {tenant!r}")
    return Feature(tenant=tenant, feature=STATEFUL_RULES, enabled=flag)


@router.put(
    "/{tenant}/features/stateful-rules",
    summary="Switch the stateful-rules flag (admin)",
    response_model=Feature,
    responses={**_ADMIN_ONLY, 422: invalid("Invalid body or tenant id.")},
)
async def put_stateful_rules(
    tenant: AdminScope, api: Api, body: Annotated[FeatureBody, Body()]
) -> Feature:
    # The flag is the platform operator's rollout switch, so a tenant token may read it but not
    # switch it. AdminScope checks the tenant first, so another tenant's flag still returns 404.
    await api.store.set_feature(tenant, body.enabled)
    api.rules_changed()
    return Feature(tenant=tenant, feature=STATEFUL_RULES, enabled=body.enabled)


@router.post(
    "/{tenant}/tokens",
    summary="Create a tenant token (admin)",
    status_code=201,
    response_model=IssuedTokenOut,
    responses={
        **_ADMIN_ONLY,
        422: invalid("Invalid body or tenant id, or a token name that the store cannot hold."),
    },
)
async def post_token(
    tenant: AdminScope, api: Api, body: Annotated[TokenRequest | None, Body()] = None
) -> IssuedTokenOut:
    name = body.name if body is not None else ""
    issued = issue_token()
    created_at = await api.store.insert_api_token(
        tenant, issued.token_id, name, issued.salt, issued.secret_sha256
    )
    return IssuedTokenOut(
        id=issued.token_id,
        tenant=tenant,
        name=name,
        token=issued.token,
        created_at=rfc3339(created_at) or "",
    )


@router.get(
    "/{tenant}/tokens",
    summary="List a tenant's tokens (admin)",
    response_model=TokenList,
    responses=_ADMIN_ONLY,
)
async def list_tokens(tenant: AdminScope, api: Api) -> TokenList:
    rows = await api.store.list_api_tokens(tenant)
    return TokenList(
        items=[
            TokenOut(
                id=token_id,
                tenant=tenant,
                name=name,
                created_at=rfc3339(created_at) or "",
                revoked_at=rfc3339(revoked_at),
            )
            for token_id, name, created_at, revoked_at in rows
        ]
    )


@router.delete(
    "/{tenant}/tokens/{token_id}",
    summary="Revoke a tenant token (admin)",
    status_code=204,
    response_class=Response,
    responses={
        **_ADMIN_ONLY,
        204: {"description": "The token is revoked."},
        404: error("No such tenant or active token, or a tenant the token may not see."),
        422: invalid("Invalid tenant id, or a token id that the store cannot hold."),
    },
)
async def revoke_token(tenant: AdminScope, token_id: str, api: Api) -> Response:
    if not await api.store.revoke_api_token(tenant, token_id):
        raise not_found(f"active token {token_id!r} of tenant {tenant!r}")
    return Response(status_code=204)

