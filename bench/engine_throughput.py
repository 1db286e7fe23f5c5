"""Measure engine throughput and memory per group key against two baselines.

Throughput: events per second through parse -> match -> count -> evaluate for 10 rules grouped by
src_ip, compared in the same process, on the same pre-generated JSON lines, with
- decode-only: orjson.loads of each line and nothing else, the practical limit of Python;
- naive: orjson.loads, the same compiled per-rule matcher, and one collections.deque of timestamps
  per rule and group key (append, pop expired entries from the left, compare len to the threshold).

Memory: tracemalloc of an Evaluator with one rule fed one event for each of K distinct keys,
divided by K. The key strings are created while tracing, so the strings the engine keeps count.

Run: python bench/engine_throughput.py [--events N] [--keys K]. See bench/README.md for figures.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import statistics
import sys
import time
import tracemalloc
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import orjson

from alertwarden.engine.evaluator import Evaluator
from alertwarden.events import Event
from alertwarden.rules import CompiledRule, load_rules_text
from alertwarden.sources.formats import make_parser

EVENT_CLASSES = (
    "authentication_failure",
    "authentication_success",
    "process_start",
    "file_access",
    "network_connection",
    "dns_query",
    "privilege_change",
    "config_change",
    "account_lockout",
    "malware_detection",
)
SEVERITIES = ("info", "low", "medium", "high", "critical")
START_S = 1_700_000_000.0
SPAN_S = 1_800.0
"""Event time covered by the generated lines: 30 minutes, three 10-minute windows."""
HOT_KEY_COUNT = 20
HOT_KEY_SHARE = 0.05
"""Share of events sent by a few hot addresses, so that some groups cross the threshold."""

THRESHOLD = 20
WINDOW_S = 600
BUCKET_S = 60
SEED = 20240601
TARGET_RATIO = 0.5
TARGET_BYTES_PER_KEY = 300
PATHS = ("decode-only", "parse", "naive", "engine")
VARIANTS = ("one", "all")


# ------------------------------------------------------------------------------- data and rules


def address(index: int) -> str:
    """Return the index-th IPv4 address of 10.0.0.0/8 as a new string object."""
    return f"10.{(index >> 16) & 255}.{(index >> 8) & 255}.{index & 255}"


def generate_lines(event_count: int, key_count: int, seed: int = SEED) -> list[bytes]:
    """Build `event_count` JSON lines in time order over SPAN_S seconds, deterministic for `seed`.

    Most events pick src_ip uniformly from `key_count` addresses. A share of HOT_KEY_SHARE comes
    from the first HOT_KEY_COUNT of those addresses, so a few groups cross the threshold.
    """
    rng = random.Random(seed)
    addresses = [address(i) for i in range(key_count)]
    hot = addresses[: min(HOT_KEY_COUNT, key_count)]
    hosts = [f"host-{i:03d}" for i in range(50)]
    step_s = SPAN_S / max(event_count, 1)
    lines: list[bytes] = []
    for i in range(event_count):
        source = rng.choice(hot) if rng.random() < HOT_KEY_SHARE else rng.choice(addresses)
        record = {
            "ts": round(START_S + i * step_s, 3),
            "event_class": rng.choice(EVENT_CLASSES),
            "src_ip": source,
            "host": rng.choice(hosts),
            "severity": rng.choice(SEVERITIES),
        }
        lines.append(orjson.dumps(record))
    return lines


def rules_yaml(match_all: bool, *, max_groups: int = 100_000) -> str:
    """Return 10 rules grouped by src_ip.

    With `match_all` false, rule i matches event_class == EVENT_CLASSES[i], so every event matches
    exactly one rule. With `match_all` true, each rule matches every class, the worst case.
    """
    classes = ", ".join(EVENT_CLASSES)
    parts: list[str] = []
    for index, event_class in enumerate(EVENT_CLASSES):
        if match_all:
            match = f"{{field: event_class, in: [{classes}]}}"
        else:
            match = f"{{field: event_class, equals: {event_class}}}"
        parts.append(
            f"- id: rule-{index}\n"
            f"  match: {match}\n"
            f"  group_by: [src_ip]\n"
            f"  threshold: {THRESHOLD}\n"
            f"  window: {WINDOW_S}s\n"
            f"  bucket: {BUCKET_S}s\n"
            f"  max_groups: {max_groups}\n"
        )
    return "".join(parts)


# ---------------------------------------------------------------------------------- the paths


@dataclass(slots=True)
class PathResult:
    """Counters of one timed pass, used to cross-check the paths."""

    matched: int = 0
    alerts: int = 0


def run_decode(lines: Sequence[bytes]) -> PathResult:
    loads = orjson.loads
    for line in lines:
        loads(line)
    return PathResult()


def run_parse(lines: Sequence[bytes]) -> PathResult:
    parse = make_parser("json").parse
    for line in lines:
        parse(line)
    return PathResult()


def run_naive(lines: Sequence[bytes], rules: Sequence[CompiledRule]) -> PathResult:
    """Count with one deque of timestamps per rule and key. `alerts` counts events that reach the threshold."""
    loads = orjson.loads
    tables: list[tuple[Callable, dict[str, deque[float]], float, int]] = [
        (rule.matcher, {}, float(rule.window_s), rule.threshold) for rule in rules
    ]
    result = PathResult()
    for line in lines:
        fields = loads(line)
        time_s = fields["ts"]
        for matcher, windows, window_s, threshold in tables:
            if matcher(fields) is None:
                continue
            result.matched += 1
            key = fields.get("src_ip")
            window = windows.get(key)
            if window is None:
                window = windows[key] = deque()
            window.append(time_s)
            oldest_kept_s = time_s - window_s
            while window[0] <= oldest_kept_s:
                window.popleft()
            if len(window) >= threshold:
                result.alerts += 1
    return result


def run_engine(lines: Sequence[bytes], rules: Sequence[CompiledRule]) -> PathResult:
    parse = make_parser("json").parse
    evaluator = Evaluator(rules)
    ingest = evaluator.ingest
    alerts = 0
    for offset, line in enumerate(lines):
        transitions = ingest(parse(line), offset)
        if transitions:
            alerts += len(transitions)
    matched = sum(stats.matched for stats in evaluator.stats.rules.values())
    return PathResult(matched=matched, alerts=alerts)


# ------------------------------------------------------------------------------------ timing


@dataclass(slots=True)
class Timing:
    name: str
    seconds: list[float]
    result: PathResult

    def rates(self, event_count: int) -> list[float]:
        return [event_count / seconds for seconds in self.seconds]


def time_once(run: Callable[[], PathResult]) -> tuple[float, PathResult]:
    gc.collect()
    started = time.perf_counter()
    result = run()
    return time.perf_counter() - started, result


def measure_throughput(
    lines: Sequence[bytes], repeats: int, paths: Sequence[str], variants: Sequence[str]
) -> list[Timing]:
    """Time each selected path `repeats` times, interleaved so drift in machine load hits all."""
    one_match = load_rules_text(rules_yaml(match_all=False))
    all_match = load_rules_text(rules_yaml(match_all=True))
    # (path, variant or None for paths without rules, row name, run)
    runs: list[tuple[str, str | None, str, Callable[[], PathResult]]] = [
        ("decode-only", None, "decode-only (orjson.loads)", lambda: run_decode(lines)),
        ("parse", None, "parse only (JsonParser)", lambda: run_parse(lines)),
        ("naive", "one", "naive deque, 1 match/event", lambda: run_naive(lines, one_match)),
        ("engine", "one", "engine, 1 match/event", lambda: run_engine(lines, one_match)),
        ("naive", "all", "naive deque, 10 matches/event", lambda: run_naive(lines, all_match)),
        ("engine", "all", "engine, 10 matches/event", lambda: run_engine(lines, all_match)),
    ]
    selected = [
        (name, run)
        for path, variant, name, run in runs
        if path in paths and (variant is None or variant in variants)
    ]
    timings = {name: Timing(name, [], PathResult()) for name, _ in selected}
    for _ in range(repeats):
        for name, run in selected:
            seconds, result = time_once(run)
            timings[name].seconds.append(seconds)
            timings[name].result = result
            print(f"  {name}: {seconds:.2f} s", file=sys.stderr, flush=True)
    return list(timings.values())


# ------------------------------------------------------------------------------------ memory


@dataclass(frozen=True, slots=True)
class MemoryPerKey:
    """Traced bytes per group key right after counting, and after the flush that empties `dirty`."""

    after_count: float
    after_flush: float


def measure_bytes_per_key(
    key_count: int, window_s: int = WINDOW_S, bucket_s: int = BUCKET_S
) -> MemoryPerKey:
    """Measure the traced bytes an Evaluator with one rule keeps per group key.

    Every event carries the same time, so no bucket boundary passes and no group expires. The
    evaluator's set of changed groups contains every key until drain_changes(), which the runner
    calls at each flush, so the figure is given before and after it.
    """
    rule_text = (
        f"- id: memory\n  match: {{field: event_class, equals: login}}\n  group_by: [src_ip]\n"
        f"  threshold: {THRESHOLD}\n  window: {window_s}s\n  bucket: {bucket_s}s\n"
        f"  max_groups: {key_count}\n"
    )
    evaluator = Evaluator(load_rules_text(rule_text))
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for index in range(key_count):
        evaluator.ingest(Event(START_S, {"src_ip": address(index), "event_class": "login"}), index)
    gc.collect()
    after_count = tracemalloc.get_traced_memory()[0]
    changed, _ = evaluator.drain_changes(key_count)
    changed_count = len(changed)
    del changed
    gc.collect()
    after_flush = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert evaluator.group_count("memory") == key_count, "every key must open its own group"
    assert changed_count == key_count, "every group must be reported as changed once"
    return MemoryPerKey((after_count - before) / key_count, (after_flush - before) / key_count)


def measure_naive_bytes_per_key(key_count: int) -> float:
    """Return the traced bytes per key of the naive baseline after one event per key."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    windows: dict[str, deque[float]] = {}
    for index in range(key_count):
        windows[address(index)] = deque([START_S + index])
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(windows) == key_count
    return (after - before) / key_count


# ------------------------------------------------------------------------------------ report


def describe_machine() -> str:
    model = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"nproc {os.cpu_count()}, CPU {model}, Python {platform.python_version()} "
        f"({platform.python_implementation()}), orjson {orjson.__version__}"
    )


def print_throughput(timings: Sequence[Timing], event_count: int) -> None:
    decode = next((t for t in timings if t.name.startswith("decode-only")), None)
    decode_best = max(decode.rates(event_count)) if decode else None
    decode_median = statistics.median(decode.rates(event_count)) if decode else None
    print("| path | best events/s | median events/s | best / decode best | median / decode median |")
    print("|---|---:|---:|---:|---:|")
    for timing in timings:
        rates = timing.rates(event_count)
        best, median = max(rates), statistics.median(rates)
        best_ratio = f"{best / decode_best:.1%}" if decode_best else "n/a"
        median_ratio = f"{median / decode_median:.1%}" if decode_median else "n/a"
        print(f"| {timing.name} | {best:,.0f} | {median:,.0f} | {best_ratio} | {median_ratio} |")
    print()
    if decode_median:
        for timing in timings:
            if timing.name.startswith("engine"):
                ratio = statistics.median(timing.rates(event_count)) / decode_median
                verdict = "met" if ratio >= TARGET_RATIO else "missed"
                print(f"Goal engine >= {TARGET_RATIO:.0%} of decode-only, {timing.name}: {ratio:.1%}, {verdict}.")
        print()
    for timing in timings:
        if timing.result.matched or timing.result.alerts:
            print(
                f"{timing.name}: {timing.result.matched:,} rule matches, "
                f"{timing.result.alerts:,} alerts (engine: transitions, naive: len >= threshold hits)"
            )


def check_matches_agree(timings: Sequence[Timing]) -> None:
    """Fail when the engine and the naive path counted a different number of rule matches."""
    by_name = {timing.name: timing.result.matched for timing in timings}
    for variant in ("1 match/event", "10 matches/event"):
        naive, engine = by_name.get(f"naive deque, {variant}"), by_name.get(f"engine, {variant}")
        if naive is not None and engine is not None and naive != engine:
            raise SystemExit(
                f"invalid benchmark: rule matches differ for {variant} (naive {naive}, engine {engine}); "
                "the two paths must run the same compiled rules on the same lines"
            )


def print_memory(key_count: int, large_key_count: int) -> None:
    print("| structure | keys | buckets N | bytes per key after counting | after flush |")
    print("|---|---:|---:|---:|---:|")
    small: dict[int, MemoryPerKey] = {}
    for n_buckets, window_s in ((10, WINDOW_S), (60, 60 * BUCKET_S)):
        small[n_buckets] = measure_bytes_per_key(key_count, window_s=window_s)
        print(
            f"| engine, 1 rule | {key_count:,} | {n_buckets} | {small[n_buckets].after_count:.1f} "
            f"| {small[n_buckets].after_flush:.1f} |"
        )
    large_seconds = None
    if large_key_count:
        started = time.perf_counter()
        large = measure_bytes_per_key(large_key_count)
        large_seconds = time.perf_counter() - started
        print(f"| engine, 1 rule | {large_key_count:,} | 10 | {large.after_count:.1f} | {large.after_flush:.1f} |")
    naive = measure_naive_bytes_per_key(key_count)
    print(f"| naive deque, 1 timestamp | {key_count:,} | n/a | {naive:.1f} | n/a |")
    print()
    if large_seconds is not None:
        print(f"The {large_key_count:,}-key measurement took {large_seconds:.1f} s with tracemalloc on.")
    slope = (small[60].after_flush - small[10].after_flush) / 50
    intercept = small[10].after_flush - 10 * slope
    verdict = "met" if small[10].after_flush < TARGET_BYTES_PER_KEY else "missed"
    print(
        f"After flush, bytes per key ~ {intercept:.0f} + {slope:.2f} * N (fitted to N = 10 and "
        f"N = 60 at {key_count:,} keys). Goal < {TARGET_BYTES_PER_KEY} bytes for N = 10: {verdict}."
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000, help="JSON lines to generate and time (default 200000)")

    parser.add_argument("--keys", type=int, default=10_000, help="distinct src_ip values in the lines (default 10000)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes of each path (default 3)")
    parser.add_argument(
        "--memory-keys", type=int, default=100_000, help="distinct keys of the memory measurement (default 100000)"
    )
    parser.add_argument(
        "--large-memory-keys",
        type=int,
        default=0,
        help="keys of a second, larger memory measurement such as 1000000, slow under tracemalloc; 0 skips it (default 0)",
    )
    parser.add_argument(
        "--paths",
        default="decode-only,parse,naive,engine",
        help="comma-separated paths to time: decode-only, parse, naive, engine (default all)",
    )
    parser.add_argument(
        "--variants",
        default="one,all",
        help="comma-separated rule sets: one (each event matches 1 rule), all (each matches all 10) (default both)",
    )
    parser.add_argument("--skip-memory", action="store_true", help="time throughput only")
    args = parser.parse_args(argv)

    for name in ("events", "keys", "repeats", "memory_keys"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    for option, value, known in (
        ("--paths", args.paths, PATHS),
        ("--variants", args.variants, VARIANTS),
    ):
        unknown = [name for name in value.split(",") if name.strip() not in known]
        if unknown:
            parser.error(f"invalid {option} value {unknown[0]!r}: use a comma-separated subset of {','.join(known)}")
    if args.large_memory_keys < 0:
        parser.error(f"--large-memory-keys must be 0 or more, got {args.large_memory_keys}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    paths = [path.strip() for path in args.paths.split(",") if path.strip()]
    print(f"machine: {describe_machine()}")
    print(
        f"data: {args.events:,} JSON lines, {args.keys:,} src_ip keys, 10 event classes, "
        f"{SPAN_S / 60:.0f} min of event time, seed {SEED}; rules: 10, group_by [src_ip], "
        f"threshold {THRESHOLD}, window {WINDOW_S}s, bucket {BUCKET_S}s; best and median of {args.repeats}\n"
    )
    lines = generate_lines(args.events, args.keys)
    variants = [variant.strip() for variant in args.variants.split(",") if variant.strip()]
    timings = measure_throughput(lines, args.repeats, paths, variants)
    del lines
    check_matches_agree(timings)
    print_throughput(timings, args.events)
    if not args.skip_memory:
        print()
        print_memory(args.memory_keys, args.large_memory_keys)


if __name__ == "__main__":
    main()
