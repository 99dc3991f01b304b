"""Bad input: every malformed file or argument ends with exit 2 and file:line, never a traceback.

Each case here once crashed (RecursionError, TypeError, ValueError), hung, or ate gigabytes.
The commands run in-process: an exception other than a HarnessError fails the test. Commands that
would reach a server name a missing target file, so a check that no longer holds fails fast.
"""

from __future__ import annotations

import pytest

from harness.cli import main

ACCOUNT = "accounts: [{user: a, password: b}]\n"
NESTED = "x: " + "[" * 5000 + "]" * 5000 + "\n"
# 342 bytes that expand to 9**9 strings if anything walks the aliases.
ALIAS_BOMB = "".join(
    f"{name}: &{name} [{','.join([f'*{prev}'] * 9) if prev else ','.join(['lol'] * 9)}]\n"
    for prev, name in zip([None, *"abcdefgh"], "abcdefghi")
)


def run_cli(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as info:
        code = main(list(argv))
        raise SystemExit(code)
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize(
    "text, where, fragment",
    [
        ("name: x\nimap: imap://h\n" + NESTED, ":3:", "nested more than 64 levels"),
        ("name: x\n? [a, b]\n: 1\n", ":2:", "a list cannot be a mapping key"),
        ("name: x\n{a: 1}: 2\n", ":2:", "a mapping cannot be a mapping key"),
        (ALIAS_BOMB, ":7:", "alias bomb"),
        ("a: &a [*a]\n", ":1:", "cycle"),
        ("name: x\nimap: imap://h\ntimeout: .nan\n" + ACCOUNT, ":3:", ".nan is not a finite number"),
        ("name: x\nimap: imap://h\ntimeout: .inf\n" + ACCOUNT, ":3:", ".inf is not a finite number"),
        ("name: x\nimap: imap://h\naccounts: {pattern: 'u{n}', range: [1, 100000000000], password: x}\n", ":3:", "at most 1,000,000"),
        ("name: x\nimap: 'imap://[::1'\n" + ACCOUNT, ":2:", "Invalid IPv6 URL"),
        ("name: x\nimap: imap://127.0.0.1:0\n" + ACCOUNT, ":2:", "port 0"),
        ("name: x\npop3: pop3://127.0.0.1:70000\n" + ACCOUNT, ":2:", "bad port"),
        ("name: x\nimap: imaps://h\nca_file: /nonexistent/ca.pem\n" + ACCOUNT, ":3:", "/nonexistent/ca.pem does not exist"),
    ],
    ids=["nested", "list-key", "mapping-key", "alias-bomb", "alias-cycle", "nan", "inf", "huge-range", "ipv6", "port-0",
         "port-70000", "ca-file"],
)
def test_bad_target_file(tmp_path, capsys, text, where, fragment):
    path = tmp_path / "t.yaml"
    path.write_text(text)
    err = run_cli(capsys, "target", "check", str(path))
    assert f"{path}{where}" in err and fragment in err, err


BOMB_ANCHORS = "bomb:\n" + "".join(f"  {line}\n" for line in ALIAS_BOMB.splitlines()[:6])  # lines 2-7: 2.6 million characters expanded


@pytest.mark.parametrize(
    "body, fragment",
    [
        ("  - id: a.b\n    timeout: .nan\n    steps: [{sleep: 1}]\n", ":3: .nan is not a finite number"),
        ("  - id: a.b\n    steps: [{sleep: .inf}]\n", ":3: .inf is not a finite number"),
        ("  - id: a.b\n    steps: " + NESTED.removeprefix("x: "), ":3: nested more than 64 levels"),
        ("  - id: a.b\n    steps: [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]\n", ":10: aliases expand this document"),
    ],
    ids=["nan-timeout", "inf-sleep", "nested", "alias-bomb"],
)
def test_bad_suite_file(tmp_path, capsys, body, fragment):
    path = tmp_path / "s.yaml"
    path.write_text((BOMB_ANCHORS if "*f" in body else "") + "tests:\n" + body)
    err = run_cli(capsys, "validate", str(path))
    assert f"{path}{fragment}" in err, err


def test_bad_scenario_number(tmp_path, capsys):
    path = tmp_path / "sc.yaml"
    path.write_text("users:\n  pop3_keep:\n    weight: 1\n    think_time: {min: .nan, max: 5}\n")
    err = run_cli(capsys, "load", "--scenario", str(path), "--users", "1", "--run-time", "1s", "--target", "/nonexistent/t.yaml")
    assert f"{path}:4: .nan is not a finite number" in err, err


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["load", "--users", "1", "--run-time", "5s", "--target", "/nonexistent/t.yaml", "--stop-timeout", "nan"], "--stop-timeout: 'nan' is not a finite number"),
        (["load", "--users", "1", "--run-time", "5s", "--target", "/nonexistent/t.yaml", "--spawn-rate", "inf"], "--spawn-rate: 'inf' is not a finite number"),
        (["load", "--users", "1", "--run-time", "5s", "--target", "/nonexistent/t.yaml", "--think-scale", "nan"], "--think-scale: 'nan' is not a finite number"),
        (["load", "--users", "1", "--run-time", "5s", "--target", "/nonexistent/t.yaml", "--stop-timeout", "-1"], "--stop-timeout must be between 0 and"),
        (["load", "--users", "1", "--run-time", "5s", "--target", "/nonexistent/t.yaml", "--max-error-rate", "150%"], "at most 100%"),
        (["load", "--users", "1", "--run-time", "5s", "--target", "/nonexistent/t.yaml", "--threshold", "Aggregated:errors<150%"], "at most 100%"),
        (["run", "--target", "/nonexistent/t.yaml", "--timeout", "nan"], "--timeout: 'nan' is not a finite number"),
        (["run", "--target", "/nonexistent/t.yaml", "--timeout", "-5"], "--timeout must be above 0"),
        (["bench", "--duration", "inf"], "--duration: 'inf' is not a finite number"),
    ],
    ids=["stop-timeout-nan", "spawn-rate-inf", "think-scale-nan", "stop-timeout-negative", "error-rate-150",
         "threshold-150", "run-timeout-nan", "run-timeout-negative", "bench-duration-inf"],
)
def test_bad_argument(capsys, argv, fragment):
    err = run_cli(capsys, *argv)
    assert fragment in err, err
