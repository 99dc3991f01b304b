"""Errors the user can act on. The CLI prints them without a traceback."""


class HarnessError(Exception):
    """Something the user must fix; ``exit_code`` is what the CLI returns."""

    exit_code = 2


class ConfigError(HarnessError):
    """A target file, suite, profile or scenario is malformed or inconsistent.

    ``problems`` lists each problem (``file:line: ...``) when one file has several; the message joins them.
    """

    def __init__(self, message: str = "", problems: list[str] | None = None):
        self.problems = list(problems) if problems else [message]
        super().__init__(message or "\n".join(self.problems))


class TargetUnavailable(HarnessError):
    """The server cannot be reached or started."""


class UnsafeAccount(HarnessError):
    """An account holds mail the harness did not create; touching it could destroy it."""
