"""Errors the user can act on. The CLI prints them without a traceback."""


class HarnessError(Exception):
    """Something the user must fix; ``exit_code`` is what the CLI returns."""

    exit_code = 2


class ConfigError(HarnessError):
    """A target file, suite, profile or scenario is malformed or inconsistent."""


class TargetUnavailable(HarnessError):
    """The server cannot be reached or started."""


class UnsafeAccount(HarnessError):
    """An account holds mail the harness did not create; touching it could destroy it."""
