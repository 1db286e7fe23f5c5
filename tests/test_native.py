"""The compiled modules: which ones Python imports, and that they count as the sources do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import alertwarden
from alertwarden.native import COMPILED_MODULES, PURE_PYTHON_VARIABLE, is_compiled, stale_modules
from test_cli_restart import RULES_YAML, START_S, SQLiteState, run_command, run_to_end, write_bursty_input

EXTENSION_SUFFIX = ".cpython-311-x86_64-linux-gnu.so"


def module_files(code: str, **env: str) -> dict[str, str]:
    """Import every compiled module in a new interpreter and return where each came from."""
    script = (
        "import importlib, json, alertwarden\n"
        f"names = {list(COMPILED_MODULES)!r}\n"
        "files = {name: importlib.import_module(name).__file__ for name in names}\n"
        "files['reason'] = alertwarden.SOURCES_REASON\n"
        f"{code}\n"
        "print(json.dumps(files))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env={**os.environ, **env}, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout)


def test_stale_module_found_by_modification_time(tmp_path: Path) -> None:
    engine = tmp_path / "engine"
    engine.mkdir()
    for name in ("table", "evaluator"):
        (engine / f"{name}.py").write_text("")
        (engine / f"{name}{EXTENSION_SUFFIX}").write_bytes(b"")
    # table.py edited after the build, evaluator.py built after its last edit.
    os.utime(engine / f"table{EXTENSION_SUFFIX}", (1_000_000, 1_000_000))
    os.utime(engine / "table.py", (2_000_000, 2_000_000))
    os.utime(engine / "evaluator.py", (1_000_000, 1_000_000))
    os.utime(engine / f"evaluator{EXTENSION_SUFFIX}", (2_000_000, 2_000_000))

    assert stale_modules(tmp_path) == ["alertwarden.engine.table"]


def test_source_without_extension_module_is_not_stale(tmp_path: Path) -> None:
    (tmp_path / "engine").mkdir()
    (tmp_path / "engine" / "table.py").write_text("")

    assert stale_modules(tmp_path) == []


def test_pure_python_variable_imports_sources() -> None:
    files = module_files("", **{PURE_PYTHON_VARIABLE: "1"})

    assert files.pop("reason") == f"{PURE_PYTHON_VARIABLE} is set"
    assert {name: Path(path).suffix for name, path in files.items()} == dict.fromkeys(COMPILED_MODULES, ".py")


@pytest.mark.skipif(
    os.environ.get("ALERTWARDEN_COMPILE") == "0" or alertwarden.SOURCES_REASON is not None,
    reason="built or run without the compiled modules on purpose",
)
def test_test_environment_runs_the_compiled_modules() -> None:
    """The README's install compiles them; a build that fell back to Python must not pass unseen."""
    files = module_files("")

    assert files.pop("reason") is None
    assert is_compiled()
    assert {name: Path(path).suffix for name, path in files.items()} == dict.fromkeys(COMPILED_MODULES, ".so")


@pytest.mark.slow
def test_compiled_and_source_modules_make_the_same_transitions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES_YAML)
    events = tmp_path / "events.jsonl"
    lines = write_bursty_input(events, seed=7, start_s=START_S, hours=6)

    outputs = {}
    stderrs = {}
    for name, pure_python in (("default", "0"), ("source", "1")):
        monkeypatch.setenv(PURE_PYTHON_VARIABLE, pure_python)
        done = run_to_end(run_command(rules, events, SQLiteState(tmp_path / f"{name}.sqlite")))
        assert done.returncode == 0, done.stderr
        outputs[name] = [json.loads(line) for line in done.stdout_lines]
        stderrs[name] = done.stderr

    transitions = outputs["default"]
    assert lines > 1_000
    assert {transition["kind"] for transition in transitions} == {"fired", "recovered", "cooldown_hit", "renotified"}
    assert transitions == outputs["source"]
    assert "compiled_modules_not_used" in stderrs["source"]
    assert "compiled_modules_not_used" not in stderrs["default"]


# JetStream acknowledgement subjects with stored times of 19 digits, above 2**53 nanoseconds.
ACK_REPLIES = [
    "$JS.ACK.S.c.1.58626.1.1796470937095156602.0",
    "$JS.ACK.hub.3a1b.S.c.1.7.1.1733400000999999999.4.x",
    "$JS.ACK.S.c.1.2.1.1796470937000000001.0",
]


def stored_times(pure_python: str) -> list[str]:
    """Return the stored times of ACK_REPLIES as repr strings, computed by one build."""
    script = (
        "import json\n"
        "from alertwarden.sources.pull import parse_reply\n"
        f"replies = {ACK_REPLIES!r}\n"
        "print(json.dumps([repr(parse_reply(reply).stored_at) for reply in replies]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, PURE_PYTHON_VARIABLE: pure_python},
        capture_output=True,
        text=True,
        check=True,
    )
    return list(json.loads(done.stdout))


def test_stored_time_same_in_both_builds() -> None:
    compiled = stored_times("0")
    source = stored_times("1")

    assert compiled == source
    assert source[0] == "1796470937.0951567"
