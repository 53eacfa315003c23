"""The ``fedavg`` command's failures and the exit code each one ends the command with.

0 ok; 1 the job failed or was stopped; 2 a bad flag or value; 3 the orchestrator cannot be
reached (or trusted); 4 it refused the request (4xx); 5 it failed (5xx) or answered nonsense.
"""

from __future__ import annotations

EXIT_OK, EXIT_JOB, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_REFUSED, EXIT_SERVER = 0, 1, 2, 3, 4, 5


class ConsoleError(Exception):
    """A failure the command reports in one line, then exits with ``exit_code``."""

    exit_code = EXIT_USAGE


class OptionError(ConsoleError):
    """A bad command-line value; the message names the flag."""


class Unreachable(ConsoleError):
    exit_code = EXIT_UNREACHABLE


class Refused(ConsoleError):
    """The orchestrator answered 4xx; the message is its own, plus a hint where we have one."""

    exit_code = EXIT_REFUSED

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ServerFailed(ConsoleError):
    exit_code = EXIT_SERVER
