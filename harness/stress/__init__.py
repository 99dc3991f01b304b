"""Stress mode with state tracking (issue 13): many random sessions per mailbox, every response checked.

  responses.py    IMAP responses read off the wire and taken apart (imapclient's parser; a fast path for FLAGS)
  model.py        what one mailbox and each session's view of it must look like; violations when they do not
  violations.py   violations by kind and over time, the first of each kind with the sessions' transcripts
  messages.py     the mail a stress run appends and delivers (a unique Message-ID each, bytes known)
  imap_session.py one IMAP session: weighted random commands, each response fed to the model
  pop3_session.py one POP3 session on the same maildrop: UIDL/LIST/TOP/RETR/DELE/RSET checks
  checkpoint.py   every N seconds the sessions of a mailbox quiesce and must agree; atomic-flags trials
  probes.py       sequential probes for imaptest's Expunge fetch / Expunge store / \\Recent categories
  users.py        the Locust user (one session each) and the background LMTP delivery
  command.py      `mailharness stress`; results.json-style output and the consistency report

Each mailbox's model lives in the generator process that runs all of its sessions (see users.py),
so checking needs no cross-process traffic and scales with workers.
"""
