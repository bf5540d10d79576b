"""A failed item's record: how an exception crosses a process (or machine) boundary.

Many exceptions pickle but cannot be rebuilt, and some (holding a lock, a socket) cannot be
pickled at all; so a worker sends a record of plain data, the exception pickled only when that
round-trips, and the caller turns the record into the same ``TaskError`` on every backend.
"""

from __future__ import annotations

import pickle
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # workers import this module for the records: keep their start-up light
    from ..core.task import ItemFailure, Task

# (position, pickled exception or None, type name, message, traceback text)
FailureRecord = tuple[int, "bytes | None", str, str, str]


def exception_record(position: int, exc: BaseException, tb_text: str) -> FailureRecord:
    """A worker's record of item ``position`` raising ``exc``."""
    from .._portable import portable_exception  # not ..errors: see _portable.py
    from .wire import dumps

    payload: bytes | None
    try:
        payload = dumps(portable_exception(exc))
        pickle.loads(payload)  # some cannot be rebuilt even by state: check here
    except BaseException:  # rebuilding runs the type's own code, which may raise anything
        payload = None
    return (position, payload, type(exc).__name__, str(exc), tb_text)


def unpicklable_result_record(position: int, value: Any, exc: BaseException) -> FailureRecord:
    """A worker's record of an item whose result could not be pickled."""
    message = (
        f"the result of this item could not be pickled in the worker "
        f"({type(exc).__name__}: {exc}); return plain data (numbers, strings, lists, "
        f"dicts, arrays) instead of {type(value).__name__} objects"
    )
    return (position, None, "SerializationError", message, "")


def failure_from_record(task: Task, record: tuple[Any, ...], base: int = 0) -> ItemFailure:
    """The caller's ItemFailure for a worker's record; the record's position counts from
    ``base`` (a message carrying a streaming chunk's results from its item ``base`` on)."""
    from ..core.task import ItemFailure
    from ..errors import SerializationError
    from .base import task_error

    position, exc_payload, type_name, message, tb_text = record
    position += base
    if type_name == "SerializationError" and exc_payload is None:
        error: BaseException = SerializationError(
            f"{task.describe(position)}: {message}",
            what="result",
            side="worker",
            index=task.first_index + position,
        )
    else:
        original = None
        if exc_payload is not None:
            try:
                original = pickle.loads(exc_payload)
            except BaseException:  # an exception's own unpickling may raise anything
                original = None
        try:
            error = task_error(task, position, original, type_name, message, tb_text)
        except BaseException:  # a type that cannot stand in: a plain TaskError
            error = task_error(task, position, None, type_name, message, tb_text)
    return ItemFailure(error)
