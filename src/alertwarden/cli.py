"""Command-line interface: `alertwarden run`, `alertwarden backtest`, `alertwarden rules check`."""

from __future__ import annotations

import asyncio
import inspect
import os
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

import alertwarden
from alertwarden.engine.evaluator import ClockMode, EngineSettings, Evaluator, RuleStats
from alertwarden.errors import AlertwardenError, ConfigError
from alertwarden.logs import configure_logging, get_logger
from alertwarden.pipeline import RuleGroupPipeline
from alertwarden.rules import CompiledRule, explain_rules, load_rules_files, parse_duration
from alertwarden.runner import InputRunner, ProgressReporter, RunSummary
from alertwarden.service.runtime import Service
from alertwarden.settings import load_settings
from alertwarden.sinks.base import Notification, Sink
from alertwarden.sinks.stdout import ConsoleSink, JsonLinesSink
from alertwarden.sinks.webhook import WebhookSink
from alertwarden.sources.files import FileInput, LineInput, StdinInput
from alertwarden.sources.formats import make_parser
from alertwarden.sources.jetstream import TENANT_ID_RULE, validate_tenant
from alertwarden.sources.lines import DEFAULT_MAX_LINE_BYTES
from alertwarden.store.base import StateStore
from alertwarden.store.migrate import migrate as run_migrations
from alertwarden.store.postgres import PostgresStore
from alertwarden.store.sqlite import SQLiteStore

app = typer.Typer(
    help="Stateful threshold alerts over log and security-event streams.",
    no_args_is_help=True,
    add_completion=False,
    # A traceback with local variables would print database URLs and tokens.
    pretty_exceptions_show_locals=False,
)
rules_app = typer.Typer(help="Validate and explain rule files.", no_args_is_help=True)
app.add_typer(rules_app, name="rules")
log = get_logger(__name__)

DEFAULT_STATE_FILE = "alertwarden.sqlite"

RulesOption = Annotated[
    list[Path], typer.Option("--rules", help="YAML file with rules; repeat to load several files.")
]
FormatOption = Annotated[
    str,
    typer.Option(
        "--format",
        help="Input format: auto, json, otel, ocsf, syslog or regex. auto tells JSON from syslog per line.",
    ),
]
PatternOption = Annotated[
    str | None,
    typer.Option("--pattern", help="For --format regex: a regex with named groups, one of them 'timestamp'."),
]
TimeFormatOption = Annotated[
    str | None,
    typer.Option("--time-format", help="For --format regex: strptime format of the timestamp group."),
]
YearOption = Annotated[
    int | None,
    typer.Option("--year", help="Year for RFC 3164 syslog timestamps, which carry none. Default: this year."),
]
TimezoneOption = Annotated[
    str,
    typer.Option("--timezone", help="IANA time zone of timestamps that carry no offset."),
]
SkewOption = Annotated[
    str,
    typer.Option(
        "--max-future-skew",
        help="Live inputs: an event stamped further ahead of its arrival counts at the current time.",
    ),
]
LineLimitOption = Annotated[
    int, typer.Option("--max-line-bytes", help="Longer input lines are skipped and counted.")
]
LogLevelOption = Annotated[
    str, typer.Option("--log-level", help="Lowest level of the log lines on stderr: debug, info, warning or error.")
]
LogFormatOption = Annotated[str, typer.Option("--log-format", help="Log format on stderr: auto, console or json.")]


@dataclass(slots=True)
class InputOptions:
    path: str
    fmt: str
    pattern: str | None
    time_format: str | None
    year: int | None
    timezone: str
    max_line_bytes: int


# ----------------------------------------------------------------- commands


@app.command()
def run(
    rules: RulesOption,
    input_path: Annotated[str, typer.Option("--input", help="Input file, or - for standard input.")],
    state: Annotated[
        Path, typer.Option("--state", help="SQLite file with snapshots, checkpoints and history.")
    ] = Path(DEFAULT_STATE_FILE),
    database: Annotated[
        str | None,
        typer.Option(
            "--database",
            help="PostgreSQL URL (postgresql://...) to keep state in instead of --state; "
            "run `alertwarden migrate` on it first.",
        ),
    ] = None,
    fmt: FormatOption = "auto",
    pattern: PatternOption = None,
    time_format: TimeFormatOption = None,
    year: YearOption = None,
    timezone: TimezoneOption = "UTC",
    clock: Annotated[
        str | None,
        typer.Option("--clock", help="event or wall. Default: event for files, wall for standard input."),
    ] = None,
    max_future_skew: SkewOption = "60s",
    max_line_bytes: LineLimitOption = DEFAULT_MAX_LINE_BYTES,
    output: Annotated[str, typer.Option("--output", help="Transitions on stdout as text or jsonl.")] = "text",
    webhook: Annotated[
        list[str] | None, typer.Option("--webhook", help="Also POST each transition as JSON to this URL.")
    ] = None,
    tenant: Annotated[
        str, typer.Option("--tenant", help=f"Tenant id the state is stored under: {TENANT_ID_RULE}.")
    ] = "default",
    history_retention: Annotated[
        str, typer.Option("--history-retention", help="Transition history older than this is deleted.")
    ] = "7d",
    log_level: LogLevelOption = "info",
    log_format: LogFormatOption = "auto",
) -> None:
    """Evaluate the rules over an input, keeping state in a SQLite file.

    Started again on the same input, it resumes after the last checkpoint, so a run that is
    killed and restarted stores exactly the transitions of an uninterrupted run.
    """
    configure_logging(log_level, log_format)
    _warn_when_sources_used()
    options = InputOptions(input_path, fmt, pattern, time_format, year, timezone, max_line_bytes)
    clock_mode = _clock_mode(clock, input_path)
    with _exit_on_error():
        validate_tenant(tenant, field="--tenant")
        compiled = load_rules_files(rules)
        settings = EngineSettings(clock=clock_mode, max_future_skew_s=parse_duration(max_future_skew))
        sink, remote_sinks = _make_sinks(output, webhook or [])
        retention_s = parse_duration(history_retention)
        store: StateStore = PostgresStore(database) if database else SQLiteStore(state, exclusive=True)
        summary, pipelines = asyncio.run(
            _run(
                compiled,
                options,
                settings,
                store,
                sink,
                tenant,
                retention_s,
                remote_sinks,
                hold_partial_last_line=True,
            )
        )
    if summary.skipped:
        skipped = ", ".join(f"{reason}={count}" for reason, count in sorted(summary.skipped.items()))
        log.warning("input_records_skipped", counts=skipped)
    for pipeline in pipelines:
        _log_rule_counters(pipeline)
    log.info("run_finished", lines=summary.lines, events=summary.events, stopped=summary.stopped)


@app.command()
def backtest(
    rules: RulesOption,
    input_path: Annotated[str, typer.Option("--input", help="Input file, or - for standard input.")],
    fmt: FormatOption = "auto",
    pattern: PatternOption = None,
    time_format: TimeFormatOption = None,
    year: YearOption = None,
    timezone: TimezoneOption = "UTC",
    max_line_bytes: LineLimitOption = DEFAULT_MAX_LINE_BYTES,
    output: Annotated[str, typer.Option("--output", help="Transitions on stdout as text or jsonl.")] = "text",
    log_level: LogLevelOption = "warning",
    log_format: LogFormatOption = "auto",
) -> None:
    """Replay an input with the event clock and no state file; print transitions and a summary."""
    configure_logging(log_level, log_format)
    _warn_when_sources_used()
    options = InputOptions(input_path, fmt, pattern, time_format, year, timezone, max_line_bytes)
    with _exit_on_error():
        compiled = load_rules_files(rules)
        settings = EngineSettings(clock=ClockMode.EVENT)
        recorder = SummarySink(_make_sinks(output, [])[0])
        store = SQLiteStore(":memory:")
        summary, pipelines = asyncio.run(
            _run(compiled, options, settings, store, recorder, "default", None)
        )
    rule_stats = {}
    ends = []
    for pipeline in pipelines:
        rule_stats.update(pipeline.evaluator.stats.rules)
        if pipeline.evaluator.now is not None:
            ends.append(pipeline.evaluator.now)
    # The table goes to stderr with --output jsonl so stdout stays pure JSON lines. Off a
    # terminal rich would squeeze it into 80 columns, which truncates rule ids.
    stream = sys.stderr if output == "jsonl" else sys.stdout
    console = Console(file=stream, width=None if stream.isatty() else 160)
    console.print(recorder.table(compiled, rule_stats, end_s=max(ends, default=None)))
    if summary.skipped:
        skipped = ", ".join(f"{reason}={count}" for reason, count in sorted(summary.skipped.items()))
        console.print(f"skipped input records: {skipped}")


@app.command()
def migrate(
    database: Annotated[str, typer.Option("--database", help="PostgreSQL URL (postgresql://...).")],
    history_backend: Annotated[
        str,
        typer.Option(
            "--history-backend",
            help="auto (TimescaleDB when the extension is available), timescaledb or partitioned.",
        ),
    ] = "auto",
    compress_after: Annotated[
        str, typer.Option("--compress-after", help="TimescaleDB: compress history chunks older than this.")
    ] = "1d",
    history_retention: Annotated[
        str, typer.Option("--history-retention", help="Drop transition history older than this.")
    ] = "7d",
    log_level: LogLevelOption = "info",
    log_format: LogFormatOption = "auto",
) -> None:
    """Create or upgrade the PostgreSQL schema. Safe to run again and from several nodes at once."""
    configure_logging(log_level, log_format)
    with _exit_on_error():
        applied = asyncio.run(
            run_migrations(
                database,
                history_backend=history_backend,
                compress_after_s=parse_duration(compress_after),
                retention_s=parse_duration(history_retention),
            )
        )
    if applied:
        typer.echo(f"applied migrations: {', '.join(str(version) for version in applied)}")
    else:
        typer.echo("schema is up to date")
    with _exit_on_error():
        stored = asyncio.run(_stored_history_settings(database))
    requested = {
        "compress_after_s": parse_duration(compress_after),
        "retention_s": parse_duration(history_retention),
    }
    for name, value in requested.items():
        if stored.get(name) != value:
            typer.echo(
                f"warning: {name} is {stored.get(name)} in this database, not {value}: history "
                "settings apply only when the history step first runs; change the TimescaleDB "
                "policies or alertwarden_settings by hand to change them",
                err=True,
            )


@app.command()
def serve(
    log_level: LogLevelOption = "info",
    log_format: LogFormatOption = "auto",
) -> None:
    """Run the service: the REST API and every tenant's rules over NATS JetStream.

    Settings come from ALERTWARDEN_* environment variables (see docs/operations.md). With none
    set it uses PostgreSQL at 127.0.0.1:5432 (database alertwarden, created if missing) and NATS
    at 127.0.0.1:4222, and listens on 127.0.0.1:8080.
    """
    configure_logging(log_level, log_format)
    with _exit_on_error():
        service = Service(load_settings())
        asyncio.run(service.run())
    if service.exit_status:
        raise typer.Exit(service.exit_status)


@rules_app.command("check")
def rules_check(
    paths: Annotated[list[Path], typer.Argument(metavar="FILE", help="YAML rule files to validate together.")],
) -> None:
    """Validate rule files as run and backtest load them, and explain what each rule does."""
    with _exit_on_error():
        compiled = load_rules_files(paths)
    typer.echo(explain_rules(compiled))
    typer.echo(f"{', '.join(str(path) for path in paths)}: {len(compiled)} rule(s) valid")


# ----------------------------------------------------------------- wiring


def _warn_when_sources_used() -> None:
    """Log why the compiled modules run from source, which evaluates fewer events per second."""
    if alertwarden.SOURCES_REASON is not None:
        log.warning("compiled_modules_not_used", reason=alertwarden.SOURCES_REASON)


async def _run(
    rules: list[CompiledRule],
    options: InputOptions,
    settings: EngineSettings,
    store: StateStore,
    sink: Sink,
    tenant: str,
    history_retention_s: float | None,
    remote_sinks: Sequence[Sink] = (),
    *,
    hold_partial_last_line: bool = False,
) -> tuple[RunSummary, list[RuleGroupPipeline]]:
    enabled = [rule for rule in rules if rule.enabled]
    if not enabled:
        raise ConfigError("the rule file has no enabled rule: nothing to evaluate")
    parser = make_parser(
        options.fmt,
        pattern=options.pattern,
        time_format=options.time_format,
        year=options.year,
        timezone=options.timezone,
    )
    line_input: LineInput
    if options.path == "-":
        line_input = StdinInput(max_line_bytes=options.max_line_bytes)
        total_bytes = None
    elif not os.path.isfile(options.path):
        raise ConfigError(
            f"input file {options.path!r} not found or not a regular file: "
            "check --input, or use --input - for standard input"
        )
    else:
        line_input = FileInput(options.path, max_line_bytes=options.max_line_bytes)
        total_bytes = os.path.getsize(options.path)

    await store.open()
    try:
        if isinstance(store, PostgresStore):
            await _register_rules(store, tenant, enabled)
        pipelines = _pipelines(
            enabled, settings, store, sink, tenant, history_retention_s, remote_sinks
        )
        progress = RichProgress() if sys.stderr.isatty() and total_bytes else None
        runner = InputRunner(
            pipelines,
            line_input,
            parser,
            clock=settings.clock,
            progress=progress,
            total_bytes=total_bytes,
            hold_partial_last_line=hold_partial_last_line,
        )
        return await runner.run(), pipelines
    finally:
        line_input.close()
        await sink.close()
        for remote in remote_sinks:
            await remote.close()
        await store.close()


async def _stored_history_settings(url: str) -> dict[str, int]:
    """Read the history settings a migration recorded in alertwarden_settings."""
    store = PostgresStore(url, pool_max=1)
    await store.open()
    try:
        settings = store.settings
        return {"compress_after_s": settings.compress_after_s, "retention_s": settings.retention_s}
    finally:
        await store.close()


async def _register_rules(store: PostgresStore, tenant: str, rules: list[CompiledRule]) -> None:
    """Record the file's rules in the database and remove state that no rule keeps any more.

    Running the command is the operator's request for stateful rules, so it turns the
    tenant's flag on.
    """
    await store.ensure_tenant(tenant, stateful_rules=True)
    by_group: dict[str, list[CompiledRule]] = defaultdict(list)
    for rule in rules:
        by_group[rule.group].append(rule)
    for group, group_rules in sorted(by_group.items()):
        definitions = [
            (rule.id, rule.definition.model_dump(mode="json", by_alias=True), rule.enabled)
            for rule in group_rules
        ]
        await store.sync_rules(tenant, group, definitions, source="file")
    await store.sweep()


def _pipelines(
    rules: list[CompiledRule],
    settings: EngineSettings,
    store: StateStore,
    sink: Sink,
    tenant: str,
    history_retention_s: float | None,
    remote_sinks: Sequence[Sink] = (),
) -> list[RuleGroupPipeline]:
    """Make one pipeline per rule group, each with its own evaluator and checkpoint."""
    by_group: dict[str, list[CompiledRule]] = defaultdict(list)
    for rule in rules:
        by_group[rule.group].append(rule)
    pipelines = []
    for group, group_rules in sorted(by_group.items()):
        evaluator = Evaluator(group_rules, settings, tenant=tenant, rule_group=group)
        pipeline = RuleGroupPipeline(
            evaluator,
            group_rules,
            store,
            sink,
            source="",
            history_retention_s=history_retention_s if history_retention_s is not None else float("inf"),
            remote_sinks=remote_sinks,
        )
        pipelines.append(pipeline)
    return pipelines


def _log_rule_counters(pipeline: RuleGroupPipeline) -> None:
    """Log each rule's counters once at the end of a run."""
    evaluator = pipeline.evaluator
    for rule_id, stats in evaluator.stats.rules.items():
        log.info(
            "rule_counters",
            rule_group=evaluator.rule_group,
            rule=rule_id,
            matched=stats.matched,
            late=stats.late,
            missing_key=stats.missing_key,
            skipped_missing_key=stats.skipped_missing_key,
            wrong_type_key=stats.wrong_type_key,
            invalid_key=stats.invalid_key,
            capped=stats.capped,
            regex_timeouts=pipeline.rules[rule_id].regex_timeouts,
            live_groups=evaluator.group_count(rule_id),
            **{f"transitions_{kind}": count for kind, count in sorted(stats.transitions.items())},
        )


def _make_sinks(output: str, webhooks: list[str]) -> tuple[Sink, list[Sink]]:
    """Return the local output sink and the remote (webhook) sinks, which deliver in background."""
    local: Sink
    if output == "text":
        local = ConsoleSink()
    elif output == "jsonl":
        local = JsonLinesSink()
    else:
        raise ConfigError(f"invalid --output {output!r}: use text or jsonl")
    return local, [WebhookSink(url) for url in webhooks]


def _clock_mode(clock: str | None, input_path: str) -> ClockMode:
    if clock is None:
        return ClockMode.WALL if input_path == "-" else ClockMode.EVENT
    try:
        return ClockMode(clock)
    except ValueError:
        typer.echo(f"error: invalid --clock {clock!r}: use event or wall", err=True)
        raise typer.Exit(2) from None


class _exit_on_error:
    """Turn expected errors into `error: ` lines on stderr and exit status 2."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is not None and isinstance(exc, AlertwardenError | FileNotFoundError | IsADirectoryError):
            # An error with several causes, such as two unreachable servers, has one per line.
            for line in str(exc).splitlines() or [""]:
                typer.echo(f"error: {line}", err=True)
            raise typer.Exit(2)


# ------------------------------------------------------------ presentation


class RichProgress(ProgressReporter):
    """Bytes read out of the input's size, on stderr."""

    def __init__(self) -> None:
        self._progress = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._task: TaskID | None = None

    def start(self, total_bytes: int | None, done_bytes: int) -> None:
        self._progress.start()
        self._task = self._progress.add_task("reading", total=total_bytes, completed=done_bytes)

    def update(self, done_bytes: int) -> None:
        if self._task is not None:
            self._progress.update(self._task, completed=done_bytes)

    def stop(self) -> None:
        self._progress.stop()


@dataclass(slots=True)
class _RuleTally:
    fires: int = 0
    transitions: int = 0
    firing_s: float = 0.0
    firing_since: dict[tuple, float] = field(default_factory=dict)


class SummarySink:
    """Passes notifications on and tallies fires and time firing per rule for `backtest`."""

    def __init__(self, inner: Sink) -> None:
        self.inner = inner
        self.tallies: dict[str, _RuleTally] = defaultdict(_RuleTally)

    async def send(self, notification: Notification) -> None:
        tally = self.tallies[notification.rule_id]
        tally.transitions += 1
        key = tuple(sorted(notification.group.items(), key=lambda item: item[0]))
        if notification.kind == "fired":
            tally.fires += 1
            tally.firing_since[key] = notification.at
        elif notification.kind == "recovered" and key in tally.firing_since:
            tally.firing_s += notification.at - tally.firing_since.pop(key)
        await self.inner.send(notification)

    async def close(self) -> None:
        await self.inner.close()

    def table(
        self, rules: list[CompiledRule], rule_stats: dict[str, RuleStats], end_s: float | None
    ) -> Table:
        """Build the per-rule summary; groups still firing count as firing until `end_s`."""
        table = Table(title="backtest summary")
        for column in ("rule", "events matched", "groups opened", "fires", "transitions", "time firing"):
            table.add_column(column, justify="left" if column == "rule" else "right", no_wrap=True)
        for rule in rules:
            tally = self.tallies.get(rule.id, _RuleTally())
            stats = rule_stats.get(rule.id)
            firing_s = tally.firing_s
            still_firing = len(tally.firing_since)
            if end_s is not None:
                firing_s += sum(end_s - since for since in tally.firing_since.values())
            firing = _format_span(firing_s)
            if still_firing:
                firing += f" ({still_firing} still firing)"
            table.add_row(
                rule.id,
                str(stats.matched if stats else 0),
                str(stats.groups_opened if stats else 0),
                str(tally.fires),
                str(tally.transitions),
                firing,
            )
        return table


def _format_span(seconds: float) -> str:
    """Format a length of time for people: 5795 -> 1h36m35s."""
    whole = int(round(seconds))
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days}d" if days else "", f"{hours}h" if hours else "", f"{minutes}m" if minutes else ""]
    text = "".join(parts)
    return text + f"{secs}s" if secs or not text else text


def reflow_help(*typer_apps: typer.Typer) -> None:
    """Join the wrapped lines within each paragraph of the commands' docstrings.

    Typer 0.29 keeps a docstring's line breaks after the first paragraph, so a terminal narrower
    than the source lines broke sentences in two. Without them, rich wraps each paragraph to the
    terminal's width.
    """
    for typer_app in typer_apps:
        for command in typer_app.registered_commands:
            if command.help is not None or command.callback is None or not command.callback.__doc__:
                continue
            paragraphs = inspect.cleandoc(command.callback.__doc__).split("\n\n")
            command.help = "\n\n".join(" ".join(paragraph.split()) for paragraph in paragraphs)


reflow_help(app, rules_app)


def main() -> None:  # pragma: no cover - console entry point
    app()
