"""Inflate a compressed layer into an anonymous file, ahead of the merge.

A producer thread reads the stored blob, hashes it, decompresses it (every codec releases
the GIL), hashes the tar, and appends it to an anonymous temporary file (``O_TMPFILE``:
gone even after SIGKILL).  The merge then parses that file *in place*, like an
uncompressed layer: headers are read, data is skipped by offset, and sinks later copy
contents out of it with ``sendfile``.  Two things follow:

* the next layer's producer runs while the current layer is parsed, so two layers inflate
  on two cores at once;
* file contents are written once to the temporary file and copied once to the output,
  without passing through Python buffers.

The file grows while it is read: :class:`FollowSource` waits for bytes still on their way,
and surfaces the producer's error (truncation, corruption, digest mismatch, limits) at the
point the reader needs the missing bytes.
"""

from __future__ import annotations

import os
import tempfile
import threading
from typing import Callable, Iterator, Optional

from .errors import ConverterError, InputError

_CHUNK = 1 << 20


class InflateAhead:
    """Runs ``pieces()`` in a thread, appending each piece to a temporary file.

    ``on_error`` may turn a decompression error into a better one (e.g. an integrity error
    when the stored bytes do not match their digest); it runs in the producer thread."""

    def __init__(
        self,
        pieces: Callable[[], Iterator[bytes]],
        *,
        what: str,
        directory: Optional[str] = None,
        on_error: Optional[Callable[[BaseException], BaseException]] = None,
        after: Optional[Callable[[], None]] = None,
    ) -> None:
        f = tempfile.TemporaryFile(prefix="rootfs-layer-", dir=directory)
        self.fd = os.dup(f.fileno())
        f.close()
        self.what = what
        self._pieces = pieces
        self._on_error = on_error
        self._after = after
        self._cond = threading.Condition()
        self.written = 0
        self.done = False
        self.error: Optional[BaseException] = None
        self._stop = False
        self._thread = threading.Thread(target=self._run, name=f"inflate {what}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        fd = self.fd
        try:
            for piece in self._pieces():
                if self._stop:
                    return
                view = memoryview(piece)
                while view:
                    view = view[os.write(fd, view):]
                with self._cond:
                    self.written += len(piece)
                    self._cond.notify_all()
            if self._after is not None:
                self._after()  # digest checks: an error here fails the layer like any other
        except BaseException as exc:  # handed to the reader
            if isinstance(exc, OSError) and not isinstance(exc, ConverterError):
                from .errors import OutputError

                exc = OutputError(f"{self.what}: cannot write the inflated layer to a temporary file: {exc.strerror}")
            if self._on_error is not None and isinstance(exc, InputError):
                exc = self._on_error(exc)
            with self._cond:
                self.error = exc
        finally:
            with self._cond:
                self.done = True
                self._cond.notify_all()

    def wait_for(self, end: int) -> int:
        """Block until ``end`` bytes exist or the producer stopped; return what exists.
        Raises the producer's error if it stopped short of ``end``."""
        with self._cond:
            while self.written < end and not self.done:
                self._cond.wait()
            if self.written < end and self.error is not None:
                raise self.error
            return self.written

    def wait_done(self) -> None:
        with self._cond:
            while not self.done:
                self._cond.wait()
            if self.error is not None:
                raise self.error

    def stop(self) -> None:
        self._stop = True
        if self._thread.ident is not None:
            self._thread.join(timeout=10)

    def close_file(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass


class FollowSource:
    """The tar reader's ByteSource over a file being inflated: reads with ``pread``, skips
    by moving its position (data is never read in the header pass)."""

    def __init__(self, ahead: InflateAhead) -> None:
        self._a = ahead
        self._pos = 0

    def readinto(self, b: memoryview) -> int:
        n = len(b)
        if not n:
            return 0
        have = self._a.wait_for(self._pos + 1)
        if have <= self._pos:
            return 0
        n = min(n, have - self._pos, _CHUNK * 4)
        got = os.preadv(self._a.fd, [b[:n]], self._pos)
        self._pos += got
        return got

    def skip(self, n: int) -> int:
        have = self._a.wait_for(self._pos + n)
        step = min(n, max(0, have - self._pos))
        self._pos += step
        return step
