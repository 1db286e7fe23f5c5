"""The REST API in alertwarden.api against a real PostgreSQL store (see tests/pg_fixture.py)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
import pytest
import yaml

from alertwarden.api import create_app
from alertwarden.api.routes_rules import window_count
from alertwarden.api.rule_schema import FIELD_CONSTRAINTS, FIELD_DESCRIPTIONS, _inline_references
from alertwarden.engine.records import GroupSnapshot, GroupStatus, Transition, TransitionKind
from alertwarden.errors import InvalidValueError
from alertwarden.rules import RuleDefaults
from alertwarden.store.checks import MAX_JSON_DEPTH, check_json_document
from alertwarden.store.postgres import PostgresStore, RuleDeletion

ADMIN_TOKEN = "admin-token-0123456789abcdef"
ROOT = Path(__file__).resolve().parent.parent
NOW_S = 1_700_000_000.0
BUCKET_S = 60


@pytest.fixture
async def store(pg_store_url: str) -> AsyncIterator[PostgresStore]:
    store = PostgresStore(pg_store_url, pool_max=8)
    await store.open()
    yield store
    await store.close()


@pytest.fixture
async def client(store: PostgresStore) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(store, admin_token=ADMIN_TOKEN, max_body_bytes=4096, clock=lambda: NOW_S)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


ADMIN = bearer(ADMIN_TOKEN)
JSON_ADMIN = {**ADMIN, "Content-Type": "application/json"}
"""Headers for bodies sent as raw bytes, which can hold escapes such as \\ud800 that httpx's
json= cannot encode."""


def new_tenant() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


async def create_tenant(client: httpx.AsyncClient) -> str:
    tenant = new_tenant()
    response = await client.put(f"/v1/tenants/{tenant}", headers=ADMIN)
    assert response.status_code == 201, response.text
    return tenant


async def tenant_token(client: httpx.AsyncClient, tenant: str) -> tuple[str, str]:
    response = await client.post(f"/v1/tenants/{tenant}/tokens", headers=ADMIN, json={"name": "ci"})
    assert response.status_code == 201, response.text
    body = response.json()
    return body["id"], body["token"]


RULE = {"threshold": 3, "window": "4m", "bucket": "1m", "group_by": ["source_id"]}


def snapshot(rule_id: str, value: str, counts: tuple[int, ...], head_bucket: int) -> GroupSnapshot:
    return GroupSnapshot(
        rule_id=rule_id,
        key=(value,),
        window_s=BUCKET_S * len(counts),
        bucket_s=BUCKET_S,
        counts=counts,
        head_bucket=head_bucket,
        last_seen_at=head_bucket * BUCKET_S + 1.0,
        last_fired_at=head_bucket * BUCKET_S + 1.0,
        last_notified_at=head_bucket * BUCKET_S + 1.0,
        status=GroupStatus.FIRING,
        suppressed=False,
        position=1,
    )


def transition(rule_id: str, value: str, at: float, kind: TransitionKind) -> Transition:
    snap = snapshot(rule_id, value, (1, 1, 1, 1), int(at // BUCKET_S))
    return Transition(
        at=at,
        rule_id=rule_id,
        group=(("source_id", value),),
        kind=kind,
        count=4,
        threshold=3,
        window_s=240,
        snapshot=snap,
    )


# ------------------------------------------------------------ auth


async def test_auth_missing_token(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/tenants/acme/rules")

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    "token", ["wrong", "awt_0123456789abcdef_secret", ADMIN_TOKEN + "x", ADMIN_TOKEN[:-1]]
)
async def test_auth_invalid_token(client: httpx.AsyncClient, token: str) -> None:
    response = await client.get("/v1/tenants/acme/rules", headers=bearer(token))

    assert response.status_code == 401


async def test_auth_wrong_secret_of_known_id(client: httpx.AsyncClient) -> None:
    tenant = await create_tenant(client)
    token_id, token = await tenant_token(client, tenant)

    forged = f"awt_{token_id}_{'A' * 43}"
    response = await client.get(f"/v1/tenants/{tenant}/rules", headers=bearer(forged))

    assert token != forged
    assert response.status_code == 401


async def test_auth_tenant_token_own_tenant(client: httpx.AsyncClient) -> None:
    tenant = await create_tenant(client)
    _, token = await tenant_token(client, tenant)

    rules = await client.get(f"/v1/tenants/{tenant}/rules", headers=bearer(token))
    create = await client.put(f"/v1/tenants/{tenant}", headers=bearer(token))
    tokens = await client.get(f"/v1/tenants/{tenant}/tokens", headers=bearer(token))

    assert rules.status_code == 200
    assert rules.json() == {"items": []}
    assert create.status_code == 403
    assert tokens.status_code == 403


async def test_auth_revoked_token(client: httpx.AsyncClient, store: PostgresStore) -> None:
    tenant = await create_tenant(client)
    token_id, token = await tenant_token(client, tenant)
    before = await client.get(f"/v1/tenants/{tenant}/rules", headers=bearer(token))

    revoke = await client.delete(f"/v1/tenants/{tenant}/tokens/{token_id}", headers=ADMIN)
    after = await client.get(f"/v1/tenants/{tenant}/rules", headers=bearer(token))
    listed = await client.get(f"/v1/tenants/{tenant}/tokens", headers=ADMIN)
    again = await client.delete(f"/v1/tenants/{tenant}/tokens/{token_id}", headers=ADMIN)

    assert before.status_code == 200
    assert revoke.status_code == 204
    assert after.status_code == 401
    assert [item["id"] for item in listed.json()["items"]] == [token_id]
    assert listed.json()["items"][0]["revoked_at"] is not None
    assert "token" not in listed.json()["items"][0]
    assert again.status_code == 404


async def test_token_stored_as_salted_digest(client: httpx.AsyncClient, store: PostgresStore) -> None:
    tenant = await create_tenant(client)
    token_id, token = await tenant_token(client, tenant)

    stored = await store.active_api_token(token_id)

    assert stored is not None
    stored_tenant, salt, digest = stored
    assert stored_tenant == tenant
    assert len(salt) == 16
    assert token.encode() not in digest
    assert token.split("_", 2)[2].encode() not in digest


async def test_token_name_nul_422(client: httpx.AsyncClient) -> None:
    tenant = await create_tenant(client)

    response = await client.post(
        f"/v1/tenants/{tenant}/tokens", headers=JSON_ADMIN, content=b'{"name": "ci\\u0000"}'
    )
    listed = await client.get(f"/v1/tenants/{tenant}/tokens", headers=ADMIN)

    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert detail["field"] == "token name"
    assert detail["input"] == "ci\x00"
    assert "invalid token name 'ci\\x00'" in detail["msg"]
    assert listed.json()["items"] == []


async def test_token_name_lone_surrogate_422(client: httpx.AsyncClient) -> None:
    tenant = await create_tenant(client)

    response = await client.post(
        f"/v1/tenants/{tenant}/tokens", headers=JSON_ADMIN, content=b'{"name": "\\ud800"}'
    )

    assert response.status_code == 422, response.text
    detail = orjson.loads(response.content)["detail"][0]
    assert detail["loc"] == ["body", "name"]
    assert detail["input"] == "\\ud800"


async def test_token_id_nul_422(client: httpx.AsyncClient) -> None:
    tenant = await create_tenant(client)

    response = await client.delete(f"/v1/tenants/{tenant}/tokens/a%00b", headers=ADMIN)

    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert detail["field"] == "token_id"
    assert detail["input"] == "a\x00b"


async def test_store_failure_503(pg_store_url: str) -> None:
    store = PostgresStore(pg_store_url)
    await store.open()
    app = create_app(store, admin_token=ADMIN_TOKEN)
    await store.close()

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        response = await client.get(f"/v1/tenants/{new_tenant()}/rules", headers=ADMIN)

    assert response.status_code == 503
    assert response.json() == {"detail": "the state store failed; retry later"}


# ------------------------------------------------------------ tenants and features


INVALID_TENANT_IDS = [
    "a.b", "a*", "a>", "a%20b", "a%00b", "x" * 65, "caf%C3%A9", "%EF%BC%A1", "a:b", "a@b",
    "a+b", "-acme", "_acme", "acme%0A",
]
"""Invalid tenant ids as URL path segments. The percent-escapes encode a space, NUL, 'é', the
full-width letter 'Ａ' and a trailing newline."""


@pytest.mark.parametrize("tenant", INVALID_TENANT_IDS)
async def test_tenant_id_invalid(client: httpx.AsyncClient, tenant: str) -> None:
    response = await client.put(f"/v1/tenants/{tenant}", headers=ADMIN)

    assert response.status_code == 422
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["path", "tenant"]
    assert detail["input"] == httpx.URL(f"/{tenant}").path[1:]
    assert detail["msg"].startswith(f"invalid tenant id {detail['input']!r}: ")
    assert "ASCII letters, digits, '_' or '-', starting with a letter or digit" in detail["msg"]


@pytest.mark.parametrize("tenant", ["caf%C3%A9", "-acme", "x" * 65])
async def test_tenant_id_invalid_on_scoped_routes(client: httpx.AsyncClient, tenant: str) -> None:
    own_tenant = await create_tenant(client)
    _, token = await tenant_token(client, own_tenant)

    as_admin = await client.get(f"/v1/tenants/{tenant}/rules", headers=ADMIN)
    as_tenant = await client.get(f"/v1/tenants/{tenant}/history", headers=bearer(token))
    without_token = await client.get(f"/v1/tenants/{tenant}/rules")

    assert as_admin.status_code == 422
    assert as_admin.json()["detail"][0]["loc"] == ["path", "tenant"]
    assert as_tenant.status_code == 422
    assert as_tenant.json()["detail"][0]["loc"] == ["path", "tenant"]
    assert without_token.status_code == 401


@pytest.mark.parametrize("tenant", ["A", "0", "acme", "Acme_1-prod", "9" + "x" * 63])
async def test_tenant_id_valid(client: httpx.AsyncClient, tenant: str) -> None:
    created = await client.put(f"/v1/tenants/{tenant}", headers=ADMIN)
    read = await client.get(f"/v1/tenants/{tenant}", headers=ADMIN)

    assert created.status_code in (200, 201), created.text
    assert read.status_code == 200
    assert read.json()["tenant"] == tenant


async def test_tenant_create_twice(client: httpx.AsyncClient) -> None:
    tenant = new_tenant()

    first = await client.put(f"/v1/tenants/{tenant}", headers=ADMIN)
    second = await client.put(f"/v1/tenants/{tenant}", headers=ADMIN)

    assert first.status_code == 201
    assert second.status_code == 200
    assert second.json() == {"tenant": tenant, "stateful_rules": False}


async def test_feature_flag_roundtrip(client: httpx.AsyncClient) -> None:
    tenant = await create_tenant(client)
    path = f"/v1/tenants/{tenant}/features/stateful-rules"

    default = await client.get(path, headers=ADMIN)
    switched = await client.put(path, headers=ADMIN, json={"enabled": True})
    read = await client.get(path, headers=ADMIN)

    assert default.json()["enabled"] is False
    assert switched.status_code == 200
    assert read.json() == {"tenant": tenant, "feature": "stateful-rules", "enabled": True}


async def test_feature_put_tenant_token_403(client: httpx.AsyncClient) -> None:
    tenant = await create_tenant(client)
    _, token = await tenant_token(client, tenant)
    path = f"/v1/tenants/{tenant}/features/stateful-rules"

    switched = await client.put(path, headers=bearer(token), json={"enabled": True})
    invalid_body = await client.put(path, headers=bearer(token), json={"enabled": "yes"})
    read = await client.get(path, headers=bearer(token))

    assert switched.status_code == 403
    assert switched.json() == {"detail": "this endpoint requires the admin token"}
    # The token check comes before the body check, so the caller learns first that it may not switch.
    assert invalid_body.status_code == 403
    assert read.status_code == 200
    assert read.json() == {"tenant": tenant, "feature": "stateful-rules", "enabled": False}


@pytest.mark.parametrize("body", [{"enabled": True, "extra": 1}, {"enabled": "yes"}, {}])
async def test_feature_body_invalid(client: httpx.AsyncClient, body: dict[str, object]) -> None:
    tenant = await create_tenant(client)

    response = await client.put(
        f"/v1/tenants/{tenant}/features/stateful-rules", headers=ADMIN, json=body
    )

    assert response.status_code == 422


async def test_missing_tenant_404_for_admin(client: httpx.AsyncClient) -> None:
    response = await client.get(f"/v1/tenants/{new_tenant()}/rules", headers=ADMIN)

    assert response.status_code == 404


# ------------------------------------------------------------ isolation


async def test_isolation_other_tenant_404(client: httpx.AsyncClient) -> None:
    tenant_a = await create_tenant(client)
    tenant_b = await create_tenant(client)
    _, token_a = await tenant_token(client, tenant_a)
    token_id_b, _ = await tenant_token(client, tenant_b)
    put = await client.put(f"/v1/tenants/{tenant_b}/rules/r1", headers=ADMIN, json=RULE)
    assert put.status_code == 200
    missing = new_tenant()

    requests = [
        ("GET", "", None),
        ("PUT", "", None),
        ("GET", "/rules", None),
        ("GET", "/rules/r1", None),
        ("PUT", "/rules/r1", RULE),
        ("DELETE", "/rules/r1", None),
        ("GET", "/rules/r1/groups", None),
        ("GET", "/history", None),
        ("GET", "/features/stateful-rules", None),
        ("PUT", "/features/stateful-rules", {"enabled": True}),
        ("GET", "/tokens", None),
        ("POST", "/tokens", {"name": "x"}),
        ("DELETE", f"/tokens/{token_id_b}", None),
    ]
    for method, suffix, body in requests:
        other = await client.request(
            method, f"/v1/tenants/{tenant_b}{suffix}", headers=bearer(token_a), json=body
        )
        absent = await client.request(
            method, f"/v1/tenants/{missing}{suffix}", headers=bearer(token_a), json=body
        )
        assert other.status_code == 404, (method, suffix)
        assert other.json()["detail"] == f"tenant {tenant_b!r} not found", (method, suffix)
        assert absent.json()["detail"] == f"tenant {missing!r} not found", (method, suffix)

    still = await client.get(f"/v1/tenants/{tenant_b}/rules/r1", headers=ADMIN)
    flag = await client.get(f"/v1/tenants/{tenant_b}/features/stateful-rules", headers=ADMIN)
    assert still.json()["version"] == 1
    assert flag.json()["enabled"] is False


# ------------------------------------------------------------ rules


async def test_rule_put_get_delete(client: httpx.AsyncClient) -> None:
    tenant = await create_tenant(client)
    path = f"/v1/tenants/{tenant}/rules/failed-logins"

    put = await client.put(path, headers=ADMIN, json={**RULE, "group": "auth"})
    get = await client.get(path, headers=ADMIN)
    listed = await client.get(f"/v1/tenants/{tenant}/rules", headers=ADMIN)
    deleted = await client.delete(path, headers=ADMIN)
    gone = await client.get(path, headers=ADMIN)

    assert put.status_code == 200
    assert put.headers["etag"] == '"1"'
    body = get.json()
    assert body["version"] == 1
    assert body["source"] == "api"
    assert body["rule_group"] == "auth"
    assert body["definition"] == {**RULE, "group": "auth", "id": "failed-logins"}
    assert [rule["id"] for rule in listed.json()["items"]] == ["failed-logins"]
    assert deleted.status_code == 204
    assert gone.status_code == 404


async def test_rule_version_continues_after_delete(client: httpx.AsyncClient) -> None:
    tenant = await create_tenant(client)
    path = f"/v1/tenants/{tenant}/rules/failed-logins"
    await client.put(path, headers=ADMIN, json=RULE)
    second = await client.put(path, headers=ADMIN, json={**RULE, "threshold": 4})

    deleted = await client.delete(path, headers=ADMIN)
    created = await client.put(path, headers=ADMIN, json={**RULE, "threshold": 7})
    stale = await client.put(path, headers={**ADMIN, "If-Match": second.headers["etag"]}, json=RULE)

    assert deleted.status_code == 204
    # A version never names two definitions, so the ETag read before the delete is stale.
    assert created.headers["etag"] == '"3"'
    assert created.json()["version"] == 3
    assert stale.status_code == 412
    assert (await client.get(path, headers=ADMIN)).json()["definition"]["threshold"] == 7


@pytest.mark.parametrize(
    ("body", "field", "value"),
    [
        ({"threshold": 0}, "threshold", 0),
        ({"window": "10m", "bucket": "7m"}, "bucket", "7m"),
        ({"threshold": 3, "colour": "red"}, "colour", "red"),
        ({"group_by": ["a", "a"]}, "group_by[1]", "a"),
        ({"id": "other"}, "id", "other"),
    ],
)
async def test_rule_invalid_keeps_previous(
    client: httpx.AsyncClient, body: dict[str, object], field: str, value: object
) -> None:
    tenant = await create_tenant(client)
    path = f"/v1/tenants/{tenant}/rules/r1"
    await client.put(path, headers=ADMIN, json=RULE)

    response = await client.put(path, headers=ADMIN, json=body)
    stored = await client.get(path, headers=ADMIN)

    assert response.status_code == 422
    detail = response.json()["detail"]
    assert any(
        (item.get("field") == field or item["loc"][-1] == field) and item["input"] == value
        for item in detail
    ), detail
    assert stored.json()["version"] == 1
    assert stored.json()["definition"] == {**RULE, "id": "r1"}


async def test_rule_invalid_lists_every_problem(client: httpx.AsyncClient) -> None:
    tenant = await create_tenant(client)
    body = {**RULE, "threshold": 0, "window": "10m", "bucket": "7m"}

    response = await client.put(f"/v1/tenants/{tenant}/rules/r1", headers=ADMIN, json=body)

    assert response.status_code == 422
    detail = response.json()["detail"]
    assert [(item["field"], item["input"]) for item in detail] == [("threshold", 0), ("bucket", "7m")]
    assert detail[1]["msg"].startswith("7m does not divide the window 10m")


async def test_rule_if_match(client: httpx.AsyncClient) -> None:
    tenant = await create_tenant(client)
    path = f"/v1/tenants/{tenant}/rules/r1"
    await client.put(path, headers=ADMIN, json=RULE)

    match = await client.put(path, headers={**ADMIN, "If-Match": '"1"'}, json={**RULE, "threshold": 4})
    stale = await client.put(path, headers={**ADMIN, "If-Match": '"1"'}, json={**RULE, "threshold": 5})
    garbage = await client.put(path, headers={**ADMIN, "If-Match": "x"}, json=RULE)
    absent = await client.put(
        f"/v1/tenants/{tenant}/rules/new", headers={**ADMIN, "If-Match": '"1"'}, json=RULE
    )
    stored = await client.get(path, headers=ADMIN)

    assert match.status_code == 200
    assert match.headers["etag"] == '"2"'
    assert stale.status_code == 412
    assert "is not at version" in stale.json()["detail"]
    assert garbage.status_code == 412
    assert absent.status_code == 412
    assert "'new' does not exist" in absent.json()["detail"]
    assert stored.json()["version"] == 2
    assert stored.json()["definition"]["threshold"] == 4


@pytest.mark.parametrize(
    ("if_match", "message"),
    [
        ("", "If-Match is empty, so it names no version of rule 'r1'"),
        ("  ", "If-Match is empty, so it names no version of rule 'r1'"),
        ("x", "If-Match 'x' names no version of rule 'r1'"),
        ("*", "If-Match '*' names no version of rule 'r1'"),
    ],
)
async def test_rule_if_match_not_a_version(
    client: httpx.AsyncClient, if_match: str, message: str
) -> None:
    tenant = await create_tenant(client)
    path = f"/v1/tenants/{tenant}/rules/r1"
    await client.put(path, headers=ADMIN, json=RULE)
    advice = ': send the ETag that GET returned for the rule, such as "3", or leave If-Match out'

    put = await client.put(path, headers={**ADMIN, "If-Match": if_match}, json={**RULE, "threshold": 4})
    delete = await client.delete(path, headers={**ADMIN, "If-Match": if_match})
    stored = await client.get(path, headers=ADMIN)

    assert put.status_code == 412
    assert put.json() == {"detail": message + advice}
    assert delete.status_code == 412
    assert delete.json() == {"detail": message + advice}
    assert stored.json()["version"] == 1


async def test_rule_if_match_empty_on_missing_rule(client: httpx.AsyncClient) -> None:
    tenant = await create_tenant(client)

    response = await client.put(
        f"/v1/tenants/{tenant}/rules/new", headers={**ADMIN, "If-Match": ""}, json=RULE
    )

    assert response.status_code == 412
    assert response.json() == {
        "detail": "rule 'new' does not exist, so If-Match '' cannot match: send the PUT without"
        " If-Match to create it"
    }


async def test_rule_concurrent_puts(client: httpx.AsyncClient) -> None:
    tenant = await create_tenant(client)
    path = f"/v1/tenants/{tenant}/rules/r1"
    await client.put(path, headers=ADMIN, json=RULE)
    writers = 20

    responses = await asyncio.gather(
        *(client.put(path, headers=ADMIN, json={**RULE, "threshold": n + 1}) for n in range(writers))
    )
    stored = await client.get(path, headers=ADMIN)

    assert [r.status_code for r in responses] == [200] * writers
    assert sorted(int(r.headers["etag"].strip('"')) for r in responses) == list(range(2, writers + 2))
    assert stored.json()["version"] == writers + 1


async def test_rule_concurrent_if_match(client: httpx.AsyncClient) -> None:
    tenant = await create_tenant(client)
    path = f"/v1/tenants/{tenant}/rules/r1"
    await client.put(path, headers=ADMIN, json=RULE)

    responses = await asyncio.gather(
        *(
            client.put(path, headers={**ADMIN, "If-Match": '"1"'}, json={**RULE, "threshold": n + 1})
            for n in range(10)
        )
    )
    stored = await client.get(path, headers=ADMIN)

    codes = sorted(r.status_code for r in responses)
    assert codes == [200] + [412] * 9
    assert stored.json()["version"] == 2


async def test_rule_delete_if_match(client: httpx.AsyncClient) -> None:
    tenant = await create_tenant(client)
    path = f"/v1/tenants/{tenant}/rules/r1"
    await client.put(path, headers=ADMIN, json=RULE)
    await client.put(path, headers=ADMIN, json={**RULE, "threshold": 4})

    stale = await client.delete(path, headers={**ADMIN, "If-Match": '"1"'})
    garbage = await client.delete(path, headers={**ADMIN, "If-Match": "x"})
    after_stale = await client.get(path, headers=ADMIN)
    match = await client.delete(path, headers={**ADMIN, "If-Match": 'W/"2"'})
    after_match = await client.get(path, headers=ADMIN)
    again = await client.delete(path, headers={**ADMIN, "If-Match": '"2"'})

    assert stale.status_code == 412
    assert stale.json()["detail"] == (
        "rule 'r1' is not at version \"1\": read it again and retry with the new ETag"
    )
    assert garbage.status_code == 412
    assert after_stale.status_code == 200
    assert after_stale.json()["version"] == 2
    assert after_stale.json()["definition"]["threshold"] == 4
    assert match.status_code == 204
    assert after_match.status_code == 404
    # A missing rule is 404 with or without If-Match: RFC 9110 ignores a precondition when the
    # request would fail without it.
    assert again.status_code == 404


async def race_delete_and_put(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> tuple[list[str], list[httpx.Response], list[httpx.Response]]:
    """Create 10 rules, then DELETE and PUT each at once; return paths, responses and final reads.

    The responses alternate: the DELETE of rule n at 2n, its PUT at 2n + 1.
    """
    tenant = await create_tenant(client)
    paths = [f"/v1/tenants/{tenant}/rules/r{n}" for n in range(10)]
    for path in paths:
        await client.put(path, headers=ADMIN, json=RULE)

    responses = await asyncio.gather(
        *(
            request
            for path in paths
            for request in (
                client.delete(path, headers=headers),
                client.put(path, headers=headers, json={**RULE, "threshold": 9}),
            )
        )
    )
    stored = [await client.get(path, headers=ADMIN) for path in paths]
    return paths, list(responses), stored


async def test_rule_concurrent_delete_put_if_match(client: httpx.AsyncClient) -> None:
    paths, responses, stored = await race_delete_and_put(client, {**ADMIN, "If-Match": '"1"'})

    for n, path in enumerate(paths):
        deleted, put = responses[2 * n], responses[2 * n + 1]
        codes = (deleted.status_code, put.status_code)
        assert codes in ((204, 412), (412, 200)), (path, codes)
        if deleted.status_code == 204:
            assert stored[n].status_code == 404, path
        else:
            assert stored[n].status_code == 200, path
            assert stored[n].json()["version"] == 2, path
            assert stored[n].json()["definition"]["threshold"] == 9, path


async def test_rule_concurrent_delete_put(client: httpx.AsyncClient) -> None:
    paths, responses, stored = await race_delete_and_put(client, ADMIN)

    for n, path in enumerate(paths):
        deleted, put = responses[2 * n], responses[2 * n + 1]
        assert deleted.status_code == 204, path
        assert put.status_code == 200, path
        # Either the PUT replaced version 1 and the DELETE then removed the rule, or the DELETE
        # ran first and the PUT created the rule again, continuing from the deleted version 1.
        assert put.headers["etag"] == '"2"', path
        if stored[n].status_code == 200:
            assert stored[n].json()["version"] == 2, path
        else:
            assert stored[n].status_code == 404, path


async def test_rule_delete_waits_for_concurrent_update(
    client: httpx.AsyncClient, store: PostgresStore, pg_store_url: str
) -> None:
    tenant = await create_tenant(client)
    await client.put(f"/v1/tenants/{tenant}/rules/r1", headers=ADMIN, json=RULE)

    async with await psycopg.AsyncConnection.connect(pg_store_url) as writer:
        # An uncommitted update holds the row lock, so the conditional DELETE waits for it and
        # must then check the version that the update wrote.
        await writer.execute(
            "UPDATE rule_definitions SET version = version + 1"
            " WHERE tenant_id = %s AND rule_id = 'r1'",
            (tenant,),
        )
        deletion = asyncio.create_task(
            store.delete_rule_definition(tenant, "r1", expected_version=1)
        )
        await wait_for_lock_waiter(pg_store_url)
        await writer.commit()
        outcome = await asyncio.wait_for(deletion, timeout=10)
    stored = await client.get(f"/v1/tenants/{tenant}/rules/r1", headers=ADMIN)

    assert outcome is RuleDeletion.VERSION_MISMATCH
    assert stored.status_code == 200
    assert stored.json()["version"] == 2


async def wait_for_lock_waiter(url: str) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as monitor:
        for _ in range(200):
            cursor = await monitor.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            row = await cursor.fetchone()
            if row is not None and row[0] > 0:
                return
            await asyncio.sleep(0.05)
    raise AssertionError("the DELETE never waited for the row lock")


async def test_body_too_large(client: httpx.AsyncClient) -> None:
    tenant = await create_tenant(client)

    response = await client.put(
        f"/v1/tenants/{tenant}/rules/r1", headers=ADMIN, json={**RULE, "description": "x" * 5000}
    )

    assert response.status_code == 413


async def test_body_too_large_chunked(client: httpx.AsyncClient) -> None:
    tenant = await create_tenant(client)

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"description": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    response = await client.put(f"/v1/tenants/{tenant}/rules/r1", headers=ADMIN, content=chunks())

    assert response.status_code == 413


@pytest.mark.parametrize("encoding", ["gzip", "GZIP", "deflate, gzip"])
async def test_compressed_body_415(client: httpx.AsyncClient, encoding: str) -> None:
    document = (await client.get("/openapi.json")).json()
    tenant = await create_tenant(client)
    path = f"/v1/tenants/{tenant}/rules/r1"

    response = await client.put(
        path, headers={**ADMIN, "Content-Encoding": encoding}, content=gzip.compress(b'{"threshold": 3}')
    )
    plain = await client.put(path, headers={**ADMIN, "Content-Encoding": "identity"}, json=RULE)

    assert response.status_code == 415
    expected = f"unsupported Content-Encoding {encoding.lower()!r}: send the request body uncompressed"
    assert response.json() == {"detail": expected}
    schema = response_schema(document, "put", "/v1/tenants/{tenant}/rules/{rule_id}", "415")
    assert schema_problems(response.json(), schema, document) == []
    assert plain.status_code == 200


async def test_body_too_large_without_body_route(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    tenant = new_tenant()
    body = b"x" * 5000

    put = await client.put(f"/v1/tenants/{tenant}", headers=ADMIN, content=body)
    health = await client.request("GET", "/healthz", content=body)
    stored = await client.get(f"/v1/tenants/{tenant}", headers=ADMIN)

    assert put.status_code == 413
    assert put.json() == {"detail": "request body is larger than 4096 bytes: send a smaller body"}
    schema = response_schema(document, "put", "/v1/tenants/{tenant}", "413")
    assert schema_problems(put.json(), schema, document) == []
    assert health.status_code == 413
    assert stored.status_code == 404


@pytest.mark.parametrize(
    ("body", "loc", "field", "value"),
    [
        (b'{"labels": {"team": "a\\u0000b"}}', ["body", "labels", "team"], "labels.team", "a\x00b"),
        (b'{"labels": {"team": "\\ud800"}}', ["body", "labels", "team"], "labels.team", "\\ud800"),
        (b'{"labels": {"\\ud800": "a"}}', ["body", "labels", "\\ud800"], "key in labels", "\\ud800"),
        (b'{"description": "\\u0000"}', ["body", "description"], "description", "\x00"),
        (
            b'{"match": {"field": "user", "equals": "a\\u0000"}}',
            ["body", "match", "equals"], "match.equals", "a\x00",
        ),
        (
            b'{"match": {"field": "n", "in": [1, 18446744073709551616]}}',
            ["body", "match", "in", 1], "match.in[1]", 2**64,
        ),
    ],
)
async def test_rule_unstorable_value_422(
    client: httpx.AsyncClient, body: bytes, loc: list[object], field: str, value: object
) -> None:
    tenant = await create_tenant(client)
    path = f"/v1/tenants/{tenant}/rules/r1"
    await client.put(path, headers=ADMIN, json=RULE)

    response = await client.put(path, headers=JSON_ADMIN, content=body)
    stored = await client.get(path, headers=ADMIN)

    assert response.status_code == 422, response.text
    detail = orjson.loads(response.content)["detail"]
    assert detail[0]["loc"] == loc
    assert detail[0]["field"] == field
    assert detail[0]["input"] == value
    assert field in detail[0]["msg"]
    assert stored.json()["version"] == 1


@contextlib.asynccontextmanager
async def default_limit_client(store: PostgresStore) -> AsyncIterator[httpx.AsyncClient]:
    """Yield a client of an app with the default body limit of 1 MiB."""
    app = create_app(store, admin_token=ADMIN_TOKEN)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        yield client


@pytest.mark.parametrize(
    ("body", "loc", "field", "value"),
    [
        ({"group_by": [1]}, ["body", "group_by", 0], "group_by[0]", 1),
        ({"group_by": ["a", "a"]}, ["body", "group_by", 1], "group_by[1]", "a"),
        ({"labels": {"team": 1}}, ["body", "labels", "team"], "labels.team", 1),
        ({"labels": {"team": "x" * 4097}}, ["body", "labels", "team"], "labels.team", "x" * 4097),
        ({"labels": {"ok": "a", "": "b"}}, ["body", "labels", ""], "key in labels", ""),
        ({"annotations": {"a.b": "{nope}"}}, ["body", "annotations", "a.b"], "annotations.a.b", "{nope}"),
        (
            {"match": {"any": [{"field": "a", "eq": 1}]}},
            ["body", "match", "any", 0, "eq"], "match.any[0].eq", 1,
        ),
    ],
)
async def test_rule_422_field_and_loc_agree(
    store: PostgresStore, body: dict[str, object], loc: list[object], field: str, value: object
) -> None:
    # The default body limit, because the long label is larger than the fixture's.
    async with default_limit_client(store) as client:
        tenant = await create_tenant(client)
        response = await client.put(f"/v1/tenants/{tenant}/rules/r1", headers=ADMIN, json=body)

    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert len(detail) == 1, detail
    assert detail[0]["loc"] == loc
    assert detail[0]["field"] == field
    assert detail[0]["input"] == value


async def test_rule_422_keeps_every_mapping_error(client: httpx.AsyncClient) -> None:
    tenant = await create_tenant(client)
    body = {"threshold": 0, "labels": {"": "x"}, "annotations": {"s": "{nope}"}}

    response = await client.put(f"/v1/tenants/{tenant}/rules/r1", headers=ADMIN, json=body)

    assert response.status_code == 422, response.text
    fields = [item["field"] for item in response.json()["detail"]]
    assert fields == ["threshold", "key in labels", "annotations.s"]


async def test_rule_max_groups_range(client: httpx.AsyncClient) -> None:
    tenant = await create_tenant(client)
    path = f"/v1/tenants/{tenant}/rules/r1"

    at_max = await client.put(path, headers=ADMIN, json={**RULE, "max_groups": 10_000_000})
    above = await client.put(path, headers=ADMIN, json={**RULE, "max_groups": 10_000_001})
    huge = await client.put(path, headers=ADMIN, json={**RULE, "max_groups": 2**64 - 1})
    stored = await client.get(path, headers=ADMIN)

    assert at_max.status_code == 200, at_max.text
    assert at_max.json()["definition"]["max_groups"] == 10_000_000
    assert above.status_code == 422
    assert above.json()["detail"] == [
        {
            "loc": ["body", "max_groups"],
            "field": "max_groups",
            "msg": "max_groups 10000001 is out of range: use a whole number from 1 to 10000000",
            "input": 10_000_001,
        }
    ]
    assert huge.status_code == 422
    assert huge.json()["detail"][0]["input"] == 2**64 - 1
    assert stored.json()["version"] == 1


@pytest.mark.parametrize(
    "body",
    [b"[" * 5000 + b"]" * 5000, b'{"threshold": 3, "description": "\xff"}'],
    ids=["nested-5000", "invalid-utf8"],
)
async def test_rule_unparsable_body_422(store: PostgresStore, body: bytes) -> None:
    # The default body limit, because the nested body is larger than the fixture's.
    async with default_limit_client(store) as client:
        tenant = await create_tenant(client)
        response = await client.put(f"/v1/tenants/{tenant}/rules/r1", headers=JSON_ADMIN, content=body)

    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body"]
    assert detail["msg"].startswith("invalid JSON body: ")


@pytest.mark.parametrize(
    ("body", "loc", "value"),
    [
        (b'{"colour": "\\ud800"}', ["body", "colour"], "\\ud800"),
        (b'{"threshold": "\\udfff"}', ["body", "threshold"], "\\udfff"),
        (b'{"threshold": NaN}', ["body", "threshold"], "nan"),
    ],
)
async def test_rule_error_body_encodes_input(
    client: httpx.AsyncClient, body: bytes, loc: list[str], value: str
) -> None:
    tenant = await create_tenant(client)

    response = await client.put(f"/v1/tenants/{tenant}/rules/r1", headers=JSON_ADMIN, content=body)

    assert response.status_code == 422, response.text
    detail = orjson.loads(response.content)["detail"]
    assert detail[0]["loc"] == loc
    assert detail[0]["input"] == value


# ------------------------------------------------------------ rule defaults


PUT_DEFAULTS = RuleDefaults.model_validate(
    {"cooldown": "10m", "severity": "warning", "labels": {"team": "platform", "env": "prod"}}
)


@contextlib.asynccontextmanager
async def client_with_defaults(
    store: PostgresStore, defaults: RuleDefaults
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(store, admin_token=ADMIN_TOKEN, clock=lambda: NOW_S, rule_defaults=defaults)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        yield client


async def test_rule_defaults_filled_on_put(store: PostgresStore) -> None:
    async with client_with_defaults(store, PUT_DEFAULTS) as client:
        tenant = await create_tenant(client)
        path = f"/v1/tenants/{tenant}/rules/r1"

        put = await client.put(path, headers=ADMIN, json={**RULE, "labels": {"env": "staging"}})
        get = await client.get(path, headers=ADMIN)

    expected = {
        **RULE,
        "id": "r1",
        "cooldown": "10m",
        "severity": "warning",
        "labels": {"team": "platform", "env": "staging"},
    }
    assert put.status_code == 200, put.text
    assert put.json()["definition"] == expected
    assert get.json()["definition"] == expected


async def test_rule_defaults_own_values_kept(store: PostgresStore) -> None:
    async with client_with_defaults(store, PUT_DEFAULTS) as client:
        tenant = await create_tenant(client)
        path = f"/v1/tenants/{tenant}/rules/r1"

        put = await client.put(path, headers=ADMIN, json={**RULE, "cooldown": "1m", "severity": None})

    assert put.status_code == 200, put.text
    definition = put.json()["definition"]
    assert definition["cooldown"] == "1m"
    assert definition["severity"] is None
    assert definition["labels"] == {"team": "platform", "env": "prod"}


async def test_rule_defaults_kept_after_change(store: PostgresStore) -> None:
    changed = RuleDefaults.model_validate({"cooldown": "20m"})
    async with client_with_defaults(store, PUT_DEFAULTS) as client:
        tenant = await create_tenant(client)
        await client.put(f"/v1/tenants/{tenant}/rules/old", headers=ADMIN, json=RULE)

    async with client_with_defaults(store, changed) as client:
        old = await client.get(f"/v1/tenants/{tenant}/rules/old", headers=ADMIN)
        new = await client.put(f"/v1/tenants/{tenant}/rules/new", headers=ADMIN, json=RULE)

    assert old.json()["version"] == 1
    assert old.json()["definition"]["cooldown"] == "10m"
    assert old.json()["definition"]["severity"] == "warning"
    assert new.json()["definition"] == {**RULE, "id": "new", "cooldown": "20m"}


async def test_rule_defaults_bucket_of_own_window(store: PostgresStore) -> None:
    defaults = RuleDefaults.model_validate({"window": "14m", "bucket": "7m"})
    async with client_with_defaults(store, defaults) as client:
        tenant = await create_tenant(client)
        path = f"/v1/tenants/{tenant}/rules"

        plain = await client.put(f"{path}/plain", headers=ADMIN, json={"threshold": 3})
        own_window = await client.put(f"{path}/own", headers=ADMIN, json={"window": "1h"})
        bad_bucket = await client.put(f"{path}/bad", headers=ADMIN, json={"bucket": "4m"})

    assert plain.json()["definition"] == {"threshold": 3, "id": "plain", "window": "14m", "bucket": "7m"}
    assert own_window.json()["definition"] == {"window": "1h", "id": "own"}
    assert bad_bucket.status_code == 422
    detail = bad_bucket.json()["detail"]
    assert detail[0]["field"] == "bucket"
    assert detail[0]["input"] == "4m"
    assert detail[0]["msg"].startswith("4m does not divide the window 14m")


# ------------------------------------------------------------ groups


def test_window_count_drops_old_buckets() -> None:
    now_bucket = int(NOW_S // BUCKET_S)
    current = snapshot("r", "x", (1, 2, 3, 4), now_bucket)
    one_behind = snapshot("r", "x", (1, 2, 3, 4), now_bucket - 1)
    expired = snapshot("r", "x", (1, 2, 3, 4), now_bucket - 4)

    assert window_count(current, NOW_S) == 10
    assert window_count(one_behind, NOW_S) == 9
    assert window_count(expired, NOW_S) == 0


async def test_groups_view_counts(client: httpx.AsyncClient, store: PostgresStore) -> None:
    tenant = await create_tenant(client)
    now_bucket = int(NOW_S // BUCKET_S)
    await store.record_transitions(
        tenant,
        "default",
        [
            Transition(
                at=NOW_S - 5, rule_id="r1", group=(("source_id", f"10.0.0.{i}"),),
                kind=TransitionKind.FIRED, count=4, threshold=3, window_s=240,
                snapshot=snapshot("r1", f"10.0.0.{i}", (1, 2, 3, 4), now_bucket - i),
            )
            for i in range(5)
        ],
    )

    first = await client.get(f"/v1/tenants/{tenant}/rules/r1/groups?limit=3", headers=ADMIN)
    second = await client.get(
        f"/v1/tenants/{tenant}/rules/r1/groups",
        params={"limit": 3, "cursor": first.json()["next_cursor"]},
        headers=ADMIN,
    )

    items = first.json()["items"] + second.json()["items"]
    assert second.json()["next_cursor"] is None
    assert [item["key"] for item in items] == [[f"10.0.0.{i}"] for i in range(5)]
    assert [item["count"] for item in items] == [10, 9, 7, 4, 0]
    assert items[0]["state"] == "firing"
    expected_fired = datetime.fromtimestamp(now_bucket * BUCKET_S + 1.0, UTC)
    assert items[0]["last_fired_at"] == expected_fired.strftime("%Y-%m-%dT%H:%M:%SZ")


# ------------------------------------------------------------ history


async def test_history_pages_complete(client: httpx.AsyncClient, store: PostgresStore) -> None:
    tenant = await create_tenant(client)
    # Several rows share one time, so the id part of the cursor decides their order.
    transitions = [
        transition(f"r{i % 3}", f"10.0.0.{i}", NOW_S + (i // 4) * 0.5, TransitionKind.FIRED)
        for i in range(23)
    ]
    ids = await store.record_transitions(tenant, "default", transitions)

    seen: list[int] = []
    ats: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, str | int] = {"limit": 5}
        if cursor is not None:
            params["cursor"] = cursor
        response = await client.get(f"/v1/tenants/{tenant}/history", params=params, headers=ADMIN)
        assert response.status_code == 200, response.text
        page = response.json()
        seen.extend(item["id"] for item in page["items"])
        ats.extend(item["at"] for item in page["items"])
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert pages == 5
    assert len(seen) == len(set(seen)) == 23
    assert set(seen) == set(ids)
    times = [datetime.fromisoformat(at) for at in ats]
    assert times == sorted(times)


async def tenant_with_history(
    client: httpx.AsyncClient, store: PostgresStore, rows: list[tuple[str, str, float, TransitionKind]]
) -> str:
    """Create a tenant and store one transition per (rule, group value, time, kind) row."""
    tenant = await create_tenant(client)
    transitions = [transition(rule_id, value, at_s, kind) for rule_id, value, at_s, kind in rows]
    await store.record_transitions(tenant, "default", transitions)
    return tenant


async def test_history_filters(client: httpx.AsyncClient, store: PostgresStore) -> None:
    tenant = await tenant_with_history(
        client,
        store,
        [
            ("r1", "a", NOW_S, TransitionKind.FIRED),
            ("r1", "b", NOW_S + 60, TransitionKind.FIRED),
            ("r2", "a", NOW_S + 120, TransitionKind.FIRED),
            ("r1", "a", NOW_S + 180, TransitionKind.RECOVERED),
        ],
    )
    path = f"/v1/tenants/{tenant}/history"

    by_rule = await client.get(path, params={"rule": "r1"}, headers=ADMIN)
    by_kind = await client.get(path, params={"kind": "recovered"}, headers=ADMIN)
    by_group = await client.get(path, params={"group": '{"source_id":"a"}'}, headers=ADMIN)
    by_time = await client.get(
        path,
        params={"since": "2023-11-14T22:14:20Z", "until": "2023-11-14T22:16:20Z"},
        headers=ADMIN,
    )
    bad_kind = await client.get(path, params={"kind": "exploded"}, headers=ADMIN)
    bad_cursor = await client.get(path, params={"cursor": "bm9wZQ"}, headers=ADMIN)

    assert len(by_rule.json()["items"]) == 3
    assert [item["kind"] for item in by_kind.json()["items"]] == ["recovered"]
    assert [item["rule"] for item in by_group.json()["items"]] == ["r1", "r2", "r1"]
    assert [item["at"] for item in by_time.json()["items"]] == [
        "2023-11-14T22:14:20Z",
        "2023-11-14T22:15:20Z",
    ]
    assert bad_kind.status_code == 422
    assert bad_cursor.status_code == 422
    assert bad_cursor.json()["detail"][0]["input"] == "bm9wZQ"


async def test_history_time_lowercase_t_and_z(client: httpx.AsyncClient, store: PostgresStore) -> None:
    tenant = await tenant_with_history(
        client,
        store,
        [
            ("r1", "a", NOW_S, TransitionKind.FIRED),
            ("r1", "b", NOW_S + 60, TransitionKind.FIRED),
            ("r1", "c", NOW_S + 120, TransitionKind.FIRED),
        ],
    )

    response = await client.get(
        f"/v1/tenants/{tenant}/history",
        params={"since": "2023-11-14t22:14:20z", "until": "2023-11-14t22:15:20z"},
        headers=ADMIN,
    )

    assert response.status_code == 200, response.text
    assert [item["at"] for item in response.json()["items"]] == ["2023-11-14T22:14:20Z"]


@pytest.mark.parametrize(
    ("query", "value", "hint"),
    [
        # The '+' is sent unencoded, so the server decodes it as a space.
        ("since=2023-11-14T22:14:20+02:00", "2023-11-14T22:14:20 02:00", True),
        ("since=2023-11-14T22:14:20.5+0200", "2023-11-14T22:14:20.5 0200", True),
        ("since=yesterday", "yesterday", False),
    ],
    ids=["unencoded-plus", "unencoded-plus-basic-offset", "not-a-time"],
)
async def test_history_time_invalid_hint(
    client: httpx.AsyncClient, query: str, value: str, hint: bool
) -> None:
    tenant = await create_tenant(client)

    response = await client.get(f"/v1/tenants/{tenant}/history?{query}", headers=ADMIN)

    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["query", "since"]
    assert detail["input"] == value
    assert detail["msg"].startswith(f"invalid since {value!r}: use RFC 3339 with a time zone")
    assert ("percent-encode it as %2B" in detail["msg"]) is hint


@pytest.mark.parametrize(
    ("group", "message"),
    [
        ('{"source_id":"\\u0000"}', "invalid group.source_id '\\x00'"),
        ('{"a\\u0000":"x"}', "invalid key in group 'a\\x00'"),
    ],
)
async def test_history_group_nul_422(client: httpx.AsyncClient, group: str, message: str) -> None:
    tenant = await create_tenant(client)

    response = await client.get(f"/v1/tenants/{tenant}/history", params={"group": group}, headers=ADMIN)

    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["query", "group"]
    assert detail["input"] == group
    assert message in detail["msg"]


def history_cursor(at_s: float, row_id: int) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([at_s, row_id])).decode().rstrip("=")


@pytest.mark.parametrize(
    ("at_s", "row_id"),
    [(1e20, 1), (-1e20, 1), (253402300800.0, 1), (NOW_S, 2**64 - 1)],
    ids=["far-future", "far-past", "year-10000", "id-over-int64"],
)
async def test_history_cursor_out_of_range_422(
    client: httpx.AsyncClient, at_s: float, row_id: int
) -> None:
    tenant = await create_tenant(client)
    cursor = history_cursor(at_s, row_id)

    response = await client.get(f"/v1/tenants/{tenant}/history", params={"cursor": cursor}, headers=ADMIN)

    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["query", "cursor"]
    assert detail["input"] == cursor


@pytest.mark.parametrize(
    "params",
    [
        {"cursor": history_cursor(datetime(1, 1, 1, tzinfo=UTC).timestamp(), 1)},
        {"cursor": history_cursor(datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp(), 1)},
        {"since": "0001-01-01T00:00:00+14:00", "until": "9999-12-31T23:59:59-14:00"},
    ],
    ids=["cursor-year-1", "cursor-year-9999", "since-until-extremes"],
)
async def test_history_time_range_edges(client: httpx.AsyncClient, params: dict[str, str]) -> None:
    tenant = await create_tenant(client)

    response = await client.get(f"/v1/tenants/{tenant}/history", params=params, headers=ADMIN)

    assert response.status_code == 200, response.text
    assert response.json() == {"items": [], "next_cursor": None}


# ------------------------------------------------------------ health and OpenAPI


async def test_healthz_and_readyz(client: httpx.AsyncClient) -> None:
    health = await client.get("/healthz")
    ready = await client.get("/readyz")

    assert health.json() == {"status": "ok"}
    assert ready.status_code == 200
    assert ready.json() == {"status": "ok", "checks": {"store": "ok"}}


async def test_readyz_store_closed(pg_store_url: str) -> None:
    store = PostgresStore(pg_store_url)
    await store.open()
    app = create_app(store, admin_token=ADMIN_TOKEN)
    await store.close()

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        response = await client.get("/readyz")

    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "checks": {"store": "unreachable"}}


EXPECTED_OPERATIONS = {
    ("get", "/metrics"),
    ("post", "/v1/tenants/{tenant}/events"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("put", "/v1/tenants/{tenant}"),
    ("get", "/v1/tenants/{tenant}"),
    ("get", "/v1/tenants/{tenant}/features/stateful-rules"),
    ("put", "/v1/tenants/{tenant}/features/stateful-rules"),
    ("post", "/v1/tenants/{tenant}/tokens"),
    ("get", "/v1/tenants/{tenant}/tokens"),
    ("delete", "/v1/tenants/{tenant}/tokens/{token_id}"),
    ("get", "/v1/tenants/{tenant}/rules"),
    ("get", "/v1/tenants/{tenant}/rules/{rule_id}"),
    ("put", "/v1/tenants/{tenant}/rules/{rule_id}"),
    ("delete", "/v1/tenants/{tenant}/rules/{rule_id}"),
    ("get", "/v1/tenants/{tenant}/rules/{rule_id}/groups"),
    ("get", "/v1/tenants/{tenant}/history"),
}


async def test_openapi_lists_every_route(client: httpx.AsyncClient) -> None:
    response = await client.get("/openapi.json")
    paths = response.json()["paths"]

    operations = {(method, path) for path, item in paths.items() for method in item}
    assert operations == EXPECTED_OPERATIONS
    for method, path in sorted(operations):
        operation = paths[path][method]
        assert operation.get("summary"), (method, path)
        assert operation.get("responses"), (method, path)
        if path.startswith("/v1/"):
            assert "401" in operation["responses"], (method, path)


async def test_openapi_events_request_body(client: httpx.AsyncClient) -> None:
    response = await client.get("/openapi.json")
    operation = response.json()["paths"]["/v1/tenants/{tenant}/events"]["post"]

    request_body = operation["requestBody"]
    schema = request_body["content"]["application/json"]["schema"]
    assert request_body["required"] is True
    assert schema["oneOf"][0]["type"] == "object"
    assert schema["oneOf"][1]["type"] == "array"
    assert schema["oneOf"][1]["items"]["type"] == "object"
    assert schema["oneOf"][1]["minItems"] == 1


# Status codes that each operation's handler and dependencies can return, besides FastAPI's own
# 405 and the like. 401 comes from the bearer check, 404 from the tenant check, 422 from the path,
# query and body checks, 413 and 415 from the body checks, which apply to every request, and 503
# from the store's error handler.
EXPECTED_STATUS_CODES = {
    ("get", "/healthz"): {"200", "413", "415"},
    ("get", "/readyz"): {"200", "413", "415", "503"},
    ("get", "/metrics"): {"200", "401", "403", "413", "415", "503"},
    ("put", "/v1/tenants/{tenant}"): {"200", "201", "401", "403", "404", "413", "415", "422", "503"},
    ("get", "/v1/tenants/{tenant}"): {"200", "401", "404", "413", "415", "422", "503"},
    ("get", "/v1/tenants/{tenant}/features/stateful-rules"): {"200", "401", "404", "413", "415", "422", "503"},
    ("put", "/v1/tenants/{tenant}/features/stateful-rules"):
        {"200", "401", "403", "404", "413", "415", "422", "503"},
    ("post", "/v1/tenants/{tenant}/tokens"): {"201", "401", "403", "404", "413", "415", "422", "503"},
    ("get", "/v1/tenants/{tenant}/tokens"): {"200", "401", "403", "404", "413", "415", "422", "503"},
    ("delete", "/v1/tenants/{tenant}/tokens/{token_id}"):
        {"204", "401", "403", "404", "413", "415", "422", "503"},
    ("get", "/v1/tenants/{tenant}/rules"): {"200", "401", "404", "413", "415", "422", "503"},
    ("get", "/v1/tenants/{tenant}/rules/{rule_id}"): {"200", "401", "404", "413", "415", "422", "503"},
    ("put", "/v1/tenants/{tenant}/rules/{rule_id}"): {"200", "401", "404", "412", "413", "415", "422", "503"},
    ("delete", "/v1/tenants/{tenant}/rules/{rule_id}"): {"204", "401", "404", "412", "413", "415", "422", "503"},
    ("get", "/v1/tenants/{tenant}/rules/{rule_id}/groups"): {"200", "401", "404", "413", "415", "422", "503"},
    ("get", "/v1/tenants/{tenant}/history"): {"200", "401", "404", "413", "415", "422", "503"},
    ("post", "/v1/tenants/{tenant}/events"): {"202", "401", "404", "413", "415", "422", "503"},
}
SCHEMAS = "#/components/schemas/"


def response_schema(document: dict[str, Any], method: str, path: str, status: str) -> dict[str, Any]:
    """Return the JSON schema that the OpenAPI document gives for one response's body."""
    response = document["paths"][path][method]["responses"][status]
    schema: dict[str, Any] = response["content"]["application/json"]["schema"]
    return schema


def schema_refs(node: object) -> list[str]:
    """Return every $ref in a JSON document, in document order."""
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [ref for child in node.values() for ref in schema_refs(child)]
    if isinstance(node, list):
        return [ref for child in node for ref in schema_refs(child)]
    return []


_SCHEMA_ANNOTATIONS = {"title", "description", "default", "examples", "format", "$ref"}
_SCHEMA_KEYWORDS = {
    "type", "anyOf", "enum", "properties", "required", "additionalProperties", "items",
    "minItems", "minLength", "maxLength", "pattern", "minimum", "maximum",
}
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,), "array": (list,), "string": (str,), "boolean": (bool,),
    "null": (type(None),), "integer": (int,), "number": (int, float),
}


def _is_json_type(value: object, kind: str) -> bool:
    # bool is a subclass of int in Python, but JSON Schema keeps booleans apart from numbers.
    if isinstance(value, bool) and kind in ("integer", "number"):
        return False
    return isinstance(value, _JSON_TYPES[kind])


def schema_problems(
    value: object, schema: dict[str, Any], document: dict[str, Any], at: str = "$"
) -> list[str]:
    """Check `value` against a schema of the OpenAPI document; return one line per problem.

    It covers only the JSON Schema keywords in _SCHEMA_KEYWORDS, enough for the error and rule
    schemas, and reports any other keyword as a problem instead of ignoring it.
    """
    if "$ref" in schema:
        name = schema["$ref"].removeprefix(SCHEMAS)
        schema = {**document["components"]["schemas"][name], **schema}
        del schema["$ref"]
    problems = [
        f"{at}: unsupported schema keyword {keyword!r}"
        for keyword in schema
        if keyword not in _SCHEMA_KEYWORDS | _SCHEMA_ANNOTATIONS
    ]
    if "anyOf" in schema and all(
        schema_problems(value, option, document, at) for option in schema["anyOf"]
    ):
        problems.append(f"{at}: {value!r} matches none of anyOf {schema['anyOf']}")
    kind = schema.get("type")
    if kind is not None and not _is_json_type(value, kind):
        return [*problems, f"{at}: {value!r} is not of type {kind}"]
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{at}: {value!r} is not one of {schema['enum']}")

    if isinstance(value, dict):
        problems.extend(f"{at}: missing {name!r}" for name in schema.get("required", []) if name not in value)
        properties = schema.get("properties", {})
        others = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in properties:
                problems.extend(schema_problems(item, properties[key], document, f"{at}.{key}"))
            elif others is False:
                problems.append(f"{at}: unknown property {key!r}")
            elif isinstance(others, dict):
                problems.extend(schema_problems(item, others, document, f"{at}.{key}"))
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            problems.append(f"{at}: fewer than {schema['minItems']} items")
        for index, item in enumerate(value):
            if "items" in schema:
                problems.extend(schema_problems(item, schema["items"], document, f"{at}[{index}]"))
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            problems.append(f"{at}: {value!r} is shorter than {schema['minLength']}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            problems.append(f"{at}: {value!r} is longer than {schema['maxLength']}")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            problems.append(f"{at}: {value!r} does not match {schema['pattern']}")
    if _is_json_type(value, "number"):
        assert isinstance(value, int | float)
        if "minimum" in schema and value < schema["minimum"]:
            problems.append(f"{at}: {value!r} is less than {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            problems.append(f"{at}: {value!r} is greater than {schema['maximum']}")
    return problems


def test_schema_problems_catches_mismatches() -> None:
    document = {"components": {"schemas": {"Item": {"type": "object", "required": ["a"],
                                                     "properties": {"a": {"type": "integer"}}}}}}
    schema = {"type": "array", "items": {"$ref": SCHEMAS + "Item"}}

    assert schema_problems([{"a": 1}], schema, document) == []
    assert schema_problems([{"a": True}], schema, document) == ["$[0].a: True is not of type integer"]
    assert schema_problems([{}], schema, document) == ["$[0]: missing 'a'"]
    assert schema_problems([1], {"oneOf": []}, document) == ["$: unsupported schema keyword 'oneOf'"]


async def test_openapi_status_codes(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()

    for (method, path), expected in EXPECTED_STATUS_CODES.items():
        listed = set(document["paths"][path][method]["responses"])
        assert listed == expected, (method, path)


async def test_openapi_tenant_put_201_body(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()

    created = await client.put(f"/v1/tenants/{new_tenant()}", headers=ADMIN)

    assert created.status_code == 201
    schema = response_schema(document, "put", "/v1/tenants/{tenant}", "201")
    assert schema == {"$ref": SCHEMAS + "Tenant"}
    assert schema_problems(created.json(), schema, document) == []


async def test_openapi_rule_etag_header(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    tenant = await create_tenant(client)
    path = f"/v1/tenants/{tenant}/rules/r1"

    put = await client.put(path, headers=ADMIN, json=RULE)
    get = await client.get(path, headers=ADMIN)

    for method, response in (("get", get), ("put", put)):
        operation = document["paths"]["/v1/tenants/{tenant}/rules/{rule_id}"][method]
        headers = operation["responses"]["200"]["headers"]
        assert headers["ETag"]["schema"] == {"type": "string"}, method
        assert response.headers["etag"] == '"1"', method


READINESS_CHECKS = ("store", "jetstream", "leases", "evaluators", "evaluators_store")
"""Every check that /readyz can send: store from create_app, the rest from Service.readiness."""


async def test_openapi_health_checks(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()

    description = document["components"]["schemas"]["Health"]["properties"]["checks"]["description"]
    for check in READINESS_CHECKS:
        assert re.search(rf"\b{check}\b", description), check


async def test_openapi_rule_health_null(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    tenant = await create_tenant(client)

    rule = await client.put(f"/v1/tenants/{tenant}/rules/r1", headers=ADMIN, json=RULE)

    health = document["components"]["schemas"]["RuleOut"]["properties"]["health"]
    assert "null without a running service" in health["description"]
    assert rule.json()["health"] is None


async def test_openapi_history_kind_enum(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    schemas = document["components"]["schemas"]

    assert schemas["HistoryOut"]["properties"]["kind"] == {"$ref": SCHEMAS + "TransitionKind"}
    assert schemas["TransitionKind"]["enum"] == [kind.value for kind in TransitionKind]


async def test_openapi_ingest_signal(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    operation = document["paths"]["/v1/tenants/{tenant}/events"]["post"]
    schemas = document["components"]["schemas"]

    signal = next(parameter for parameter in operation["parameters"] if parameter["name"] == "signal")
    assert signal["schema"]["anyOf"][0] == {"$ref": SCHEMAS + "IngestSignal"}
    assert schemas["IngestSignal"]["enum"] == ["logs", "events"]
    assert schemas["IngestSignal"]["description"].startswith("Signal that every event")
    for name, schema in schemas.items():
        assert "mypyc" not in schema.get("description", ""), name


@pytest.mark.parametrize("value", ["any", "bogus", "LOGS", ""])
async def test_ingest_signal_invalid_422(client: httpx.AsyncClient, value: str) -> None:
    tenant = await create_tenant(client)

    response = await client.post(
        f"/v1/tenants/{tenant}/events", headers=ADMIN, params={"signal": value}, json={"n": 1}
    )

    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert len(detail) == 1
    assert detail[0]["loc"] == ["query", "signal"]
    assert detail[0]["msg"] == f"invalid signal {value!r}: use logs or events, or leave it out"
    assert detail[0]["input"] == value


async def test_openapi_tenant_put_404(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()

    responses = document["paths"]["/v1/tenants/{tenant}"]["put"]["responses"]
    assert "404" in responses
    assert "Another tenant's token" in responses["404"]["description"]
    assert responses["404"]["content"]["application/json"]["schema"] == {"$ref": SCHEMAS + "ErrorMessage"}


async def test_openapi_error_schemas(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    schemas = document["components"]["schemas"]

    detail = schemas["ValidationErrorDetail"]
    assert detail["required"] == ["loc", "msg", "input"]
    assert {"loc", "msg", "input", "field", "type", "ctx"} == set(detail["properties"])
    assert detail["properties"]["field"]["type"] == "string"
    assert detail["properties"]["loc"]["items"]["anyOf"] == [{"type": "string"}, {"type": "integer"}]
    assert schemas["ValidationErrorResponse"]["properties"]["detail"]["items"] == {
        "$ref": SCHEMAS + "ValidationErrorDetail"
    }
    assert schemas["ErrorMessage"]["properties"]["detail"]["type"] == "string"
    # FastAPI adds its own ValidationError, which requires `type`, to any route without a 422 entry.
    assert "ValidationError" not in schemas
    assert "HTTPValidationError" not in schemas


async def test_openapi_error_responses_v1(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()

    for path, item in document["paths"].items():
        for method, operation in item.items():
            if not path.startswith("/v1/"):
                continue
            responses = operation["responses"]
            for status in responses:
                if status.startswith("2"):
                    continue
                expected = "ValidationErrorResponse" if status == "422" else "ErrorMessage"
                schema = response_schema(document, method, path, status)
                assert schema == {"$ref": SCHEMAS + expected}, (method, path, status)
            assert "the state store failed" in responses["503"]["description"].lower(), (method, path)


async def test_openapi_refs_resolve(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    refs = schema_refs(document)

    assert SCHEMAS + "ValidationErrorResponse" in refs
    for ref in refs:
        assert ref.startswith(SCHEMAS), ref
        assert ref.removeprefix(SCHEMAS) in document["components"]["schemas"], ref


async def test_error_bodies_match_openapi(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    tenant = await create_tenant(client)
    _, token = await tenant_token(client, tenant)
    base = f"/v1/tenants/{tenant}"
    rule_path = "/v1/tenants/{tenant}/rules/{rule_id}"
    cases = [
        # The API's own checks of path and query values: no `type` and no `field`.
        ("get", "/v1/tenants/{tenant}/history", f"{base}/history?since=yesterday", ADMIN, None, 422),
        ("get", "/v1/tenants/{tenant}/history", f"{base}/history?cursor=x", ADMIN, None, 422),
        ("get", "/v1/tenants/{tenant}", "/v1/tenants/caf%C3%A9", ADMIN, None, 422),
        # FastAPI's request validation: `type`, and `ctx` for a range.
        ("get", "/v1/tenants/{tenant}/rules/{rule_id}/groups", f"{base}/rules/r1/groups?limit=0",
         ADMIN, None, 422),
        ("put", "/v1/tenants/{tenant}/features/stateful-rules", f"{base}/features/stateful-rules",
         ADMIN, {"enabled": "yes"}, 422),
        # Rule validation and the store's checks: `field`, with `loc` empty for the store.
        ("put", rule_path, f"{base}/rules/r1", ADMIN, {"threshold": 0}, 422),
        ("put", rule_path, f"{base}/rules/r1", ADMIN, {"tresh": 5}, 422),
        ("post", "/v1/tenants/{tenant}/tokens", f"{base}/tokens", ADMIN, {"name": "ci\x00"}, 422),
        ("put", "/v1/tenants/{tenant}", base, bearer(token), None, 403),
        ("put", "/v1/tenants/{tenant}", f"/v1/tenants/{new_tenant()}", bearer(token), None, 404),
        ("get", "/v1/tenants/{tenant}", base, bearer("wrong"), None, 401),
        ("put", rule_path, f"{base}/rules/r1", {**ADMIN, "If-Match": '"7"'}, RULE, 412),
        ("put", rule_path, f"{base}/rules/r1", ADMIN, {"labels": {"x": "y" * 5000}}, 413),
    ]
    for method, path, url, headers, body, status in cases:
        response = await client.request(method, url, headers=headers, json=body)

        assert response.status_code == status, (url, response.text)
        schema = response_schema(document, method, path, str(status))
        assert schema_problems(response.json(), schema, document) == [], (url, response.text)

    token_error = await client.post(f"{base}/tokens", headers=ADMIN, json={"name": "ci\x00"})
    since_error = await client.get(f"{base}/history?since=yesterday", headers=ADMIN)
    assert token_error.json()["detail"][0]["loc"] == []
    assert "field" in token_error.json()["detail"][0]
    assert "type" not in since_error.json()["detail"][0]
    assert "field" not in since_error.json()["detail"][0]


async def test_openapi_503_for_every_v1_route(pg_store_url: str) -> None:
    store = PostgresStore(pg_store_url)
    await store.open()
    app = create_app(store, admin_token=ADMIN_TOKEN)
    await store.close()
    values = {"{tenant}": "acme", "{rule_id}": "r1", "{token_id}": "0123456789abcdef"}
    bodies = {
        "/v1/tenants/{tenant}/features/stateful-rules": {"enabled": True},
        "/v1/tenants/{tenant}/tokens": {"name": "ci"},
        "/v1/tenants/{tenant}/rules/{rule_id}": RULE,
        "/v1/tenants/{tenant}/events": [{"id": "e1", "time": "2026-01-02T03:04:05Z"}],
    }

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        document = (await client.get("/openapi.json")).json()
        for method, path in sorted(EXPECTED_OPERATIONS):
            if not path.startswith("/v1/"):
                continue
            url = path
            for placeholder, value in values.items():
                url = url.replace(placeholder, value)
            body = bodies.get(path) if method in ("put", "post") else None
            response = await client.request(method, url, headers=ADMIN, json=body)

            assert response.status_code == 503, (method, path, response.text)
            assert response.json() == {"detail": "the state store failed; retry later"}
            assert "503" in document["paths"][path][method]["responses"], (method, path)

        # A tenant token is looked up in the store, so /metrics can return 503 for it too.
        metrics = await client.get("/metrics", headers=bearer("awt_0123456789abcdef_secret"))
    assert metrics.status_code == 503
    assert metrics.json() == {"detail": "the state store failed; retry later"}


RULE_FIELDS = {
    "id", "name", "description", "enabled", "group", "signal", "match", "group_by", "threshold",
    "window", "bucket", "cooldown", "renotify", "severity", "labels", "annotations",
    "on_missing_key", "max_groups",
}
RULE_PUT = ("put", "/v1/tenants/{tenant}/rules/{rule_id}")


def rule_body_schema(document: dict[str, Any]) -> dict[str, Any]:
    operation = document["paths"][RULE_PUT[1]][RULE_PUT[0]]
    schema: dict[str, Any] = operation["requestBody"]["content"]["application/json"]["schema"]
    return schema


def documented_rules() -> list[dict[str, Any]]:
    """Return the example rules of examples/ssh-rules.yaml and of the README's walkthrough."""
    rules: list[dict[str, Any]] = yaml.safe_load((ROOT / "examples" / "ssh-rules.yaml").read_text())
    readme = (ROOT / "README.md").read_text()
    walkthrough = re.search(r"rules/failed-logins .*\n +-d '(\{.*\})'", readme)
    assert walkthrough is not None, "README.md has no rule PUT with -d '{...}'"
    rules.append(orjson.loads(walkthrough.group(1)))
    return rules


async def test_openapi_rule_body_schema(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    schema = rule_body_schema(document)
    properties = schema["properties"]

    assert RULE_FIELDS <= set(properties)
    # A name left in these tables after a field was renamed in RuleDefinition would be ignored.
    assert set(FIELD_DESCRIPTIONS) <= set(properties)
    assert set(FIELD_CONSTRAINTS) <= set(properties)
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    # The path names the rule, so no field is required, not even id.
    assert "required" not in schema
    assert "$defs" not in str(schema)
    assert "$ref" not in str(schema)
    assert properties["threshold"]["type"] == "integer"
    assert properties["threshold"]["minimum"] == 1
    assert properties["threshold"]["maximum"] == 1_000_000_000
    assert properties["max_groups"]["minimum"] == 1
    assert properties["max_groups"]["maximum"] == 10_000_000
    assert properties["window"]["anyOf"][0] == {"type": "integer", "minimum": 1, "maximum": 30 * 86400}
    assert properties["window"]["anyOf"][1]["type"] == "string"
    assert properties["bucket"]["anyOf"][0]["minimum"] == 1
    assert properties["cooldown"]["anyOf"][0] == {"type": "integer", "minimum": 0}
    assert {"type": "null"} in properties["bucket"]["anyOf"]
    assert properties["signal"]["enum"] == ["logs", "events", "any"]
    assert properties["on_missing_key"]["enum"] == ["group", "skip"]
    assert properties["group_by"]["items"] == {"type": "string"}
    assert properties["labels"]["additionalProperties"]["type"] == "string"
    assert properties["enabled"]["type"] == "boolean"
    assert properties["group"]["pattern"] == "^[A-Za-z0-9_.:-]{1,128}$"
    # A field added to RuleDefinition needs its entry in rule_schema.FIELD_DESCRIPTIONS.
    for name, field_schema in properties.items():
        assert field_schema.get("description"), name


async def test_rule_schema_accepts_documented_rules(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    schema = rule_body_schema(document)
    tenant = await create_tenant(client)
    rules = [*documented_rules(), *schema["examples"], RULE, {}, {"window": 600, "bucket": None}]

    for rule in rules:
        rule_id = rule.get("id", "r1")
        response = await client.put(f"/v1/tenants/{tenant}/rules/{rule_id}", headers=ADMIN, json=rule)

        assert response.status_code == 200, (rule, response.text)
        assert schema_problems(rule, schema, document) == [], rule


@pytest.mark.parametrize(
    "body",
    [
        {"tresh": 5},
        {"threshold": "5"},
        {"threshold": 0},
        {"threshold": 1_000_000_001},
        {"enabled": "yes"},
        {"signal": "metrics"},
        {"on_missing_key": "drop"},
        {"window": 1.5},
        {"window": -60},
        {"group": "a b"},
        {"group_by": "host"},
        {"labels": {"team": 1}},
        {"max_groups": 0},
        {"max_groups": 10_000_001},
        [RULE],
    ],
)
async def test_rule_schema_rejects_invalid_rules(client: httpx.AsyncClient, body: object) -> None:
    document = (await client.get("/openapi.json")).json()
    tenant = await create_tenant(client)

    response = await client.put(f"/v1/tenants/{tenant}/rules/r1", headers=ADMIN, json=body)

    assert response.status_code == 422, response.text
    assert schema_problems(body, rule_body_schema(document), document) != []


def test_rule_schema_inlines_definitions() -> None:
    definitions = {"Kind": {"enum": ["a", "b"]}, "Loop": {"items": {"$ref": "#/$defs/Loop"}}}
    schema = {"properties": {"kind": {"$ref": "#/$defs/Kind", "default": "a"}}}

    inlined = _inline_references(schema, definitions)

    assert inlined == {"properties": {"kind": {"enum": ["a", "b"], "default": "a"}}}
    with pytest.raises(ValueError, match="'Loop' is recursive"):
        _inline_references({"$ref": "#/$defs/Loop"}, definitions)


async def test_rule_put_non_object_body(client: httpx.AsyncClient) -> None:
    tenant = await create_tenant(client)

    response = await client.put(f"/v1/tenants/{tenant}/rules/r1", headers=ADMIN, json=[RULE])

    # FastAPI still parses the body as any JSON object, and the documented schema plays no part.
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "dict_type"
    assert response.json()["detail"][0]["loc"] == ["body"]


def test_create_app_short_admin_token(store: PostgresStore) -> None:
    from alertwarden.errors import ConfigError

    with pytest.raises(ConfigError, match="invalid admin token of 5 characters"):
        create_app(store, admin_token="short")


@pytest.mark.parametrize(
    ("method", "suffix"),
    [("GET", "/rules/bad%00id"), ("DELETE", "/rules/a%20b"), ("GET", "/rules/a%2Fb/groups"),
     ("GET", "/history?rule=a%00"), ("GET", '/history?group={"a":"%00"}')],
)
async def test_invalid_ids_rejected(client: httpx.AsyncClient, method: str, suffix: str) -> None:
    tenant = await create_tenant(client)

    response = await client.request(method, f"/v1/tenants/{tenant}{suffix}", headers=ADMIN)

    assert response.status_code in (404, 422), response.text
    assert response.status_code != 503


# ------------------------------------------------------------ JSON documents for the store


@pytest.mark.parametrize(
    ("document", "path", "field"),
    [
        ({"a": ["x", "y\x00"]}, ("a", 1), "a[1]"),
        ({"a": {"\ud800": 1}}, ("a", "\ud800"), "key in a"),
        ({"a": -(2**63) - 1}, ("a",), "a"),
        ({"a": [float("nan")]}, ("a", 0), "a[0]"),
        ({"a": [float("-inf")]}, ("a", 0), "a[0]"),
    ],
)
def test_check_json_document_rejects(
    document: dict[str, object], path: tuple[object, ...], field: str
) -> None:
    with pytest.raises(InvalidValueError) as raised:
        check_json_document(document)

    assert raised.value.path == path
    assert raised.value.field == field


def test_check_json_document_depth() -> None:
    deepest: object = []
    for _ in range(MAX_JSON_DEPTH - 1):
        deepest = [deepest]
    too_deep = [deepest]

    check_json_document(deepest)
    orjson.dumps(deepest)
    with pytest.raises(InvalidValueError, match=f"nested deeper than {MAX_JSON_DEPTH}"):
        check_json_document(too_deep)
    with pytest.raises(orjson.JSONEncodeError):
        orjson.dumps(too_deep)


def test_check_json_document_accepts() -> None:
    check_json_document({"a": [None, True, 2**64 - 1, -(2**63), 1.5, "Grüße 🚨"], "": {}})
