"""Load testing: lean POP3/IMAP/LMTP wire clients, Locust users, seeding, capacity reports.

Layout (one concept per module):
  wire, imap_client, pop3_client, lmtp_client     sockets and protocols; no Locust, usable anywhere
  messages, seeding                               the mail the tests put on the server
  scenario, thresholds                            the YAML scenario file and the pass/fail rules
  accounts, ledger, accounting                    who logs in where; lost or duplicated mail
  locust_plugin, users, shape                     Locust side: importing them imports (and monkey-patches) gevent
  capacity_report, svg_charts, templates/         capacity.html
  seed_command, load_command, bench_command       `mailharness seed|load|bench`; light at import time
  bench_generator                                 the measured process behind `mailharness bench`
"""
