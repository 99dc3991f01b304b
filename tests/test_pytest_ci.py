"""Suites under plain pytest and in CI: the entry point, which files are suites, markers, summaries,
JUnit attributes, GitHub annotations and step summary, and the messages that teach (issue 12)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import yaml

from harness.engine import run_command
from harness.targets import command as target_command

ROOT = Path(__file__).resolve().parent.parent


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_XDIST", "PYTEST_CURRENT", "GITHUB_"))}
    env.pop("CI", None)
    env.update(extra)
    return env


def pytest_run(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """Plain `python -m pytest` as a user runs it: no -p, the plugin comes from the entry point."""
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300, env=_env(**env))


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=_env())


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    return path


SUITE = """
    suite: CI behaviour
    defaults:
      area: deletion
      rfc: ["RFC1939 §6"]
      sessions: {p: pop3}
    tests:
      - id: ci.fails
        title: RETR of a message marked deleted (the check is wrong on purpose)
        tags: [smoke]
        setup:
          INBOX: [plain, multipart-alternative]
        steps:
          - p: DELE 1
          - p: RETR 2
            expect: "-ERR ${size:multipart-alternative}"
      - id: ci.needs-cap
        title: needs a capability no server has
        requires: {pop3: [X-NO-SUCH-CAPABILITY]}
        steps:
          - p: NOOP
      - id: ci.known
        title: fails as the profile expects
        steps:
          - p: STAT
            expect: "+OK 7 7"
      - id: ci.skipped-by-profile
        title: the profile skips it
        steps:
          - p: NOOP
      - id: ci.passes
        title: passes
        area: lock
        steps:
          - p: NOOP
    """

PROFILE = """
    server: CI test server
    deviations:
      ci.known:
        expect: fail
        reason: this server is known to count its messages differently
      ci.skipped-by-profile:
        expect: skip
        reason: this server cannot run this test at all
    """


def test_the_plugin_is_a_pytest11_entry_point():
    eps = entry_points(group="pytest11", name="harness.engine.plugin")
    assert [ep.value for ep in eps] == ["harness.engine.plugin"], "reinstall (make setup): the entry point is in pyproject.toml"


def test_plain_pytest_collects_only_files_with_a_suite_key(tmp_path):
    write(tmp_path / "suites" / "ours.yaml", SUITE)
    write(tmp_path / "test_login.tavern.yaml", "test_name: login\nstages:\n  - name: post\n    request: {url: x}\n")
    write(tmp_path / "config.yaml", "tests:\n  - unit\n  - lint\n")  # someone's CI config, with a tests: key
    write(tmp_path / "_private.yaml", SUITE)
    write(tmp_path / "test_unit.py", "def test_ok():\n    assert True\n")
    proc = pytest_run("--collect-only", "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    collected = [line for line in proc.stdout.splitlines() if "::" in line]
    assert collected == [
        "suites/ours.yaml::ci.fails", "suites/ours.yaml::ci.needs-cap", "suites/ours.yaml::ci.known",
        "suites/ours.yaml::ci.skipped-by-profile", "suites/ours.yaml::ci.passes", "test_unit.py::test_ok",
    ], proc.stdout


def test_another_projects_run_starts_no_server_and_loads_no_target(tmp_path):
    """With suites in the run the plugin would load this (missing) target file and stop with exit 4."""
    write(tmp_path / "data.yaml", "tests:\n  - a\n")
    write(tmp_path / "test_unit.py", "def test_ok():\n    assert True\n")
    proc = pytest_run("-q", "--mh-target", str(tmp_path / "missing.yaml"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout
    write(tmp_path / "s.yaml", SUITE)
    proc = pytest_run("-q", "--mh-target", str(tmp_path / "missing.yaml"), cwd=tmp_path)
    assert proc.returncode == 4 and "target file not found" in proc.stdout + proc.stderr


@pytest.mark.parametrize("expression, ids", [
    ("deletion", ["ci.fails", "ci.needs-cap", "ci.known", "ci.skipped-by-profile"]),
    ("pop3 and not lock", ["ci.fails", "ci.needs-cap", "ci.known", "ci.skipped-by-profile"]),
    ("lock", ["ci.passes"]),
    ("smoke", ["ci.fails"]),
    ("imap", []),
])
def test_markers_from_area_protocol_and_tags(tmp_path, expression, ids):
    write(tmp_path / "s.yaml", SUITE)
    proc = pytest_run("--collect-only", "-q", "--strict-markers", "-m", expression, "s.yaml", cwd=tmp_path)
    assert proc.returncode == (0 if ids else 5), proc.stdout + proc.stderr
    assert [line.split("::")[1] for line in proc.stdout.splitlines() if "::" in line] == ids


LEVELS = """
    suite: levels
    defaults:
      area: retrieval
      rfc: ["RFC1939 §7"]
      sessions: {p: pop3}
    tests:
      - id: lv.must
        title: MUST by default
        steps: [{p: NOOP}]
      - id: lv.should
        title: a SHOULD test
        level: SHOULD
        steps: [{p: NOOP}]
      - id: lv.may-step
        title: a MUST test with one MAY step
        steps:
          - p: NOOP
          - p: CAPA
            level: MAY
    """


@pytest.mark.parametrize("expression, ids", [
    ("must", ["lv.must", "lv.may-step"]),
    ("should", ["lv.should"]),
    ("may", ["lv.may-step"]),
    ("must and not may", ["lv.must"]),
])
def test_markers_from_requirement_levels(tmp_path, expression, ids):
    write(tmp_path / "levels.yaml", LEVELS)
    proc = pytest_run("--collect-only", "-q", "--strict-markers", "-m", expression, "levels.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [line.split("::")[1] for line in proc.stdout.splitlines() if "::" in line] == ids


def test_a_tag_may_not_reuse_a_marker_with_a_meaning(tmp_path):
    write(tmp_path / "s.yaml", SUITE.replace("tags: [smoke]", "tags: [skip]"))
    proc = cli("validate", str(tmp_path / "s.yaml"))
    assert proc.returncode == 2
    assert f"{tmp_path / 's.yaml'}:9: tags: 'skip' is a marker pytest or the harness already uses" in proc.stderr


@pytest.fixture(scope="module")
def github_run(tmp_path_factory, target):
    """One plain-pytest run of SUITE against the embedded Dovecot, the way GitHub Actions runs it."""
    work = tmp_path_factory.mktemp("gh")
    write(work / "suites" / "ci.yaml", SUITE)
    write(work / "profile.yaml", PROFILE)
    target.dump(work / "target.yaml")
    summary = work / "step-summary.md"
    summary.write_text("## an earlier step's summary\n")
    proc = pytest_run("-ra", "--mh-target", "target.yaml", "--mh-profile", "profile.yaml", "--junitxml", "junit.xml",
                      "--mh-results", "results.json", "suites/", cwd=work, GITHUB_ACTIONS="true", GITHUB_STEP_SUMMARY=str(summary),
                      GITHUB_WORKSPACE=str(work), COLUMNS="400")
    return work, proc


def test_short_summary_shows_expected_got_and_yaml_lines(github_run):
    work, proc = github_run
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    # expected resolved (1404, not ${size:...}); the id is in the node id, not repeated
    assert ("FAILED suites/ci.yaml::ci.fails - expected `-ERR 1404`, got +OK 1404 octets "
            "(step 2 `p: RETR 2` at suites/ci.yaml:14)") in out
    assert "SKIPPED [1] suites/ci.yaml:16: server does not advertise POP3 capability X-NO-SUCH-CAPABILITY" in out
    assert "SKIPPED [1] suites/ci.yaml:26: profile profile: this server cannot run this test at all" in out
    assert "XFAIL suites/ci.yaml::ci.known - suites/ci.yaml:21: profile profile: this server is known" in out
    assert "plugin.py" not in out


def test_junit_testcases_carry_file_line_message_and_transcript(github_run):
    work, _ = github_run
    cases = {c.get("name"): c for c in ET.parse(work / "junit.xml").iter("testcase")}
    assert {name: (c.get("file"), c.get("line")) for name, c in cases.items()} == {
        "ci.fails": ("suites/ci.yaml", "7"), "ci.needs-cap": ("suites/ci.yaml", "16"), "ci.known": ("suites/ci.yaml", "21"),
        "ci.skipped-by-profile": ("suites/ci.yaml", "26"), "ci.passes": ("suites/ci.yaml", "30"),
    }
    failure = cases["ci.fails"].find("failure")
    assert failure.get("message") == "p: RETR 2: expected `-ERR 1404`, got +OK 1404 octets (suites/ci.yaml:14)"
    assert "transcript" not in failure.text
    out = cases["ci.fails"].find("system-out").text
    assert "p C: RETR 2" in out and "p C: PASS ***" in out and "X-Mailharness-Corpus" in out
    assert cases["ci.passes"].find("system-out") is None


def test_results_mark_the_failing_exchange_in_the_transcript(github_run):
    work, _ = github_run
    test = next(t for t in json.loads((work / "results.json").read_text())["tests"] if t["id"] == "ci.fails")
    first, last = test["failure"]["transcript_lines"]
    lines = test["transcript"].splitlines()
    assert lines[first - 1].endswith("p C: RETR 2")
    assert lines[first].endswith("p S: +OK 1404 octets") and lines[last - 1].endswith("p S: ------=_Part_0_1234567.1716208212--")
    assert lines[last].endswith("p C: QUIT")  # the goodbye after the failure is not part of it


def test_github_annotations_and_step_summary(github_run, target):
    work, proc = github_run
    annotations = [line for line in proc.stdout.splitlines() if line.startswith("::")]
    assert annotations == [
        "::error file=suites/ci.yaml,line=14,title=ci.fails failed::p: RETR 2: expected `-ERR 1404`, got +OK 1404 octets"
    ]
    summary = (work / "step-summary.md").read_text()
    assert summary.startswith("## an earlier step's summary\n")  # appended, not overwritten
    assert "## mailharness: FAIL" in summary
    # passed, failed, expected deviation, skipped, total
    assert "| area | passed | failed | expected deviation | skipped | total |" in summary, summary
    assert "| deletion | 0 | 1 | 1 | 2 | 4 |" in summary and "| lock | 1 | 0 | 0 | 0 | 1 |" in summary, summary
    assert "| `ci.fails` | failed | `suites/ci.yaml:14` | p: RETR 2: expected `-ERR 1404`, got +OK 1404 octets |" in summary
    assert target.accounts[0].password not in summary + proc.stdout


def test_without_github_actions_no_annotations(tmp_path, target_file):
    write(tmp_path / "s.yaml", SUITE)
    proc = pytest_run("-q", "--mh-target", str(target_file), "-k", "ci.fails", "s.yaml", cwd=tmp_path)
    assert proc.returncode == 1
    assert "::error" not in proc.stdout


def test_sample_workflow_runs_the_harness_with_github_variables():
    workflow = yaml.safe_load((ROOT / "examples" / "github-workflow.yml").read_text())
    steps = [step.get("run", "") for job in workflow["jobs"].values() for step in job["steps"]]
    run = next(step for step in steps if "mailharness run" in step)
    assert "GITHUB_ACTIONS" in run and "GITHUB_STEP_SUMMARY" in run
    assert "docs/pytest.md" in (ROOT / "examples" / "github-workflow.yml").read_text()


# -- run refuses what would silently not apply ---------------------------------------------------

def test_run_refuses_a_profile_whose_id_matches_no_test(tmp_path, target_file):
    profile = write(tmp_path / "p.yaml", """
        server: typo
        deviations:
          pop3.lock.second-session-refusd:
            expect: fail
            reason: a deviation whose id has a typo in it
        """)
    proc = cli("run", "--target", str(target_file), "--suite", "examples/", "--profile", str(profile),
               "--report-dir", str(tmp_path / "r"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert (f"{profile}:3: deviation 'pop3.lock.second-session-refusd' matches no test "
            "(did you mean 'pop3.lock.second-session-refused'?)") in proc.stdout + proc.stderr


def test_run_refuses_a_suite_file_without_the_suite_key(tmp_path):
    bare = write(tmp_path / "bare.yaml", SUITE.replace("suite: CI behaviour\n", ""))
    for given in (bare, tmp_path):
        proc = cli("run", "--suite", str(given), "--report-dir", str(tmp_path / "r"))
        assert proc.returncode == 2
        assert f"{bare}:1:" in proc.stderr and "`suite:`" in proc.stderr and "Traceback" not in proc.stderr


# -- validate reports every problem --------------------------------------------------------------

BROKEN = """
    tests:
      - id: t.one
        title: x
        area: deleting
        rfc: [RFC1939 §6]
        sessions: {p: pop3}
        stesp: []
        steps: [{p: NOOP}]
      - id: t.two
        title: x
        area: deletion
        rfc: [RFC1939 §6]
        sessions: {p: pop3}
        setup: {INBOX: [plian]}
        steps:
          - p: RETR 1
            expcet: -ERR
          - q: STAT
          - p: UIDL $n
          - p: UIDL 1
            expect: 're:\\+OK \\d+ ('
      - id: t.three
        title: x
        area: notification
        rfc: [RFC2177]
        sessions: {a: imap}
        steps:
          - a: {idle: start}
            expect: OK
      - id: t.four
        title: x
        area: notification
        rfc: [RFC2177]
        sessions: {a: imap}
        steps:
          - a: {await: ["* 1 EXISTS"]}
            expect: OK
    """


def _keys() -> tuple[str, str]:
    from harness.engine.model import STEP_KEYWORDS
    from harness.yaml_source import load_schema

    test_keys = load_schema("suite.schema.json")["$defs"]["test"]["properties"]
    return ", ".join(sorted(test_keys)), ", ".join(sorted(STEP_KEYWORDS))


def test_validate_reports_every_schema_then_every_meaning_problem(tmp_path):
    TEST_KEYS, STEP_KEYS = _keys()
    path = write(tmp_path / "broken.yaml", BROKEN)
    proc = cli("validate", str(path))
    assert proc.returncode == 2
    problems = proc.stderr.strip().splitlines()
    assert problems == [
        f"{path}:4: tests[0].area: 'deleting' is not one of: deletion, leave-on-server, retrieval, lock, auth, session, "
        "folders, notification, partial-fetch, flags, search, quota, uid, copy-move, append, sent, cross-protocol, "
        "capability, syntax, tls",
        f"{path}:7: tests[0].stesp: unknown key 'stesp' (did you mean 'steps'? allowed: {TEST_KEYS})",
        f"{path}:1: a suite file has a top-level `suite:` key (its title, e.g. `suite: POP3 deletion`): "
        "pytest collects only YAML files that have one",
        f"{path}:14: no corpus message named 'plian' (known: attachment, dot-lines, eight-bit, large, "
        "multipart-alternative, nested-rfc822, plain, plain-long, search-alpha, search-beta)",
        f"{path}:17: unknown step key 'expcet' (did you mean `expect`?)",
        f"{path}:18: 'q' is neither a session of this test (p) nor a step keyword ({STEP_KEYS})",
        f"{path}:19: $n is used before any step captures it",
        # the regex as written, single backslashes
        f"{path}:21: bad pattern `re:\\+OK \\d+ (`: missing ), unterminated subpattern at position 9",
        f"{path}:29: expect: an idle start step does not check this (it takes: timeout, why)",
        f"{path}:37: expect: an await step does not check this (it takes: absent, eventually, level, metric, timeout, why)",
    ], proc.stderr
    assert "10 problem(s)" in proc.stdout


def test_validate_reports_every_problem_of_a_profile(tmp_path):
    profile = write(tmp_path / "p.yaml", """
        server: x
        deviations:
          pop3.lock.second-session-refused: {expect: maybe, reason: a reason that is long enough}
          pop3.lock.second-session-in-use-code: {expect: fail, reson: a reason that is long enough}
        """)
    proc = cli("validate", "examples/", "--profile", str(profile))
    assert proc.returncode == 2
    assert f"{profile}:3: deviations.pop3.lock.second-session-refused.expect: 'maybe' is not one of: fail, warning, skip" in proc.stderr
    assert f"{profile}:4: deviations.pop3.lock.second-session-in-use-code.reson: unknown key 'reson' (did you mean 'reason'?" in proc.stderr


def test_target_file_problems_are_all_reported_and_password_is_named(tmp_path):
    bad = write(tmp_path / "t.yaml", """
        name: x
        imap: imaps://127.0.0.1:1
        pop3: {url: "pop3s://127.0.0.1:2", starttls: true}
        timout: 3
        accounts:
          - {user: a}
          - {user: b, password: x, password_env: MH_NOT_SET_ANYWHERE}
          - {usr: c, password: x}
        """)
    proc = cli("target", "check", str(bad))
    assert proc.returncode == 2
    lines = proc.stderr.replace("mailharness target: error: ", "").strip().splitlines()
    assert lines == [
        f"{bad}:4: timout: unknown key 'timout' (did you mean 'timeout'? allowed: accounts, ca_file, client_cert, "
        "client_key, disposable, imap, imaps, lmtp, name, pop3, pop3s, profile, smtp, timeout, tls, tls_verify)",
        f"{bad}:6: accounts[0]: 'password' is a required property (or 'password_env')",  # as docs/targets.md promises
        f"{bad}:7: accounts[1]: give one of 'password', 'password_env', not several",
        f"{bad}:8: accounts[2].usr: unknown key 'usr' (did you mean 'user'? allowed: password, password_env, user)",
        f"{bad}:8: accounts[2]: 'user' is a required property",
    ], proc.stderr
    assert "{'" not in proc.stderr
    bad.write_text(bad.read_text().replace("timout", "timeout").replace("{user: a}", "{user: a, password: y}")
                   .replace(", password_env: MH_NOT_SET_ANYWHERE", "").replace("usr", "user"))
    proc = cli("target", "check", str(bad))
    assert proc.returncode == 2
    assert f"{bad}:3: pop3: starttls makes no sense with pop3s://" in proc.stderr


# -- messages that teach ---------------------------------------------------------------------

def test_run_help_names_only_files_that_exist():
    named = re.findall(r"\b((?:suites|examples|profiles|docs)/[a-z0-9_./-]+\.(?:yaml|md))", run_command.DESCRIPTION)
    assert named, run_command.DESCRIPTION
    for name in named:
        assert (ROOT / name).exists(), name


@pytest.mark.parametrize("action, words", [("up", "127.0.0.1"), ("down", "temp dir"), ("check", "capabilities")])
def test_target_actions_have_descriptions(action, words, capsys):
    from harness.cli import main

    with pytest.raises(SystemExit):
        main(["target", action, "--help"])
    out = capsys.readouterr().out
    assert words in out and "example" in out, out
    assert action in target_command.DESCRIPTION


def test_target_check_prints_readable_text(target_file):
    proc = cli("target", "check", str(target_file))
    assert proc.returncode == 0, proc.stderr
    assert "capabilities: IMAP4REV1 " in proc.stdout and "greeting:     +OK" in proc.stdout
    assert "['" not in proc.stdout and "None" not in proc.stdout and "disposable=" not in proc.stdout


def test_suite_format_lists_the_required_keys():
    text = (ROOT / "docs" / "suite-format.md").read_text()
    section = text.split("## Required keys", 1)[1].split("\n## ", 1)[0]
    schema = yaml.safe_load((ROOT / "harness" / "schemas" / "suite.schema.json").read_text())
    required = schema["required"] + schema["$defs"]["test"]["required"] + ["area", "rfc", "sessions", "suite"]
    for key in required:
        assert f"`{key}`" in section or f"`{key}:`" in section, key


# -- list and init ---------------------------------------------------------------------------------

def test_list_shows_what_run_would_select_without_a_server(tmp_path):
    suite = write(tmp_path / "s.yaml", SUITE)
    proc = cli("list", "--suite", str(suite), "-m", "deletion and not smoke", "-k", "not needs")
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines()[:-1]]
    assert [row[0] for row in rows] == ["ci.known", "ci.skipped-by-profile"]
    assert rows[0][2:5] == ["deletion", "pop3", f"{suite}:21"]
    assert proc.stdout.splitlines()[-1] == "2 test(s) in 1 file(s)"

    proc = cli("list", "--suite", str(suite), "-m", "smoke", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [{
        "id": "ci.fails", "title": "RETR of a message marked deleted (the check is wrong on purpose)",
        "area": "deletion", "protocol": "pop3", "level": "MUST", "rfc": ["RFC1939 §6"], "tags": ["smoke"],
        "file": str(suite), "line": 7,
    }]

    proc = cli("list", "--suite", str(suite), "-m", "imap")
    assert proc.returncode == 2 and "no tests matched" in proc.stderr


def test_list_of_the_bundled_suites_matches_the_suite_files():
    from harness.engine.model import load_suite
    from harness.engine.suite_files import suite_files

    proc = cli("list", "--json", "-m", "pop3 and deletion")
    assert proc.returncode == 0, proc.stderr
    listed = [(t["id"], t["file"], t["line"]) for t in json.loads(proc.stdout)]
    expected = [(s.id, str(s.file.relative_to(ROOT)), s.line) for f in suite_files([ROOT / "suites"]) for s in load_suite(f)
                if s.area == "deletion" and "pop3" in s.protocol.split("+")]
    assert sorted(listed) == sorted(expected) and listed


def test_list_reports_a_malformed_suite_with_every_problem(tmp_path):
    path = write(tmp_path / "broken.yaml", "suite: broken\n" + textwrap.dedent(BROKEN).lstrip())
    proc = cli("list", "--suite", str(path))
    assert proc.returncode == 2
    assert f"{path}:18: unknown step key 'expcet'" in proc.stderr and f"{path}:30: expect: an idle start step" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_init_writes_a_suite_and_target_that_validate_and_run(tmp_path, target_file):
    root = tmp_path / "checks"
    proc = cli("init", str(root))
    assert proc.returncode == 0, proc.stderr
    assert (root / "suites" / "example.yaml").is_file() and (root / "target.yaml").is_file()
    proc = cli("validate", str(root / "suites"), "--target", str(root / "target.yaml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 test(s)" in proc.stdout and "0 problem(s)" in proc.stdout
    proc = cli("run", "--suite", str(root / "suites"), "--target", str(target_file), "--report-dir", str(tmp_path / "r"))
    assert proc.returncode == 0, proc.stdout + proc.stderr  # the example passes against a real server
    proc = cli("init", str(root))
    assert proc.returncode == 2 and "never overwrites" in proc.stderr
