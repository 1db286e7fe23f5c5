"""Exception handlers of the REST API, and an error response that encodes any client input."""

from __future__ import annotations

import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.utils import is_body_allowed_for_status_code
from starlette.exceptions import HTTPException as StarletteHTTPException

from alertwarden.api.models import error_detail
from alertwarden.errors import InvalidValueError, StoreError
from alertwarden.logs import get_logger

log = get_logger(__name__)

BODY_PARSE_ERROR = "There was an error parsing the body"
"""Detail of FastAPI's 400 for a JSON body whose decoding raised something other than a
JSONDecodeError, such as a RecursionError for deep nesting (FastAPI 0.165)."""


def add_error_handlers(app: FastAPI) -> None:
    """Register the API's exception handlers on `app`."""
    # Starlette runs the handler of the most derived class, so an InvalidValueError, which is a
    # StoreError, gets 422 and never 503.
    app.add_exception_handler(InvalidValueError, _invalid_value)
    app.add_exception_handler(StoreError, _store_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _request_validation_error)


class ErrorResponse(JSONResponse):
    """JSONResponse for error bodies, which may repeat values of the request.

    A JSON request body can hold a lone surrogate (the escape \\ud800) or, through Python's json
    module, NaN and Infinity, and JSONResponse cannot encode either. Such a body is rendered
    again with each lone surrogate as the text \\udXXX and each non-finite float as a string.
    """

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return super().render(_encodable(content))
        except ValueError as error:
            # json.dumps(allow_nan=False) raises "Out of range float values are not JSON
            # compliant". Other ValueErrors, such as a circular reference, are raised again.
            if "Out of range float values" not in str(error):
                raise
            return super().render(_encodable(content))


async def _invalid_value(request: Request, error: Exception) -> Response:
    assert isinstance(error, InvalidValueError)
    log.debug("invalid_value_rejected", method=request.method, path=request.url.path, error=str(error))
    value = error.value
    if not isinstance(value, str | int | float | bool | dict | list | None):
        value = repr(value)
    # The store does not know where in the request the value came from, so loc stays empty and
    # `field` and the message name the value.
    detail = [{"loc": [], "field": error.field, "msg": str(error), "input": value}]
    return ErrorResponse({"detail": detail}, status_code=422)


async def _store_error(request: Request, error: Exception) -> JSONResponse:
    log.error("store_failed", method=request.method, path=request.url.path, error=str(error))
    return JSONResponse(
        {"detail": "the state store failed; retry later"}, status_code=503
    )


async def _http_error(request: Request, error: Exception) -> Response:
    """Render an HTTPException as FastAPI does, but return 422 for a body it could not parse."""
    assert isinstance(error, StarletteHTTPException)
    cause = error.__cause__
    if error.status_code == 400 and error.detail == BODY_PARSE_ERROR and cause is not None:
        detail = error_detail(["body"], f"invalid JSON body: {cause}", None)
        return ErrorResponse({"detail": detail}, status_code=422)
    if not is_body_allowed_for_status_code(error.status_code):
        return Response(status_code=error.status_code, headers=error.headers)
    return ErrorResponse({"detail": error.detail}, status_code=error.status_code, headers=error.headers)


async def _request_validation_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, RequestValidationError)
    return ErrorResponse({"detail": jsonable_encoder(error.errors())}, status_code=422)


def _encodable(content: Any) -> Any:
    """Copy `content` with lone surrogates escaped as text and non-finite floats as strings.

    It walks with an explicit stack, because the content can repeat a deeply nested body.
    """
    root: list[Any] = [None]
    stack: list[tuple[Any, Any, Any]] = [(content, root, 0)]
    while stack:
        value, parent, slot = stack.pop()
        if isinstance(value, dict):
            copied: dict[Any, Any] = {}
            for key, child in value.items():
                copied_key = _escape_surrogates(key) if isinstance(key, str) else key
                copied[copied_key] = None
                stack.append((child, copied, copied_key))
            parent[slot] = copied
        elif isinstance(value, list | tuple):
            items: list[Any] = [None] * len(value)
            stack.extend((child, items, index) for index, child in enumerate(value))
            parent[slot] = items
        elif isinstance(value, str):
            parent[slot] = _escape_surrogates(value)
        elif isinstance(value, float) and not math.isfinite(value):
            parent[slot] = repr(value)
        else:
            parent[slot] = value
    return root[0]


def _escape_surrogates(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
