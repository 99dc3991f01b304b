"""junit.xml as CI systems read it best: each suite test points at its YAML line.

pytest writes the file (``--junitxml``); its xunit2 family drops ``file`` and
``line``, and a failure's message would be the first lines of the whole
report. After pytest has written it, this adds to each suite testcase
``file``/``line`` (the YAML test), sets a failure's message to expected/got,
keeps the failure text short and puts the transcript into ``system-out``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from harness.reports.github import expected_got

BAD = ("failed", "error", "xpassed")


def _case_key(nodeid: str) -> tuple[str, str]:
    """(classname, name) pytest's junitxml gives a node id."""
    from _pytest.junitxml import mangle_test_address

    names = mangle_test_address(nodeid)
    return ".".join(names[:-1]), names[-1]


def enrich(path: Path | str, tests_by_nodeid: dict[str, dict]) -> int:
    """Rewrite ``path`` in place; returns how many testcases were ours."""
    path = Path(path)
    tree = ET.parse(path)
    index = {_case_key(nodeid): test for nodeid, test in tests_by_nodeid.items()}
    changed = 0
    for case in tree.iter("testcase"):
        test = index.get((case.get("classname", ""), case.get("name", "")))
        if test is None:
            continue  # not a suite test (a mixed run)
        changed += 1
        case.set("file", str(test.get("file", "")))
        if test.get("line"):
            case.set("line", str(test["line"]))
        if test["outcome"] not in BAD:
            continue
        for element in list(case.findall("failure")) + list(case.findall("error")):
            if test.get("failure"):
                where = f"{test['failure'].get('file')}:{test['failure'].get('line')}"
                element.set("message", f"{expected_got(test)} ({where})")
            element.text = test.get("message") or element.text
        if test.get("transcript"):
            out = case.find("system-out")
            if out is None:
                out = ET.SubElement(case, "system-out")
            out.text = test["transcript"]
    tree.write(path, encoding="utf-8", xml_declaration=True)
    return changed
