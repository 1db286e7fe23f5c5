"""End-to-end tests of the `alertwarden` commands, run as the installed console script."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

# Every test here starts the console script in a subprocess.
pytestmark = pytest.mark.slow

CLI = Path(sys.executable).parent / "alertwarden"
EXAMPLE_RULES = Path(__file__).resolve().parents[1] / "examples" / "ssh-rules.yaml"
RFC3339_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z")

BURST_RULES = """\
- id: burst
  match:
    field: event
    equals: login_failed
  group_by: [host]
  threshold: 3
  window: 1m
  bucket: 6s
  cooldown: 0s
"""


def run_cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLI), *args],
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def log_records(stderr: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def login_failed(second: int, host: str = "h1") -> bytes:
    record = {"ts": f"2024-03-05T10:00:{second:02d}Z", "host": host, "event": "login_failed"}
    return json.dumps(record).encode()


GOOD_LINES = [login_failed(second) for second in (1, 3, 4, 5, 7, 9, 10)]


@pytest.fixture
def burst_rules(tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(BURST_RULES)
    return path


# ------------------------------------------------------------ rules check


def test_rules_check_valid_file() -> None:
    done = run_cli("rules", "check", str(EXAMPLE_RULES))

    assert done.returncode == 0, done.stderr
    assert "rule ssh-failed-password (SSH password guessing)" in done.stdout
    assert "threshold: 5 events within 10m (bucket 1m, 10 buckets)" in done.stdout
    assert "rule ssh-invalid-user" in done.stdout
    assert done.stdout.rstrip().endswith(f"{EXAMPLE_RULES}: 2 rule(s) valid")


INVALID_RULES = [
    pytest.param(
        "- id: too-low\n  threshold: 0\n  window: 10m\n",
        ["rule 'too-low'", "field 'threshold'", "threshold 0"],
        id="threshold",
    ),
    pytest.param(
        "- id: odd-bucket\n  window: 10m\n  bucket: 7m\n",
        ["rule 'odd-bucket'", "field 'bucket'", "7m does not divide the window 10m"],
        id="bucket",
    ),
    pytest.param(
        "- id: typo\n  treshold: 5\n",
        ["rule 'typo'", "field 'treshold'", "unknown field (value 5)"],
        id="unknown-field",
    ),
    pytest.param(
        "- id: bad-regex\n  match:\n    field: message\n    regex: '(unclosed'\n",
        ["rule 'bad-regex'", "match", "(unclosed"],
        id="regex",
    ),
]


@pytest.mark.parametrize(("rules_yaml", "expected_parts"), INVALID_RULES)
def test_rules_check_invalid_file(rules_yaml: str, expected_parts: list[str], tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(rules_yaml)

    done = run_cli("rules", "check", str(path))

    assert done.returncode == 2
    assert done.stdout == ""
    assert f"{path}: rejected, no rule loaded" in done.stderr
    for part in expected_parts:
        assert part in done.stderr


def test_rules_check_reports_every_error(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("".join(param.values[0] for param in INVALID_RULES[:3]))

    done = run_cli("rules", "check", str(path))

    assert done.returncode == 2
    assert done.stdout == ""
    assert "3 errors" in done.stderr
    for name in ("too-low", "odd-bucket", "typo"):
        assert f"rule '{name}'" in done.stderr


# -------------------------------------------------------------- bad input


def test_run_skips_bad_lines(burst_rules: Path, tmp_path: Path) -> None:
    # Each bad line sits between good ones; the comment gives its 1-based line number.
    lines = [
        GOOD_LINES[0],
        b'{"ts": "2024-03-05T10:00:02Z", "host":',  # 2: malformed JSON
        GOOD_LINES[1],
        b"[1, 2, 3]",  # 4: not an object
        GOOD_LINES[2],
        b'{"ts": "yesterday", "host": "h1"}',  # 6: bad timestamp
        GOOD_LINES[3],
        b'{"ts": "2024-03-05T10:00:06Z", "host": "' + b"x" * 300 + b'"}',  # 8: oversized
        GOOD_LINES[4],
        b'{"ts": "2024-03-05T10:00:08Z", "host": "\xff\xfe"}',  # 10: invalid UTF-8
        GOOD_LINES[5],
        b'{"ts": [2024], "host": "h1"}',  # 12: wrong type of ts
        GOOD_LINES[6],
    ]
    input_path = tmp_path / "events.jsonl"
    input_path.write_bytes(b"\n".join(lines) + b"\n")

    done = run_cli(
        "run",
        "--rules", str(burst_rules),
        "--input", str(input_path),
        "--state", str(tmp_path / "state.sqlite"),
        "--max-line-bytes", "200",
        "--output", "jsonl",
        "--log-format", "json",
    )

    assert done.returncode == 0, done.stderr
    records = log_records(done.stderr)
    skipped = {r["reason"]: r for r in records if r["event"] == "record_skipped"}
    expected_lines = {
        "malformed": 2,
        "not_an_object": 4,
        "bad_timestamp": 6,
        "oversized": 8,
        "invalid_utf8": 10,
        "wrong_type": 12,
    }
    assert {reason: r["line"] for reason, r in skipped.items()} == expected_lines
    assert "yesterday" in str(skipped["bad_timestamp"]["error"])
    assert "over the limit of 200 bytes" in str(skipped["oversized"]["error"])
    assert "0xff" in str(skipped["invalid_utf8"]["error"])
    finished = [r for r in records if r["event"] == "run_finished"]
    assert len(finished) == 1
    assert finished[0]["lines"] == 13
    assert finished[0]["events"] == 7
    transitions = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(t["at"], t["kind"], t["count"]) for t in transitions] == [
        ("2024-03-05T10:00:04Z", "fired", 3)
    ]


# ------------------------------------------------------------------ stdin


def test_run_stdin_event_clock(burst_rules: Path, tmp_path: Path) -> None:
    # Two hosts. h2 has events at :20 :25 :30, so its count reaches 3 only at 10:00:30.
    lines = [*GOOD_LINES, login_failed(20, "h2"), login_failed(25, "h2"), login_failed(30, "h2")]

    done = run_cli(
        "run",
        "--rules", str(burst_rules),
        "--input", "-",
        "--clock", "event",
        "--state", str(tmp_path / "state.sqlite"),
        "--output", "jsonl",
        stdin=b"\n".join(lines) + b"\n",
    )

    assert done.returncode == 0, done.stderr
    transitions = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(t["at"], t["group"], t["kind"], t["count"]) for t in transitions] == [
        ("2024-03-05T10:00:04Z", {"host": "h1"}, "fired", 3),
        ("2024-03-05T10:00:30Z", {"host": "h2"}, "fired", 3),
    ]


def test_run_jsonl_object_fields(burst_rules: Path, tmp_path: Path) -> None:
    # The 10:01:30 event moves the clock over the 6 s boundaries. At 10:01:00 the window
    # (buckets 10:00:06 .. 10:01:00) still contains h1's events at :07 :09 :10. At 10:01:06 it
    # is empty, so h1 recovers there with count 0.
    lines = [*GOOD_LINES, login_failed(10, "h2")]
    lines.append(json.dumps({"ts": "2024-03-05T10:01:30Z", "host": "h2", "event": "x"}).encode())
    input_path = tmp_path / "events.jsonl"
    input_path.write_bytes(b"\n".join(lines) + b"\n")

    done = run_cli(
        "run",
        "--rules", str(burst_rules),
        "--input", str(input_path),
        "--state", str(tmp_path / "state.sqlite"),
        "--output", "jsonl",
    )

    assert done.returncode == 0, done.stderr
    transitions = [json.loads(line) for line in done.stdout.splitlines()]
    assert [t["kind"] for t in transitions] == ["fired", "recovered"]
    for transition in transitions:
        assert RFC3339_UTC.fullmatch(transition["at"]), transition["at"]
        assert transition["rule"] == "burst"
        assert transition["group"] == {"host": "h1"}
        assert isinstance(transition["count"], int)
        assert re.fullmatch(r"[0-9a-f]{32}", transition["id"])
    assert transitions[0]["at"] == "2024-03-05T10:00:04Z"
    assert transitions[1]["at"] == "2024-03-05T10:01:06Z"
    assert transitions[1]["count"] == 0


# ---------------------------------------------------------------- backtest


def test_backtest_prints_summary(burst_rules: Path, tmp_path: Path) -> None:
    input_path = tmp_path / "events.jsonl"
    input_path.write_bytes(b"\n".join([*GOOD_LINES, b"not json"]) + b"\n")

    done = run_cli(
        "backtest", "--rules", str(burst_rules), "--input", str(input_path), "--format", "json"
    )

    assert done.returncode == 0, done.stderr
    assert "2024-03-05T10:00:04Z FIRED" in done.stdout
    assert "backtest summary" in done.stdout
    row = next(line for line in done.stdout.splitlines() if line.startswith("│ burst"))
    cells = [cell.strip() for cell in row.strip("│ ").split("│")]
    assert cells[:5] == ["burst", "7", "1", "1", "1"]
    assert "skipped input records: malformed=1" in done.stdout
    assert not list(tmp_path.glob("*.sqlite")), "backtest must not write a state file"


# ----------------------------------------------------------------- webhook


@dataclass
class Received:
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture
def webhook_server() -> Iterator[tuple[str, Received]]:
    received = Received()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with received.lock:
                received.requests.append((self.path, dict(self.headers.items()), body))
            self.send_response(202)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_run_webhook_posts_json(
    burst_rules: Path, tmp_path: Path, webhook_server: tuple[str, Received]
) -> None:
    url, received = webhook_server
    lines = [*GOOD_LINES, login_failed(20, "h2"), login_failed(25, "h2"), login_failed(30, "h2")]
    input_path = tmp_path / "events.jsonl"
    input_path.write_bytes(b"\n".join(lines) + b"\n")

    done = run_cli(
        "run",
        "--rules", str(burst_rules),
        "--input", str(input_path),
        "--state", str(tmp_path / "state.sqlite"),
        "--output", "jsonl",
        "--webhook", url,
    )

    assert done.returncode == 0, done.stderr
    stdout_objects = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(stdout_objects) == 2
    assert len(received.requests) == 2
    for (path, headers, body), printed in zip(received.requests, stdout_objects):
        posted = json.loads(body)
        lower_headers = {name.lower(): value for name, value in headers.items()}
        assert path == "/hook"
        assert lower_headers["content-type"].startswith("application/json")
        assert lower_headers["idempotency-key"] == posted["id"]
        assert posted == printed
    assert [json.loads(body)["group"] for _, _, body in received.requests] == [
        {"host": "h1"},
        {"host": "h2"},
    ]


# ----------------------------------------------------------- option errors


def test_run_unknown_format(burst_rules: Path, tmp_path: Path) -> None:
    input_path = tmp_path / "events.jsonl"
    input_path.write_bytes(GOOD_LINES[0] + b"\n")

    done = run_cli(
        "run",
        "--rules", str(burst_rules),
        "--input", str(input_path),
        "--state", str(tmp_path / "state.sqlite"),
        "--format", "xml",
    )

    assert done.returncode == 2
    assert done.stdout == ""
    assert "invalid --format 'xml'" in done.stderr
    assert "auto, json, otel, ocsf, syslog, regex" in done.stderr


def test_run_missing_input_file(burst_rules: Path, tmp_path: Path) -> None:
    missing = tmp_path / "absent.jsonl"
    state = tmp_path / "state.sqlite"

    done = run_cli(
        "run", "--rules", str(burst_rules), "--input", str(missing), "--state", str(state)
    )

    assert done.returncode == 2
    assert done.stdout == ""
    assert "not found" in done.stderr
    assert "--input" in done.stderr
    assert str(missing) in done.stderr
    assert not state.exists()


def test_run_missing_rules_file(tmp_path: Path) -> None:
    missing = tmp_path / "absent.yaml"
    input_path = tmp_path / "events.jsonl"
    input_path.write_bytes(GOOD_LINES[0] + b"\n")

    state = tmp_path / "state.sqlite"

    done = run_cli("run", "--rules", str(missing), "--input", str(input_path), "--state", str(state))

    assert done.returncode == 2
    assert done.stdout == ""
    assert f"{missing}: cannot read the file: No such file or directory" in done.stderr


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--output", "xml", "invalid --output 'xml': use text or jsonl"),
        ("--clock", "sundial", "invalid --clock 'sundial': use event or wall"),
        ("--year", "99999", "invalid --year 99999"),
        (
            "--tenant", "café",
            "invalid --tenant 'café': use 1-64 ASCII letters, digits, '_' or '-', starting with a"
            " letter or digit",
        ),
    ],
)
def test_run_invalid_option(
    option: str, value: str, message: str, burst_rules: Path, tmp_path: Path
) -> None:
    input_path = tmp_path / "events.jsonl"
    input_path.write_bytes(GOOD_LINES[0] + b"\n")

    done = run_cli(
        "run",
        "--rules", str(burst_rules),
        "--input", str(input_path),
        "--state", str(tmp_path / "state.sqlite"),
        option, value,
    )

    assert done.returncode == 2
    assert done.stdout == ""
    assert message in done.stderr


def test_help_reflows_paragraphs() -> None:
    # A wide terminal fits each paragraph of `serve --help` on one line, so a sentence that was
    # wrapped in the docstring must come out whole.
    result = subprocess.run(
        [str(CLI), "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"COLUMNS": "300", "PATH": "/usr/bin:/bin", "NO_COLOR": "1"},
    )
    assert result.returncode == 0, result.stderr
    lines = [line.strip() for line in result.stdout.splitlines()]
    settings_line = next(line for line in lines if line.startswith("Settings come from"))
    assert "With none set it uses PostgreSQL at 127.0.0.1:5432" in settings_line
    assert settings_line.endswith("listens on 127.0.0.1:8080.")
