"""Hostile IMAP and POP3 servers on 127.0.0.1: what the harness must survive within its timeouts.

    with HostileServer("endless-lines") as server:
        server.imap_port, server.pop3_port, server.target_yaml(...)

Modes (each for IMAP and POP3 alike):
  silent            accepts, never greets
  garbage           bytes without a line end, as fast as the client reads
  slowloris         a greeting trickled one byte per half second, forever
  endless-lines     greets, logs in, then answers every command with untagged lines that never end
  huge-literal      greets, logs in, then answers with a {2000000000} literal (POP3: a body without end)
  hang-after-login  greets, logs in, then never answers again

Also a script, for measuring by hand: ``python tests/hostile_server.py MODE`` prints a target file.
"""

from __future__ import annotations

import os
import socketserver
import sys
import threading
import time

MODES = ("silent", "garbage", "slowloris", "endless-lines", "huge-literal", "hang-after-login")
_CHUNK = b"x" * 65536


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    mode = "silent"
    stopping: threading.Event


def _serve(handler) -> None:
    try:
        handler.run()
    except OSError:  # the client gave up: that is the point
        pass


class _Base(socketserver.StreamRequestHandler):
    greeting = b""
    ok_login = b""

    def handle(self):
        _serve(self)

    @property
    def mode(self) -> str:
        return self.server.mode

    def run(self):
        stop = self.server.stopping
        send = self.wfile.write
        if self.mode == "silent":
            stop.wait()
            return
        if self.mode == "garbage":
            while not stop.is_set():
                send(os.urandom(4096).replace(b"\n", b"-"))
            return
        if self.mode == "slowloris":  # the first byte of a greeting, again and again: a line that never ends
            while not stop.wait(0.5):
                send(self.greeting[:1])
            return
        send(self.greeting)
        self.converse(send, stop)

    def converse(self, send, stop):
        raise NotImplementedError

    def _endless(self, send, stop, line: bytes) -> None:
        block = line * (65536 // len(line))
        while not stop.is_set():
            send(block)


class _Imap(_Base):
    greeting = b"* OK [CAPABILITY IMAP4rev1] hostile IMAP\r\n"

    def converse(self, send, stop):
        logged_in = False
        for raw in iter(lambda: self.rfile.readline(65536), b""):
            tag, _, rest = raw.decode("latin-1").strip().partition(" ")
            verb = rest.split(" ", 1)[0].upper()
            if verb == "CAPABILITY":
                send(f"* CAPABILITY IMAP4rev1\r\n{tag} OK done\r\n".encode())
            elif verb == "LOGIN" and not logged_in:
                logged_in = True
                send(f"{tag} OK logged in\r\n".encode())
            elif verb == "LOGOUT":
                send(f"* BYE\r\n{tag} OK bye\r\n".encode())
                return
            elif self.mode == "hang-after-login":
                stop.wait()
                return
            elif self.mode == "huge-literal":
                send(b"* 1 FETCH (BODY[] {2000000000}\r\n")
                while not stop.is_set():
                    send(_CHUNK)
                return
            else:  # endless-lines
                self._endless(send, stop, b"* OK still talking\r\n")
                return


class _Pop3(_Base):
    greeting = b"+OK hostile POP3\r\n"

    def converse(self, send, stop):
        logged_in = False
        for raw in iter(lambda: self.rfile.readline(65536), b""):
            verb = raw.decode("latin-1").strip().split(" ", 1)[0].upper()
            if verb == "USER":
                send(b"+OK\r\n")
            elif verb == "PASS" and not logged_in:
                logged_in = True
                send(b"+OK logged in\r\n")
            elif verb == "CAPA":
                send(b"+OK\r\nUSER\r\nUIDL\r\nTOP\r\n.\r\n")
            elif verb == "QUIT":
                send(b"+OK bye\r\n")
                return
            elif self.mode == "hang-after-login":
                stop.wait()
                return
            elif self.mode == "huge-literal":  # a multi-line answer without its terminator
                send(b"+OK here it comes\r\n")
                self._endless(send, stop, b"Subject: more\r\n")
                return
            else:
                send(b"+OK\r\n")
                self._endless(send, stop, b"1 x\r\n")
                return


class HostileServer:
    def __init__(self, mode: str):
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
        self.stopping = threading.Event()
        self.servers = []
        for handler in (_Imap, _Pop3):
            server = _Server(("127.0.0.1", 0), handler)
            server.mode, server.stopping = mode, self.stopping
            self.servers.append(server)
        self.imap_port, self.pop3_port = (s.server_address[1] for s in self.servers)

    def __enter__(self):
        for server in self.servers:
            threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        for server in self.servers:
            server.shutdown()
            server.server_close()

    def target_yaml(self, *, timeout: float = 2, imap: bool = True, pop3: bool = True) -> str:
        return ("name: hostile\n" + (f"imap: imap://127.0.0.1:{self.imap_port}\n" if imap else "")
                + (f"pop3: pop3://127.0.0.1:{self.pop3_port}\n" if pop3 else "")
                + "accounts: [{user: u1, password: secret-1}, {user: u2, password: secret-1}]\n"
                + f"disposable: true\ntimeout: {timeout}\n")


if __name__ == "__main__":
    with HostileServer(sys.argv[1]) as hostile:
        print(hostile.target_yaml(), flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
