"""Generator benchmark: protocol commands per generator CPU-second (same as `mailharness bench`).

    .venv/bin/python loadtests/bench_commands.py --users 20 --duration 15
    .venv/bin/python loadtests/bench_commands.py --idle-users 2000
"""

import sys

from harness.load.bench_command import main

if __name__ == "__main__":
    sys.exit(main())
