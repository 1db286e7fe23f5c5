"""`alertwarden backtest` on real sshd logs, with the expected transitions computed by hand.

Input: examples/OpenSSH_2k.log, the OpenSSH sample of the loghub collection (loghub,
OpenSSH_2k.log): 2,000 syslog lines of one host, Dec 10 06:55:46 to 11:04:45, no year.
With --year 2024 and the default time zone UTC, "Dec 10 08:24:35" is 2024-12-10T08:24:35Z.

The rule counts "Failed password" lines per source address: threshold 5, window 10m, bucket 1m,
so N = 10 buckets. At an event the window is the minutes (m - 9) .. m of the event's minute m.
At a bucket boundary B (hh:mm:00) it is the minutes B - 9 .. B, and minute B is still empty
then, so only the nine minutes before B count. That is why a group can recover less than ten
minutes after its oldest event.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

# Every test here starts the console script in a subprocess.
pytestmark = pytest.mark.slow

CLI = Path(sys.executable).parent / "alertwarden"
LOG_PATH = Path(__file__).resolve().parents[1] / "examples" / "OpenSSH_2k.log"

RULES_YAML = r"""
- id: ssh-failed-password
  match:
    all:
      - field: app
        equals: sshd
      - field: message
        regex: 'Failed password for (?:invalid user )?(?P<user>.*?) from (?P<src_ip>[0-9a-fA-F.:]+) port'
  group_by: [src_ip]
  threshold: 5
  window: 10m
  bucket: 1m
  cooldown: 5m
  renotify: 0s
"""

Expected = list[tuple[str, str, int]]

# 5.188.10.180 (18 lines, 189-262): fires, then recovers with a count above 0.
# Minute counts: 08:24 -> 3 (:35 :45 :52), 08:25 -> 11 (:08 :11 :15 :18 :21 :28 :32 :35 :38
# :41 :50), 08:26 -> 4 (:00 :03 :12 :24). The 5th line, 08:25:11, makes the count 5: fired.
# Boundary 08:34:00 counts 08:25..08:34 = 11 + 4 = 15. Boundary 08:35:00 counts 08:26..08:35 = 4,
# below 5: recovered with count 4.
EXPECTED_5_188_10_180: Expected = [
    ("2024-12-10T08:25:11Z", "fired", 5),
    ("2024-12-10T08:35:00Z", "recovered", 4),
]

# 60.2.12.12 (5 lines, 972-984): the bucket boundary case.
# 10:04:54 and 10:04:56 fall in bucket 10:04; 10:05:03, :10 and :22 in bucket 10:05. The 5th
# line, 10:05:22, makes the count 5: fired. Boundary 10:14:00 counts 10:05..10:14 = 3, so it
# recovers with count 3 although the 10:04:54 line is only 9 min 6 s old. A sliding 600 s
# window would keep 5 until 10:14:54.
EXPECTED_60_2_12_12: Expected = [
    ("2024-12-10T10:05:22Z", "fired", 5),
    ("2024-12-10T10:14:00Z", "recovered", 3),
]

# 103.99.0.122 (46 lines): fires twice.
# First burst, lines 346-515: 09:11 -> 13 lines (:21 :25 :28 :31 :34 ...), 09:12 -> 17 lines.
# The 5th line, 09:11:34, fires. Boundary 09:21:00 counts 09:12..09:21 = 17; boundary 09:22:00
# counts 09:13..09:22 = 0: recovered with count 0. The empty group is then forgotten.
# Second burst, lines 1847-2000: 11:03:39 :43 :48 :52 :56, so the 5th line, 11:03:56, fires
# again. The last notification (09:11:34) is 112 min back, past the 5 min cooldown. The log
# ends at 11:04:45 with the group still firing, so no second recovery.
EXPECTED_103_99_0_122: Expected = [
    ("2024-12-10T09:11:34Z", "fired", 5),
    ("2024-12-10T09:22:00Z", "recovered", 0),
    ("2024-12-10T11:03:56Z", "fired", 5),
]

# 185.190.58.151 (17 lines, 304-531): an old line that drops out at a boundary.
# Minute counts: 09:07 -> 1 (:58), 09:08 -> 3 (:40 :47 :54), 09:09 -> 2 (:42 :56), 09:10 -> 3,
# 09:11 -> 5, 09:12 -> 3. The 5th line, 09:09:42, fires. Boundaries: 09:17:00 counts 09:08..09:17
# = 16 (the 09:07:58 line has left, 9 min 2 s after it), 09:18 -> 13, 09:19 -> 11, 09:20 -> 8,
# 09:21:00 counts 09:12..09:21 = 3: recovered with count 3.
EXPECTED_185_190_58_151: Expected = [
    ("2024-12-10T09:09:42Z", "fired", 5),
    ("2024-12-10T09:21:00Z", "recovered", 3),
]


@pytest.fixture(scope="module")
def backtest(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, object]], str]:
    rules = tmp_path_factory.mktemp("openssh") / "rules.yaml"
    rules.write_text(RULES_YAML)
    command = [
        str(CLI),
        "backtest",
        "--rules",
        str(rules),
        "--input",
        str(LOG_PATH),
        "--output",
        "jsonl",
        "--year",
        "2024",
    ]
    # rich sizes the summary table to COLUMNS, and at 200 columns no cell is cut or wrapped.
    environment = {**os.environ, "COLUMNS": "200"}
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=60, check=False, env=environment
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()], done.stderr


def transitions_of(transitions: list[dict[str, object]], src_ip: str) -> Expected:
    return [
        (str(t["at"]), str(t["kind"]), int(t["count"]))  # type: ignore[call-overload]
        for t in transitions
        if t["group"] == {"src_ip": src_ip}
    ]


@pytest.mark.parametrize(
    ("src_ip", "expected"),
    [
        ("5.188.10.180", EXPECTED_5_188_10_180),
        ("60.2.12.12", EXPECTED_60_2_12_12),
        ("103.99.0.122", EXPECTED_103_99_0_122),
        ("185.190.58.151", EXPECTED_185_190_58_151),
    ],
)
def test_openssh_source_by_hand(
    backtest: tuple[list[dict[str, object]], str], src_ip: str, expected: Expected
) -> None:
    transitions, _ = backtest
    assert transitions_of(transitions, src_ip) == expected


def test_openssh_totals(backtest: tuple[list[dict[str, object]], str]) -> None:
    transitions, _ = backtest
    kinds = Counter(t["kind"] for t in transitions)
    sources = {t["group"]["src_ip"] for t in transitions}  # type: ignore[index]
    assert len(transitions) == 18
    assert kinds["fired"] == 10
    assert kinds["recovered"] == 8
    assert kinds["cooldown_hit"] == 0
    assert kinds["renotified"] == 0
    # 103.99.0.122 fires twice, so 10 fires come from 9 addresses.
    assert len(sources) == 9


def test_openssh_every_transition_shape(backtest: tuple[list[dict[str, object]], str]) -> None:
    transitions, _ = backtest
    for transition in transitions:
        assert transition["rule"] == "ssh-failed-password"
        assert transition["threshold"] == 5
        assert transition["window_s"] == 600
        assert str(transition["at"]).startswith("2024-12-10T")
        assert str(transition["at"]).endswith("Z")
    fired_counts = {t["count"] for t in transitions if t["kind"] == "fired"}
    assert fired_counts == {5}


def test_openssh_summary_on_stderr(backtest: tuple[list[dict[str, object]], str]) -> None:
    _, stderr = backtest
    assert "backtest summary" in stderr
    rows = [line for line in stderr.splitlines() if "ssh-failed-password" in line]
    assert len(rows) == 1
    cells = [cell.strip() for cell in rows[0].strip("│ ").split("│")]
    # 520 = `grep -c "Failed password"`: 518 plain lines and 2 "message repeated 5 times:
    # [ Failed password ...]" lines, each counted once.
    assert cells[1] == "520"
    # 23 distinct addresses; a group is opened again when a line comes 10 or more minutes
    # after the previous one of its address (the window emptied and the group was forgotten).
    # Counted with awk over the minute of each line: 31.
    assert cells[2] == "31"
    assert cells[3] == "10"
    assert cells[4] == "18"
    # Sum of fired -> recovered spans, e.g. 08:25:11 -> 08:35:00 = 589 s, plus the two groups
    # still firing up to the last line at 11:04:45 (608 s and 49 s).
    assert cells[5] == "1h36m35s (2 still firing)"
