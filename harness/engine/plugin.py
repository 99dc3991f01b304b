"""The pytest plugin: every test in a suite YAML file becomes a pytest item.

Installed as a pytest11 entry point (plain ``pytest suites/`` works; ``-p
harness.engine.plugin`` loads it where autoloading is off), so ``-k``, ``-n``
(xdist), ``--junitxml`` and markers work as pytest users expect. It collects only
suite files (a top-level ``suite:`` key, see suite_files.py) and starts or probes
a server only when a run holds suites: other projects' pytest runs in the same
environment are left alone.

The controller process owns the target: it loads the target file or starts a
managed server (--mh-server, default the embedded Dovecot), probes it once, and
hands both to xdist workers through ``workerinput``. The controller also gathers
every report into results.json.
"""

from __future__ import annotations

import functools
import gc
import json
import os
import re
import signal
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from imapclient.exceptions import IMAPClientError

from harness import __version__
from harness.engine import accounts, pop3_accounts
from harness.engine.account_pool import AccountPool
from harness.engine.accounts import AdminConnections
from harness.engine.credentials import greeting_timestamp
from harness.engine.foreign_mail import ForeignMail
from harness.engine.lanes import Lane, Lanes, lane_scheduling, reraise
from harness.engine.mailboxes import MailboxMap, Namespace
from harness.engine.suite_cache import load_suite  # model.load_suite, kept between runs
from harness.engine.phases import PhaseClock
from harness.engine.profiles import Profile, load_profile
from harness.engine.runner import SoftDeviation, StepFailure, StepSkipped, TestRun
from harness.engine.suite_files import is_suite_file, suite_files
from harness.errors import ConfigError, HarnessError, TargetUnavailable, UnsafeAccount
from harness.known_secrets import SECRETS, scrub
from harness.sessions import SessionError
from harness.sessions.transcript import Transcript
from harness.targets.target_file import Account, load_target


# Tests each process runs at once against a managed server (lanes.py): enough for the other tests' work to
# fill a test's wait for the server; each lane is a few more sessions at once.
MANAGED_LANES = 4


def pytest_addoption(parser):
    group = parser.getgroup("mailharness", "mailharness suite engine")
    group.addoption("--mh-target", metavar="FILE", help="target file; without it a managed server is started (--mh-server)")
    group.addoption("--mh-server", metavar="NAME", help="managed server to start when no --mh-target: dovecot (default), cyrus, mailutils, dovecot-stock")
    group.addoption("--mh-profile", metavar="NAME|FILE", help="server profile (default: the target's `profile`)")
    group.addoption("--mh-results", metavar="FILE", help="write results.json here")
    group.addoption("--mh-timeout", type=float, metavar="SECONDS", help="default per-step timeout")
    group.addoption("--mh-accounts", type=int, default=40, metavar="N", help="accounts of the managed server")
    group.addoption("--mh-tls", choices=["implicit", "starttls"], metavar="MODE",
                    help="the managed server serves TLS (refusing plaintext logins before it); the sessions use "
                         "implicit TLS or STARTTLS")
    group.addoption("--mh-strict", action="store_true", help="a failed SHOULD check (outcome warning) fails the run")
    group.addoption("--mh-lanes", type=int, metavar="N",
                    help=f"tests each process runs at once (lanes.py); default {MANAGED_LANES} on a managed server, 1 on --mh-target")


def _is_worker(config) -> bool:
    return hasattr(config, "workerinput")


class HarnessState:
    """Per-process state: the target, its probed identity, the profile, this worker's accounts."""

    def __init__(self, config):
        self.config = config
        self.managed = None  # the managed server this process started, if any
        self.target = None
        self.target_file: str | None = None
        self.probe: dict = {}
        self.profile: Profile | None = None
        self.pool: AccountPool | None = None
        self.results: dict[str, dict] = {}
        # What happened around the tests, for the verdict (results.summarize): never PASS for what did not run.
        self.collected: int | None = None
        self.collection_errors: list[str] = []
        self.run_error: str | None = None
        self.account_warnings: list[str] = []  # disposable accounts that hold mail the harness did not create
        self.interrupted: str | None = None
        self.signal: str | None = None  # set by the SIGTERM handler before it interrupts
        self.active = False  # the run holds suites (decided at session start, see _run_has_suites)
        self.suite_paths: list[Path] = []
        self.flat_folders: str | None = None  # why new folders cannot have children; None: unknown yet or they can
        self.hierarchy_checked = False
        self.started_at = datetime.now(timezone.utc)
        self.t0 = time.monotonic()
        # Tests in a row whose step got no answer in time, per protocol: a hung server ends the run quickly.
        self.timeouts_in_a_row: dict[str, int] = {}
        self.start_seconds: float | None = None  # starting (or loading) the target and probing it, wall
        self._admin: AdminConnections | None = None
        # disposable accounts this process's tests used, emptied at its end (see _cleanup)
        self.used_accounts: dict[str, Account] = {}
        self.server_is_throwaway = False  # a managed server, removed with its mail after the run
        self._lanes: Lanes | None = None
        # A managed server starting while xdist starts the workers (start_in_background), and how it ended.
        self._starting: threading.Thread | None = None
        self._start_error: BaseException | None = None
        self.ready_file: str | None = None  # the controller writes the probe here once the target is up
        self.start_failed = False

    # controller: start or load the target, check the accounts are safe to use
    def start(self) -> None:
        started = time.monotonic()
        try:
            self._start()
        finally:
            self.start_seconds = round(time.monotonic() - started, 3)

    def _start(self) -> None:
        from harness.targets.probe import probe_target

        option = self.config.getoption("--mh-target")
        server = self.config.getoption("--mh-server")
        if option and server:
            raise ConfigError("give --mh-target FILE or --mh-server NAME, not both")
        if option:
            self.target_file = option
            self.target = load_target(option)
        else:
            if self.managed is None:
                self._make_managed()
            self.target = self.managed.start()
            self.target.dump(Path(self.target_file))
        if self.target.imap is None and self.target.delivery is None:  # nothing could store a test's mail
            raise ConfigError(
                f"target {self.target.name} has neither an imap: endpoint nor lmtp:/smtp:. The harness stores each test's "
                "mail over IMAP, or on a POP3-only target delivers it over LMTP or SMTP (POP3 cannot store mail): "
                "add the IMAP URL of the same mail store, or its lmtp:/smtp: delivery endpoint."
            )
        self.probe = probe_target(self.target)
        if self.probe.get("errors"):
            raise HarnessError(f"target {self.target.name}: " + "; ".join(self.probe["errors"]))
        if self.target.disposable and self.managed is None:  # a server of the user's: say what will be deleted
            self.account_warnings = self._held_by_disposable_accounts()
            for warning in self.account_warnings:
                self._warn(warning)
        if not self.target.disposable:
            for account in self.target.accounts:
                try:
                    held = _store_for(self.target).inspect_account(self.target, account)
                except (IMAPClientError, OSError, SessionError) as exc:
                    raise TargetUnavailable(f"cannot inspect account {account.user} over {_store_protocol(self.target)}: {exc}") from None
                if held:
                    raise UnsafeAccount(
                        f"account {account.user} holds mail the harness did not create ({', '.join(held[:5])}); "
                        "refusing to run. Use empty accounts, or set `disposable: true` in the target file "
                        "if everything in these accounts may be deleted."
                    )

    def _make_managed(self) -> None:
        """The managed server, not started yet: its temp dir exists, and in it the (empty) target file."""
        from harness.targets.managed import DEFAULT_SERVER, managed_server

        tls = self.config.getoption("--mh-tls")
        self.managed = managed_server(self.config.getoption("--mh-server") or DEFAULT_SERVER,
                                      accounts=self.config.getoption("--mh-accounts"), **({"tls": tls} if tls else {}))
        self.server_is_throwaway = True
        fd, self.target_file = tempfile.mkstemp(prefix="target-", suffix=".yaml", dir=self.managed.root)
        os.close(fd)

    def start_in_background(self) -> None:
        """Controller, xdist, a managed server: it starts (and is probed) in a thread while xdist starts the workers,
        which import and collect for most of a second and wait for it only after their collection
        (wait_for_target). The controller waits for it before it hands out any test (finish_start)."""
        self._make_managed()
        self.ready_file = self.target_file + ".ready"

        def start() -> None:
            outcome: dict = {}
            try:
                self.start()
                outcome = {"probe": self.probe}
            except BaseException as exc:  # noqa: BLE001 - finish_start raises it in the main thread
                self._start_error = exc
                outcome = {"error": str(exc)}
            finally:
                _write_atomically(Path(self.ready_file), json.dumps(outcome))

        self._starting = threading.Thread(target=start, name="mailharness-target-start", daemon=True)
        self._starting.start()

    def finish_start(self) -> None:
        """Controller: wait for start_in_background's thread; its failure is raised here."""
        thread, self._starting = self._starting, None
        if thread is not None:
            thread.join()
        if self._start_error is not None:
            raise self._start_error

    def _abandon_start(self) -> None:
        """Kill what the background start has started until its thread gives up (a server that is gone fails its
        start or its probe at once), so that the stop that follows finds the server up or gone, never starting."""
        thread, self._starting = self._starting, None
        while thread.is_alive():
            for proc in list(self.managed.procs.values()) if self.managed else []:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except OSError:
                    pass
            thread.join(0.05)

    def wait_for_target(self, timeout: float) -> None:
        """Worker: the controller started the target in the background; attach once it says it is up. Its temp dir
        gone, or a failure in the signal: the controller reports the run as not started, so this worker stays idle."""
        deadline = time.monotonic() + timeout
        ready = Path(self.ready_file)
        while not ready.exists():
            if not ready.parent.is_dir() or time.monotonic() > deadline:
                return
            time.sleep(0.005)
        try:
            outcome = json.loads(ready.read_text())
        except (OSError, ValueError):
            return
        if "probe" in outcome:
            self.target = load_target(self.target_file)
            self.probe = outcome["probe"]
            self.ready_file = None
            self.load_profile()

    def _held_by_disposable_accounts(self) -> list[str]:
        out = []
        for account in self.target.accounts:
            try:
                held = _store_for(self.target).inspect_account(self.target, account)
            except (IMAPClientError, OSError, SessionError):
                continue  # its test's set-up will say what is wrong with it
            if held:
                out.append(f"account {account.user} holds mail the harness did not create ({', '.join(held[:5])}); "
                           "the target says `disposable: true`, so the run empties it")
        return out

    def _warn(self, text: str) -> None:
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"warning: {text}", yellow=True, bold=True)
        else:
            print(f"mailharness: warning: {text}", file=sys.stderr)

    def attach(self, workerinput: dict) -> None:
        self.target_file = workerinput["mh_target_file"]
        self.server_is_throwaway = workerinput.get("mh_throwaway", False)
        if workerinput.get("mh_ready_file"):  # still starting: see wait_for_target
            self.ready_file = workerinput["mh_ready_file"]
            return
        self.target = load_target(self.target_file)
        self.probe = json.loads(workerinput["mh_probe"])

    def load_profile(self) -> None:
        name = self.config.getoption("--mh-profile") or (self.target.profile if self.target else self._managed_profile())
        self.profile = load_profile(name) if name else None

    def _managed_profile(self) -> str | None:
        """Listing tests (--collect-only) starts no server, yet shows the managed server's profile."""
        if self.config.getoption("--mh-target"):
            return None
        from harness.targets.managed import DEFAULT_SERVER, server_class

        return server_class(self.config.getoption("--mh-server") or DEFAULT_SERVER).PROFILE

    @property
    def default_timeout(self) -> float:
        """Per-step seconds where neither step nor test says: --mh-timeout, else the target's."""
        return self.config.getoption("--mh-timeout") or self.target.timeout

    def account_pool(self) -> AccountPool:
        if self.pool is None:
            wi = getattr(self.config, "workerinput", None)
            index, count = (int(wi["workerid"].removeprefix("gw")), int(wi["workercount"])) if wi else (0, 1)
            self.pool = AccountPool(self.target.accounts, index, count)
        return self.pool

    @property
    def lane_width(self) -> int:
        """How many tests a process runs at once: --mh-lanes, else several on a throwaway server of ours and
        one on a server of the user's (its limits and login delays are not ours to load)."""
        return self.config.getoption("--mh-lanes") or (MANAGED_LANES if self.server_is_throwaway else 1)

    @property
    def lanes(self) -> Lanes:
        """This process's lanes (lanes.py)."""
        if self._lanes is None:
            self._lanes = Lanes(self.lane_width)
            if self._lanes.enabled:
                self.admin  # made here, before any lane could race to make it
        return self._lanes

    @property
    def admin(self) -> AdminConnections:
        """This process's kept-alive set-up connections (accounts.AdminConnections)."""
        if self._admin is None:
            self._admin = AdminConnections(self.target)
        return self._admin

    def _empty_used_accounts(self) -> None:
        """Leave the disposable accounts of a server of the user's empty, as a per-test clean-up would have; a
        throwaway server goes with its mail, and an interrupted run leaves at once (the next run empties them)."""
        used, self.used_accounts = self.used_accounts, {}
        if not used or self.server_is_throwaway or self.interrupted or self.signal:
            return
        for account in used.values():
            try:
                accounts.prepare(self.target, account, self.admin)
            except (HarnessError, IMAPClientError, OSError) as exc:
                self._warn(f"could not empty account {account.user} after the run: {exc}")

    def close_admin(self) -> None:
        if self._admin is not None:
            self._admin.close()
            self._admin = None

    def stop(self) -> None:
        if self._starting is not None:  # the run ends (Ctrl-C, SIGTERM) while the server starts in the background
            self._abandon_start()
        if self._lanes is not None and not (self.interrupted or self.signal or self.server_is_throwaway):
            self._lanes.drain()  # tests started ahead (then -x stopped the run) still use their accounts
        self._empty_used_accounts()
        self.close_admin()
        if self.managed:
            # A throwaway server: its graceful shutdown (Dovecot's master takes a second) is of no use once the
            # run is over, as its temp dir, logs and mail go next; stopped at once, as after Ctrl-C/SIGTERM.
            self.managed.stop(timeout=0)
            self.managed = None


def pytest_configure(config):
    config.addinivalue_line("markers", "mailharness: a test from a suite YAML file")
    state = HarnessState(config)
    config._mailharness = state
    if _is_worker(config):
        if config.workerinput.get("mh_active"):  # the controller found suites and set up their target
            state.active = True
            if config.workerinput.get("mh_target_file"):
                state.attach(config.workerinput)
            if state.ready_file is None:
                state.load_profile()
    else:
        config.pluginmanager.register(ResultsCollector(state), "mailharness-results")


def _interrupt_on_sigterm(state: HarnessState) -> None:
    """SIGTERM ends the run like Ctrl-C: pytest stops, clean-up runs and the reports say the run was interrupted."""
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return  # someone (a caller embedding pytest) already handles it

    def interrupt(signum, frame):
        state.signal = signal.Signals(signum).name
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread
        pass


@pytest.hookimpl(tryfirst=True)  # before xdist starts its workers: they need the target
def pytest_sessionstart(session):
    config = session.config
    if _is_worker(config) or not _run_has_suites(config):
        return  # another project's run (or nothing of ours): no server, no profile
    _activate(config._mailharness)


def _activate(state: HarnessState) -> None:
    """Controller: load the profile and start (or load) the target; a listing needs no server."""
    config = state.config
    state.active = True
    _interrupt_on_sigterm(state)  # only in runs of suites: other projects' pytest runs keep their signal handling
    try:
        if config.option.collectonly:  # listing tests needs the profile, not a server
            if config.getoption("--mh-target"):
                state.target = load_target(config.getoption("--mh-target"))
        elif _starts_in_background(config):
            state.start_in_background()
            return  # the profile once the target is up: pytest_runtestloop
        else:
            state.start()
        state.load_profile()
        _check_profile_ids(state)
    except HarnessError as exc:
        _start_failed(state, exc)


def _starts_in_background(config) -> bool:
    """A managed server under xdist starts while the workers start (a target of the user's is loaded, probed and
    checked for foreign mail before any worker exists, as before)."""
    return bool(getattr(config.option, "numprocesses", None)) and not config.getoption("--mh-target")


def _start_failed(state: HarnessState, exc: HarnessError) -> None:
    state.stop()
    # pytest does not finish a session whose start failed, so the reports are written here: they must say
    # the run did not happen, not show an empty PASS.
    state.run_error = str(exc)
    _write_start_failure(state.config, state)
    raise pytest.UsageError(str(exc)) from None


@pytest.hookimpl(tryfirst=True)  # before xdist's loop hands out the first test
def pytest_runtestloop(session):
    state: HarnessState = session.config._mailharness
    if _is_worker(session.config):
        # a worker whose target never came up ends at once, instead of waiting for tests that will not come
        return True if state.start_failed else None
    if state._starting is None:
        return None
    try:
        state.finish_start()
        state.load_profile()
        _check_profile_ids(state)
    except HarnessError as exc:
        state.start_failed = True  # the session goes on to its end: junit.xml is written again there
        _start_failed(state, exc)
    return None


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)  # the temp dir went with a failed start: the workers see it gone


def _write_start_failure(config, state: HarnessState) -> None:
    results = config.getoption("--mh-results")
    if results:
        write_results(state, Path(results))
    xmlpath = getattr(config.option, "xmlpath", None)
    if xmlpath:
        write_error_junit(Path(xmlpath), f"the run could not start: {state.run_error}")


def write_error_junit(path: Path, message: str) -> None:
    """A junit.xml with one error, for CI systems, when pytest wrote none."""
    import xml.etree.ElementTree as ET

    suites = ET.Element("testsuites")
    suite = ET.SubElement(suites, "testsuite", name="mailharness", errors="1", failures="0", skipped="0", tests="1", time="0")
    case = ET.SubElement(suite, "testcase", classname="mailharness", name="run")
    ET.SubElement(case, "error", message=message).text = message
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(suites).write(path, encoding="utf-8", xml_declaration=True)


def _check_profile_ids(state: HarnessState) -> None:
    """A deviation whose id matches no test (a typo, a renamed test) would silently not apply: refuse the run,
    as `validate` does. Ids of the bundled suites count too, so a subset run with a full profile is fine."""
    if state.profile is None:
        return
    from harness.engine.suite_files import test_ids
    from harness.paths import suites_dir

    problems = state.profile.unused_problems(test_ids(state.suite_paths + suite_files([suites_dir()])))
    if problems:
        raise ConfigError(problems=problems)


def _run_has_suites(config) -> bool:
    """Do the run's paths (arguments, else testpaths) hold a suite file? Decided before collection:
    under xdist the controller collects nothing, yet must start the target before the workers."""
    base = config.invocation_params.dir
    paths = []
    for arg in config.args:
        path = Path(str(arg).split("::")[0])
        paths.append(path if path.is_absolute() else base / path)
    try:
        skip = list(config.getini("norecursedirs"))
    except ValueError:
        skip = None
    found = suite_files(paths, skip) if skip is not None else suite_files(paths)
    config._mailharness.suite_paths = found
    return bool(found)


@pytest.hookimpl(optionalhook=True)  # an xdist hook: without xdist there is nothing to schedule
def pytest_xdist_make_scheduler(config, log):
    state: HarnessState = config._mailharness
    if state.active and state.target is not None and state.lane_width > 1 and config.getvalue("dist") == "load":
        return lane_scheduling(config, log, state.lane_width)
    return None


def pytest_configure_node(node):
    """xdist hook (controller side): tell a worker which target to use."""
    state: HarnessState = node.config._mailharness
    node.workerinput["mh_active"] = state.active
    node.workerinput["mh_target_file"] = state.target_file
    node.workerinput["mh_throwaway"] = state.server_is_throwaway
    node.workerinput["mh_probe"] = json.dumps(state.probe)
    node.workerinput["mh_ready_file"] = state.ready_file


def pytest_collect_file(file_path: Path, parent):
    if is_suite_file(file_path):  # only files with a top-level `suite:` key: other YAML is not ours
        return SuiteFile.from_parent(parent, path=file_path)
    return None


def _shown_path(path: Path) -> Path:
    """Relative to the working directory when inside it, so failures read suites/pop3/x.yaml:12."""
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


class SuiteFile(pytest.File):
    def collect(self):
        try:
            specs = load_suite(_shown_path(self.path))
        except HarnessError as exc:
            raise self.CollectError(f"malformed suite: {exc}") from None
        for spec in specs:
            _register_markers(self.config, spec)
            yield SuiteItem.from_parent(self, name=spec.id, spec=spec)


PROTOCOL_MARKERS = {"pop3": "a test that speaks POP3", "imap": "a test that speaks IMAP"}
LEVEL_MARKERS = {"must": "a MUST of the RFC: a failure fails the run", "should": "a SHOULD of the RFC",
                 "may": "a MAY of the RFC: behaviour, reported"}


def marker_names(spec) -> list[str]:
    """-m selects by area, protocol (both for cross-protocol tests), requirement level and free tags."""
    names = [spec.area, *spec.protocol.split("+")]
    # the test's level, and those its steps set: `-m should` finds every test that checks a SHOULD
    levels = [getattr(spec, "level", None)] + [getattr(step, "level", None) for step in spec.steps]
    names += [str(level).lower() for level in levels if level]
    return list(dict.fromkeys(names + list(spec.tags)))


def _register_markers(config, spec) -> None:
    """Registered when suites are collected (not at configure time: other projects' runs keep their own
    --strict-markers checks), so `-m deletion` works under --strict-markers too."""
    known = config.stash.get(_MARKERS_KEY, None)
    if known is None:  # the fixed vocabulary at once, so `-m imap` is valid even where no test speaks IMAP
        known = config.stash[_MARKERS_KEY] = set()
        from harness.yaml_source import load_schema

        for area in load_schema("suite.schema.json")["$defs"]["area"]["enum"]:
            config.addinivalue_line("markers", f"{area}: suite area {area} (mailharness)")
            known.add(area)
        for name, what in {**PROTOCOL_MARKERS, **LEVEL_MARKERS}.items():
            config.addinivalue_line("markers", f"{name}: {what} (mailharness)")
            known.add(name)
    for name in marker_names(spec):
        if name not in known:
            known.add(name)
            what = PROTOCOL_MARKERS.get(name) or LEVEL_MARKERS.get(name) or (
                f"suite area {name}" if name == spec.area else f"suite tag {name}")
            config.addinivalue_line("markers", f"{name}: {what} (mailharness)")


_MARKERS_KEY = pytest.StashKey[set]()


class SetupError(HarnessError):
    """The harness could not bring the accounts into the test's starting state (or back)."""


# How long a worker waits for a target started in the background: longer than any server's start and probe.
_START_WAIT = 300.0

HUNG_AFTER = 3  # tests in a row without an answer in time, before the rest of that protocol's fail at once


def _protocols(spec) -> list[str]:
    return sorted({s.protocol for s in spec.sessions.values()})


class SuiteItem(pytest.Item):
    """One YAML test. setup: accounts emptied and seeded; call: the steps; teardown: clean-up."""

    def __init__(self, *, spec, **kwargs):
        super().__init__(**kwargs)
        self.spec = spec
        self.add_marker("mailharness")
        for name in marker_names(spec):
            self.add_marker(name)
        # Everything results.json needs; attached to each report (see pytest_runtest_makereport),
        # not to user_properties, which junit.xml would dump whole.
        self.data: dict = {
            "id": spec.id, "title": spec.title, "file": str(spec.file), "line": spec.line,
            "area": spec.area, "protocol": spec.protocol, "rfc": spec.rfc, "level": spec.level,
        }
        self.accounts = []
        self.account_states = []
        self.profile_skip: str | None = None
        self.transcript: Transcript | None = None
        self.run: TestRun | None = None
        self.profile_expect: str | None = None  # the profile's expect: for this test, if it has an entry
        self.mailboxes = MailboxMap()
        self.stopped_answering: list[str] = []
        self.clock = PhaseClock()  # where the test's time went (results.json `phases`, run --durations)
        self.lane: Lane | None = None  # with --lanes: the thread running this test's set-up, steps and clean-up
        self.accounts_claimed = False

    def setup(self):
        lanes = self.config._mailharness.lanes
        if not lanes.enabled:
            with self.clock.phase("setup"):
                self._setup()
            return
        if self.lane is None:
            self.start_lane(block=True)
        self._wait_lane(self.lane.setup_done)
        reraise(self.lane.setup_error)

    def _wait_lane(self, event) -> None:
        self.config._mailharness.lanes.wait(self, event, lambda item: item.start_lane(block=False))

    def start_lane(self, block: bool) -> bool:
        """Claim this test's accounts (main thread, queue order) and start its set-up, steps and clean-up on a
        lane (lanes.py); False when `block` is off and its accounts are still held by a running test."""
        state: HarnessState = self.config._mailharness
        pool = state.account_pool()
        try:
            claimed = [] if self.profile_skip else pool.claim(self.spec.accounts, block)
        except HarnessError as exc:  # more accounts than this worker has: the test's set-up error
            claimed, error = [], exc
        else:
            error = None
        if claimed is None:
            return False
        self.accounts = claimed
        self.accounts_claimed = True

        def work(lane: Lane) -> None:
            lane.setup_error = error
            try:
                if lane.setup_error is None:
                    try:
                        with self.clock.phase("setup"):
                            self._setup()
                    except BaseException as exc:
                        lane.setup_error = exc
                lane.setup_done.set()
                if lane.setup_error is None:
                    try:
                        self._timed_runtest()
                    except BaseException as exc:
                        lane.run_error = exc
            finally:
                try:
                    with self.clock.phase("cleanup"):
                        self._teardown()
                except BaseException as exc:
                    lane.teardown_error = exc

        self.lane = state.lanes.add(Lane(work, release=lambda: pool.release(claimed), finished=state.lanes.finished))
        return True

    def _setup(self):
        state: HarnessState = self.config._mailharness
        if self.profile_skip:
            pytest.skip(self.profile_skip)
        self.stopped_answering = [p for p in _protocols(self.spec) if state.timeouts_in_a_row.get(p, 0) >= HUNG_AFTER]
        if self.stopped_answering:
            self.transcript = Transcript()
            return  # runtest fails it at once: no set-up against a server that no longer answers
        if state.target is None:  # a worker whose controller saw no suite files (see _run_has_suites)
            raise HarnessError("no target: the run's paths held no suite file when the session started")
        missing = _missing_requirements(self.spec, state)
        if missing:
            pytest.skip(missing)
        if not self.accounts_claimed:  # a lane claimed them in queue order (start_lane)
            self.accounts = state.account_pool().take(self.spec.accounts)  # too few: an error, never a silent skip
        target = state.target
        self.transcript = Transcript(secrets=target.passwords)
        try:
            for account in self.accounts:
                self.account_states.append(_prepare(state, account))
            if target.imap is not None:  # folders and their names are IMAP's; a POP3-only target has INBOX only
                self._setup_special_use(target)
                self._check_hierarchy(target)
                self._check_keywords(target)
            self._setup_mail(target)
        except (IMAPClientError, OSError, SessionError) as exc:
            raise SetupError(f"could not prepare the test's accounts over {_store_protocol(target)}: {exc}") from None

    def runtest(self):
        if self.lane is not None:
            self._wait_lane(self.lane.done)
            reraise(self.lane.run_error)
            return
        self._timed_runtest()

    def _timed_runtest(self):
        started = time.perf_counter()
        before = sum(self.clock.seconds.values())
        try:
            self._runtest()
        finally:  # steps: the call's time that was neither connecting nor waiting
            self.clock.add("steps", time.perf_counter() - started - (sum(self.clock.seconds.values()) - before))
            self.data["phases"] = self.clock.rounded()

    def _runtest(self):
        state: HarnessState = self.config._mailharness
        if self.stopped_answering:
            proto = self.stopped_answering[0]
            failure = StepFailure(self.spec, None, f"an answer from the {proto.upper()} server",
                                  f"target stopped answering: the last {state.timeouts_in_a_row[proto]} tests over "
                                  f"{proto.upper()} got no complete answer (none in time, or one without end); this test was not run",
                                  broken=True)
            self.data.update(failure=self._failure_data(failure), transcript="")
            raise failure
        run = TestRun(self.spec, state.target, self.accounts, self.transcript, timeout=state.default_timeout,
                      mailboxes=self.mailboxes,
                      advertises=functools.partial(advertises, state.probe), clock=self.clock)
        self.run = run
        extra: dict = {}
        try:
            run.run()
        except StepSkipped as skipped:
            pytest.skip(str(skipped))
        except ForeignMail as exc:
            extra["error"] = str(exc)  # not the server's fault: results.json calls it an error, not a failure
            raise
        except StepFailure as failure:
            extra["failure"] = self._failure_data(failure)
            if failure.timed_out:
                state.timeouts_in_a_row[failure.timed_out] = state.timeouts_in_a_row.get(failure.timed_out, 0) + 1
            raise
        else:
            for proto in _protocols(self.spec):  # it answered: only timeouts in a row count
                state.timeouts_in_a_row.pop(proto, None)
        finally:
            extra["transcript"] = self.transcript.render()
            extra["metrics"] = run.metrics
            extra["deviations"] = [self._failure_data(d) for d in run.deviations]
            if run.unchecked:
                extra["unchecked"] = run.unchecked
            self.data.update(extra)
        soft = run.soft_outcome
        if soft is None:
            return
        # Only SHOULD/MAY checks did not hold: pytest sees a pass, results.json the outcome warning/behaviour.
        first = next(d for d in run.deviations if d.level == ("SHOULD" if soft == "warning" else "MAY"))
        self.data.update(failure=self._failure_data(first), soft_outcome=soft, soft_message=self._soft_message(run))
        self.user_properties.append(("mailharness_outcome", soft))  # junit.xml shows it too
        strict = soft == "warning" and self.config.getoption("--mh-strict")
        if self.profile_expect in ("fail", "warning") or strict:
            raise SoftDeviation(first.test, first.step, first.expected, first.got)

    def _failure_data(self, failure: StepFailure) -> dict:
        # what the server said may quote a password (e.g. "-ERR unknown command PASS x")
        failure.expected = self.transcript.redact(failure.expected)
        failure.got = self.transcript.redact(failure.got)
        return {
            "file": str(self.spec.file), "line": failure.step.line if failure.step else self.spec.line,
            "step": failure.step.describe() if failure.step else "setup",
            "expected": failure.expected, "got": failure.got, "level": failure.level,
            **({"transcript_lines": lines} if (lines := _failing_exchange(self.transcript, failure)) else {}),
        }

    def _soft_message(self, run: TestRun) -> str:
        text = "\n".join(f"{d.level} not met: {d}" for d in run.deviations)
        if run.not_run:
            text += f"\n{run.not_run}"
        return text

    def teardown(self):
        try:
            if self.lane is not None:  # the lane cleaned up before it gave the accounts back
                self._wait_lane(self.lane.done)
                reraise(self.lane.teardown_error)
                return
            with self.clock.phase("cleanup"):
                self._teardown()
        finally:
            self.data["phases"] = self.clock.rounded()

    def _teardown(self):
        state: HarnessState = self.config._mailharness
        notes, problems = [], []
        for account_state in self.account_states:
            try:
                notes += _cleanup(state, account_state)
            except (IMAPClientError, OSError, SessionError) as exc:
                problems.append(f"{account_state.account.user}: {exc}")
        if notes:
            self.data["cleanup_notes"] = notes
        if problems:
            raise SetupError("could not clean up after the test: " + "; ".join(problems))

    def _setup_special_use(self, target) -> None:
        """Find the folders the test names by attribute (\\Sent ...) for account 1; stand in for missing ones."""
        state: HarnessState = self.config._mailharness
        self.mailboxes = MailboxMap(Namespace.from_probe(state.probe.get("imap_namespace")))
        wanted = self.spec.special_uses
        if not wanted:
            return
        with state.admin.client(self.accounts[0]) as client:
            found = accounts.special_use_folders(client)
            required = self.spec.requires.get("special-use", [])
            missing = [a for a in required if a.lower() not in {f.lower() for f in found}]
            if missing:
                pytest.skip(f"the account has no folder marked {', '.join(missing)} (RFC 6154: none is required)")
            for attr in wanted:
                if attr in found:
                    self.mailboxes.special[attr] = found[attr]
                    self.transcript.note("setup", f"{attr} is {found[attr]}")
                    continue
                name = self.mailboxes.stand_in(attr)
                if not client.folder_exists(name):
                    client.create_folder(name)
                self.mailboxes.special[attr] = name
                self.mailboxes.stand_ins.add(attr)
                self.transcript.note("setup", f"no folder is marked {attr}: the test uses {name}, made for it")

    def _check_hierarchy(self, target) -> None:
        """Tests with subfolders skip on a server whose new folders are \\NoInferiors (learnt once per process)."""
        state: HarnessState = self.config._mailharness
        if not self.spec.hierarchy_names:
            return
        if not state.hierarchy_checked:
            name = self.mailboxes.namespace.server_name("Mailharness-hierarchy-check")
            with state.admin.client(self.accounts[0]) as client:
                if not accounts.folders_take_children(client, name):
                    state.flat_folders = f"a new folder ({name}) is listed \\NoInferiors: it cannot have subfolders"
            state.hierarchy_checked = True
        if state.flat_folders:
            pytest.skip(f"the test uses subfolders ({', '.join(self.spec.hierarchy_names)}) and {state.flat_folders}")

    def _check_keywords(self, target) -> None:
        """`requires: {keywords: true}`: skip unless SELECT INBOX's PERMANENTFLAGS has \\*, the server's promise
        that keywords a client creates persist (RFC 3501 §7.1); without it a server may refuse or forget them."""
        if not self.spec.requires.get("keywords"):
            return
        with self.config._mailharness.admin.client(self.accounts[0]) as client:
            flags = client.select_folder("INBOX").get(b"PERMANENTFLAGS", ())
            accounts.leave_mailbox(client)
        if b"\\*" not in flags:
            shown = " ".join(f.decode() if isinstance(f, bytes) else str(f) for f in flags)
            pytest.skip(f"SELECT INBOX gives PERMANENTFLAGS ({shown}) without \\*: the server does not let clients "
                        "create keywords that persist (RFC 3501 §7.1)")

    def _setup_mail(self, target) -> None:
        for entry in self.spec.setup:
            account = self.accounts[entry.account - 1]
            if target.imap is None:  # POP3-only: delivered into INBOX (_missing_requirements checked the rest)
                pop3_accounts.store(target, account, [ref.data() for ref in entry.messages])
                names = ", ".join(m.name for m in entry.messages) or "(no messages)"
                self.transcript.note("setup", f"account {entry.account} INBOX (delivered over {target.delivery.scheme.upper()}): {names}")
                continue
            mailbox = self.mailboxes.server_name(entry.mailbox)
            with self.config._mailharness.admin.client(account) as client:
                if mailbox.upper() != "INBOX" and not client.folder_exists(mailbox):  # INBOX always exists
                    client.create_folder(mailbox)
                accounts.store_messages(client, mailbox, [(ref.data(), ref.flags) for ref in entry.messages])
            names = ", ".join(m.name for m in entry.messages) or "(no messages)"
            self.transcript.note("setup", f"account {entry.account} {entry.mailbox}: {names}")

    def repr_failure(self, excinfo):
        if excinfo.errisinstance(SoftDeviation):  # --strict, or a profile that expects the deviation
            failure = excinfo.value
            line = failure.step.line if failure.step else self.spec.line
            body = f"{self.data.get('soft_message', '')}\n\ntranscript:\n{self.transcript.render()}"
            return _located_repr(str(self.spec.file), line, f"{failure.level} not met: " + failure_headline(failure), body)
        if excinfo.errisinstance(StepFailure):
            failure = excinfo.value
            line = failure.step.line if failure.step else self.spec.line
            earlier = ""
            if self.run and self.run.deviations:
                earlier = "\n  before it: " + "; ".join(f"step {d.step.index}: a {d.level} check did not hold"
                                                      for d in self.run.deviations)
            body = f"{failure}{earlier}\n\ntranscript:\n{self.transcript.render()}"
            return _located_repr(str(self.spec.file), line, failure_headline(failure), body)
        if excinfo.errisinstance(HarnessError):
            return str(excinfo.value)  # the node id already names the test
        return super().repr_failure(excinfo)

    def reportinfo(self):
        return self.path, self.spec.line - 1, f"{self.spec.id} ({self.spec.title})"


def _failing_exchange(transcript: Transcript, failure: StepFailure) -> list[int] | None:
    """[first, last] line (1-based) of the rendered transcript that hold the failing step's exchange: from the
    session's last client line before the failure to the failure (the goodbyes of clean-up come after)."""
    end = getattr(failure, "transcript_entries", None)
    if not end or failure.step is None:
        return None
    entries = transcript.entries[:end]
    session = failure.step.session or ""
    first = next((i for i in range(len(entries) - 1, -1, -1)
                  if entries[i].session == session and entries[i].direction == "C"), None)
    if first is None:
        first = end - 1
    lines_before = sum(len(e.text.split("\n")) for e in entries[:first])
    lines_to_end = sum(len(e.text.split("\n")) for e in entries)
    return [lines_before + 1, lines_to_end]


def failure_headline(failure: StepFailure) -> str:
    """One line for pytest's short summary and JUnit's failure message: expected and got first."""
    where = f"step {failure.step.index} `{failure.step.describe()}`" if failure.step else "setup"
    return f"expected {_first_line(failure.expected)}, got {_first_line(failure.got)} ({where} at {failure.location})"


def _first_line(text: str) -> str:
    lines = str(text).strip().splitlines() or [""]
    return lines[0] + (" ..." if len(lines) > 1 else "")


def _located_repr(path: str, line: int, headline: str, body: str):
    """A failure pytest treats like a traceback's: ``reprcrash`` feeds the short summary line and JUnit's
    message, and, unlike a plain string, it survives xdist's report serialisation."""
    from _pytest._code.code import ExceptionChainRepr, ReprEntry, ReprFileLocation, ReprTraceback

    entry = ReprEntry(body.splitlines(), None, None, None, "value")
    return ExceptionChainRepr([(ReprTraceback([entry], None, "value"), ReprFileLocation(path, line, headline), None)])


def _prepare(state: HarnessState, account):
    if state.target.imap is None:
        return pop3_accounts.prepare(state.target, account)
    return accounts.prepare(state.target, account, state.admin)


def _cleanup(state: HarnessState, account_state) -> list[str]:
    if state.target.imap is None:
        return pop3_accounts.cleanup(state.target, account_state)
    if state.target.disposable:
        # The next test's set-up empties the account anyway (accounts.prepare): emptying it here as well
        # doubled every test's set-up work. The process's last act empties what it used (HarnessState.stop).
        state.used_accounts[account_state.account.user] = account_state.account
        return []
    return accounts.cleanup(state.target, account_state, state.admin)


def _store_for(target):
    """Where set-up and clean-up happen: over IMAP (accounts.py), or on a POP3-only target pop3_accounts.py."""
    return accounts if target.imap is not None else pop3_accounts


def _store_protocol(target) -> str:
    return "IMAP" if target.imap is not None else "POP3"


def _missing_requirements(spec, state: HarnessState) -> str | None:
    target = state.target
    for proto in ("imap", "pop3"):
        needed = proto in spec.protocol.split("+")
        if needed and getattr(target, proto) is None:
            both = " (a cross-protocol test)" if "+" in spec.protocol else ""
            return f"the target has no {proto} endpoint{both}"
    if target.imap is None:  # POP3-only: set-up can only deliver, and only into INBOX
        for entry in spec.setup:
            if entry.mailbox.upper() != "INBOX":
                return f"set-up stores mail in {entry.mailbox}: without an imap: endpoint the harness can only deliver to INBOX"
            if any(m.flags for m in entry.messages):
                return "set-up stores messages with flags: without an imap: endpoint the harness cannot set flags"
    if spec.requires.get("delivery") and target.delivery is None:
        return "the target has no lmtp or smtp endpoint for delivery"
    namespace = Namespace.from_probe(state.probe.get("imap_namespace"))
    if spec.hierarchy_names and not namespace.hierarchy:
        return f"the test uses subfolders ({', '.join(spec.hierarchy_names)}) and {namespace.why_flat}"
    for proto in ("imap", "pop3"):
        for cap in spec.requires.get(proto, []):
            if not advertises(state.probe, proto, cap):
                return f"server does not advertise {proto.upper()} capability {cap}"
    tls = _missing_tls(spec.requires, state)
    if tls:
        return tls
    if spec.requires.get("apop") and not greeting_timestamp(state.probe.get("pop3_greeting")):
        return ("the POP3 greeting has no timestamp <...@...>: the server does not offer APOP (RFC 1939 §7); "
                f"greeting: {state.probe.get('pop3_greeting')!r}")
    return None


def _missing_tls(requires: dict, state: HarnessState) -> str | None:
    """`requires: {cleartext: {imap: [STARTTLS]}, implicit-tls: [imap]}`: the TLS endpoints and what the server
    lists before TLS (probed once, from the cleartext endpoint)."""
    target, probe = state.target, state.probe
    for proto, caps in (requires.get("cleartext") or {}).items():
        endpoint = target.starttls_endpoint(proto)
        if endpoint is None:
            return (f"the target has no cleartext {proto} endpoint ({proto}://) for the STARTTLS tests; a target that "
                    f"uses {proto}s:// gives it as {proto}: with tls: implicit (docs/targets.md)")
        have = probe.get(f"{proto}_cleartext_capabilities")
        if have is None:
            return f"{endpoint.url} could not be probed before TLS: {probe.get(f'{proto}_cleartext_error', 'not probed')}"
        missing = [c for c in caps if c.upper() not in {h.upper() for h in have}]
        if missing:
            return (f"before TLS, {endpoint.url} does not advertise {proto.upper()} capability {', '.join(missing)} "
                    f"(it lists: {' '.join(have) or 'nothing'})")
    for proto in requires.get("implicit-tls", []):
        if target.implicit_tls_endpoint(proto) is None:
            return f"the target has no implicit-TLS {proto} endpoint ({proto}s://, or {proto}s: beside {proto}:)"
    return None


def advertises(probe: dict, proto: str, cap: str) -> bool:
    """Does the server list `cap`, before or after login? IMAP: an atom (AUTH=PLAIN, SASL-IR, IDLE).
    POP3: a CAPA keyword (UIDL), or a keyword and one of its arguments (`SASL PLAIN`)."""
    if proto == "imap":
        have = probe.get("imap_capabilities", []) + probe.get("imap_capabilities_before_login", [])
        return cap.upper() in {c.upper() for c in have}
    keyword, _, argument = cap.upper().partition(" ")
    if not argument:
        have = probe.get("pop3_capabilities", []) + [line.split()[0] for line in probe.get("pop3_capa_before_login", [])]
        return keyword in {c.upper() for c in have}
    return any(line.upper().split()[0] == keyword and argument.strip() in line.upper().split()[1:]
               for line in probe.get("pop3_capa_before_login", []))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    if isinstance(item, SuiteItem):
        report = outcome.get_result()
        if call.when != "call" and call.excinfo is not None and call.excinfo.errisinstance(HarnessError):
            # pytest renders set-up and tear-down errors as tracebacks (repr_failure is for the call only)
            report.longrepr = f"{call.when} failed: {call.excinfo.value}"
        if report.skipped and isinstance(report.longrepr, tuple) and not hasattr(report, "wasxfail"):
            # "SKIPPED [1] suites/x.yaml:12: reason", not the line of the plugin that called pytest.skip()
            report.longrepr = (str(item.spec.file), item.spec.line, report.longrepr[2])
        if hasattr(report, "wasxfail") and report.skipped:
            item.data["xfail_message"] = str(report.wasxfail).removeprefix("reason: ")
            report.wasxfail = f"{item.spec.location}: {item.data['xfail_message']}"
        # pytest (and xdist, which ships report attributes to the controller) keeps this on the report
        report.mailharness = dict(item.data)
    _scrub_report(outcome.get_result())


def _scrub_report(report) -> None:
    """What pytest shows on the terminal and writes to junit.xml: no password, even one a server echoed."""
    if not SECRETS:
        return
    longrepr = report.longrepr
    if longrepr is None:
        return
    if isinstance(longrepr, tuple):
        report.longrepr = (*longrepr[:-1], scrub(str(longrepr[-1])))
    else:
        text = str(longrepr)
        if scrub(text) != text:
            report.longrepr = scrub(text)
    report.sections = [(title, scrub(content)) for title, content in report.sections]
    if hasattr(report, "wasxfail"):
        report.wasxfail = scrub(str(report.wasxfail))


def _time_budget(spec, default: float) -> float:
    """A backstop behind the per-step deadlines: no test can hold a worker forever."""
    from harness.engine.login_delays import LOGIN_WAIT, login_timeout, sends_credentials

    def step_seconds(step) -> float:
        if step.kind in ("sleep", "quiet"):
            return step.seconds
        seconds = step.timeout or spec.timeout or default
        protocol = spec.sessions[step.session].protocol if step.session else ""
        return login_timeout(seconds) if step.kind == "command" and sends_credentials(step.command, protocol) else seconds

    logins = LOGIN_WAIT * sum(1 for s in spec.sessions.values() if s.login)  # a login may wait out a penalty
    return min(900, 30 + 2 * (sum(map(step_seconds, spec.steps)) + logins))


def pytest_collection_modifyitems(session, config, items):
    state: HarnessState = config._mailharness
    if state.ready_file is not None and _is_worker(config):
        try:
            state.wait_for_target(timeout=_START_WAIT)
        except HarnessError:  # the profile: the controller finds the same problem and reports it
            state.target = None
        if state.target is None:  # the start failed: the controller reports it, this worker ends (pytest_runtestloop)
            state.start_failed = True
            items[:] = []
            return
    suite_items = [item for item in items if isinstance(item, SuiteItem)]
    if suite_items and not state.active and not _is_worker(config):
        _activate(state)  # suites reached by a path the session-start scan did not see (e.g. from a conftest)
    seen: dict[str, SuiteItem] = {}
    for item in suite_items:
        first = seen.setdefault(item.spec.id, item)
        if first is not item:
            state.run_error = (
                f"duplicate test id {item.spec.id!r}: {first.spec.location} and {item.spec.location} "
                "(profiles and comparisons match tests by id)"
            )
            raise pytest.UsageError(state.run_error)
        default = state.default_timeout if state.target else 5.0
        item.add_marker(pytest.mark.timeout(_time_budget(item.spec, default), method="signal"))
    profile = state.profile
    if profile is None:
        return
    for item in suite_items:
        deviation = profile.lookup(item.spec.id)
        if deviation is None:
            continue
        reason = f"profile {profile.name}: {deviation.reason}"
        item.profile_expect = deviation.expect
        if deviation.expect == "skip":
            item.profile_skip = reason  # skipped in setup: a skip marker would hide the YAML line in -rs
        elif deviation.expect == "warning":  # a known SHOULD deviation; a MUST failure is still a failure
            item.add_marker(pytest.mark.xfail(strict=True, reason=reason, raises=SoftDeviation))
        else:
            item.add_marker(pytest.mark.xfail(strict=True, reason=reason, raises=StepFailure))
        item.data["profile_reason"] = deviation.reason


# -- results.json (controller) -------------------------------------------------------

class ResultsCollector:
    """Registered on the controller only: xdist forwards every worker's reports to it."""

    def __init__(self, state: HarnessState):
        self.state = state

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report):
        props = getattr(report, "mailharness", None) or {}
        if "id" not in props:
            return
        entry = self.state.results.setdefault(report.nodeid, {
            **{k: props[k] for k in ("id", "title", "file", "line", "area", "protocol", "rfc", "level")},
            "outcome": None, "duration_s": 0.0, "message": "", "failure": None, "transcript": "",
            "profile_reason": None, "metrics": {},
        })
        entry["duration_s"] = round(entry["duration_s"] + report.duration, 4)
        for key in ("failure", "transcript", "metrics", "profile_reason", "cleanup_notes", "deviations", "unchecked", "phases"):
            if props.get(key):
                entry[key] = props[key]
        outcome = _outcome(report)
        if outcome is None:
            return
        if report.when == "call" and outcome == "failed" and props.get("error"):
            outcome = "error"
        if report.when == "call" and props.get("soft_outcome") and outcome in ("passed", "failed"):
            # failed: --strict raised the warning so that junit.xml shows it; it is still a warning
            entry["outcome"], entry["message"] = props["soft_outcome"], props["soft_message"][:4000]
            return
        if report.when == "teardown" and entry["outcome"] not in ("passed", "warning", "behaviour", None):
            return  # a teardown problem does not hide the call's verdict
        entry["outcome"] = outcome
        entry["message"] = _message(report, outcome, entry)

    @pytest.hookimpl
    def pytest_collectreport(self, report):
        if report.failed:  # a malformed suite (under xdist, forwarded from the workers)
            text = str(report.longrepr).strip()
            if text not in self.state.collection_errors:
                self.state.collection_errors.append(text)

    @pytest.hookimpl
    def pytest_collection_finish(self, session):
        if not self.state.collected:
            self.state.collected = len(session.items)

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node, ids):
        self.state.collected = max(self.state.collected or 0, len(ids))

    @pytest.hookimpl(tryfirst=True)  # before the terminal reporter formats the traceback
    def pytest_keyboard_interrupt(self, excinfo):
        # pytest stops on collection errors and -x with Session.Interrupted, a KeyboardInterrupt too:
        # only a real one (Ctrl-C, or SIGTERM through the handler) is an interrupt.
        if self.state.signal or type(excinfo.value) is KeyboardInterrupt:
            self.state.interrupted = self.state.signal or "Ctrl-C"
            if not self.state.config.option.fulltrace:
                # The terminal shows only where the interrupt hit, yet formats the whole traceback first,
                # parsing each frame's source file: about a second on a busy machine, after Ctrl-C/SIGTERM.
                excinfo.traceback = excinfo.traceback[-1:]
                excinfo.value.__context__ = excinfo.value.__cause__ = None  # nor the exception it interrupted

    @pytest.hookimpl(trylast=True)  # after junitxml has written its file
    def pytest_sessionfinish(self, session, exitstatus):
        config = session.config
        path = config.getoption("--mh-results")
        if path:  # our own option: a run of suites, even one that found none
            write_results(self.state, Path(path), exitstatus)
        if not self.state.active:
            return  # not a run of suites: leave other projects' reports alone
        if self.state.start_failed:  # junitxml has just written an empty suite over the error (_write_start_failure)
            _write_start_failure(config, self.state)
            return
        xmlpath = getattr(config.option, "xmlpath", None)
        if xmlpath and Path(xmlpath).is_file() and self.state.results:
            from harness.reports.junit import enrich

            enrich(xmlpath, self.state.results)
        from harness.reports import github

        if github.enabled():
            github.write_step_summary(results_document(self.state, exitstatus))

    def pytest_terminal_summary(self, terminalreporter):
        from harness.reports import github

        if self.state.active and github.enabled():
            for line in github.annotations(sorted(self.state.results.values(), key=lambda t: (t["file"], t["line"]))):
                terminalreporter.write_line(line)


def _outcome(report) -> str | None:
    wasxfail = hasattr(report, "wasxfail")
    if report.when == "call":
        if report.passed:
            return "xpassed" if wasxfail else "passed"
        if report.skipped:
            return "xfailed" if wasxfail else "skipped"
        text = report.longreprtext if hasattr(report, "longreprtext") else ""
        # strict xfail that passed; under xdist the text starts with a "[gw0] ..." header line
        return "xpassed" if "[XPASS(strict)]" in text else "failed"
    if report.when == "setup":
        if report.skipped:
            return "xfailed" if wasxfail else "skipped"
        if report.failed:
            return "error"
        return None
    if report.failed:  # teardown
        return "error"
    return None


XDIST_HEADER = re.compile(r"\A\[gw\d+\] [^\n]* -- Python [^\n]*\n")


def _message(report, outcome: str, entry: dict) -> str:
    if outcome == "passed":
        return ""
    if outcome in ("skipped", "xfailed") and report.skipped:
        if outcome == "xfailed":
            props = getattr(report, "mailharness", None) or {}  # the reason without the location the summary shows
            return props.get("xfail_message") or str(getattr(report, "wasxfail", "")).removeprefix("reason: ")
        longrepr = report.longrepr
        return str(longrepr[2]).removeprefix("Skipped: ") if isinstance(longrepr, tuple) else str(longrepr)
    if outcome == "xpassed":
        return "passed, but the profile expects a failure: " + (entry.get("profile_reason") or "")
    text = report.longreprtext if hasattr(report, "longreprtext") else str(report.longrepr)
    text = XDIST_HEADER.sub("", text, count=1)  # "[gw1] linux -- Python 3.11.7 ...": noise in a result
    return text.split("\n\ntranscript:\n")[0][:4000]


UNFINISHED = "the run was interrupted while this test ran; it has no outcome"


def write_results(state: HarnessState, path: Path, exitstatus=None) -> None:
    results = results_document(state, exitstatus)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(scrub(json.dumps(results, indent=2, ensure_ascii=False)))


def results_document(state: HarnessState, exitstatus=None) -> dict:
    """results.json's content (docs/results.md)."""
    from harness.reports.results import summarize

    tests = sorted(state.results.values(), key=lambda t: (t["file"], t["line"]))
    finished = [t for t in tests if t["outcome"] is not None]
    for test in tests:
        if test["outcome"] is None:  # set up, never reported its call: interrupted (its transcript shows where)
            test["outcome"], test["message"] = "error", UNFINISHED
    config = state.config
    run = {
        "collected": state.collected if state.collected is not None else len(tests),
        "ran": len(finished),
        "strict": bool(config.getoption("--mh-strict")),
        "interrupted": state.interrupted or state.signal,
        "collect_only": bool(config.option.collectonly),
        "collection_errors": [_redact(state, e) for e in state.collection_errors],
        "error": _redact(state, state.run_error) if state.run_error else None,
    }
    target = state.target
    info = {
        "name": target.name if target else None,
        "imap_url": target.imap.url if target and target.imap else None,
        "pop3_url": target.pop3.url if target and target.pop3 else None,
        "warnings": (target.warnings() if target else []) + state.account_warnings,
        **{k: state.probe.get(k) for k in ("imap_greeting", "imap_capabilities", "imap_namespace", "pop3_greeting", "pop3_capabilities")},
    }
    summary = summarize(tests, run)
    results = {
        "format": 1,
        "harness_version": __version__,
        "started_at": state.started_at.isoformat(timespec="seconds"),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "duration_s": round(time.monotonic() - state.t0, 2),
        "command": os.environ.get("MAILHARNESS_COMMAND", "pytest"),
        "timings": {"target_start_s": state.start_seconds},
        "profile": state.profile.summary() if state.profile else None,
        "target": info,
        "tests": tests,
        **summary,
    }
    return results


def _redact(state: HarnessState, text: str) -> str:
    secrets = state.target.passwords if state.target else []
    return Transcript(secrets=secrets).redact(text) if secrets else text


def pytest_unconfigure(config):
    state: HarnessState | None = getattr(config, "_mailharness", None)
    if state:
        state.stop()
        if state.active and _is_worker(config):
            # The worker's process ends next, and the controller waits for it: the interpreter's final garbage
            # collections walk every object left (0.5-1 s per worker after a full run, on a busy machine) only
            # to free memory the exit frees anyway. Frozen objects are not walked; teardown and atexit still run.
            gc.freeze()
