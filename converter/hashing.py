"""Hashing a file region against expected digests, and the thread that does it where
helper processes cannot be forked (see :mod:`converter.workers`)."""

from __future__ import annotations

import os
import threading
from typing import Optional

from .digest import Expectation
from .errors import ConverterError, IntegrityError
from .image import FileRegion

_READ = 1 << 20


def hash_region(region: FileRegion, expectations: list[Expectation], stop: Optional[threading.Event] = None) -> None:
    """Feed every byte of ``region`` to ``expectations`` and check them."""
    buf = bytearray(_READ)
    view = memoryview(buf)
    pos, end = region.offset, region.offset + region.size
    while pos < end:
        if stop is not None and stop.is_set():
            raise IntegrityError("verification cancelled")
        n = os.preadv(region.fd, [view[: min(len(buf), end - pos)]], pos)
        if n == 0:
            raise IntegrityError("source file truncated while verifying")
        chunk = view[:n]
        for e in expectations:
            e.update(chunk)
        pos += n
    for e in expectations:
        e.check()


class Check:
    """A hashing job run by :class:`HashThread`."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: Optional[BaseException] = None

    def wait_done(self) -> None:
        self.done.wait()
        if self.error is not None:
            raise self.error


class HashThread:
    """One thread hashing regions in order (where helpers cannot be forked)."""

    def __init__(self) -> None:
        import queue  # (threads only: helper processes are the rule)

        self._q: "queue.Queue[Optional[tuple[FileRegion, list[Expectation], Check]]]" = queue.Queue()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def submit(self, region: FileRegion, expectations: list[tuple[Optional[str], Optional[int], str]]) -> Check:
        check = Check()
        exps = [Expectation(d, s, what=w) for d, s, w in expectations]
        if self._thread is None:
            thread = threading.Thread(target=self._run, name="verify", daemon=True)
            thread.start()
            self._thread = thread  # only a started thread is ever joined (an interrupt may land between)
        self._q.put((region, exps, check))
        return check

    def _run(self) -> None:
        while True:
            job = self._q.get()
            if job is None:
                return
            region, exps, check = job
            try:
                hash_region(region, exps, self._stop)
            except BaseException as exc:  # reported by wait_done()
                check.error = exc if isinstance(exc, ConverterError) else IntegrityError(f"verification failed: {exc}")
            check.done.set()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread.ident is not None:
            self._q.put(None)
            self._thread.join(timeout=10)
