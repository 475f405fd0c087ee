"""`RepeatFilter`: identical errors are logged once, then counted; others pass untouched.
And `is_storage_full` recognises a full disk however it is wrapped."""

from __future__ import annotations

import errno
import logging
import sqlite3

import pytest

from service.contract.errors import ServiceError, is_storage_full, storage_full_error
from service.http.logcollapse import RepeatFilter
from service.storage.store import StoreError


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def logged() -> tuple[logging.Logger, Collect, RepeatFilter]:
    logger = logging.getLogger("test.logcollapse")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = Collect()
    collapse = RepeatFilter(window_s=60.0)
    handler.addFilter(collapse)
    logger.handlers[:] = [handler]
    return logger, handler, collapse


def _journal_error(logger: logging.Logger, event_id: int) -> None:
    try:
        raise OSError(errno.ENOSPC, "No space left on device")
    except OSError:
        logger.exception("cannot journal event %s", event_id)


def test_one_traceback_for_many_identical_errors_then_a_count(
    logged: tuple[logging.Logger, Collect, RepeatFilter],
) -> None:
    logger, handler, collapse = logged
    for event_id in range(500):  # the same error for every event: a different argument each
        _journal_error(logger, event_id)
    assert len(handler.records) == 1 and handler.records[0].exc_info is not None
    logger.error("a different error")
    logger.info("an access line")
    logger.info("an access line")
    assert len(handler.records) == 4
    collapse.window_s = 0.0  # the window is over: the next one says how many were dropped
    _journal_error(logger, 501)
    last = handler.records[-1]
    assert "repeated 500 times" in last.getMessage() and last.exc_info is None
    assert "No space left on device" in last.getMessage()


def test_a_full_disk_is_recognised_through_wrappers() -> None:
    disk = OSError(errno.ENOSPC, "No space left on device")
    quota = OSError(errno.EDQUOT, "Disk quota exceeded")
    sqlite_full = sqlite3.OperationalError("database or disk is full")
    try:
        raise StoreError("/x", str(sqlite_full)) from sqlite_full
    except StoreError as exc:
        wrapped = exc
    for exc in (disk, quota, sqlite_full, wrapped, storage_full_error()):
        assert is_storage_full(exc)
    for exc in (OSError(errno.EACCES, "denied"), ServiceError("QUEUE_FULL", "x"), ValueError()):
        assert not is_storage_full(exc)
    full = storage_full_error()
    assert full.status == 507 and full.headers["Retry-After"]
