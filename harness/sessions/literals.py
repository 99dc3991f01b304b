"""IMAP literal framing: where literal data sits among the lines of a command or response.

A line that ends in ``{N}`` (synchronizing), ``{N+}`` (LITERAL+) or ``~{N}`` (literal8) is followed
by exactly N bytes of data, after which the same logical line continues. Used to split commands at
their synchronization points, to read responses, and to show and redact both in transcripts.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.framing import LITERAL_ANYWHERE as MARKER_ANYWHERE  # noqa: F401 - for imap.py
from harness.framing import LITERAL_AT_END as MARKER_AT_END


@dataclass(frozen=True)
class Marker:
    size: int
    synchronizing: bool  # the sender waits for a "+" continuation before the data


def marker_at_end(line: bytes) -> Marker | None:
    """The literal announced at the end of `line` (given without its line end), if any."""
    m = MARKER_AT_END.search(line)
    if not m:
        return None
    return Marker(int(m.group(1)), not m.group(2))


@dataclass(frozen=True)
class Piece:
    kind: str  # "line" (text, line end excluded) or "literal" (data)
    start: int
    end: int
    eol: int = 0  # bytes of line end after a "line" piece: 0 (data ended first), 1 (LF) or 2 (CRLF)


def frame(data: bytes, due: int = 0) -> tuple[list[Piece], int]:
    """Split `data` into line and literal pieces.

    `due` is how many literal bytes the data starts with (announced by an earlier chunk).
    Returns the pieces and the literal bytes still due after the end of `data`.
    """
    pieces: list[Piece] = []
    pos, n = 0, len(data)
    if due:
        take = min(due, n)
        pieces.append(Piece("literal", 0, take))
        pos, due = take, due - take
    while pos < n:
        lf = data.find(b"\n", pos)
        if lf < 0:
            pieces.append(Piece("line", pos, n))
            break
        end = lf - 1 if lf > pos and data[lf - 1] == 0x0D else lf
        pieces.append(Piece("line", pos, end, lf + 1 - end))
        pos = lf + 1
        marker = marker_at_end(data[pieces[-1].start:end])
        if marker:
            take = min(marker.size, n - pos)
            pieces.append(Piece("literal", pos, pos + take))
            pos += take
            due = marker.size - take
    return pieces, due
