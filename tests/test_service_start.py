"""Start-up checks of `serve` against real servers: database creation, stream creation, token file."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import nats.errors
import nats.js.errors
import psycopg
import pytest
import structlog
from nats.js.api import StreamConfig
from psycopg import sql

from alertwarden.errors import ConfigError
from alertwarden.service.runtime import Service, admin_token, create_database_if_missing
from alertwarden.settings import Settings
from pg_fixture import database_url
from serve_fixture import NATS_URL

TOKEN = "token-file-0123456789abcdef"


# ------------------------------------------------------------ database creation


async def test_database_created_when_missing(pg_url: str) -> None:
    name = f"aw_test_{uuid.uuid4().hex[:16]}"
    url = database_url(pg_url, name)
    try:
        await create_database_if_missing(url)

        with psycopg.connect(url, connect_timeout=5) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == (name,)
    finally:
        with psycopg.connect(pg_url, autocommit=True, connect_timeout=5) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


async def test_database_unknown_role_rejected(pg_url: str) -> None:
    # The server rejects the login with 'role "..." does not exist', which is no missing database.
    url = pg_url.replace("user=postgres", "user=aw_no_such_role password=role-secret-9")
    assert "aw_no_such_role" in url

    with pytest.raises(ConfigError) as caught:
        await create_database_if_missing(url)

    message = str(caught.value)
    assert message.startswith("PostgreSQL rejected the login: ")
    assert 'role "aw_no_such_role" does not exist' in message
    assert message.endswith("Check the user name and password in ALERTWARDEN_DATABASE_URL")
    assert "could not be created" not in message
    assert "role-secret-9" not in message


async def test_database_existing_left_alone(pg_url: str) -> None:
    await create_database_if_missing(pg_url)

    with psycopg.connect(pg_url, connect_timeout=5) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


# ------------------------------------------------------------ stream creation


@pytest.fixture
async def foreign_stream() -> AsyncIterator[tuple[str, str]]:
    """A stream not meant for alertwarden that captures subjects under a unique prefix."""
    prefix = "h" + uuid.uuid4().hex[:12]
    name = f"AW_FOREIGN_{prefix}"
    try:
        client = await nats.connect(NATS_URL, connect_timeout=2, max_reconnect_attempts=0)
    except (nats.errors.NoServersError, OSError) as error:
        pytest.skip(f"no NATS server at {NATS_URL}: {error}")
    js = client.jetstream()
    await js.add_stream(StreamConfig(name=name, subjects=[f"{prefix}.logs.>"]))
    try:
        yield prefix, name
    finally:
        try:
            await js.delete_stream(name)
        except nats.js.errors.NotFoundError:
            pass
        await client.close()


async def test_stream_overlap_names_subject_settings(foreign_stream: tuple[str, str]) -> None:
    prefix, owner = foreign_stream
    stream = f"AW_START_{prefix}"
    settings = Settings(
        stream=stream,
        logs_subject=f"{prefix}.logs.{{tenant}}.>",
        events_subject=f"{prefix}.events.{{tenant}}.>",
        stream_max_bytes=1024 * 1024,
    )
    service = Service(settings)
    client = await nats.connect(NATS_URL)
    js = client.jetstream()
    try:
        with pytest.raises(ConfigError) as caught:
            await service._ensure_stream(js)
        with pytest.raises(nats.js.errors.NotFoundError):
            await js.stream_info(stream)
    finally:
        await client.close()

    message = str(caught.value)
    assert message.startswith(f"JetStream stream {stream!r} could not be created or updated: stream {owner!r}")
    assert f"ALERTWARDEN_LOGS_SUBJECT '{prefix}.logs.{{tenant}}.>'" in message
    assert f"ALERTWARDEN_EVENTS_SUBJECT '{prefix}.events.{{tenant}}.>'" in message
    assert "Choose subject patterns that no other stream captures" in message
    assert "-js" not in message


# ------------------------------------------------------------ admin token file


@pytest.mark.parametrize(("mode", "warned"), [(0o644, True), (0o640, True), (0o600, False), (0o400, False)])
def test_admin_token_file_mode(tmp_path: Path, mode: int, warned: bool) -> None:
    path = tmp_path / "admin-token"
    path.write_text(TOKEN + "\n", encoding="utf-8")
    os.chmod(path, mode)

    with structlog.testing.capture_logs() as logs:
        token = admin_token(Settings(admin_token_file=path))

    assert token == TOKEN
    warnings = [entry for entry in logs if entry["event"] == "admin_token_file_permissions"]
    assert len(warnings) == (1 if warned else 0)
    if warned:
        assert warnings[0]["log_level"] == "warning"
        assert warnings[0]["path"] == str(path.resolve())
        assert warnings[0]["mode"] == f"{mode:04o}"
        assert "chmod 600" in warnings[0]["note"]
        assert TOKEN not in str(warnings[0])


def test_admin_token_file_created_private(tmp_path: Path) -> None:
    path = tmp_path / "admin-token"

    with structlog.testing.capture_logs() as logs:
        token = admin_token(Settings(admin_token_file=path))

    assert path.read_text(encoding="utf-8").strip() == token
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert [entry["event"] for entry in logs] == ["admin_token_created"]
