"""Argument types shared by the subcommands: numbers a run can actually use.

argparse's ``type=float`` takes ``nan`` and ``inf``; every comparison with NaN is false, so
range checks pass it and it breaks a timeout or a sleep far from the command line.
"""

from __future__ import annotations

import argparse
import math


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


TLS_HELP = ("serve TLS with a throwaway CA (the target file's ca_file), imaps/pop3s and STARTTLS/STLS, refusing "
            "plaintext logins before TLS; the sessions use MODE: implicit (default) or starttls")


def add_tls_argument(parser, what: str) -> None:
    """--tls [implicit|starttls] for the commands that start a managed server."""
    parser.add_argument("--tls", nargs="?", const="implicit", choices=["implicit", "starttls"], metavar="MODE",
                        help=f"{what}: {TLS_HELP}")
