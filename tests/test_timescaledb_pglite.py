"""What works on TimescaleDB 2.23 in PGlite, served over the PostgreSQL protocol by tests/pglite.

Each test pins one SQL form that a PostgreSQL store may use, or one quirk of this server that a
store must handle. The server is shared by the session, so each test uses its own table.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from pglite_fixture import running_pglite_server

pytestmark = pytest.mark.slow

DAY = timedelta(days=1)
START = datetime(2025, 1, 1, tzinfo=UTC)
_table_numbers = itertools.count(1)

INSERT_UNNEST = """
    INSERT INTO {table} (at, tenant_id, rule_id, group_key, kind, count, transition_id, details, delivered)
    SELECT * FROM unnest(
        %s::timestamptz[], %s::text[], %s::text[], %s::jsonb[], %s::text[],
        %s::int[], %s::text[], %s::jsonb[], %s::bool[]
    )
    ON CONFLICT DO NOTHING
"""


def connect(url: str) -> psycopg.Connection:
    """Open an autocommit connection in the state a PGlite client needs.

    PGlite runs one backend for all clients, so the previous client's unfinished transaction,
    settings, prepared statements and advisory locks are still there: ROLLBACK and DISCARD ALL
    clear them. DISCARD ALL also resets search_path to pg_catalog, the value PGlite boots with,
    so the TimescaleDB functions in schema public need it set back. Server-side prepared statements stay off because psycopg names them _pg3_0,
    _pg3_1, … per connection, and the names of an earlier client would collide.
    """
    connection = psycopg.connect(url, autocommit=True, prepare_threshold=None)
    connection.execute("ROLLBACK")
    connection.execute("DISCARD ALL")
    connection.execute("SET search_path TO public")
    return connection


@pytest.fixture
def conn(timescale_url: str) -> Iterator[psycopg.Connection]:
    connection = connect(timescale_url)
    connection.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    try:
        yield connection
    finally:
        connection.close()


@pytest.fixture
def history(conn: psycopg.Connection) -> Iterator[sql.Identifier]:
    """Create a history hypertable with 1-day chunks and a unique index that contains the time column."""
    table = sql.Identifier(f"history_{next(_table_numbers)}")
    conn.execute(
        sql.SQL(
            """
            CREATE TABLE {table} (
                at timestamptz NOT NULL, tenant_id text, rule_id text, group_key jsonb, kind text,
                count int, transition_id text, details jsonb, delivered bool
            )
            """
        ).format(table=table)
    )
    conn.execute(
        sql.SQL("SELECT create_hypertable({name}, by_range('at', INTERVAL '1 day'))").format(
            name=sql.Literal(table.as_string(conn))
        )
    )
    conn.execute(sql.SQL("CREATE UNIQUE INDEX ON {table} (tenant_id, transition_id, at)").format(table=table))
    try:
        yield table
    finally:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {table} CASCADE").format(table=table))


def regclass(conn: psycopg.Connection, table: sql.Identifier) -> str:
    return table.as_string(conn).strip('"')


def insert_rows(conn: psycopg.Connection, table: sql.Identifier, times: Sequence[datetime], tenant: str = "t1") -> int:
    """Insert one history row per timestamp through unnest and return the number inserted."""
    columns: list[list[object]] = [
        list(times),
        [tenant] * len(times),
        ["rule-1"] * len(times),
        [Jsonb({"src": f"10.0.0.{i % 4}"}) for i in range(len(times))],
        ["fired"] * len(times),
        [i + 1 for i in range(len(times))],
        [f"tr-{at.isoformat()}" for at in times],
        [Jsonb({"n": i}) for i in range(len(times))],
        [False] * len(times),
    ]
    cursor = conn.execute(sql.SQL(INSERT_UNNEST).format(table=table), columns)
    return cursor.rowcount


def every_6_hours(start: datetime, days: int) -> list[datetime]:
    return [start + timedelta(hours=6 * i) for i in range(days * 4)]


def chunk_states(conn: psycopg.Connection, table: sql.Identifier) -> list[tuple[datetime, bool]]:
    rows = conn.execute(
        "SELECT range_start, is_compressed FROM timescaledb_information.chunks"
        " WHERE hypertable_name = %s ORDER BY range_start",
        (regclass(conn, table),),
    ).fetchall()
    return [(start, compressed) for start, compressed in rows]


def job_id(conn: psycopg.Connection, table: sql.Identifier, proc_name: str) -> int:
    row = conn.execute(
        "SELECT job_id FROM timescaledb_information.jobs WHERE hypertable_name = %s AND proc_name = %s",
        (regclass(conn, table), proc_name),
    ).fetchone()
    assert row is not None, f"no {proc_name} job for {regclass(conn, table)}"
    return row[0]


def enable_compression(conn: psycopg.Connection, table: sql.Identifier) -> None:
    conn.execute(
        sql.SQL(
            "ALTER TABLE {table} SET (timescaledb.compress,"
            " timescaledb.compress_segmentby = 'tenant_id, rule_id',"
            " timescaledb.compress_orderby = 'at DESC')"
        ).format(table=table)
    )


# Extension


def test_extension_version(conn: psycopg.Connection) -> None:
    row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
    assert row is not None
    assert row[0].startswith("2.23.")


def test_extension_available_listing(conn: psycopg.Connection) -> None:
    row = conn.execute("SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'").fetchone()
    assert row is not None
    assert row[0].startswith("2.23.")


def test_extension_license_allows_compression(conn: psycopg.Connection) -> None:
    # The Apache-2 build of TimescaleDB has no compression, so the license must be the community one.
    row = conn.execute("SHOW timescaledb.license").fetchone()
    assert row == ("timescale",)


# Hypertables


def test_hypertable_by_range_form(conn: psycopg.Connection, history: sql.Identifier) -> None:
    row = conn.execute(
        "SELECT column_name, time_interval FROM timescaledb_information.dimensions WHERE hypertable_name = %s",
        (regclass(conn, history),),
    ).fetchone()
    assert row == ("at", DAY)


def test_hypertable_legacy_form(conn: psycopg.Connection) -> None:
    conn.execute("CREATE TABLE legacy_form (at timestamptz NOT NULL, value int)")
    try:
        row = conn.execute(
            "SELECT table_name, created FROM create_hypertable('legacy_form', 'at', chunk_time_interval => INTERVAL '1 day')"
        ).fetchone()
        assert row == ("legacy_form", True)
        interval = conn.execute(
            "SELECT time_interval FROM timescaledb_information.dimensions WHERE hypertable_name = 'legacy_form'"
        ).fetchone()
        assert interval == (DAY,)
    finally:
        conn.execute("DROP TABLE legacy_form")


def test_unique_index_needs_time_column(conn: psycopg.Connection, history: sql.Identifier) -> None:
    with pytest.raises(psycopg.DatabaseError, match='without the column "at"') as raised:
        conn.execute(sql.SQL("CREATE UNIQUE INDEX ON {table} (tenant_id, transition_id)").format(table=history))
    # TimescaleDB raises it with SQLSTATE TS103, which psycopg maps to no subclass.
    assert raised.value.sqlstate == "TS103"


def test_chunks_are_one_day(conn: psycopg.Connection, history: sql.Identifier) -> None:
    insert_rows(conn, history, every_6_hours(START, days=3))
    starts = [start for start, _ in chunk_states(conn, history)]
    assert starts == [START, START + DAY, START + 2 * DAY]


# Inserts and updates


def test_unnest_insert_on_conflict_do_nothing(conn: psycopg.Connection, history: sql.Identifier) -> None:
    times = every_6_hours(START, days=1)
    assert insert_rows(conn, history, times) == 4
    assert insert_rows(conn, history, times[2:] + [START + DAY]) == 1

    rows = conn.execute(
        sql.SQL("SELECT group_key, count, details, delivered FROM {table} ORDER BY at").format(table=history)
    ).fetchall()
    assert len(rows) == 5
    assert rows[0] == ({"src": "10.0.0.0"}, 1, {"n": 0}, False)


def test_on_conflict_do_update_where(conn: psycopg.Connection) -> None:
    conn.execute("CREATE TABLE groups_upsert (group_key text PRIMARY KEY, position bigint, state jsonb)")
    upsert = """
        INSERT INTO groups_upsert AS g (group_key, position, state)
        SELECT * FROM unnest(%s::text[], %s::bigint[], %s::jsonb[])
        ON CONFLICT (group_key) DO UPDATE SET position = excluded.position, state = excluded.state
        WHERE g.position < excluded.position
    """
    try:
        conn.execute(upsert, (["a", "b"], [10, 10], [Jsonb({"v": 1}), Jsonb({"v": 1})]))
        cursor = conn.execute(upsert, (["a", "b"], [5, 20], [Jsonb({"v": 2}), Jsonb({"v": 3})]))
        assert cursor.rowcount == 1
        rows = conn.execute("SELECT group_key, position, state FROM groups_upsert ORDER BY group_key").fetchall()
        assert rows == [("a", 10, {"v": 1}), ("b", 20, {"v": 3})]
    finally:
        conn.execute("DROP TABLE groups_upsert")


def test_int_array_column(conn: psycopg.Connection) -> None:
    conn.execute("CREATE TABLE int_arrays (id int PRIMARY KEY, counts int[])")
    try:
        conn.execute("INSERT INTO int_arrays VALUES (1, %s), (2, %s)", ([3, 0, 7], []))
        rows = conn.execute("SELECT id, counts, cardinality(counts) FROM int_arrays ORDER BY id").fetchall()
        assert rows == [(1, [3, 0, 7], 3), (2, [], 0)]
    finally:
        conn.execute("DROP TABLE int_arrays")


def test_unnest_several_arrays(conn: psycopg.Connection) -> None:
    rows = conn.execute(
        "SELECT * FROM unnest(%s::text[], %s::int[], %s::jsonb[]) AS u(name, n, doc)",
        (["a", "b", "c"], [1, 2, None], [Jsonb({"k": 1}), Jsonb([1, 2]), None]),
    ).fetchall()
    assert rows == [("a", 1, {"k": 1}), ("b", 2, [1, 2]), ("c", None, None)]


def test_transaction_commit_and_rollback(conn: psycopg.Connection, history: sql.Identifier) -> None:
    with conn.transaction():
        insert_rows(conn, history, [START])
        conn.execute(sql.SQL("UPDATE {table} SET delivered = true").format(table=history))
    with pytest.raises(RuntimeError, match="abort"):
        with conn.transaction():
            insert_rows(conn, history, [START + DAY])
            raise RuntimeError("abort")

    rows = conn.execute(sql.SQL("SELECT at, delivered FROM {table}").format(table=history)).fetchall()
    assert rows == [(START, True)]


# Compression


def test_compression_settings(conn: psycopg.Connection, history: sql.Identifier) -> None:
    enable_compression(conn, history)
    rows = conn.execute(
        "SELECT segmentby, orderby FROM timescaledb_information.hypertable_compression_settings"
        " WHERE hypertable = %s::regclass",
        (regclass(conn, history),),
    ).fetchall()
    assert rows == [("tenant_id,rule_id", "at DESC")]


def test_policies_listed_in_jobs(conn: psycopg.Connection, history: sql.Identifier) -> None:
    enable_compression(conn, history)
    name = regclass(conn, history)
    conn.execute("SELECT add_compression_policy(%s, INTERVAL '1 day')", (name,))
    conn.execute("SELECT add_retention_policy(%s, INTERVAL '7 days')", (name,))

    rows = conn.execute(
        "SELECT proc_name, config->>'compress_after', config->>'drop_after', scheduled"
        " FROM timescaledb_information.jobs WHERE hypertable_name = %s ORDER BY proc_name",
        (name,),
    ).fetchall()
    assert rows == [
        ("policy_compression", "1 day", None, True),
        ("policy_retention", None, "7 days", True),
    ]


def test_compress_chunk_state(conn: psycopg.Connection, history: sql.Identifier) -> None:
    enable_compression(conn, history)
    insert_rows(conn, history, every_6_hours(START, days=2))

    compressed = conn.execute(
        "SELECT compress_chunk(c) FROM show_chunks(%s, older_than => %s) c",
        (regclass(conn, history), START + DAY),
    ).fetchall()
    assert len(compressed) == 1
    assert chunk_states(conn, history) == [(START, True), (START + DAY, False)]

    stats = conn.execute(
        "SELECT compression_status, before_compression_total_bytes > 0, after_compression_total_bytes > 0"
        " FROM chunk_compression_stats(%s) ORDER BY chunk_name",
        (regclass(conn, history),),
    ).fetchall()
    assert ("Compressed", True, True) in stats
    assert ("Uncompressed", None, None) in stats

    total = conn.execute(sql.SQL("SELECT count(*), sum(count) FROM {table}").format(table=history)).fetchone()
    assert total == (8, 36)


def test_update_in_compressed_chunk(conn: psycopg.Connection, history: sql.Identifier) -> None:
    enable_compression(conn, history)
    insert_rows(conn, history, every_6_hours(START, days=1))
    conn.execute("SELECT compress_chunk(c) FROM show_chunks(%s) c", (regclass(conn, history),))

    target = f"tr-{(START + timedelta(hours=6)).isoformat()}"
    cursor = conn.execute(
        sql.SQL("UPDATE {table} SET delivered = true WHERE tenant_id = 't1' AND transition_id = %s").format(
            table=history
        ),
        (target,),
    )
    assert cursor.rowcount == 1
    delivered = conn.execute(
        sql.SQL("SELECT transition_id FROM {table} WHERE delivered").format(table=history)
    ).fetchall()
    assert delivered == [(target,)]


def test_insert_conflict_in_compressed_chunk(conn: psycopg.Connection, history: sql.Identifier) -> None:
    enable_compression(conn, history)
    times = every_6_hours(START, days=1)
    insert_rows(conn, history, times)
    conn.execute("SELECT compress_chunk(c) FROM show_chunks(%s) c", (regclass(conn, history),))

    assert insert_rows(conn, history, times + [START + timedelta(hours=1)]) == 1
    count = conn.execute(sql.SQL("SELECT count(*) FROM {table}").format(table=history)).fetchone()
    assert count == (5,)


# Retention


def test_drop_chunks_whole_chunks(conn: psycopg.Connection, history: sql.Identifier) -> None:
    insert_rows(conn, history, every_6_hours(START, days=5))
    cutoff = START + 2 * DAY + timedelta(hours=12)

    dropped = conn.execute("SELECT drop_chunks(%s, older_than => %s)", (regclass(conn, history), cutoff)).fetchall()
    assert len(dropped) == 2

    oldest, older_than_cutoff, total = conn.execute(
        sql.SQL("SELECT min(at), count(*) FILTER (WHERE at < %s), count(*) FROM {table}").format(table=history),
        (cutoff,),
    ).fetchone() or (None, None, None)
    # The chunk that contains the cutoff stays whole, so its two rows before the cutoff remain.
    assert oldest == START + 2 * DAY
    assert older_than_cutoff == 2
    assert total == 12


def test_run_job_retention(conn: psycopg.Connection, history: sql.Identifier) -> None:
    now = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
    insert_rows(conn, history, [now - timedelta(days=days, hours=1) for days in range(12)])
    conn.execute("SELECT add_retention_policy(%s, INTERVAL '7 days')", (regclass(conn, history),))

    conn.execute("CALL run_job(%s)", (job_id(conn, history, "policy_retention"),))

    ages = conn.execute(sql.SQL("SELECT now() - at FROM {table}").format(table=history)).fetchall()
    ages_days = sorted(age.total_seconds() / 86400 for (age,) in ages)
    # Rows younger than 7 days all stay. An older row goes once its whole 1-day chunk is past the cutoff.
    assert [round(age, 3) for age in ages_days if age < 7] == [round(d + 1 / 24, 3) for d in range(7)]
    assert max(ages_days) < 8 + 1 / 24


def test_run_job_compression(conn: psycopg.Connection, history: sql.Identifier) -> None:
    enable_compression(conn, history)
    now = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
    insert_rows(conn, history, [now - timedelta(days=days) for days in range(5)])
    conn.execute("SELECT add_compression_policy(%s, INTERVAL '1 day')", (regclass(conn, history),))

    conn.execute("CALL run_job(%s)", (job_id(conn, history, "policy_compression"),))

    rows = conn.execute(
        "SELECT range_end < now() - INTERVAL '1 day', is_compressed FROM timescaledb_information.chunks"
        " WHERE hypertable_name = %s",
        (regclass(conn, history),),
    ).fetchall()
    assert len(rows) >= 5
    for old_enough, is_compressed in rows:
        assert is_compressed == old_enough


def test_background_workers_unavailable(conn: psycopg.Connection) -> None:
    # PGlite runs PostgreSQL as a single process with no postmaster, so no background worker starts
    # and policies run only through CALL run_job.
    started = conn.execute("SELECT _timescaledb_functions.start_background_workers()").fetchone()
    assert started == (False,)
    workers = conn.execute("SELECT count(*) FROM pg_stat_activity").fetchone()
    assert workers == (0,)


# Locks


def test_advisory_xact_lock(conn: psycopg.Connection) -> None:
    held_sql = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242"
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(4242)")
        assert conn.execute(held_sql).fetchone() == (1,)
    assert conn.execute(held_sql).fetchone() == (0,)


def test_try_advisory_lock_no_exclusion(timescale_url: str) -> None:
    # Every client shares the one backend, so a session lock excludes no other client, and a
    # lock that a client leaves behind stays held after it disconnects.
    held_sql = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4243"
    with connect(timescale_url) as first:
        assert first.execute("SELECT pg_try_advisory_lock(4243)").fetchone() == (True,)

    with psycopg.connect(timescale_url, autocommit=True, prepare_threshold=None) as second:
        try:
            still_held = second.execute(held_sql).fetchone()
            second_acquired = second.execute("SELECT pg_try_advisory_lock(4243)").fetchone()
        finally:
            second.execute("SELECT pg_advisory_unlock_all()")
        released = second.execute(held_sql).fetchone()
    assert still_held == (1,)
    assert second_acquired == (True,)
    assert released == (0,)


# One backend for all clients


def test_second_client_waits_for_first(timescale_url: str) -> None:
    first = connect(timescale_url)
    results: list[object] = []

    def run_second() -> None:
        try:
            with connect(timescale_url) as second:
                results.append(second.execute("SELECT 41 + 1").fetchone())
        except Exception as error:  # noqa: BLE001 - reported by the asserts below
            results.append(error)

    worker = threading.Thread(target=run_second)
    worker.start()
    worker.join(timeout=2.0)
    still_waiting = worker.is_alive()
    first.close()
    worker.join(timeout=30.0)

    assert still_waiting
    assert results == [(42,)]


def test_session_settings_carry_over(timescale_url: str) -> None:
    with psycopg.connect(timescale_url, autocommit=True) as first:
        first.execute("SET application_name = 'left-over'")
    with psycopg.connect(timescale_url, autocommit=True, application_name="second") as second:
        inherited = second.execute("SELECT current_setting('application_name')").fetchone()
        second.execute("DISCARD ALL")
        reset = second.execute("SELECT current_setting('application_name')").fetchone()
    assert inherited == ("left-over",)
    assert reset == ("",)


def test_discard_all_resets_search_path(timescale_url: str) -> None:
    with psycopg.connect(timescale_url, autocommit=True, prepare_threshold=None) as client:
        client.execute("SET search_path TO public")
        client.execute("DISCARD ALL")
        after_discard = client.execute("SHOW search_path").fetchone()
        with pytest.raises(psycopg.errors.UndefinedFunction, match="by_range"):
            client.execute("SELECT by_range('at', INTERVAL '1 day')")
        client.execute("SET search_path TO public")
        dimension = client.execute("SELECT by_range('at', INTERVAL '1 day')::text").fetchone()
    assert after_discard == ("pg_catalog",)
    assert dimension is not None
    assert "at" in dimension[0]


def test_prepared_statement_names_collide(timescale_url: str) -> None:
    # psycopg prepares a query once it has run prepare_threshold times (default 5), naming it _pg3_0.
    with psycopg.connect(timescale_url, autocommit=True) as first:
        for i in range(6):
            first.execute("SELECT %s::int + 1", (i,))
    try:
        with psycopg.connect(timescale_url, autocommit=True) as second:
            with pytest.raises(psycopg.errors.DuplicatePreparedStatement, match="_pg3_0"):
                for i in range(6):
                    second.execute("SELECT %s::int + 2", (i,))
    finally:
        with psycopg.connect(timescale_url, autocommit=True) as cleanup:
            cleanup.execute("DISCARD ALL")

    with connect(timescale_url) as third:
        values = [third.execute("SELECT %s::int + 3", (i,)).fetchone() for i in range(6)]
    assert values == [(i + 3,) for i in range(6)]


def test_unfinished_transaction_carries_over(conn: psycopg.Connection, timescale_url: str) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS abandoned (x int)")
    conn.close()

    first = psycopg.connect(timescale_url, prepare_threshold=None)
    first.execute("INSERT INTO abandoned VALUES (1)")
    first.close()  # closes the socket without COMMIT or ROLLBACK

    with psycopg.connect(timescale_url, autocommit=True, prepare_threshold=None) as second:
        seen = second.execute("SELECT count(*) FROM abandoned").fetchone()
        second.execute("ROLLBACK")
        after_rollback = second.execute("SELECT count(*) FROM abandoned").fetchone()
        second.execute("DROP TABLE abandoned")
    assert seen == (1,)
    assert after_rollback == (0,)


def test_copy_from_stdin_kills_server() -> None:
    # A server of its own, because COPY FROM STDIN ends the whole PGlite process.
    with running_pglite_server() as server:
        with psycopg.connect(server.url, autocommit=True) as setup:
            setup.execute("CREATE TABLE copied (x int)")
        with pytest.raises(psycopg.OperationalError, match="server closed the connection"):
            with psycopg.connect(server.url, autocommit=True) as client:
                with client.cursor().copy("COPY copied FROM STDIN") as copy:
                    copy.write_row((1,))
        exit_code = server.process.wait(timeout=10)
        assert exit_code != 0
        assert "RuntimeError: unreachable" in server.stderr_path.read_text()
