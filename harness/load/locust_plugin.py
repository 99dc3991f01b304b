"""Locust glue: command-line options, loading the target and scenario, configuring the user classes.

Imported by loadtests/locustfile.py. Options (also settable as environment variables or in
a locust.conf, like any Locust option):

  --target-file FILE     MAILHARNESS_TARGET     the server and accounts (docs/targets.md); must say disposable: true
  --scenario NAME|PATH   MAILHARNESS_SCENARIO   loadtests/scenarios/NAME.yaml or a path (default term-start)
  --ledger-dir DIR       MAILHARNESS_LEDGER_DIR where to journal deliveries/retrievals (lost/duplicated check)
  --think-scale F        MAILHARNESS_THINK_SCALE multiply all think times (0.1: a quick smoke run)
  --source-address RANGE MAILHARNESS_SOURCE_ADDRESS local addresses to connect from (overrides the scenario's)

Each process (master, every worker) loads the target and scenario itself at Locust's init
event; a worker learns its slice of the accounts from the master when the test starts.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
from dataclasses import dataclass, field

from locust import between, constant_throughput, events
from locust.runners import MasterRunner, WorkerRunner

from harness.errors import ConfigError, HarnessError, UnsafeAccount
from harness.known_secrets import ScrubbingFilter, ScrubbingStream
from harness.load import cheap_stats
from harness.load.accounts import AccountAllocator, AccountPlan
from harness.load.ledger import Ledger
from harness.load.open_files import raise_open_file_limit
from harness.load.scenario import Scenario, check_target_fits, load_scenario
from harness.load.source_addresses import SourceAddresses, parse_source_addresses
from harness.targets.target_file import Target, load_target

log = logging.getLogger("mailharness")
LAYOUT_MESSAGE = "mailharness_layout"


@dataclass
class LoadRun:
    """What every user of this process needs; hung on the Locust Environment as ``.mailharness``."""

    target: Target
    scenario: Scenario
    plan: AccountPlan
    ledger: Ledger | None
    timeout: float
    allocator: AccountAllocator | None = None
    sources: SourceAddresses = field(default_factory=lambda: SourceAddresses(None))  # local addresses, per user


def run_of(environment) -> LoadRun:
    run = getattr(environment, "mailharness", None)
    if run is None:
        raise HarnessError("the mailharness users need the locust_plugin init hook (import loadtests/locustfile.py)")
    return run


def configure_user_classes(environment, scenario: Scenario, think_scale: float = 1.0) -> None:
    """Keep the user kinds the scenario names, with its weights and think times; size the delivery.

    ``think_scale`` multiplies every think time (0.1: a quick smoke run of a scenario written for hours).
    """
    keep = []
    for cls in environment.user_classes:
        role = getattr(cls, "role", None)
        if role == "delivery":
            if scenario.delivery is None:
                continue
            cls.fixed_count = scenario.delivery.senders
            cls.wait_time = constant_throughput(scenario.delivery.rate / scenario.delivery.senders)
        elif role in scenario.users:
            kind = scenario.users[role]
            if kind.weight <= 0:
                continue
            cls.weight = kind.weight
            low, high = kind.think_time
            cls.wait_time = between(low * think_scale, high * think_scale)
        elif role is not None:
            continue
        keep.append(cls)
    if not keep:
        raise HarnessError(f"{scenario.source}: no user kind of the scenario is defined in the locustfile")
    environment.user_classes[:] = keep


def build_run(target_path: str, scenario_name: str, ledger_dir: str | None, source_address: str | None = None) -> LoadRun:
    """Load and check the target and scenario; refuses a target not marked disposable.

    ``source_address`` (--source-address) replaces the scenario's ``source_address:``."""
    target = load_target(target_path)
    if not target.disposable:  # as `mailharness load/seed/bench` do: the users below destroy and change mail
        raise UnsafeAccount(
            f"{target_path}: the load users delete mail (POP3 download-and-delete), set \\Seen flags and deliver "
            "new mail; add `disposable: true` to the target file only if its accounts are test accounts "
            "whose mail may be destroyed"
        )
    scenario = load_scenario(scenario_name)
    check_target_fits(scenario, target)
    plan = AccountPlan.for_scenario(target.accounts, scenario)
    return LoadRun(
        target=target,
        scenario=scenario,
        plan=plan,
        ledger=Ledger(ledger_dir) if ledger_dir else None,
        timeout=scenario.timeout or max(target.timeout, 10.0),
        sources=SourceAddresses(parse_source_addresses(source_address, "--source-address") if source_address
                                else list(scenario.source_addresses)),
    )


def _scrub_logs() -> None:
    """Locust's log file, console and printed tables mask the target's passwords (a server may echo one)."""
    sys.stdout, sys.stderr = ScrubbingStream(sys.stdout), ScrubbingStream(sys.stderr)
    scrubber = ScrubbingFilter()
    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    for logger in loggers:
        for handler in logger.handlers:
            if not any(isinstance(f, ScrubbingFilter) for f in handler.filters):
                handler.addFilter(scrubber)


@events.init_command_line_parser.add_listener
def _add_options(parser) -> None:
    group = parser.add_argument_group("mailharness", "Target and scenario for the POP3/IMAP users (see loadtests/README.md)")
    group.add_argument("--target-file", env_var="MAILHARNESS_TARGET", default=None,
                       help="Target file: server endpoints and accounts, marked `disposable: true` "
                            "(create one with `mailharness target up --write target.yaml`)")
    group.add_argument("--scenario", env_var="MAILHARNESS_SCENARIO", default="term-start",
                       help="Scenario name (loadtests/scenarios/NAME.yaml) or path to a YAML file. Default: term-start")
    group.add_argument("--ledger-dir", env_var="MAILHARNESS_LEDGER_DIR", default=None,
                       help="Journal deliveries and retrievals here, for the lost/duplicated check of `mailharness load`")
    group.add_argument("--think-scale", env_var="MAILHARNESS_THINK_SCALE", type=float, default=1.0,
                       help="Multiply the scenario's think times (0.1 for a quick smoke run). Default 1")
    group.add_argument("--source-address", env_var="MAILHARNESS_SOURCE_ADDRESS", default=None,
                       help="Local addresses to connect from, round-robin per user: 127.0.0.2-127.0.0.9 or a comma list "
                            "(overrides the scenario's source_address)")


@events.init.add_listener
def _on_init(environment, runner=None, **_kw) -> None:
    options = environment.parsed_options
    if options is None:
        return  # used as a library (e.g. the benchmark): the caller attaches the LoadRun itself
    if not options.target_file:
        sys.stderr.write(
            "mailharness: no target. Give --target-file FILE or set MAILHARNESS_TARGET.\n"
            "  Start a throwaway Dovecot with: mailharness target up --write target.yaml\n"
            "  or let `mailharness load` do everything (server, seeding, run, reports).\n"
        )
        raise SystemExit(2)
    try:
        run = build_run(options.target_file, options.scenario, options.ledger_dir, options.source_address)
        if not 0 < options.think_scale <= 100:
            raise HarnessError(f"--think-scale {options.think_scale}: give a factor above 0 (at most 100)")
        configure_user_classes(environment, run.scenario, options.think_scale)
    except HarnessError as exc:
        sys.stderr.write(f"mailharness: {exc}\n")
        raise SystemExit(exc.exit_code) from None
    environment.mailharness = run
    cheap = cheap_stats.install(environment.stats)  # the runner (local or worker) and its stats exist by now
    if not isinstance(runner, WorkerRunner) and options.csv_prefix:
        events.quit.add_listener(lambda **_: write_final_statistics(environment, options.csv_prefix))
    events.quit.add_listener(_exit_without_teardown)
    _scrub_logs()
    limit = raise_open_file_limit()
    log.info("mailharness: %s, scenario %s, accounts: %s; open files limit %d%s; request statistics: %s",
             run.target.name, run.scenario.name, run.plan.describe(), limit,
             f"; connecting from {', '.join(run.sources.addresses)}" if run.sources.addresses else "",
             "inline (harness/load/cheap_stats.py)" if cheap else "Locust's own")

    if isinstance(runner, WorkerRunner):
        def on_layout(environment, msg, **_):
            try:
                run.allocator = AccountAllocator(run.plan, msg.data["index"], msg.data["count"])
            except ConfigError as exc:
                run.allocator = None  # users refuse to start (see MailUser.on_start) rather than share mailboxes
                log.error("mailharness: %s", exc)

        runner.register_message(LAYOUT_MESSAGE, on_layout)


_exit_code: list[int] = []


def _exit_without_teardown(exit_code: int, **_kw) -> None:
    """Locust quits (run over, Ctrl-C, SIGTERM): once its files are written, leave without the interpreter's
    teardown, which takes 0.5-1 s on a busy machine (freeing gevent's and every module's objects) and would
    make a Ctrl-C of `mailharness load` wait for it. Fired last by Locust's shutdown; the exit itself
    happens in the atexit hook below, after Locust's own atexit work (its --processes workers)."""
    _exit_code.append(exit_code)


def _leave() -> None:
    if not _exit_code:
        return  # Locust did not shut down normally: the ordinary exit
    logging.shutdown()  # flush and close the log file
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(_exit_code[0])


atexit.register(_leave)  # at import, before Locust registers its own: atexit runs them last-first, so this runs last


def write_final_statistics(environment, prefix: str) -> None:
    """Locust rewrites its *_stats.csv and *_failures.csv once a second while it runs, and not at the end: a
    request that ends in the last second (a connect to a server that never greets, timing out as the run
    stops) would be missing from them, and from the error rate. Write them once more from the final numbers."""
    import csv

    from locust.stats import PERCENTILES_TO_REPORT, StatsCSV

    writer = StatsCSV(environment, PERCENTILES_TO_REPORT)
    for suffix, write in (("_stats.csv", writer.requests_csv), ("_failures.csv", writer.failures_csv),
                          ("_exceptions.csv", writer.exceptions_csv)):
        with open(prefix + suffix, "w", newline="") as out:
            write(csv.writer(out))


@events.test_start.add_listener
def _on_test_start(environment, **_kw) -> None:
    run = getattr(environment, "mailharness", None)
    runner = environment.runner
    if run is None:
        return
    if isinstance(runner, MasterRunner):
        # Sent before the spawn messages, so each worker knows its slice before its first user starts.
        workers = sorted(runner.clients.all, key=lambda c: runner.get_worker_index(c.id))
        for index, client in enumerate(workers):
            runner.send_message(LAYOUT_MESSAGE, {"index": index, "count": len(workers)}, client_id=client.id)
    elif isinstance(runner, WorkerRunner):
        if run.allocator is None:  # a master without this plugin: fall back to Locust's own numbering
            count = getattr(environment.parsed_options, "expect_workers", 1) or 1
            run.allocator = AccountAllocator(run.plan, max(0, runner.worker_index), count)
    elif run.allocator is None:  # kept if set: the benchmark's fd-table threads share it (bench_generator.py)
        run.allocator = AccountAllocator(run.plan, 0, 1)
