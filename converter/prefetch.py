"""Download the next layer while the current one applies (issue 7: "where that helps").

A :class:`Prefetcher` copies a blob stream into an anonymous temporary file from a
background thread; readers follow the file as it grows, so a layer can start applying as
soon as its first bytes arrive, and the download of layer N+1 overlaps with applying
layer N.  Verification is untouched: the merge still hashes every byte it reads.
"""

from __future__ import annotations

import io
import os
import tempfile
import threading
from typing import Any, Callable, Optional


class Prefetcher:
    def __init__(self, open_stream: Callable[[], Any], *, chunk: int = 1 << 20) -> None:
        tmp = tempfile.TemporaryFile(prefix="rootfs-prefetch-")
        self._fd = os.dup(tmp.fileno())
        tmp.close()
        self._open_stream = open_stream
        self._chunk = chunk
        self._cond = threading.Condition()
        self._written = 0
        self._done = False
        self._error: Optional[BaseException] = None
        self._cancel = False
        self._thread = threading.Thread(target=self._run, name="prefetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            src = self._open_stream()
            try:
                buf = bytearray(self._chunk)
                view = memoryview(buf)
                while not self._cancel:
                    n = src.readinto(view)
                    if not n:
                        break
                    data = view[:n]
                    while data:
                        data = data[os.write(self._fd, data):]
                    with self._cond:
                        self._written += n
                        self._cond.notify_all()
            finally:
                close = getattr(src, "close", None)
                if close:
                    close()
        except BaseException as exc:  # handed to the reader
            with self._cond:
                self._error = exc
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def open(self) -> io.BufferedReader:
        return io.BufferedReader(_Follower(self), buffer_size=1 << 20)

    def _wait_for(self, pos: int) -> tuple[int, bool]:
        with self._cond:
            while self._written <= pos and not self._done:
                self._cond.wait()
            if self._error is not None and self._written <= pos:
                raise self._error
            return self._written, self._done

    def close(self) -> None:
        self._cancel = True
        if self._thread.ident is not None:
            self._thread.join(timeout=5)
        try:
            os.close(self._fd)
        except OSError:
            pass


class _Follower(io.RawIOBase):
    """Reads a prefetching file from the start, waiting for bytes still on their way."""

    def __init__(self, pf: Prefetcher) -> None:
        self._pf = pf
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        written, done = self._pf._wait_for(self._pos)
        if self._pos >= written and done:
            return 0
        view = memoryview(b).cast("B")
        n = os.preadv(self._pf._fd, [view[: min(len(view), written - self._pos)]], self._pos)
        self._pos += n
        return n
