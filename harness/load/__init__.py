"""Load testing: lean POP3/IMAP/LMTP wire clients, Locust users, seeding, capacity reports.

Layout (one concept per module):
  wire, imap_client, pop3_client, lmtp_client   sockets and protocols; no Locust, usable anywhere
  messages, seeding, accounts, ledger, accounting   mail to send, who logs in where, lost/duplicated mail
  scenario, thresholds                       the YAML scenario file and pass/fail rules
  users, shape, locust_plugin                Locust-side code; importing them imports (and monkey-patches) gevent
  capacity_report, svg_charts                the capacity.html report
  seed_command, load_command, bench_command  `mailharness seed|load|bench`; light at import time
"""
