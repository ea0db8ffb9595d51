"""Telling "the database cannot be reached now" apart from a bug or bad data, for callers that answer
it differently (a 503 and Retry-After at the web edge, a retry in a loop)."""

from sqlalchemy import exc as sa

# Raised raw by a driver that cannot connect (a reset is not here: it is also how a client leaves).
UNREACHABLE = (ConnectionRefusedError,)


def database_unavailable(error: BaseException) -> bool:
    """Whether `error` says the database is down, restarting or unreachable."""
    if isinstance(error, (sa.OperationalError, sa.InterfaceError, sa.TimeoutError)):
        return True
    if isinstance(error, sa.DBAPIError) and error.connection_invalidated:
        return True
    if isinstance(error, UNREACHABLE):
        return True
    cause = error.__cause__ or error.__context__
    return cause is not None and cause is not error and isinstance(cause, UNREACHABLE + (sa.OperationalError,))
