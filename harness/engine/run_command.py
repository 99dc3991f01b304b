"""`mailharness run`: suites -> pytest (+ xdist) -> results.json, junit.xml, report.html."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from harness.arguments import add_tls_argument, finite_float
from harness.errors import ConfigError
from harness.paths import suites_dir
from harness.targets.managed import DEFAULT_SERVER, server_class, server_names

DESCRIPTION = """\
Run conformance suites against a POP3/IMAP server and write reports.

Without --target, a throwaway server is started on 127.0.0.1 and removed
afterwards: Dovecot by default (Debian's dovecot-imapd, dovecot-pop3d,
dovecot-lmtpd), or the one --server names ({servers}).
It uses that server's profile (profiles/NAME.yaml) unless --profile says
otherwise. Each YAML test is a pytest item, so -k and -n work as in pytest.

examples:
  mailharness run                                  all bundled suites, embedded Dovecot
  mailharness run -n 2 -k "pop3 and deletion"      two workers, a subset
  mailharness run --server cyrus                   all bundled suites, throwaway Cyrus IMAP
  mailharness run --target staging.yaml --profile dovecot --report-dir reports/2.3.21
  mailharness run --suite my-suites/ --suite suites/imap/notification.yaml

writes (in --report-dir, default reports/latest):
  results.json   every test's outcome, message and transcript (docs/results.md)
  junit.xml      for CI systems
  report.html    one self-contained page to read

exit codes: 0 every test ran and passed (or deviated as its profile expects); failed SHOULD
              checks (warnings) and optional MAY behaviour do not fail the run unless --strict,
            1 failures (or a profile's expected failure now passes; or warnings with --strict),
            2 usage, configuration or malformed-suite errors, an unusable target, no matching test,
              or an incomplete run (--collect-only, every test skipped); the reports say why,
            130 / 143 interrupted by Ctrl-C / SIGTERM (reports are written for the part that ran).
""".format(servers=", ".join(server_names()))


def add_arguments(p) -> None:
    p.add_argument("--target", type=Path, metavar="FILE", help="target file (docs/targets.md); default: a managed server (--server)")
    p.add_argument("--server", metavar="NAME", help=f"managed server to start when no --target: {', '.join(server_names())} (default {DEFAULT_SERVER})")
    p.add_argument("--accounts", type=int, metavar="N", help="accounts of the managed server (default 40; not with --target)")
    add_tls_argument(p, "the managed server")
    p.add_argument("--suite", type=Path, action="append", metavar="PATH", help="suite file or directory (repeatable; default: the bundled suites)")
    p.add_argument("-k", dest="keyword", metavar="EXPR", help="only tests matching this pytest -k expression (ids, areas, file names)")
    p.add_argument("-n", dest="workers", type=int, metavar="WORKERS",
                   help="parallel workers (pytest-xdist); 0 runs in one process. Default: for a run of "
                        f"{AUTO_MIN_TESTS}+ tests without -k, twice the usable cores (at most {AUTO_MAX_WORKERS}): the tests "
                        "mostly wait for the server; fewer where the accounts run short (a worker owns every n-th); else 0")
    p.add_argument("--lanes", type=int, metavar="N",
                   help="tests each worker runs at once, reported in order (a test mostly waits for the server). "
                        "Default: 4 on a managed server, 1 on a --target (your server's limits and login delays)")
    p.add_argument("--profile", metavar="NAME|FILE", help="server profile of expected deviations (default: the target's)")
    p.add_argument("--report-dir", type=Path, default=Path("reports/latest"), metavar="DIR", help="where reports go (default reports/latest)")
    p.add_argument("--timeout", type=finite_float, metavar="SECONDS", help="default per-step timeout (default 5, or the target's)")
    p.add_argument("--strict", action="store_true", help="a failed SHOULD check (outcome warning) fails the run (exit 1)")
    p.add_argument("--durations", type=int, metavar="N",
                   help="after the summary, the time per phase (setup, connect, steps, waits, cleanup) and the N slowest "
                        "tests with theirs (0: every test, as pytest's --durations)")
    p.add_argument("-v", "--verbose", action="store_true", help="one line per test while running")
    p.add_argument("--pytest-arg", action="append", default=[], metavar="ARG", help="pass an extra argument to pytest (repeatable)")


AUTO_MIN_TESTS = 60  # below this, starting workers (each imports and collects everything) costs more than it saves
AUTO_MAX_WORKERS = 4
DEFAULT_ACCOUNTS = 40  # a managed server's, as the plugin's --mh-accounts
ACCOUNTS_PER_TEST = 2  # the most any bundled test takes (`accounts: 2`)


def auto_workers(args, suites: list[Path]) -> int:
    """The default -n. A test waits on the server far more than it computes (a login, a round trip, IDLE's
    push), so workers beyond the cores still pay; but each needs its own accounts, and a short run is faster
    in one process."""
    from harness.engine.suite_files import suite_files, test_ids

    if args.keyword or len(test_ids(suite_files(suites))) < AUTO_MIN_TESTS:
        return 0
    if args.target:
        from harness.targets.target_file import load_target

        accounts = len(load_target(args.target).accounts)
    else:
        accounts = args.accounts or DEFAULT_ACCOUNTS
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = min(AUTO_MAX_WORKERS, 2 * cores, accounts // ACCOUNTS_PER_TEST)
    return workers if workers > 1 else 0


def pytest_args(args) -> list[str]:
    if args.timeout is not None and not 0 < args.timeout <= 3600:
        raise ConfigError("--timeout must be above 0 and at most 3600 seconds")
    suites = args.suite or [suites_dir()]
    for suite in suites:
        if not suite.exists():
            raise ConfigError(f"{suite}: no such suite file or directory")
    _refuse_unmarked_suites(suites)
    if args.target and not args.target.exists():
        raise ConfigError(f"{args.target}: target file not found")
    if args.target and args.server:
        raise ConfigError("give --target FILE (your server) or --server NAME (a managed one), not both")
    if args.server:
        server_class(args.server)  # an unknown name or a missing module: exit 2 before pytest starts
    if args.tls and args.target:
        raise ConfigError("--tls sets up a managed server's TLS; a --target file says its own (imaps:, starttls:, tls:, ca_file:)")
    if args.accounts is not None and (args.target or args.accounts < 1):
        raise ConfigError("--accounts N (at least 1) sets up a managed server's accounts; a --target file lists its own")
    if args.workers is None:
        args.workers = auto_workers(args, suites)
    if args.workers < 0:
        raise ConfigError("-n must be 0 or more")
    lanes = getattr(args, "lanes", None)
    if lanes is not None and lanes < 1:
        raise ConfigError("--lanes must be 1 or more")
    if (getattr(args, "durations", None) or 0) < 0:
        raise ConfigError("--durations must be 0 or more")
    report_dir: Path = args.report_dir
    out = [
        "-p", "harness.engine.plugin",
        "-p", "no:cacheprovider",
        # Its clean-up runs gc.collect() five times at the end (0.5 s on a busy machine, also after Ctrl-C or
        # SIGTERM) to find unraisable exceptions, which would only become warnings about our own code.
        "-p", "no:unraisableexception",
        # Suites are YAML, not Python asserts: rewriting asserts would only recompile the harness's own modules
        # (pytest rewrites every module of a plugin's distribution) in each process of each run.
        "--assert=plain",
        "-c", os.devnull,  # the project's own pytest settings are not the suites' settings
        "--rootdir", str(Path.cwd()),
        "--mh-results", str(report_dir / "results.json"),
        "--junitxml", str(report_dir / "junit.xml"),
        "-o", "junit_family=xunit2",
        "-v" if args.verbose else "-q",
        "--no-header",
        "-r", "fEX",
        "--tb=short",
    ]
    if args.workers:
        out += ["-n", str(args.workers)]
    if args.target:
        out += ["--mh-target", str(args.target)]
    if args.server:
        out += ["--mh-server", args.server]
    if args.accounts:
        out += ["--mh-accounts", str(args.accounts)]
    if lanes:
        out += ["--mh-lanes", str(lanes)]
    if args.tls:
        out += ["--mh-tls", args.tls]
    if args.profile:
        out += ["--mh-profile", args.profile]
    if args.keyword:
        out += ["-k", args.keyword]
    if args.timeout:
        out += ["--mh-timeout", str(args.timeout)]
    if getattr(args, "strict", False):
        out += ["--mh-strict"]
    out += args.pytest_arg
    out += [_display_path(s) for s in suites]
    return out


def _refuse_unmarked_suites(suites: list[Path]) -> None:
    """pytest collects only YAML files with a top-level `suite:` key; one named (or found) here without it
    would silently not run, so stop and say so."""
    from harness.engine.suite_files import is_suite_file, is_unmarked_suite, yaml_files

    problems = []
    for path in suites:
        if path.is_file() and not is_suite_file(path):
            problems.append(f"{path}:1: not a suite file: it has no top-level `suite:` key (a title, e.g. `suite: POP3 deletion`)")
        elif path.is_dir():
            problems += [f"{p}:1: has `tests:` but no top-level `suite:` key, so it would not run; add `suite: TITLE`"
                         for p in yaml_files([path]) if is_unmarked_suite(p)]
    if problems:
        raise ConfigError("\n".join(problems))


def _display_path(path: Path) -> str:
    """Relative to the working directory when inside it: failures then read suites/pop3/x.yaml:12."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve())) or "."
    except ValueError:
        return str(path)


# pytest exit codes -> ours
_EXIT = {0: 0, 1: 1, 2: 2, 3: 2, 4: 2, 5: 2}


def _prepare_report() -> None:
    """Import and compile report.html's template before the tests end: after Ctrl-C or SIGTERM that work (0.2 s
    on a busy machine) would delay the exit; at the end of a normal run it is the same work."""
    from harness.reports.rendering import environment

    environment().get_template("report.html.j2")


class _ReportPreparer:
    """Prepares the report once the first test has reported, not before the run: while the workers start, import
    and collect, the controller's time (and a core) is theirs."""

    prepared = False

    def pytest_runtest_logreport(self, report) -> None:
        if not self.prepared:
            self.prepared = True
            try:
                _prepare_report()
            except Exception:  # noqa: BLE001 - writing the report at the end says what is wrong
                pass


def run(args) -> int:
    import pytest

    argv = pytest_args(args)
    args.report_dir.mkdir(parents=True, exist_ok=True)
    results_path = args.report_dir / "results.json"
    results_path.unlink(missing_ok=True)
    os.environ["MAILHARNESS_COMMAND"] = "mailharness " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    code = int(pytest.main(argv, plugins=[_ReportPreparer()]))
    if code == 5:
        print("mailharness run: no tests matched (check --suite and -k)", file=sys.stderr)
    if not results_path.exists():
        return _EXIT.get(code, 2)
    from harness.reports.html_report import write_html_report
    from harness.reports.results import load_results
    from harness.reports.terminal import print_summary

    results = load_results(results_path)
    write_html_report(results, args.report_dir / "report.html")
    print()
    print_summary(results, sys.stdout)
    if getattr(args, "durations", None) is not None:
        from harness.reports.durations import print_durations

        print_durations(results, args.durations, sys.stdout)
    for warning in (results.get("target") or {}).get("warnings") or []:
        print(f"warning: {warning}")
    print(f"reports: {args.report_dir}/report.html, results.json, junit.xml")
    return verdict_exit_code(results, code)


# Signals that interrupted a run -> the shell's convention (128 + signal number).
_SIGNAL_EXIT = {"Ctrl-C": 130, "SIGINT": 130, "SIGTERM": 143}


def verdict_exit_code(results: dict, pytest_code: int) -> int:
    """The exit code follows the verdict the reports show, so CI and the reader never disagree."""
    verdict = results["verdict"]
    if verdict == "pass":
        return 0 if pytest_code == 0 else _EXIT.get(pytest_code, 2)
    if verdict == "fail":
        return 1
    interrupted = results.get("run", {}).get("interrupted")
    if verdict == "incomplete" and interrupted:
        return _SIGNAL_EXIT.get(interrupted, 130)
    return 2
