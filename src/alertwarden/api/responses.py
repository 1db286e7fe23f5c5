"""OpenAPI entries of the error responses that the routes share, for their `responses=` argument.

Every route declares its own 422 entry with ValidationErrorResponse. FastAPI's default 422 entry
requires `type` and lacks `field`, unlike the bodies that the routes and error_handlers.py send.
"""

from __future__ import annotations

from typing import Any

from alertwarden.api.models import ErrorMessage, ValidationErrorResponse

Responses = dict[int | str, dict[str, Any]]


def error(description: str) -> dict[str, Any]:
    """Return the entry of an error response whose body is ErrorMessage."""
    return {"description": description, "model": ErrorMessage}


def invalid(description: str) -> dict[str, Any]:
    """Return the entry of a 422 response whose body is ValidationErrorResponse."""
    return {"description": description, "model": ValidationErrorResponse}


UNAUTHORIZED: Responses = {
    401: {
        **error("Missing, invalid or revoked token."),
        "headers": {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}},
    }
}
ADMIN_ONLY: Responses = {403: error("A tenant token called an endpoint that requires the admin token.")}
TENANT_NOT_FOUND: Responses = {404: error("No such tenant, or a tenant the token may not see.")}
BODY_REJECTED: Responses = {
    413: error(
        "The request body is larger than the server's max_body_bytes. The limit applies to every"
        " request, also to a body that the endpoint does not read."
    ),
    415: error(
        "The request has a Content-Encoding other than identity, such as gzip; send the body"
        " uncompressed."
    ),
}
"""The 413 and 415 entries that create_app adds to every operation."""
STORE_FAILED: Responses = {503: error("The state store failed; retry later.")}
