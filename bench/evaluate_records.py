"""Time `evaluate_records`, the compiled per-record loop of a serve worker, without servers.

It parses and evaluates one tenant's share of the serve benchmark's workload (see
serve_throughput.py: 10 rules, 1,000 src_ip keys, one matching rule per event) with a pipeline
on an in-memory SQLite store and transitions deferred, as a worker runs it between two fetches.
A second loop times the parse alone. No flush falls due, because all events share one bucket.

Run: python bench/evaluate_records.py [--records N] [--repeats R]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time

import orjson

from alertwarden.engine.evaluator import ClockMode, EngineSettings, Evaluator
from alertwarden.events import Signal
from alertwarden.pipeline import RuleGroupPipeline
from alertwarden.rules import load_rules_text
from alertwarden.service.batch import RecordParser, evaluate_records
from alertwarden.service.runtime import DiscardSink, tune_gc
from alertwarden.sources.jetstream import StreamMessage
from alertwarden.store.sqlite import SQLiteStore
from serve_throughput import generate_workload, rules_yaml  # bench/ is sys.path[0] when run as a script

SUBJECT = "bench.logs.tenant-00.ingest"


def tenant_records(count: int, now_s: float) -> list[StreamMessage]:
    """Return the records of tenant-00 from a 10-tenant workload of 10 * `count` events."""
    workload = generate_workload(count * 10, 10, 1_000)
    records: list[StreamMessage] = []
    for tenant_index, record in workload.events:
        if tenant_index != 0:
            continue
        record["time"] = now_s
        sequence = len(records) + 1
        data = orjson.dumps(record)
        records.append(StreamMessage(sequence, sequence + 1, SUBJECT, Signal.LOGS, data, None, now_s))
    return records


async def time_pass(records: list[StreamMessage], rules_text: str, now_s: float) -> tuple[float, float]:
    """Return the seconds of one evaluate pass from empty state and of one parse-only pass."""
    rules = load_rules_text(rules_text)
    settings = EngineSettings(clock=ClockMode.WALL, max_future_skew_s=60)
    evaluator = Evaluator(rules, settings, tenant="tenant-00", rule_group="default")
    store = SQLiteStore(":memory:")
    await store.open()
    try:
        pipeline = RuleGroupPipeline(
            evaluator, rules, store, DiscardSink(), source="jetstream:bench", defer_transitions=True
        )
        await pipeline.start(lambda source, offset: (offset, None))
        # A worker's first, empty fetch starts the clock the same way.
        await pipeline.tick_idle(now_s - 1.0, 1)
        parser = RecordParser(lambda error, record: None)
        gc.collect()
        started = time.perf_counter()
        index = 0
        while index < len(records):
            index, flushing = evaluate_records(pipeline, records, index, parser, float("inf"), time.perf_counter)
            if flushing is not None:
                raise SystemExit("a record fell into the next bucket, which flushes: run the script again")
        evaluated_s = time.perf_counter() - started

        started = time.perf_counter()
        for record in records:
            parser.parse(record)
        parsed_s = time.perf_counter() - started
    finally:
        await store.close()
    return evaluated_s, parsed_s


async def measure(args: argparse.Namespace) -> None:
    now_s = time.time()
    records = tenant_records(args.records, now_s)
    rules_text = rules_yaml("logs", 10)
    tune_gc()
    for _ in range(args.repeats):
        evaluated_s, parsed_s = await time_pass(records, rules_text, now_s)
        count = len(records)
        print(
            f"{count:,} records: evaluate_records {evaluated_s / count * 1e6:.2f} us per record, "
            f"parse alone {parsed_s / count * 1e6:.2f} us per record"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--records", type=int, default=20_000, help="approximate record count of the timed tenant (default 20000)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed passes (default 5)")
    args = parser.parse_args()
    if args.records < 1 or args.repeats < 1:
        parser.error("--records and --repeats must be at least 1")
    asyncio.run(measure(args))


if __name__ == "__main__":
    main()
