"""The delivery/retrieval journal that proves no mail was lost or duplicated under load.

Every generator process appends JSON lines to its own file in the ledger directory
(<run dir>/ledger/<host>-<pid>.jsonl), one write per event, so nothing is lost when
Locust stops a worker abruptly and no cross-process messaging is needed. Events:

  {"e": "sending", "id", "to", "role"}    the delivery user is about to send message id
  {"e": "delivered", "id"}                the server accepted it (LMTP 250 for that recipient)
  {"e": "quit", "s", "user", "ids"}       a download-and-delete session retrieved ids and sends QUIT
  {"e": "committed", "s"}                 ... and the server confirmed QUIT, so the DELEs took effect

A "sending" without "delivered", or a "quit" without "committed", means the process was
stopped in between; accounting.settle() resolves both from what is left on the server.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path


class Ledger:
    """This process's journal file (opened on first use, after Locust has forked its workers)."""

    def __init__(self, directory: Path | str):
        self.directory = Path(directory)
        self._file = None
        self._pid = None

    def _write(self, record: dict) -> None:
        if self._pid != os.getpid():  # first use, or a fork inherited the parent's handle
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / f"{socket.gethostname()}-{os.getpid()}.jsonl"
            # Open for the life of the process, line-buffered: one write per event reaches the file at once.
            self._file = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
            self._pid = os.getpid()
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")

    def sending(self, message_id: str, user: str, role: str) -> None:
        self._write({"e": "sending", "id": message_id, "to": user, "role": role})

    def delivered(self, message_id: str) -> None:
        self._write({"e": "delivered", "id": message_id})

    def quit_sent(self, session: str, user: str, ids: list[str]) -> None:
        self._write({"e": "quit", "s": session, "user": user, "ids": ids})

    def committed(self, session: str) -> None:
        self._write({"e": "committed", "s": session})


@dataclass
class LedgerContents:
    sent: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (recipient, role)
    delivered: set[str] = field(default_factory=set)
    sessions: dict[str, list[str]] = field(default_factory=dict)  # session -> ids retrieved
    committed: set[str] = field(default_factory=set)
    files: int = 0
    bad_lines: int = 0


def read_ledger(directory: Path | str) -> LedgerContents:
    out = LedgerContents()
    directory = Path(directory)
    if not directory.is_dir():
        return out
    for path in sorted(directory.glob("*.jsonl")):
        out.files += 1
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                rec = json.loads(line)
                kind = rec["e"]
                if kind == "sending":
                    out.sent[rec["id"]] = (rec["to"], rec["role"])
                elif kind == "delivered":
                    out.delivered.add(rec["id"])
                elif kind == "quit":
                    out.sessions[rec["s"]] = list(rec["ids"])
                elif kind == "committed":
                    out.committed.add(rec["s"])
            except (ValueError, KeyError, TypeError):
                out.bad_lines += 1  # a line cut short by a killed process
    return out
