"""Progress for long loops: a tqdm bar in a terminal, periodic INFO log lines everywhere else.

Under Airflow a task's stderr is captured and every bar redraw lands in the task log as an ERROR
line; there (and in any run without a terminal) progress is logged at INFO instead.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any, Generic, TypeVar, overload

from tqdm import tqdm

T = TypeVar("T")
log = logging.getLogger(__name__)

LOG_EVERY_S = 10.0  # a line per task every few seconds: enough to see it move, not a flood


def in_terminal() -> bool:
    """True when a person watches stderr: not an Airflow task, and stderr is a TTY."""
    return "AIRFLOW_CTX_DAG_ID" not in os.environ and sys.stderr.isatty()


class LogProgress(Generic[T]):
    """tqdm's small surface (iteration, ``update``, a context manager) as INFO lines every
    ``every_s`` seconds and one at the end."""

    def __init__(
        self, iterable: Iterable[T] | None, total: int | None, desc: str, every_s: float = LOG_EVERY_S
    ) -> None:
        self.iterable, self.desc, self.every_s = iterable, desc, every_s
        self.total = total if total is not None or iterable is None else _len(iterable)
        self.n = 0
        self._start = self._last = time.monotonic()
        self._closed = False

    def __iter__(self) -> Iterator[T]:
        if self.iterable is None:
            raise TypeError("LogProgress(total=...) counts updates; it has nothing to iterate")
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            self._emit(now)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._emit(time.monotonic())

    def _emit(self, now: float) -> None:
        of = f"/{self.total}" if self.total is not None else ""
        elapsed = now - self._start
        rate = self.n / elapsed if elapsed > 0 else 0.0
        # The rate and, with a total, the time left: what tqdm's bar shows in a terminal.
        eta = f", ETA {(self.total - self.n) / rate:.0f}s" if self.total is not None and rate > 0 else ""
        log.info("%s: %d%s (%.0fs, %.1f/s%s)", self.desc, self.n, of, elapsed, rate, eta)

    def __enter__(self) -> LogProgress[T]:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:  # a failed loop's count is not "done": the traceback says where it stopped
            self.close()


def _len(iterable: Iterable[Any]) -> int | None:
    try:
        return len(iterable)  # type: ignore[arg-type]
    except TypeError:  # a generator: no total, the lines show the count alone
        return None


@overload
def progress(
    iterable: Iterable[T], *, total: int | None = None, desc: str, unit: str = "it", disable: bool = False
) -> tqdm[T] | LogProgress[T]: ...


@overload  # counting with update(): nothing to iterate, so no item type
def progress(
    iterable: None = None, *, total: int | None = None, desc: str, unit: str = "it", disable: bool = False
) -> tqdm[Any] | LogProgress[Any]: ...


def progress(
    iterable: Iterable[T] | None = None,
    *,
    total: int | None = None,
    desc: str,
    unit: str = "it",
    disable: bool = False,
) -> tqdm[T] | LogProgress[T]:
    """A tqdm bar in a terminal, else a LogProgress; iterate over it or call ``update`` (with ``total``)."""
    if in_terminal():
        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable)
    return LogProgress(iterable, total, desc, every_s=float("inf") if disable else LOG_EVERY_S)
