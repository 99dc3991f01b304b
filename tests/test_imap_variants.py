"""Legal IMAP servers unlike Dovecot pass the IMAP suites as Dovecot does (the IMAP half of
test_suites_catch_faults.test_legal_pop3_variant_passes_pop3_suites).

A variant of tests/faultproxy.py (VARIANTS) plays a server that lacks an extension the embedded Dovecot
has, e.g. UIDPLUS. The IMAP tests of the areas that use it run through it: a test that needs the extension
must say so (`requires:`, or `when:` on the step), and is then skipped or checked without it; nothing may
fail. `mailharness validate` already rejects an APPENDUID or COPYUID expected without UIDPLUS declared;
this catches what it cannot see, such as a UID EXPUNGE in a test that does not require UIDPLUS.
"""

from __future__ import annotations

import pytest

from tests.faultproxy import VARIANTS, proxied_target
from tests.test_suites_catch_faults import HONEST, _line, _run_suites, _speaks, _suite_tests

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


# the areas whose tests use what the variants take away (UIDPLUS: APPENDUID, COPYUID, UID EXPUNGE); the
# whole IMAP suite would take minutes per variant on a busy CI machine
AREAS = ("uid", "sent", "deletion", "retrieval", "copy-move", "append")


# Variants of other areas (auth, capability) change only what those areas send; test_auth_engine runs each
# through its own area with the outcome it must give (a SHOULD answered otherwise is a warning, not a pass).
@pytest.mark.parametrize("variant", sorted(n for n, spec in VARIANTS.items() if spec.protocol == "imap" and spec.area in AREAS))
def test_legal_imap_variant_passes_imap_suites(variant, target, tmp_path):
    ids = [tid for tid, area, proto in _suite_tests() if _speaks("imap", proto) and area in AREAS]
    with proxied_target(target, imap_fault=variant) as proxied:
        tests, output = _run_suites(proxied, tmp_path, " or ".join(ids))
        proxy = proxied.proxies["imap"]
        fired, errors = list(proxy.fired), list(proxy.errors)
    assert not errors, f"variant {variant}: the proxy raised:\n" + "\n".join(errors)
    assert fired, f"variant {variant} never changed anything: the run proves nothing"
    bad = [t for t in tests if t["outcome"] not in HONEST]
    assert not bad, f"through variant {variant} these tests did not pass:\n" + "\n".join(map(_line, bad))
    assert len(tests) == len(ids), f"ran {len(tests)} of {len(ids)} tests\n{output}"
