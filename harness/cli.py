"""The `mailharness` command line: one subcommand per job, each defined next to the code it drives."""

from __future__ import annotations

import argparse
import gc
import importlib
import sys

from harness import __version__, interrupts
from harness.errors import HarnessError
from harness.known_secrets import scrubbed_terminal

# name -> module with add_arguments(parser) and run(args) -> exit code.
# Modules are light at import time (no locust/gevent) so `mailharness --help` stays fast.
COMMANDS = {
    "run": ("harness.engine.run_command", "run conformance suites against a server and write reports"),
    "validate": ("harness.engine.validate_command", "check suite, profile and target files without a server"),
    "list": ("harness.engine.list_command", "list the tests a run would select (-k, -m), without a server"),
    "init": ("harness.engine.init_command", "write an example suite and target file to start from"),
    "target": ("harness.targets.command", "start/stop a managed server (Dovecot, Cyrus, ...), or check a target file"),
    "seed": ("harness.load.seed_command", "fill the target's accounts with messages for load tests"),
    "load": ("harness.load.load_command", "run a Locust load scenario and write capacity reports"),
    "stress": ("harness.stress.command", "random concurrent sessions per mailbox, every response checked against a model"),
    "bench": ("harness.load.bench_command", "measure the load generator's commands per CPU-second"),
    "compare": ("harness.reports.compare", "diff two results.json files (release certification)"),
    "matrix": ("harness.reports.matrix", "one HTML table of several runs: servers by tests"),
}

DESCRIPTION = """\
Conformance and load testing for POP3 and IMAP servers.

Typical use:
  mailharness run                          suites against a throwaway local Dovecot
  mailharness run --target staging.yaml    suites against your server (see docs/targets.md)
  mailharness compare last.json new.json   regressions between two runs
  mailharness load --scenario term-start   a capacity test (see loadtests/README.md)

Exit codes: 0 all as expected, 1 test failures or threshold breaches, 2 usage or configuration errors.
"""


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """Only the selected subcommand's module is imported: `--help` and each command start fast."""
    parser = argparse.ArgumentParser(
        prog="mailharness", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"mailharness {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name) if name == selected else None
        p = sub.add_parser(
            name,
            help=help_text,
            description=getattr(module, "DESCRIPTION", help_text),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if module:
            module.add_arguments(p)
            p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    with scrubbed_terminal():  # a server may echo a password into any message we print
        return _main(sys.argv[1:] if argv is None else argv)


def _main(argv: list[str]) -> int:
    selected = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(selected if selected in COMMANDS else None)
    args = parser.parse_args(argv)
    if not getattr(args, "_module", None):
        parser.print_help()
        return 2
    if args.command != "run":  # run's pytest plugin installs its own, which also marks the reports
        interrupts.sigterm_interrupts()
    try:
        return int(args._module.run(args) or 0)
    except HarnessError as exc:
        print(f"mailharness {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # an unwritable --report-dir, a missing directory for --write, ...
        print(f"mailharness {args.command}: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mailharness {args.command}: interrupted ({interrupts.describe()})", file=sys.stderr)
        return interrupts.exit_code()


def entry() -> None:
    """The program (`mailharness`, `python -m harness.cli`); tests call main() in-process instead."""
    code = main()
    # The process ends next: the interpreter's final garbage collections would walk every object left (pytest's,
    # jinja's, the run's results; a quarter of a second after `run`) to free memory the exit frees anyway. Frozen
    # objects are not walked; atexit handlers and module teardown still run.
    gc.freeze()
    if code in (130, 143):  # interrupted (Ctrl-C, SIGTERM): leave without the interpreter's slow teardown
        interrupts.leave(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
