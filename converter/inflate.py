"""Inflate a compressed layer into an anonymous file, ahead of the merge.

A producer reads and hashes the stored blob, decompresses it, hashes the tar, and writes
it to an anonymous temporary file (``O_TMPFILE``: gone even after SIGKILL).  The merge
then parses that file *in place*, like an uncompressed layer: headers are read, data is
skipped by offset, and sinks later copy contents out of it with ``sendfile``.  So:

* the next layer's producer runs while the current layer is parsed, so two layers inflate
  on two cores at once;
* file contents are written once to the temporary file and copied once to the output,
  without passing through Python buffers.

The producer is :func:`inflate_layer`, a plain function of an :class:`InflateSpec`: a
helper process runs it for file-backed blobs (:mod:`converter.workers`), a thread
(:class:`InflateAhead`) for streamed ones; a staging helper reads the same bytes, with
the same checks, through :class:`InflatedStream` (see :mod:`converter.staging`).  The file grows while it is read:
:class:`FollowSource` waits for bytes still on their way, and surfaces the producer's
error (truncation, corruption, digest mismatch, limits) at the point the reader needs the
missing bytes.
"""

from __future__ import annotations

import os
import threading
from typing import Callable, Iterator, NamedTuple, Optional, Protocol

from . import compression
from .digest import Expectation
from .errors import ConverterError, InputError, IntegrityError, LimitError, OutputError
from .forking import CAN_FORK, close_all_but, fork_frozen

_CHUNK = 1 << 20


class InflateSpec(NamedTuple):
    """What a producer needs to know about one stored layer (plain data: it is sent to a
    helper process as JSON, see ``_asdict``)."""

    kind: str  # compression, sniffed by the caller
    what: str  # the layer's label, for messages
    digest: Optional[str] = None  # stored blob digest and size to verify (None: not verified)
    size: Optional[int] = None
    diff_id: Optional[str] = None  # uncompressed tar digest to verify
    max_ratio: int = 0
    ratio_floor: int = 1 << 30
    #: the blob digest and size are checked by a separate job (a file-backed blob is
    #: hashed beside the inflation: the inflating helper is the busiest); ``digest`` then
    #: only serves to blame corruption (see _Checks.blame)
    raw_checked_elsewhere: bool = False
    #: the same for the diff_id: the inflated file is hashed by a job of its own once it
    #: is complete, by whichever helper is free (the inflating one is on the merge's
    #: critical path)
    diff_checked_elsewhere: bool = False


def inflate_layer(
    spec: InflateSpec,
    raw_read: Callable[[int], bytes],
    emit: Callable[[memoryview], None],
    counters: list[int],
    restart: Optional[Callable[[], Callable[[int], bytes]]] = None,
) -> None:
    """Decompress the stored bytes ``raw_read`` returns into ``emit`` (see
    :func:`inflated_pieces`)."""
    for piece in inflated_pieces(spec, raw_read, counters, restart):
        try:
            emit(memoryview(piece))
        except OSError as exc:
            raise OutputError(f"{spec.what}: cannot write the inflated layer to a temporary file: {exc.strerror}") from None


def inflated_pieces(
    spec: InflateSpec,
    raw_read: Callable[[int], bytes],
    counters: list[int],
    restart: Optional[Callable[[], Callable[[int], bytes]]] = None,
) -> Iterator[bytes]:
    """The decompressed bytes of the stored bytes ``raw_read`` returns, verified and
    limited on the way (see :class:`_Checks`; the digests are checked when the last
    piece has been taken).  ``counters`` is ``[stored bytes read, tar bytes produced]``,
    kept current for progress."""
    checks = _Checks(spec, raw_read, counters, restart)
    try:
        for piece in compression.inflate_pieces(spec.kind, checks.read_raw, what=spec.what,
                                                checksums=not spec.diff_id):
            checks.produced(piece)
            yield piece
        checks.done()
    except InputError as exc:
        checks.blame(exc)
        raise


class InflatedStream:
    """The same bytes and checks as :func:`inflated_pieces`, read with ``readinto``: zstd
    decompresses straight into the caller's buffer (the staging helper's tar reader), the
    other codecs' pieces are copied into it."""

    def __init__(self, spec: InflateSpec, raw_read: Callable[[int], bytes], counters: list[int],
                 restart: Optional[Callable[[], Callable[[int], bytes]]] = None) -> None:
        self._checks = checks = _Checks(spec, raw_read, counters, restart)
        # (a diff_id to check makes the frames' own checksums redundant: see converter.libzstd)
        self._zstd = compression.ZstdReader(checks.read_raw, what=spec.what, checksums=not spec.diff_id) \
            if spec.kind == compression.ZSTD else None
        self._pieces = None if self._zstd is not None else compression.inflate_pieces(
            spec.kind, checks.read_raw, what=spec.what)
        self._cur = memoryview(b"")
        self._ended = False

    def readinto(self, b: memoryview) -> int:
        if self._ended:
            return 0
        try:
            n = self._zstd.readinto(b) if self._zstd is not None else self._copy(b)
            if n:
                self._checks.produced(b[:n])
            else:
                self._ended = True
                self._checks.done()
            return n
        except InputError as exc:
            self._ended = True
            self._checks.blame(exc)
            raise

    def _copy(self, b: memoryview) -> int:
        assert self._pieces is not None
        while not len(self._cur):
            piece = next(self._pieces, None)
            if piece is None:
                return 0
            self._cur = memoryview(piece)
        cur = self._cur
        n = min(len(b), len(cur))
        b[:n] = cur[:n]
        self._cur = cur[n:]
        return n


class _Checks:
    """What every producer of inflated bytes checks: the blob digest and size (unless
    ``raw_checked_elsewhere``), the diff_id (unless ``diff_checked_elsewhere``), the ratio
    limit; and the blame for a decompression error: in a blob whose stored bytes do not
    match their digest it is reported as that integrity error, the corruption being the
    cause, not the codec (with ``raw_checked_elsewhere``, ``restart`` gives a fresh reader
    to check that)."""

    def __init__(self, spec: InflateSpec, raw_read: Callable[[int], bytes], counters: list[int],
                 restart: Optional[Callable[[], Callable[[int], bytes]]]) -> None:
        what = spec.what
        self.spec = spec
        self._raw_read = raw_read
        self.counters = counters
        self._restart = restart
        self.raw_exp = None
        if not spec.raw_checked_elsewhere and (spec.digest or spec.size is not None):
            self.raw_exp = Expectation(spec.digest, spec.size, what=f"{what} blob")
        self.diff_exp = None
        if spec.diff_id and not spec.diff_checked_elsewhere:
            self.diff_exp = Expectation(spec.diff_id, None, what=f"{what} uncompressed content (diff_id)")
        self._ratio = spec.max_ratio if spec.kind != compression.NONE else 0

    def read_raw(self, n: int) -> bytes:
        chunk = self._raw_read(n)
        if chunk:
            self.counters[0] += len(chunk)
            if self.raw_exp is not None:
                self.raw_exp.update(chunk)
        return chunk

    def produced(self, piece: "bytes | memoryview") -> None:
        counters = self.counters
        counters[1] += len(piece)
        if self.diff_exp is not None:
            self.diff_exp.update(piece)
        out, ratio = counters[1], self._ratio
        if ratio and out > self.spec.ratio_floor and out > ratio * max(counters[0], 1):
            raise LimitError(
                f"{self.spec.what}: decompresses to more than {ratio}x its size (likely a decompression bomb; "
                f"raise --max-ratio or use 0 to disable)"
            )

    def done(self) -> None:
        if self.raw_exp is not None:
            self.raw_exp.check()
        if self.diff_exp is not None:
            self.diff_exp.check()

    def blame(self, exc: InputError) -> None:
        """Raise the blob's integrity error if a corrupt blob explains ``exc``; else
        return (the caller re-raises ``exc``)."""
        if isinstance(exc, IntegrityError):
            return
        spec = self.spec
        check, read = self.raw_exp, self.read_raw
        if check is None and spec.raw_checked_elsewhere and spec.digest and self._restart is not None:
            check, read = Expectation(spec.digest, spec.size, what=f"{spec.what} blob"), self._restart()
        if check is None or check.hasher is None:
            return
        try:
            while True:
                chunk = read(1 << 20)
                if not chunk:
                    break
                if check is not self.raw_exp:
                    check.update(chunk)
            check.check()
        except IntegrityError as integrity:
            raise integrity from exc
        except (OSError, ConverterError):
            pass


def anonymous_file(directory: Optional[str]) -> int:
    """An unnamed temporary file (in ``directory`` when given): its fd.  Failing to make
    one is an output error naming the directory (read-only, not ours to write, gone)."""
    if directory is not None and hasattr(os, "O_TMPFILE"):
        # what TemporaryFile does first on Linux, without importing tempfile (and random,
        # shutil with it: about 2 ms of every start); it handles every other case
        try:
            return os.open(directory, os.O_RDWR | os.O_EXCL | os.O_TMPFILE, 0o600)
        except OSError:
            pass
    import tempfile

    try:
        f = tempfile.TemporaryFile(prefix="rootfs-layer-", dir=directory)
    except OSError as exc:
        where = directory or tempfile.gettempdir()
        raise OutputError(f"{where}: cannot make a temporary file for an inflated layer there: "
                          f"{exc.strerror or exc}") from None
    fd = os.dup(f.fileno())
    f.close()
    return fd


def close_quietly(fd: int) -> None:
    """Close ``fd`` if it is one (cleanup paths: an error here would hide the real one)."""
    if fd >= 0:
        try:
            os.close(fd)
        except OSError:
            pass


#: inflated files bigger than this in all are freed by an orphan process (see release_files)
DETACH_AT = 64 << 20


def worth_detaching(fds: list[int]) -> bool:
    """Whether freeing ``fds`` is worth handing to another process (see release_files)."""
    total = 0
    for fd in fds:
        try:
            total += os.fstat(fd).st_size if fd >= 0 else 0
        except OSError:
            pass
    return total >= DETACH_AT and CAN_FORK


def release_files(fds: list[int]) -> None:
    """Close the inflated layer files.

    Freeing a big temporary file is kernel work charged to whoever drops the last
    reference: about 70 ms for 600 MB on tmpfs, spent after the output is complete.  Above
    :data:`DETACH_AT` the last references go to a short-lived orphan process (double
    fork, so nobody has to reap it) that frees them while this process returns; the
    orphan closes every other descriptor first, so it never holds a pipe open."""
    fds = [fd for fd in fds if fd >= 0]
    if worth_detaching(fds):
        try:
            done = _free_in_orphan(fds)
        except OSError:
            done = -1  # no process to spare: free them here
        for fd in fds:
            close_quietly(fd)
        close_quietly(done)  # (only now may the orphan drop the last references)
        return
    for fd in fds:
        close_quietly(fd)


def _free_in_orphan(fds: list[int]) -> int:
    """Fork the orphan; return the write end of a pipe the caller closes once it has
    closed its own copies of ``fds``.  The orphan waits for that (and for the exit of
    the intermediate child, which holds copies too): had it closed first, whoever closed
    last would have freed the files after all (measured: now and then 40 ms at the end of
    a run)."""
    r, w = os.pipe()
    pid = fork_frozen(undo=lambda: (os.close(r), os.close(w)))
    if pid == 0:  # pragma: no cover - runs in the short-lived child
        try:
            if os.fork() == 0:
                close_all_but([*fds, r])
                os.read(r, 1)  # end of file: every other holder has let go
                for fd in fds:
                    close_quietly(fd)
        finally:
            os._exit(0)
    os.close(r)
    os.waitpid(pid, 0)
    return w


def pwrite_all(fd: int, view: memoryview, offset: int) -> int:
    """Write all of ``view`` at ``offset``; return the offset after it."""
    while view:
        n = os.pwrite(fd, view, offset)
        offset += n
        view = view[n:]
    return offset


class Inflation(Protocol):
    """A producer filling ``fd`` (a thread's :class:`InflateAhead` or a helper process's
    job): what :class:`FollowSource` and :class:`~converter.layerstream.LayerReading` use."""

    fd: int
    counters: list[int]

    def wait_for(self, end: int) -> int: ...
    def wait_done(self) -> None: ...
    def stop(self) -> None: ...
    def close_file(self) -> None: ...


class InflateAhead:
    """Runs :func:`inflate_layer` in a thread, appending to an anonymous file (for blobs
    that are not plain file regions, e.g. a registry stream)."""

    def __init__(self, spec: InflateSpec, raw_read: Callable[[int], bytes], *, directory: Optional[str] = None) -> None:
        self.fd = anonymous_file(directory)
        self.what = spec.what
        self.counters = [0, 0]
        self._spec = spec
        self._raw_read = raw_read
        self._cond = threading.Condition()
        self.written = 0
        self.done = False
        self.error: Optional[BaseException] = None
        self._stop = False
        self._thread = threading.Thread(target=self._run, name=f"inflate {spec.what}", daemon=True)
        self._thread.start()

    def _emit(self, view: memoryview) -> None:
        if self._stop:
            raise _Stopped()
        end = pwrite_all(self.fd, view, self.written)
        with self._cond:
            self.written = end
            self._cond.notify_all()

    def _run(self) -> None:
        try:
            inflate_layer(self._spec, self._raw_read, self._emit, self.counters)
        except _Stopped:
            pass
        except BaseException as exc:  # handed to the reader
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
        close_quietly(fd)


class _Stopped(Exception):
    """The reader went away: the producer ends quietly."""


class FollowSource:
    """The tar reader's ByteSource over a file being inflated: reads with ``pread``, skips
    by moving its position (data is never read in the header pass)."""

    def __init__(self, ahead: Inflation) -> None:
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
