"""Rule files on the command line: repeated --rules and several files for `rules check`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CLI = Path(sys.executable).parent / "alertwarden"

BURST_RULE = """\
- id: {rule_id}
  match: {{field: event, equals: {event}}}
  group_by: [host]
  threshold: 2
  window: 1m
  cooldown: 0s
"""


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLI), *args], capture_output=True, text=True, timeout=60, check=False)


def rule_file(tmp_path: Path, name: str, rule_id: str, event: str) -> Path:
    path = tmp_path / name
    path.write_text(BURST_RULE.format(rule_id=rule_id, event=event))
    return path


def events_file(tmp_path: Path) -> Path:
    records = [
        {"ts": f"2024-03-05T10:00:0{second}Z", "host": "h1", "event": event}
        for second, event in enumerate(["login_failed", "login_failed", "disk_full", "disk_full"])
    ]
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def test_backtest_repeated_rules_loads_all(tmp_path: Path) -> None:
    logins = rule_file(tmp_path, "logins.yaml", "logins", "login_failed")
    disks = rule_file(tmp_path, "disks.yaml", "disks", "disk_full")

    done = run_cli(
        "backtest", "--rules", str(logins), "--rules", str(disks),
        "--input", str(events_file(tmp_path)), "--format", "json", "--output", "jsonl",
    )

    assert done.returncode == 0, done.stderr
    fired = [json.loads(line)["rule"] for line in done.stdout.splitlines()]
    assert fired == ["logins", "disks"]


def test_run_duplicate_id_across_files(tmp_path: Path) -> None:
    first = rule_file(tmp_path, "first.yaml", "same", "login_failed")
    second = rule_file(tmp_path, "second.yaml", "same", "disk_full")
    state = tmp_path / "state.db"

    done = run_cli(
        "run", "--rules", str(first), "--rules", str(second),
        "--input", str(events_file(tmp_path)), "--format", "json", "--state", str(state),
    )

    assert done.returncode == 2
    assert done.stdout == ""
    assert f"{second}: rule 'same' field 'id': duplicate id 'same', already used in {first}" in done.stderr


def test_rules_check_several_files(tmp_path: Path) -> None:
    logins = rule_file(tmp_path, "logins.yaml", "logins", "login_failed")
    disks = rule_file(tmp_path, "disks.yaml", "disks", "disk_full")

    done = run_cli("rules", "check", str(logins), str(disks))

    assert done.returncode == 0, done.stderr
    assert "rule logins" in done.stdout
    assert "rule disks" in done.stdout
    assert done.stdout.rstrip().endswith(f"{logins}, {disks}: 2 rule(s) valid")


def test_rules_check_bad_file_rejects_all(tmp_path: Path) -> None:
    good = rule_file(tmp_path, "good.yaml", "good", "login_failed")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- id: bad\n  threshold: 0\n")

    done = run_cli("rules", "check", str(good), str(bad))

    assert done.returncode == 2
    assert done.stdout == ""
    assert f"{bad}: rejected, no rule loaded: 1 error" in done.stderr
    assert str(good) not in done.stderr
