"""Two `serve` nodes on one database: each rule group runs on one node, the other takes over."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import nats
import orjson
import psycopg
import pytest

from serve_fixture import NATS_URL, ServeNames, ServeProcess, WebhookReceiver, start_serve, wait_until

pytestmark = pytest.mark.slow

RULE = {
    "match": {"field": "kind", "equals": "login_failed"},
    "group_by": ["host"],
    "signal": "logs",
    "threshold": 3,
    "window": "10m",
    "bucket": "10s",
    "cooldown": "1h",
}
TENANTS = ("acme", "globex", "initech", "umbrella")


def publish(subject: str, hosts: list[str], prefix: str) -> None:
    async def send() -> None:
        client = await nats.connect(NATS_URL)
        try:
            js = client.jetstream()
            for index, host in enumerate(hosts):
                event = {
                    "time": datetime.now(UTC).isoformat(),
                    "id": f"{prefix}-{index}",
                    "kind": "login_failed",
                    "host": host,
                }
                await js.publish(subject, orjson.dumps(event), headers={"Nats-Msg-Id": event["id"]})
        finally:
            await client.close()

    asyncio.run(send())


def statuses(node: ServeProcess, tenant: str) -> str:
    response = httpx.get(
        f"{node.base_url}/v1/tenants/{tenant}/rules/logins",
        headers={"Authorization": f"Bearer {node.env['ALERTWARDEN_ADMIN_TOKEN']}"},
        timeout=5,
    )
    return str(response.json()["health"]["status"])


def create_tenants(admin: httpx.Client) -> None:
    """Create every tenant of TENANTS with the rule `logins` and the stateful-rules flag on."""
    for tenant in TENANTS:
        assert admin.put(f"/v1/tenants/{tenant}").status_code in (200, 201)
        assert admin.put(f"/v1/tenants/{tenant}/rules/logins", json=RULE).status_code == 200
        flag = admin.put(f"/v1/tenants/{tenant}/features/stateful-rules", json={"enabled": True})
        assert flag.status_code == 200


def owners(nodes: list[ServeProcess]) -> dict[str, list[int]]:
    """Return, per tenant, the indexes of the nodes that evaluate its rule group."""
    return {
        tenant: [index for index, node in enumerate(nodes) if statuses(node, tenant) == "healthy"]
        for tenant in TENANTS
    }


def history(node: ServeProcess, tenant: str) -> list[tuple[str, str, int]]:
    response = httpx.get(
        f"{node.base_url}/v1/tenants/{tenant}/history",
        headers={"Authorization": f"Bearer {node.env['ALERTWARDEN_ADMIN_TOKEN']}"},
        timeout=5,
    )
    return [(item["kind"], item["group"]["host"], item["count"]) for item in response.json()["items"]]


def test_serve_two_nodes_share_and_take_over(
    tmp_path: Path, pg_url: str, names: ServeNames, webhook: WebhookReceiver
) -> None:
    nodes = [
        start_serve(tmp_path, pg_url, names, name=f"node{index}", ALERTWARDEN_WEBHOOK_URLS=webhook.url)
        for index in range(2)
    ]
    try:
        admin = nodes[0].client()
        create_tenants(admin)

        def settled() -> dict[str, list[int]] | None:
            found = owners(nodes)
            return found if all(len(found[tenant]) == 1 for tenant in TENANTS) else None

        first = wait_until(settled, 30, "one node per rule group")
        for tenant in TENANTS:
            other = nodes[1 - first[tenant][0]]
            # The other node reports it once its own poll has seen the tenant's flag.
            wait_until(lambda: statuses(other, tenant) == "elsewhere", 10, f"{tenant} elsewhere")

        for tenant in TENANTS:
            publish(names.logs_subject_of(tenant), ["db-01"] * 3, f"{tenant}-a")
        wait_until(lambda: len(webhook.bodies()) >= len(TENANTS), 30, "one alert per tenant")
        time.sleep(2)
        # Both nodes read the stream, but each alert was evaluated and sent once.
        assert len(webhook.bodies()) == len(TENANTS)

        # kill -9: PostgreSQL ends the node's session, which frees its leases.
        nodes[0].kill()
        wait_until(
            lambda: all(statuses(nodes[1], tenant) == "healthy" for tenant in TENANTS),
            30,
            "node1 to take over every rule group",
        )
        for tenant in TENANTS:
            publish(names.logs_subject_of(tenant), ["db-02"] * 3, f"{tenant}-b")
        wait_until(lambda: len(webhook.bodies()) >= 2 * len(TENANTS), 30, "the second alerts")
        time.sleep(2)

        for tenant in TENANTS:
            # Taken over at the checkpoint: db-01 is not counted again, so it does not fire again.
            assert history(nodes[1], tenant) == [("fired", "db-01", 3), ("fired", "db-02", 3)]
        # A rule group taken over from the killed node may send its last alert again.
        kinds = sorted((body["tenant"], body["group"]["host"]) for body in webhook.bodies())
        assert set(kinds) == {(tenant, host) for tenant in TENANTS for host in ("db-01", "db-02")}
        assert len(kinds) <= 3 * len(TENANTS)
        assert nodes[1].terminate() == 0
    finally:
        for node in nodes:
            node.close_clients()
            if node.process is not None and node.process.poll() is None:
                node.kill()


def matched_events(node: ServeProcess, tenant: str) -> float:
    prefix = f'alertwarden_events_total{{result="matched",tenant="{tenant}"}} '
    for line in node.client().get("/metrics").text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix):])
    return 0.0


def test_serve_second_node_takes_its_share(
    tmp_path: Path, pg_url: str, names: ServeNames, webhook: WebhookReceiver
) -> None:
    nodes = [start_serve(tmp_path, pg_url, names, name="node0", ALERTWARDEN_WEBHOOK_URLS=webhook.url)]
    try:
        admin = nodes[0].client()
        create_tenants(admin)
        wait_until(lambda: all(owners(nodes)[t] == [0] for t in TENANTS), 30, "node0 to run every rule group")
        assert "alertwarden_live_nodes 1.0" in admin.get("/metrics").text

        # Two of the three events that fire, counted by node0 before the second node starts.
        for tenant in TENANTS:
            publish(names.logs_subject_of(tenant), ["db-01"] * 2, f"{tenant}-a")
        wait_until(
            lambda: all(matched_events(nodes[0], t) == 2 for t in TENANTS), 30, "node0 to count the events"
        )

        nodes.append(start_serve(tmp_path, pg_url, names, name="node1", ALERTWARDEN_WEBHOOK_URLS=webhook.url))

        def settled() -> dict[str, list[int]] | None:
            found = owners(nodes)
            if not all(len(found[tenant]) == 1 for tenant in TENANTS):
                return None
            per_node = sorted(sum(found[t] == [i] for t in TENANTS) for i in range(2))
            return found if per_node == [2, 2] else None

        found = wait_until(settled, 40, "two rule groups per node")
        moved = [tenant for tenant in TENANTS if found[tenant] == [1]]
        assert "alertwarden_live_nodes 2.0" in nodes[1].client().get("/metrics").text
        assert "alertwarden_leases_held 2.0" in nodes[0].client().get("/metrics").text

        for tenant in TENANTS:
            publish(names.logs_subject_of(tenant), ["db-01"], f"{tenant}-b")
        wait_until(lambda: len(webhook.bodies()) >= len(TENANTS), 30, "one alert per tenant")
        time.sleep(2)

        # node0 handed its rule groups over with a final flush, so node1 resumed with the count of
        # 2 and neither lost nor repeated an event: exactly one alert per tenant, at count 3.
        assert sorted(body["tenant"] for body in webhook.bodies()) == sorted(TENANTS)
        for tenant in TENANTS:
            assert history(nodes[found[tenant][0]], tenant) == [("fired", "db-01", 3)]
        for tenant in moved:
            assert matched_events(nodes[1], tenant) == 1
        assert "lease_handed_over" in nodes[0].log_path.read_text()

        # A third node: the two with 2 hand one each down, and the third takes its share.
        nodes.append(start_serve(tmp_path, pg_url, names, name="node2", ALERTWARDEN_WEBHOOK_URLS=webhook.url))

        def spread() -> list[int] | None:
            found = owners(nodes)
            if not all(len(found[tenant]) == 1 for tenant in TENANTS):
                return None
            per_node = sorted(sum(found[t] == [i] for t in TENANTS) for i in range(3))
            return per_node if per_node == [1, 1, 2] else None

        wait_until(spread, 60, "rule groups spread 1, 1, 2 over three nodes")
        for node in nodes:
            assert node.terminate() == 0
    finally:
        for node in nodes:
            node.close_clients()
            if node.process is not None and node.process.poll() is None:
                node.kill()


def test_readyz_reports_leases(tmp_path: Path, pg_url: str, names: ServeNames) -> None:
    node = start_serve(tmp_path, pg_url, names)
    try:
        body = httpx.get(node.base_url + "/readyz", timeout=5).json()
        assert body["checks"]["leases"] == "ok"
        metrics = node.client().get("/metrics").text
        assert "alertwarden_leases_held 0.0" in metrics
    finally:
        node.close_clients()
        node.kill()


def lease_backend_pids(node: ServeProcess) -> list[int]:
    return [
        int(line["backend_pid"])
        for line in map(orjson.loads, node.log_path.read_text().splitlines())
        if line.get("event") == "lease_session_opened"
    ]


def test_serve_lease_session_lost(tmp_path: Path, pg_url: str, names: ServeNames, webhook: WebhookReceiver) -> None:
    node = start_serve(tmp_path, pg_url, names, ALERTWARDEN_WEBHOOK_URLS=webhook.url)
    try:
        admin = node.client()
        assert admin.put("/v1/tenants/acme").status_code in (200, 201)
        assert admin.put("/v1/tenants/acme/rules/logins", json=RULE).status_code == 200
        assert admin.put("/v1/tenants/acme/features/stateful-rules", json={"enabled": True}).status_code == 200
        wait_until(lambda: statuses(node, "acme") == "healthy", 20, "the evaluator")
        publish(names.logs_subject_of("acme"), ["db-01"] * 2, "a")

        # As PostgreSQL does when it loses the node: the session ends, and its locks with it.
        [backend_pid] = lease_backend_pids(node)
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (backend_pid,))
        wait_until(lambda: len(lease_backend_pids(node)) == 2, 20, "a new lease session")
        wait_until(lambda: statuses(node, "acme") == "healthy", 20, "the evaluator to start again")
        log_text = node.log_path.read_text()
        assert '"event":"leases_lost"' in log_text or '"event":"evaluator_lease_lost"' in log_text

        # The abandoned evaluator wrote no final flush, so its replacement counts the two events
        # again from the last checkpoint; one more makes the alert, once.
        publish(names.logs_subject_of("acme"), ["db-01"], "b")
        wait_until(lambda: webhook.bodies(), 20, "the alert")
        time.sleep(1)
        assert [(body["kind"], body["count"]) for body in webhook.bodies()] == [("fired", 3)]
        assert history(node, "acme") == [("fired", "db-01", 3)]
        assert node.terminate() == 0
    finally:
        node.close_clients()
        if node.process is not None and node.process.poll() is None:
            node.kill()
