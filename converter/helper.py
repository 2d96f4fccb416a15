"""The helper process's side of :mod:`converter.workers`: the job loop, and the wire
format both sides share.

A helper is forked from the converter, gets jobs (plain data plus the file descriptors
they name) one message at a time, and answers on a byte stream with fixed-size records:
``P`` progress (stored bytes read, tar bytes written), ``D`` done, ``E`` an error to
re-raise in the parent, and for parsing jobs ``R`` a batch of entries, ``F`` the clean end
of the archive, ``X`` the parse error that ended it.  ``E``, ``R`` and ``X`` carry a
payload (its size in the record's second number): errors as
:func:`~converter.forking.error_to_wire` writes them, entries pickled.  Everything here
runs in the helper except the record definitions.
"""

from __future__ import annotations

import gc
import json
import operator
import os
import socket
import stat
import struct
from typing import Any, Callable, Optional

from .digest import Expectation
from .errors import ConverterError, IntegrityError, OutputError
from .forking import close_all_but, die_with_parent, error_to_wire, keep_freed_memory, leave_interrupts_to_parent
from .hashing import hash_region
from .image import FileRegion
from .inflate import InflatedStream, InflateSpec, inflate_layer, pwrite_all
from .staging import STAGE_MIN, StageSource, staged_name, stages
from .tar.reader import NO_RECORDS, FileSource, StreamSource, TarEntry, TarReader

REC = struct.Struct("<cQQ")  # kind, stored bytes read, tar bytes written (or payload size)
_WINDOW = 8 << 20


def serve(sock: socket.socket, reports: socket.socket) -> None:  # pragma: no cover - runs in the helper
    """Run jobs until the parent hangs up.  Interrupts are the parent's business: it
    cleans up and its death takes the helper with it (PR_SET_PDEATHSIG)."""
    import faulthandler

    # first: a fatal signal is the parent's to report (see Workers._lose); a fault handler
    # inherited from the parent would dump the parent's threads (and may crash doing so)
    faulthandler.disable()
    die_with_parent()
    keep_freed_memory()
    leave_interrupts_to_parent()
    gc.disable()
    # A helper gets what the merge waits for first and the hashing after (see
    # Workers.release); the hashing is only needed before the result is committed, so it
    # runs at a lower priority and fills the time the merge and the writers leave idle
    lowered = False
    while True:
        got = _receive(sock)
        if got is None:
            return
        request, fds = got
        if request["op"] == "hold":
            # files the parent lets go of (see Workers.leave): freed when this process
            # ends, after the parent has hung up; it may outlive the parent, so it holds
            # nothing else of the parent's (a pipe read to its end would wait for it)
            close_all_but([sock.fileno(), *fds])
            continue
        counters = [0, 0]
        try:
            if request["op"] == "hash":
                if not lowered:
                    lowered = _lower_priority()
                _run_hash(request, fds[0], counters)
            elif request["op"] == "parse":
                _parse(FileRegion(fds[0], request["offset"], request["size"]), str(request["what"]), reports)
            elif request["op"] == "stage":
                _run_stage(request, fds, counters, reports)
            else:
                _run_inflate(request, fds, counters, reports)
            reports.sendall(REC.pack(b"D", *counters))
        except BaseException as exc:
            if isinstance(exc, OSError):
                exc = _source_error(request, exc)
            data = json.dumps(error_to_wire(exc)).encode()
            reports.sendall(REC.pack(b"E", counters[0], len(data)) + data)
        finally:
            for fd in fds:
                os.close(fd)


def _lower_priority() -> bool:  # pragma: no cover - runs in the helper
    try:
        os.setpriority(os.PRIO_PROCESS, 0, min(19, os.getpriority(os.PRIO_PROCESS, 0) + 5))
    except OSError:
        pass
    return True


def _receive(sock: socket.socket) -> Optional[tuple[dict[str, Any], list[int]]]:  # pragma: no cover
    """The next job: one message (the socket keeps message boundaries) and its fds."""
    data, fds, _, _ = socket.recv_fds(sock, 1 << 20, 4)
    if not data:
        return None
    return json.loads(data), fds


def _region_reader(fd: int, offset: int, size: int) -> Callable[[int], bytes]:  # pragma: no cover
    """``read(n)`` over a file region with ``pread`` (the fd's position is shared with the
    parent and never used)."""
    pos, end = offset, offset + size

    def read(n: int) -> bytes:
        nonlocal pos
        n = min(n, end - pos)
        if n <= 0:
            return b""
        chunk = os.pread(fd, n, pos)
        pos += len(chunk)
        return chunk

    return read


def _run_hash(request: dict[str, Any], fd: int, counters: list[int]) -> None:  # pragma: no cover
    exps = [Expectation(d, s, what=w) for d, s, w in request["expect"]]
    region = FileRegion(fd, request["offset"], request["size"])
    if not _hash_mapped(region, exps):
        hash_region(region, exps)
    counters[0] = request["size"]


#: entries (and about as many bytes) per batch sent back by a parsing helper
_BATCH = 512
_BATCH_BYTES = 256 << 10


class _Batches:
    """Parsed entries on their way to the parent: plain tuples, pickled in batches
    (about 1 us an entry to rebuild, against 4 us to parse a header), each record
    carrying the tar offset reached.

    An entry without PAX records, xattrs or a sparse map (nearly all of them) goes as
    its 16 other fields, the parent restoring the rest (its index is its position in
    the layer): no two empty dicts an entry to pickle and rebuild, and a plain tuple
    is built faster than ``attrgetter`` of 20 slots (80 -> 65 ms of CPU for the 35k
    entries of the bench image, both sides)."""

    def __init__(self, reports: socket.socket, counters: Optional[list[int]] = None) -> None:
        self.reports = reports
        self.counters = counters  # when given, a progress record follows each batch
        self.batch: list[tuple] = []
        self.size = 0
        self.fields = operator.attrgetter(*TarEntry.__slots__)

    def add(self, entry: TarEntry, offset: int) -> None:
        self.size += len(entry.name) + len(entry.linkname) + 200
        if entry.pax is NO_RECORDS and entry.xattrs is NO_RECORDS and entry.sparse is None:
            self.batch.append((entry.name, entry.linkname, entry.type, entry.mode, entry.uid, entry.gid,
                               entry.uname, entry.gname, entry.size, entry.mtime, entry.mtime_ns, entry.devmajor,
                               entry.devminor, entry.real_size, entry.header_offset, entry.data_offset))
        else:
            self.batch.append(self.fields(entry))
            # (PAX records may be up to 1 MiB each)
            self.size += sum(len(k) + len(v) for k, v in entry.pax.items())
            self.size += sum(len(k) + len(v) for k, v in entry.xattrs.items())
        if len(self.batch) >= _BATCH or self.size >= _BATCH_BYTES:
            self.flush(offset)

    def flush(self, offset: int) -> None:
        if self.batch:
            from pickle import HIGHEST_PROTOCOL, dumps  # (in the helper: not before it starts)

            self.send(b"R", offset, dumps(self.batch, protocol=HIGHEST_PROTOCOL))
            self.batch = []
            self.size = 0
            if self.counters is not None:
                self.reports.sendall(REC.pack(b"P", *self.counters))

    def send(self, kind: bytes, at: int, payload: bytes) -> None:
        self.reports.sendall(REC.pack(kind, at, len(payload)) + payload)

    def end(self, reader: TarReader, error: Optional[BaseException]) -> None:
        """The pending entries, then the clean end (``F``) or the error that stopped the
        parse (``X``), at its place."""
        self.flush(reader.offset)
        if error is None:
            self.reports.sendall(REC.pack(b"F", reader.offset, 0))
        else:
            self.send(b"X", reader.offset, json.dumps(error_to_wire(error)).encode())


def _parse(region: FileRegion, what: str, reports: socket.socket) -> None:  # pragma: no cover
    """Parse ``region`` as a tar (exactly as the merge would) and send its entries back."""
    reader = TarReader(FileSource(region.fd, region.offset, region.size), name=what, buffer_size=64 << 10)
    out = _Batches(reports)
    try:
        for entry in reader:
            out.add(entry, reader.offset)
        reader.finish()
    except (ConverterError, OSError) as exc:
        out.end(reader, exc)
        return
    out.end(reader, None)


def _run_stage(request: dict[str, Any], fds: list[int], counters: list[int], reports: socket.socket) -> None:  # pragma: no cover
    """Inflate a layer, parse it on the way and send its entries back.  The inflated tar
    goes to the temporary file as usual (in big writes), except the data of regular files
    big enough to be renamed into place: each of those goes to a file of its own in the
    staging directory (see :mod:`converter.staging`).  Every error (corrupt or truncated
    data, a digest, a limit, a full disk) ends the parse where it happened, as a parse
    error would."""
    src, out_fd, stage_fd = fds
    spec = InflateSpec(**request["spec"])
    what = spec.what
    offset, size = request["offset"], request["size"]
    stream = InflatedStream(spec, _region_reader(src, offset, size), counters,
                            restart=lambda: _region_reader(src, offset, size))
    source = StageSource(stream, out_fd, lambda exc: _write_error(what, exc))
    reader = TarReader(StreamSource(source), name=what, buffer_size=256 << 10)
    out = _Batches(reports, counters)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        for entry in reader:
            out.add(entry, reader.offset)
            if entry.size >= STAGE_MIN and stages(entry):
                start = entry.data_offset
                source.exclude(start, start + entry.size)
                try:
                    fd = os.open(staged_name(start), flags, 0o600, dir_fd=stage_fd)
                except OSError as exc:
                    raise _write_error(what, exc) from None
                try:
                    at = 0
                    for view in reader.iter_data():
                        at = _put(fd, view, at, what)
                finally:
                    os.close(fd)
        reader.finish()
    except (ConverterError, OSError) as exc:
        out.end(reader, _source_error(request, exc) if isinstance(exc, OSError) else exc)
        return
    out.end(reader, None)


def _source_error(request: dict[str, Any], exc: OSError) -> IntegrityError:  # pragma: no cover
    """An I/O error reading the stored blob (the writes raise OutputError themselves)."""
    doing = "verify" if request["op"] == "hash" else "read"
    return IntegrityError(f"{request.get('what', '')}: cannot {doing} the stored layer: {exc.strerror or exc}")


def _put(fd: int, view: memoryview, at: int, what: str) -> int:  # pragma: no cover
    try:
        return pwrite_all(fd, view, at)
    except OSError as exc:
        raise _write_error(what, exc) from None


def _write_error(what: str, exc: OSError) -> OutputError:
    return OutputError(f"{what}: cannot write the inflated layer beside the output: {exc.strerror}")


def _hash_mapped(region: FileRegion, expectations: list[Expectation]) -> bool:  # pragma: no cover
    """Hash ``region`` through mmap windows (no copy into a buffer: 5-10% less CPU than
    pread).  Only in a helper: a file truncated under a mapping raises SIGBUS, which
    kills the helper, and the parent reports that as the source changing.  False when
    the file cannot be mapped (the caller reads it instead)."""
    import mmap

    st = os.fstat(region.fd)
    start, end = region.offset, region.offset + region.size
    if not stat.S_ISREG(st.st_mode) or st.st_size < end:
        return False
    pos = start - start % mmap.ALLOCATIONGRANULARITY
    while pos < end:
        length = min(_WINDOW, end - pos)
        try:
            window = mmap.mmap(region.fd, length, prot=mmap.PROT_READ, offset=pos)
        except (OSError, ValueError):
            if pos > start - start % mmap.ALLOCATIONGRANULARITY:
                raise
            return False
        try:
            with memoryview(window) as view, view[max(0, start - pos):] as chunk:
                for e in expectations:
                    e.update(chunk)
        finally:
            window.close()
        pos += length
    for e in expectations:
        e.check()
    return True


def _run_inflate(request: dict[str, Any], fds: list[int], counters: list[int], sock: socket.socket) -> None:  # pragma: no cover
    src, out = fds
    spec = InflateSpec(**request["spec"])
    written = 0

    def emit(view: memoryview) -> None:
        nonlocal written
        written = pwrite_all(out, view, written)
        sock.sendall(REC.pack(b"P", counters[0], written))

    offset, size = request["offset"], request["size"]
    inflate_layer(spec, _region_reader(src, offset, size), emit, counters, restart=lambda: _region_reader(src, offset, size))
