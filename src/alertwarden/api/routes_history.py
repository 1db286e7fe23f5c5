"""Route of the tenant's transition history, oldest first, paged by (at, id)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query

from alertwarden.api.deps import Api, TenantScope
from alertwarden.api.models import (
    DEFAULT_PAGE_LIMIT,
    MAX_PAGE_LIMIT,
    HistoryOut,
    HistoryPage,
    decode_cursor,
    encode_cursor,
    parse_group_filter,
    parse_time,
    unprocessable,
)
from alertwarden.api.responses import STORE_FAILED, TENANT_NOT_FOUND, UNAUTHORIZED, invalid
from alertwarden.engine.records import TransitionKind, format_time
from alertwarden.rules.model import ID_PATTERN
from alertwarden.store.checks import INT64_MAX, INT64_MIN

router = APIRouter(prefix="/v1/tenants/{tenant}/history", tags=["history"])


@router.get(
    "",
    summary="List transition history, oldest first",
    response_model=HistoryPage,
    responses={
        **UNAUTHORIZED,
        **TENANT_NOT_FOUND,
        422: invalid("Invalid tenant id, filter, limit or cursor."),
        **STORE_FAILED,
    },
)
async def list_history(
    tenant: TenantScope,
    api: Api,
    rule: Annotated[str | None, Query(pattern=f"^{ID_PATTERN.pattern}$", description="Rule id.")] = None,
    kind: Annotated[TransitionKind | None, Query(description="Transition kind.")] = None,
    group: Annotated[
        str | None, Query(description='JSON object the group must contain, such as {"user":"bob"}.')
    ] = None,
    since: Annotated[str | None, Query(description="RFC 3339 time; rows at or after it.")] = None,
    until: Annotated[str | None, Query(description="RFC 3339 time; rows before it.")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_LIMIT)] = DEFAULT_PAGE_LIMIT,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page.")] = None,
) -> HistoryPage:
    after = None if cursor is None else decode_history_cursor(cursor)
    rows = await api.store.history_page(
        tenant,
        rule_id=rule,
        kind=None if kind is None else kind.value,
        group=parse_group_filter(group),
        since_s=parse_time("since", since),
        until_s=parse_time("until", until),
        after=after,
        limit=limit + 1,
    )
    items = [
        HistoryOut(
            id=row.id,
            at=format_time(row.at),
            rule=row.rule_id,
            rule_group=row.rule_group,
            group=row.group,
            kind=TransitionKind(row.kind),
            count=row.count,
            delivered=row.delivered,
            details=row.details,
        )
        for row in rows[:limit]
    ]
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = encode_cursor([last.at, last.id])
    return HistoryPage(items=items, next_cursor=next_cursor)


def decode_history_cursor(cursor: str) -> tuple[float, int]:
    """Return the (at, id) pair of a history cursor, or raise 422 when no stored row can have it.

    A stored row's `at` is a time that datetime can represent (years 1 to 9999), because the
    store formats it before writing the row, and its id is a PostgreSQL bigint. Checking this
    here keeps PostgreSQL's to_timestamp from overflowing on a forged cursor such as [1e20, 1].
    """
    at_s, row_id = decode_cursor(cursor, (float, int))
    try:
        datetime.fromtimestamp(at_s, UTC)
        valid = INT64_MIN <= row_id <= INT64_MAX
    except (OverflowError, OSError, ValueError):
        valid = False
    if not valid:
        raise unprocessable(
            ["query", "cursor"],
            f"invalid cursor {cursor!r}: its time or id is out of range. Pass the next_cursor of"
            " the previous page unchanged",
            cursor,
        )
    return float(at_s), row_id
