"""Locust entry point for the mailharness POP3/IMAP load scenarios.

    locust -f loadtests/locustfile.py --target-file target.yaml --scenario term-start \
           --headless -u 200 -r 20 -t 5m --html report.html

Which user kinds run, and their weights, think times and deliveries, come from the scenario
file (loadtests/scenarios/NAME.yaml); see loadtests/README.md. `mailharness load` wraps this
with an embedded server, seeding, the lost/duplicated check and a capacity report.
"""

from harness.load import locust_plugin  # noqa: F401  (registers --target-file/--scenario and the init hook)
from harness.load.shape import TermStartShape  # noqa: F401
from harness.load.users import IdleUser, MailDelivery, Pop3DeletePoller, Pop3KeepPoller, WebmailReader  # noqa: F401
from harness.stress.users import StressUser  # noqa: F401,E402  (the `stress` scenario's sessions)
