"""`mailharness bench --tls`: what TLS costs the load generator. The same measurement runs twice against
the embedded Dovecot, cleartext and over implicit TLS (a throwaway CA, verification on), and the two
figures are printed side by side: commands per generator CPU-second, wall-clock rate, Dovecot's cores."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from collections.abc import Callable

from harness.errors import ConfigError


def compare(args, run: Callable[[argparse.Namespace], int]) -> int:
    if args.target:
        raise ConfigError("--tls compares the embedded Dovecot with and without TLS; with --target the target "
                          "file's endpoints (imaps://, starttls: true) decide whether the benchmark uses TLS")
    if args.idle_users:
        raise ConfigError("--tls measures the webmail mix (commands per CPU-second); leave out --idle-users")
    results = {}
    for label, mode in (("cleartext", None), ("TLS", "implicit")):
        side = argparse.Namespace(**{**vars(args), "tls": False, "server_tls": mode, "json": True})
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            run(side)
        results[label] = json.loads(out.getvalue())
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    plain, tls = results["cleartext"], results["TLS"]
    print(f"webmail mix, {plain['users']} users, {plain['wall_seconds']:.0f} s measured per side, embedded Dovecot "
          "cleartext and over implicit TLS:")
    print(f"  {'':10} {'commands':>9} {'failed':>6} {'CPU-s':>7} {'commands/CPU-s':>15} {'commands/s':>11} {'Dovecot cores':>14}")
    for label, r in results.items():
        cores = r["server_cpu_seconds"] / r["server_wall_seconds"] if r.get("server_wall_seconds") else 0.0
        print(f"  {label:10} {r['commands']:>9,} {r['failures']:>6} {r['cpu_seconds']:>7.2f} "
              f"{r['commands_per_cpu_second']:>15,.0f} {r['commands_per_second']:>11,.0f} {cores:>14.2f}")
    if plain["commands_per_cpu_second"] and tls["commands_per_cpu_second"]:
        cost = plain["commands_per_cpu_second"] / tls["commands_per_cpu_second"] - 1
        print(f"  TLS costs the generator {cost:+.0%} CPU per command (cleartext / TLS commands per CPU-second - 1)")
    return 0
