"""Which failures get one line instead of a traceback: every ``ExpectedError`` (data_contracts/errors.py: bad input, a
recipe that cannot work, the state of a data root) and an unreachable object store anywhere in an error's chain.
Used by the command line, the backfill's per-night summary and the filter that keeps Prefect's run loggers from
printing tracebacks of expected errors."""
from __future__ import annotations

import logging

from data_contracts.errors import ExpectedError
from infra.catalog.store import outage_message


def expected_message(exc: BaseException) -> str | None:
    """The one line to print for an expected error; None for anything else (a bug: its traceback stays)."""
    if isinstance(exc, ExpectedError):
        return str(exc)
    return outage_message(exc)


class QuietExpected(logging.Filter):
    """Drop the traceback Prefect's run loggers attach to a failed task/flow when the error is an expected one
    (the message line stays, in the console and in the Prefect UI)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and expected_message(exc) is not None:
            record.exc_info, record.exc_text = None, None
        return True
