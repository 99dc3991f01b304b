"""Local addresses the load connections come from: `--source-address 127.0.0.2-127.0.0.9` or a scenario's
`source_address:`.

Towards one server address and port, one local address has only the ephemeral port range (Linux:
32768-60999, about 28,000 ports); a campus of phones holding IDLE needs more connections than that.
Every address of 127.0.0.0/8 is local on Linux, so a loopback run can spread over several; against a
real server, give addresses configured on the generator's interfaces.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Iterator

from harness.errors import ConfigError

MAX_ADDRESSES = 1024


def parse_source_addresses(spec: str | list, where: str) -> list[str]:
    """"127.0.0.2-127.0.0.9", "10.0.0.5,10.0.0.6" or a YAML list of those -> the addresses, in order."""
    parts = spec if isinstance(spec, list) else str(spec).split(",")
    out: list[str] = []
    for part in (str(p).strip() for p in parts):
        first, sep, last = part.partition("-")
        try:
            low = ipaddress.ip_address(first.strip())
            high = ipaddress.ip_address(last.strip()) if sep else low
        except ValueError:
            raise ConfigError(f"{where}: {part!r} is not an IP address or a range like 127.0.0.2-127.0.0.9") from None
        if low.version != high.version or high < low:
            raise ConfigError(f"{where}: {part!r}: the range must go up, within one address family")
        if int(high) - int(low) + len(out) >= MAX_ADDRESSES:
            raise ConfigError(f"{where}: more than {MAX_ADDRESSES} addresses")
        out += [str(ipaddress.ip_address(n)) for n in range(int(low), int(high) + 1)]
    if not out:
        raise ConfigError(f"{where}: no address given")
    return out


class SourceAddresses:
    """Hands out the addresses round-robin, one per new user (a user keeps its address)."""

    def __init__(self, addresses: list[str] | None):
        self.addresses = addresses or []
        self._cycle: Iterator[str] | None = itertools.cycle(self.addresses) if self.addresses else None

    def next(self) -> str | None:
        return next(self._cycle) if self._cycle else None
