"""Route of the Prometheus metrics, which requires the admin token.

The API port also serves tenants, and the metric labels name every tenant and rule, so an
unauthenticated /metrics would let any tenant list the others.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, Response

from alertwarden.api.deps import Caller
from alertwarden.api.responses import ADMIN_ONLY, UNAUTHORIZED, error
from alertwarden.metrics import CONTENT_TYPE, Metrics

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    summary="Return the metrics in the Prometheus text format",
    response_class=Response,
    responses={
        200: {"description": "Prometheus text format.", "content": {CONTENT_TYPE: {}}},
        **UNAUTHORIZED,
        **ADMIN_ONLY,
        503: error(
            "This server was built without metrics, or the state store failed while checking a"
            " tenant token."
        ),
    },
)
async def metrics(caller: Caller, request: Request) -> Response:
    if not caller.is_admin:
        raise HTTPException(403, "this endpoint requires the admin token")
    registry: Metrics | None = request.app.state.metrics
    if registry is None:
        raise HTTPException(503, "metrics are disabled: this server was built without a Metrics object")
    service = request.app.state.api_context.service
    if service is not None:
        service.refresh_metrics()
    return Response(registry.render(), media_type=CONTENT_TYPE)
