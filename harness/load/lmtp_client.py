"""Mail delivery over LMTP (or plain SMTP to an MX), pipelined when the server allows it.

LMTP answers DATA once per recipient, so one transaction can fill many mailboxes
with the same message and still tell which deliveries failed. Used by the seeder
(many recipients per transaction) and by the delivery load user (one recipient).
"""

from __future__ import annotations

import socket

from harness.load.wire import MAX_REPLY_LINES, CommandFailed, ResponseTooLarge, Step, WireClient, WireError
from harness.targets.target_file import Endpoint


def dot_stuff(message: bytes) -> bytes:
    """CRLF line ends, leading dots doubled, ending in CRLF: ready to send after DATA."""
    if b"\r\n" not in message:
        message = message.replace(b"\n", b"\r\n")
    if message.startswith(b"."):
        message = b"." + message
    message = message.replace(b"\r\n.", b"\r\n..")
    return message if message.endswith(b"\r\n") else message + b"\r\n"


class LmtpClient(WireClient):
    """One LMTP (or SMTP) connection that can carry many transactions."""

    default_timeout = 30.0

    def __init__(self, endpoint: Endpoint, **options):
        super().__init__(endpoint, **options)
        self.lmtp = endpoint.scheme == "lmtp"
        self.pipelining = False
        self.proto = "LMTP" if self.lmtp else "SMTP"

    def connect(self) -> None:
        """Greeting and LHLO/EHLO (and STARTTLS if asked): "LMTP connect"."""
        try:
            with Step(self, f"{self.proto} connect"):
                self._open()
                self._expect(self._reply(), 220, "greeting")
                self._hello()
                if self.endpoint.starttls:
                    self.conn.send(b"STARTTLS\r\n")
                    self._expect(self._reply(), 220, "STARTTLS")
                    self.conn.start_tls()
                    self._hello()
        except BaseException:
            self.close()
            raise

    def deliver(self, recipients: list[str], message: bytes, sender: str = "") -> dict[str, str | None]:
        """One transaction: {recipient: None if delivered, else the server's reply}.

        ``message`` must already be dot-stuffed (see dot_stuff). Reported as "LMTP deliver";
        it counts as failed only if no recipient got the message.
        """
        with Step(self, f"{self.proto} deliver"):
            results = self._transaction(recipients, message, sender)
            if all(results.values()):
                raise CommandFailed(f"{self.proto} deliver: " + "; ".join(sorted({r for r in results.values() if r})))
            return results

    def quit(self) -> None:
        try:
            if self.conn:
                self.conn.send(b"QUIT\r\n")
                self._reply()
        except (OSError, WireError):
            pass
        finally:
            self.close()

    # -- protocol --------------------------------------------------------------------
    def _hello(self) -> None:
        verb = b"LHLO " if self.lmtp else b"EHLO "
        self.conn.send(verb + socket.gethostname().encode() + b"\r\n")
        code, text = self._reply()
        self._expect((code, text), 250, "LHLO" if self.lmtp else "EHLO")
        self.pipelining = b"PIPELINING" in text.upper()

    def _transaction(self, recipients: list[str], message: bytes, sender: str) -> dict[str, str | None]:
        self._connected(self.proto)
        envelope = [b"MAIL FROM:<" + sender.encode() + b">\r\n"]
        envelope += [b"RCPT TO:<" + r.encode() + b">\r\n" for r in recipients]
        envelope.append(b"DATA\r\n")
        replies = []
        if self.pipelining:
            self.conn.send(b"".join(envelope))
            replies = [self._reply() for _ in envelope]
        else:
            for line in envelope:
                self.conn.send(line)
                replies.append(self._reply())
                if replies[-1][0] >= 400 and line.startswith(b"MAIL"):
                    break
        mail, rcpts, data = replies[0], replies[1:-1], replies[-1] if len(replies) == len(envelope) else (0, b"")
        self._expect(mail, 250, "MAIL FROM")
        results: dict[str, str | None] = {}
        accepted = []
        for rcpt, (code, text) in zip(recipients, rcpts):
            if code // 100 == 2:
                accepted.append(rcpt)
                results[rcpt] = None
            else:
                results[rcpt] = f"RCPT {code} {text.decode(errors='replace')}"
        if data[0] != 354:
            if accepted:
                raise CommandFailed(f"{self.proto} DATA: {data[0]} {data[1].decode(errors='replace')}")
            self.conn.send(b"RSET\r\n")
            self._reply()
            return results
        self.conn.send(message + b".\r\n")
        for rcpt in accepted if self.lmtp else accepted[:1]:
            code, text = self._reply()
            if code // 100 != 2:
                failed = [rcpt] if self.lmtp else accepted
                for r in failed:
                    results[r] = f"DATA {code} {text.decode(errors='replace')}"
        return results

    def _reply(self) -> tuple[int, bytes]:
        """One (possibly multi-line) reply: (code, text of all lines)."""
        lines = []
        while True:
            line = self.conn.read_line()
            lines.append(line[4:])
            if len(lines) > MAX_REPLY_LINES:
                raise ResponseTooLarge(f"{self.proto}: a reply of more than {MAX_REPLY_LINES} lines")
            if len(line) < 4 or line[3:4] != b"-":
                try:
                    return int(line[:3]), b"\n".join(lines)
                except ValueError:
                    raise CommandFailed(f"{self.proto}: unexpected reply {line[:200]!r}") from None

    def _expect(self, reply: tuple[int, bytes], code: int, step: str) -> None:
        if reply[0] != code:
            raise CommandFailed(f"{self.proto} {step}: {reply[0]} {reply[1][:300].decode(errors='replace')}")

