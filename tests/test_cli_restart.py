"""End-to-end restart tests: `alertwarden run` killed with SIGKILL and started again.

Each test runs the installed console script in a subprocess, so the process really dies between
two store commits, or between a write to stdout and the commit that marks it delivered. Every
test runs with a SQLite file (--state) and with a migrated PostgreSQL database (--database).
"""

from __future__ import annotations

import enum
import json
import math
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import LiteralString, Protocol

import psycopg
import pytest

pytestmark = pytest.mark.slow

CLI = Path(sys.executable).parent / "alertwarden"
START_S = datetime(2024, 6, 1, tzinfo=UTC).timestamp()
DAY_S = 86400
HOSTS = ("web-1", "web-2", "web-3", "db-1", "db-2", "mail", "vpn", "git")
USERS = ("root", "admin", "deploy", "oracle")

# Two rule groups, so that each restart resumes two pipelines from two checkpoints. Cooldown and
# renotify are a few buckets long, so bursts of a few minutes produce every kind of transition.
RULES_YAML = """\
- id: failed-login-burst
  match:
    field: event
    equals: login_failed
  group_by: [host]
  threshold: 6
  window: 5m
  bucket: 1m
  cooldown: 4m
  renotify: 2m
- id: user-guessing
  group: auth
  match:
    field: event
    equals: login_failed
  group_by: [user]
  threshold: 12
  window: 3m
  bucket: 30s
  cooldown: 3m
  renotify: 90s
"""


# ------------------------------------------------------------------ input


def make_event(time_s: float, host: str, event: str, rng: random.Random) -> dict[str, object]:
    stamp = datetime.fromtimestamp(time_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    return {"ts": stamp, "host": host, "event": event, "user": rng.choice(USERS), "port": 22}


def host_events(
    host: str, start_s: float, end_s: float, rng: random.Random
) -> list[tuple[float, str]]:
    """Alternate bursts (several failed logins a minute) and quiet spells for one host."""
    events: list[tuple[float, str]] = []
    time_s = start_s + rng.uniform(0, 600)
    while time_s < end_s:
        burst_s = rng.uniform(60, 540)
        rate_per_s = rng.uniform(1.2, 4.0) / 60
        burst_end_s = time_s + burst_s
        while time_s < burst_end_s:
            events.append((time_s, "login_failed"))
            time_s += rng.expovariate(rate_per_s)
        quiet_end_s = time_s + rng.uniform(30, 900)
        while time_s < quiet_end_s:
            events.append((time_s, "login_ok"))
            time_s += rng.expovariate(0.2 / 60)
    return events


def write_bursty_input(path: Path, seed: int, start_s: float, hours: float) -> int:
    """Write a seeded JSON-lines input in event-time order; return the number of lines."""
    rng = random.Random(seed)
    end_s = start_s + hours * 3600
    timeline = []
    for host in HOSTS:
        events = host_events(host, start_s, end_s, rng)
        timeline.extend((time_s, host, event) for time_s, event in events)
    timeline.sort()
    with path.open("w", encoding="utf-8") as handle:
        for time_s, host, event in timeline:
            handle.write(json.dumps(make_event(time_s, host, event, rng)) + "\n")
    return len(timeline)


# ---------------------------------------------------------------- process


def run_command(rules: Path, input_path: Path, state: RunState) -> list[str]:
    return [
        str(CLI),
        "run",
        "--rules",
        str(rules),
        "--input",
        str(input_path),
        *state.cli_args(),
        "--output",
        "jsonl",
        "--log-format",
        "json",
    ]


@dataclass
class RunOutput:
    stdout_lines: list[str]
    stderr: str
    returncode: int
    killed: bool


def run_to_end(command: list[str]) -> RunOutput:
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    return RunOutput(done.stdout.splitlines(), done.stderr, done.returncode, killed=False)


def run_and_kill(
    command: list[str], stderr_path: Path, kill_after_lines: int, delay_s: float
) -> RunOutput:
    """Start `command`, SIGKILL it after `kill_after_lines` lines of stdout (or after `delay_s`
    when that is 0), and return every complete line it wrote before dying."""
    with stderr_path.open("w") as stderr_file:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr_file)
        assert process.stdout is not None
        lines: list[bytes] = []
        if kill_after_lines == 0:
            time.sleep(delay_s)
        else:
            while len(lines) < kill_after_lines:
                line = process.stdout.readline()
                if not line:
                    break
                lines.append(line)
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        rest = process.stdout.read()
        process.stdout.close()
        returncode = process.wait(timeout=30)
    # The process may have finished just before the kill, so its exit status decides.
    killed = returncode == -signal.SIGKILL
    lines.extend(rest.splitlines(keepends=True))
    # The sink flushes each line with one write() of a few hundred bytes, below PIPE_BUF (4096
    # bytes on Linux), and a pipe takes such a write whole, so a kill cannot cut a line.
    assert all(line.endswith(b"\n") for line in lines), "a stdout line was cut by the kill"
    text_lines = [line.decode().rstrip("\n") for line in lines]
    return RunOutput(text_lines, stderr_path.read_text(), returncode, killed=killed)


# ------------------------------------------------------------------ store


def open_read_only(state: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{state}?mode=ro", uri=True)


def history_rows(state: Path) -> list[tuple[float, str, str, str, int]]:
    with open_read_only(state) as conn:
        rows = conn.execute("SELECT at, rule_id, group_json, kind, count FROM history").fetchall()
    conn.close()
    return sorted(rows)


def history_transition_ids(state: Path) -> list[str]:
    conn = open_read_only(state)
    rows = conn.execute("SELECT transition_id FROM history").fetchall()
    conn.close()
    return [row[0] for row in rows]


def undelivered_ids(state: Path) -> set[str]:
    if not state.exists():
        return set()
    conn = open_read_only(state)
    try:
        rows = conn.execute("SELECT transition_id FROM history WHERE delivered = 0").fetchall()
    except sqlite3.OperationalError:
        rows = []  # killed before the schema was created
    conn.close()
    return {row[0] for row in rows}


class StoreKind(enum.StrEnum):
    SQLITE = "sqlite"
    POSTGRES = "postgres"


HistoryRow = tuple[float, str, str, str, int]


class RunState(Protocol):
    """The state of `alertwarden run` as the tests pass it and read it back."""

    def cli_args(self) -> list[str]: ...

    def history_rows(self) -> list[HistoryRow]: ...

    def transition_ids(self) -> list[str]: ...

    def undelivered_ids(self) -> set[str]: ...


@dataclass(frozen=True)
class SQLiteState:
    path: Path

    def cli_args(self) -> list[str]:
        return ["--state", str(self.path)]

    def history_rows(self) -> list[HistoryRow]:
        return history_rows(self.path)

    def transition_ids(self) -> list[str]:
        return history_transition_ids(self.path)

    def undelivered_ids(self) -> set[str]:
        return undelivered_ids(self.path)


@dataclass(frozen=True)
class PostgresState:
    """A database prepared by `alertwarden migrate`, with its history in evaluation_history."""

    url: str

    def cli_args(self) -> list[str]:
        return ["--database", self.url]

    def _fetch(self, query: LiteralString) -> list[tuple]:
        with psycopg.connect(self.url, connect_timeout=5) as conn:
            return conn.execute(query).fetchall()

    def history_rows(self) -> list[HistoryRow]:
        # jsonb prints its keys in one canonical order, so the group text compares as a value.
        rows = self._fetch(
            "SELECT at_s, rule_id, group_key::text, kind, count FROM evaluation_history"
        )
        return sorted(rows)

    def transition_ids(self) -> list[str]:
        return [row[0] for row in self._fetch("SELECT transition_id FROM evaluation_history")]

    def undelivered_ids(self) -> set[str]:
        rows = self._fetch("SELECT transition_id FROM evaluation_history WHERE NOT delivered")
        return {row[0] for row in rows}


def input_start_s(store_kind: StoreKind) -> float:
    """Return the time that the generated inputs for `store_kind` start from.

    The PostgreSQL store drops history day partitions older than its 7-day retention by the
    wall clock, so its inputs start at midnight UTC two days ago. SQLite prunes by the event
    clock, so its inputs keep a fixed date.
    """
    if store_kind is StoreKind.SQLITE:
        return START_S
    return float((math.floor(time.time() / DAY_S) - 2) * DAY_S)


def new_state(store_kind: StoreKind, directory: Path, new_database: Callable[[], str]) -> RunState:
    if store_kind is StoreKind.SQLITE:
        return SQLiteState(directory / "state.sqlite")
    return PostgresState(new_database())


def by_id(lines: list[str]) -> dict[str, dict[str, object]]:
    return {obj["id"]: obj for obj in map(json.loads, lines)}


def run_finished(stderr: str) -> dict[str, object]:
    for line in stderr.splitlines():
        record = json.loads(line)
        if record.get("event") == "run_finished":
            return record
    raise AssertionError(f"no run_finished log line in stderr:\n{stderr}")


# ------------------------------------------------------------------ tests


@pytest.fixture(params=list(StoreKind), ids=str)
def store_kind(request: pytest.FixtureRequest) -> StoreKind:
    return request.param


@pytest.fixture
def state(store_kind: StoreKind, tmp_path: Path, request: pytest.FixtureRequest) -> RunState:
    """A new, empty state for one test: a SQLite file or a migrated database."""
    # The PostgreSQL fixture is looked up only when used, so the SQLite variants need no server.
    return new_state(store_kind, tmp_path, lambda: request.getfixturevalue("pg_migrated_url"))


@pytest.fixture(scope="module")
def bursty_inputs() -> dict[StoreKind, tuple[Path, Path]]:
    """Rules and input per store kind, written by the first test that needs them."""
    return {}


@pytest.fixture(scope="module")
def references() -> dict[StoreKind, tuple[RunOutput, RunState]]:
    """Uninterrupted runs per store kind, made by the first test that needs them."""
    # A cache and not a module fixture with params, because the SIGKILL test sets store_kind
    # together with its seed, and pytest would run a module fixture again for those parameters.
    return {}


@pytest.fixture
def bursty_input(
    store_kind: StoreKind,
    bursty_inputs: dict[StoreKind, tuple[Path, Path]],
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, Path]:
    if store_kind not in bursty_inputs:
        directory = tmp_path_factory.mktemp("bursty")
        rules = directory / "rules.yaml"
        rules.write_text(RULES_YAML)
        input_path = directory / "events.jsonl"
        write_bursty_input(input_path, seed=20240601, start_s=input_start_s(store_kind), hours=6)
        bursty_inputs[store_kind] = rules, input_path
    return bursty_inputs[store_kind]


@pytest.fixture
def reference(
    store_kind: StoreKind,
    bursty_input: tuple[Path, Path],
    references: dict[StoreKind, tuple[RunOutput, RunState]],
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> tuple[RunOutput, RunState]:
    if store_kind not in references:
        rules, input_path = bursty_input
        state = new_state(
            store_kind,
            tmp_path_factory.mktemp("reference"),
            lambda: request.getfixturevalue("pg_migrated_database_factory")(),
        )
        output = run_to_end(run_command(rules, input_path, state))
        assert output.returncode == 0, output.stderr
        references[store_kind] = output, state
    return references[store_kind]


def test_reference_covers_every_kind(reference: tuple[RunOutput, RunState]) -> None:
    output, state = reference
    kinds = Counter(obj["kind"] for obj in map(json.loads, output.stdout_lines))
    for kind in ("fired", "recovered", "cooldown_hit", "renotified"):
        assert kinds[kind] >= 10, f"only {kinds[kind]} {kind} transitions: {kinds}"
    assert len(state.history_rows()) == len(output.stdout_lines)


# One PostgreSQL seed keeps the run time moderate. Its run still kills the process up to 6 times
# and asserts at least 5 kills, like the SQLite runs.
@pytest.mark.parametrize(
    ("store_kind", "seed"),
    [(StoreKind.SQLITE, 1), (StoreKind.SQLITE, 2), (StoreKind.POSTGRES, 1)],
    ids=["sqlite-1", "sqlite-2", "postgres-1"],
)
def test_sigkill_restarts_match_reference(
    seed: int,
    bursty_input: tuple[Path, Path],
    reference: tuple[RunOutput, RunState],
    state: RunState,
    tmp_path: Path,
) -> None:
    rules, input_path = bursty_input
    reference_output, reference_state = reference
    reference_by_id = by_id(reference_output.stdout_lines)
    total_transitions = len(reference_output.stdout_lines)
    command = run_command(rules, input_path, state)
    rng = random.Random(seed)

    seen: dict[str, dict[str, object]] = {}
    undelivered_at_last_kill: set[str] = set()
    kills = 0
    runs = 0
    while True:
        runs += 1
        assert runs < 40, "the crash run never finished"
        remaining = total_transitions - len(seen)
        if kills < 6:
            # Killing after at most a third of the transitions still to come leaves work for
            # the next round, so every round really kills. Kills by time land in the start-up,
            # restore and redelivery, and run only while half the transitions are still to come.
            by_time = remaining > total_transitions // 2 and rng.random() < 0.4
            kill_after_lines = 0 if by_time else rng.randint(1, max(1, remaining // 3))
            delay_s = rng.uniform(0.05, 0.3)
            output = run_and_kill(command, tmp_path / f"stderr-{runs}.log", kill_after_lines, delay_s)
        else:
            output = run_to_end(command)
        undelivered_now = state.undelivered_ids() if output.killed else set()

        printed = [json.loads(line) for line in output.stdout_lines]
        assert len({obj["id"] for obj in printed}) == len(printed), "one run printed an id twice"
        # A repeat is a redelivery from the outbox: stored, printed, not yet marked delivered
        # when the process died. The pipeline marks each transition right after sending it, so
        # one kill leaves at most one such row.
        repeats = [obj for obj in printed if obj["id"] in seen]
        for obj in repeats:
            assert obj == seen[obj["id"]], "a redelivery differs from the first delivery"
            assert obj["id"] in undelivered_at_last_kill, f"repeat of a delivered transition: {obj}"
        assert len(repeats) <= len(undelivered_at_last_kill)
        assert len(repeats) <= 1, f"one kill caused {len(repeats)} repeats"
        for obj in printed:
            seen.setdefault(obj["id"], obj)

        if not output.killed:
            assert output.returncode == 0, output.stderr
            break
        kills += 1
        undelivered_at_last_kill = undelivered_now

    assert kills >= 5
    assert state.history_rows() == reference_state.history_rows()
    ids = state.transition_ids()
    assert len(ids) == len(set(ids))
    assert state.undelivered_ids() == set()
    assert seen.keys() == reference_by_id.keys()
    for transition_id, obj in reference_by_id.items():
        assert seen[transition_id] == obj


def test_appended_input_emits_only_new(
    bursty_input: tuple[Path, Path],
    reference: tuple[RunOutput, RunState],
    state: RunState,
    tmp_path: Path,
) -> None:
    rules, full_input = bursty_input
    reference_output, _ = reference
    lines = full_input.read_bytes().splitlines(keepends=True)
    growing = tmp_path / "events.jsonl"
    growing.write_bytes(b"".join(lines[: len(lines) // 2]))
    command = run_command(rules, growing, state)

    first = run_to_end(command)
    assert first.returncode == 0, first.stderr
    with growing.open("ab") as handle:
        handle.write(b"".join(lines[len(lines) // 2 :]))
    second = run_to_end(command)
    assert second.returncode == 0, second.stderr

    first_ids = by_id(first.stdout_lines).keys()
    second_ids = by_id(second.stdout_lines).keys()
    assert first.stdout_lines
    assert second.stdout_lines
    assert not first_ids & second_ids
    # Transitions at one instant come in no particular order, so compare as sorted lists.
    assert sorted(first.stdout_lines + second.stdout_lines) == sorted(reference_output.stdout_lines)
    assert run_finished(second.stderr)["lines"] == len(lines) - len(lines) // 2
    assert "checkpoint_discarded" not in second.stderr


def write_jsonl(path: Path, start_s: float, count: int, host: str) -> None:
    rng = random.Random(count)
    with path.open("w", encoding="utf-8") as handle:
        for index in range(count):
            event = make_event(start_s + 5 * index, host, "login_failed", rng)
            handle.write(json.dumps(event) + "\n")


def test_replaced_input_read_from_start(
    store_kind: StoreKind, bursty_input: tuple[Path, Path], state: RunState, tmp_path: Path
) -> None:
    rules, _ = bursty_input
    start_s = input_start_s(store_kind)
    input_path = tmp_path / "events.jsonl"
    write_jsonl(input_path, start_s, 40, "web-1")
    command = run_command(rules, input_path, state)
    first = run_to_end(command)
    assert first.returncode == 0, first.stderr

    replacement = tmp_path / "events.jsonl.new"
    write_jsonl(replacement, start_s + 3600, 60, "db-1")
    old_inode = input_path.stat().st_ino
    os.replace(replacement, input_path)
    assert input_path.stat().st_ino != old_inode
    second = run_to_end(command)

    assert second.returncode == 0, second.stderr
    assert "checkpoint_discarded" in second.stderr
    assert "was replaced" in second.stderr
    assert run_finished(second.stderr)["lines"] == 60
    hosts = {obj["group"].get("host") for obj in map(json.loads, second.stdout_lines)}
    assert "db-1" in hosts


def test_truncated_input_read_from_start(
    store_kind: StoreKind, bursty_input: tuple[Path, Path], state: RunState, tmp_path: Path
) -> None:
    rules, _ = bursty_input
    start_s = input_start_s(store_kind)
    input_path = tmp_path / "events.jsonl"
    write_jsonl(input_path, start_s, 80, "web-1")
    command = run_command(rules, input_path, state)
    first = run_to_end(command)
    assert first.returncode == 0, first.stderr

    inode = input_path.stat().st_ino
    write_jsonl(input_path, start_s + 3600, 30, "db-2")  # same inode, shorter content
    assert input_path.stat().st_ino == inode
    second = run_to_end(command)

    assert second.returncode == 0, second.stderr
    assert "checkpoint_discarded" in second.stderr
    assert "was truncated" in second.stderr
    assert run_finished(second.stderr)["lines"] == 30
    hosts = {obj["group"].get("host") for obj in map(json.loads, second.stdout_lines)}
    assert "db-2" in hosts
