"""Exceptions that carry the exit code a user or a cron job sees (docs/commands.md, exit codes)."""

from __future__ import annotations

# A bug (an exception no one expected): EX_SOFTWARE of sysexits.h. Never 1, which a cron job
# running `--fail-if-*` reads as a missed target.
INTERNAL_ERROR = 70


class ReplytimeError(Exception):
    """A failure explained in one sentence; the CLI prints it and exits with ``exit_code``."""

    exit_code = 1


class CheckFailed(ReplytimeError):
    """A requested check (SLA target, stale leads) was not met."""

    exit_code = 1


class UsageError(ReplytimeError):
    """Bad arguments or bad input paths."""

    exit_code = 2


class ConfigError(UsageError):
    """A mistake in the config file; the message names the key."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"config: {key}: {problem}" if key else f"config: {problem}")


class CacheError(UsageError):
    """The cache file is missing, corrupt, or from a newer version."""


class LockedError(ReplytimeError):
    """Another replytime process holds the lock for this cache or account."""

    exit_code = 1


class AuthError(ReplytimeError):
    """Credentials are missing, expired, revoked or refused."""

    exit_code = 3


class SourceUnreachable(ReplytimeError):
    """A mail source still failed after retries."""

    exit_code = 4


class DeliveryFailed(ReplytimeError):
    """A mail, chat or webhook delivery still failed after retries (nothing undelivered is
    recorded as sent, so the next run tries it again)."""

    exit_code = 4
