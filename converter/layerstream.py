"""Open one layer for reading, with every byte verified on the way (DESIGN §2).

Two shapes, chosen per layer:

* **in place**: the blob is an uncompressed tar sitting in a regular file (docker save,
  uncompressed OCI layouts).  Headers are parsed by seeking over data, file contents are
  later copied straight from the source with ``sendfile``, and the blob is hashed by a
  background thread over the whole region (trailing bytes included).
* **inflated ahead**: anything compressed, or a blob that only exists as a stream (a
  registry).  A producer thread (:mod:`converter.inflate`) reads and hashes the stored
  bytes, decompresses and hashes the tar, and appends it to an anonymous file; the header
  pass then reads that file in place, exactly like the first shape.

Either way the layer's digest, size and diff_id are checked before anything is committed:
:meth:`LayerReading.finish` raises the producer's error, :meth:`wait_verified` the hash
thread's.
"""

from __future__ import annotations


import os
import queue
import threading
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

from . import compression
from .digest import Expectation
from .errors import ConverterError, IntegrityError, LimitError
from .image import FileRegion, Layer
from .inflate import FollowSource, InflateAhead
from .tar.reader import FileSource

GIB = 1 << 30


@dataclass(frozen=True)
class Limits:
    """Caps on the work one conversion may do (issue 4: bombs fail fast)."""

    max_entries: int = 10_000_000
    max_ratio: int = 1000  # 0 disables; applies once a layer passes ratio_floor decompressed bytes
    ratio_floor: int = GIB
    max_size: Optional[int] = None  # total bytes written by the sink


class HashPool:
    """One background thread that hashes in-place layers in order, so verification of an
    uncompressed image overlaps with parsing and writing instead of adding to them."""

    def __init__(self) -> None:
        self._q: "queue.Queue[Optional[tuple[FileRegion, list[Expectation], list]]]" = queue.Queue()
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()

    def submit(self, region: FileRegion, expectations: list[Expectation]) -> list:
        box: list = []  # filled with None (ok) or the exception
        if self._thread is None:
            thread = threading.Thread(target=self._run, name="verify", daemon=True)
            thread.start()
            self._thread = thread  # only a started thread is ever joined (an interrupt may land between)
        self._q.put((region, expectations, box))
        return box

    def _run(self) -> None:
        while True:
            job = self._q.get()
            if job is None:
                return
            region, expectations, box = job
            try:
                _hash_region(region, expectations, self._stop)
                box.append(None)
            except BaseException as exc:  # reported by wait()
                box.append(exc)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread.ident is not None:
            self._q.put(None)
            self._thread.join(timeout=10)


def _hash_region(region: FileRegion, expectations: list[Expectation], stop: threading.Event) -> None:
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    pos, end = region.offset, region.offset + region.size
    while pos < end:
        if stop.is_set():
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


class LayerReading:
    """A layer opened for parsing: ``source`` feeds the tar reader."""

    def __init__(
        self,
        layer: Layer,
        *,
        verify: bool,
        hash_pool: HashPool,
        limits: Limits,
        on_raw: Optional[Callable[[int], None]] = None,
        spool_dir: Optional[str] = None,
    ) -> None:
        self.layer = layer
        self.label = layer.label
        self.region: Optional[FileRegion] = None  # set when entry data can be read in place
        self.compression = compression.NONE
        self._box: Optional[list] = None
        self._counters = {"raw": 0, "out": 0}
        self._ahead: Optional[InflateAhead] = None
        self._kept = False
        self.compressed_size = layer.size
        region = layer.blob.region
        what = self.label
        if region is not None:
            head = os.pread(region.fd, compression.SNIFF_BYTES, region.offset)
            self.compression = compression.detect(head, what=what)
            self.compressed_size = region.size
        if region is not None and self.compression == compression.NONE:
            self.region = region
            exps = []
            if verify:
                exps = _in_place_expectations(layer)
            if exps:
                self._box = hash_pool.submit(region, exps)
            self.source = FileSource(region.fd, region.offset, region.size)
            if on_raw:
                on_raw(region.size)
            return
        raw = layer.blob.open()
        raw_exp = Expectation(layer.digest, layer.size, what=f"{what} blob") if verify else None
        first = raw.read(compression.SNIFF_BYTES)
        self.compression = compression.detect(first, what=what)
        pending = [first] if first else []
        counters = self._counters

        def raw_read(n: int) -> bytes:
            chunk = pending.pop() if pending else raw.read(n)
            if chunk:
                counters["raw"] += len(chunk)
                if raw_exp is not None:
                    raw_exp.update(chunk)
                if on_raw:
                    on_raw(len(chunk))
            return chunk

        diff_exp = None
        if verify:
            if self.compression == compression.NONE and layer.diff_id and layer.diff_id == layer.digest:
                diff_exp = None  # the same bytes: the blob check covers the diff_id
            elif layer.diff_id:
                diff_exp = Expectation(layer.diff_id, None, what=f"{what} uncompressed content (diff_id)")
        ratio = limits.max_ratio
        floor = limits.ratio_floor
        is_compressed = self.compression != compression.NONE
        kind = self.compression

        def pieces() -> Iterator[bytes]:
            for piece in compression.inflate_pieces(kind, raw_read, what=what):
                counters["out"] += len(piece)
                if diff_exp is not None:
                    diff_exp.update(piece)
                out = counters["out"]
                if ratio and is_compressed and out > floor and out > ratio * max(counters["raw"], 1):
                    raise LimitError(
                        f"{what}: decompresses to more than {ratio}x its size (likely a decompression bomb; "
                        f"raise --max-ratio or use 0 to disable)"
                    )
                yield piece

        def check() -> None:
            if raw_exp is not None:
                raw_exp.check()
            if diff_exp is not None:
                diff_exp.check()

        def blame(exc: BaseException) -> BaseException:
            """Corrupt compressed data in a blob with a known digest: if the stored bytes do
            not match it, that integrity error is the one to report."""
            if isinstance(exc, IntegrityError) or raw_exp is None or raw_exp.hasher is None:
                return exc
            try:
                while raw_read(1 << 20):
                    pass
                raw_exp.check()
            except IntegrityError as integrity:
                integrity.__cause__ = exc
                return integrity
            except (OSError, ConverterError):
                pass
            return exc

        self._raw = raw
        self._ahead = InflateAhead(pieces, what=what, directory=spool_dir, on_error=blame, after=check)
        self.region = FileRegion(self._ahead.fd, 0, 0)  # entry data is read in place, from the inflated file
        self.source = FollowSource(self._ahead)

    def stored_bytes_read(self, tar_offset: int) -> int:
        """How much of the stored blob has been consumed (for progress)."""
        if self._ahead is None:
            return tar_offset
        return self._counters["raw"]

    def keep_file(self) -> Callable[[], None]:
        """The inflated file must outlive this reading (sinks copy from it): hand its
        closing to the caller."""
        ahead = self._ahead
        self._kept = True
        return (lambda: ahead.close_file()) if ahead is not None else (lambda: None)

    def check_declared(self, end_offset: int, limits: Limits) -> None:
        """Bomb check from headers alone: a 20 GiB entry in a 1 MB layer fails at once."""
        if (
            limits.max_ratio
            and self.compression != compression.NONE
            and self.compressed_size
            and end_offset > limits.ratio_floor
            and end_offset > limits.max_ratio * self.compressed_size
        ):
            raise LimitError(
                f"{self.label}: entries declare {end_offset} bytes from a {self.compressed_size}-byte blob "
                f"(more than {limits.max_ratio}x: likely a decompression bomb; see --max-ratio)"
            )

    def finish(self) -> None:
        """Called after the tar reader drained the layer: the producer has verified every
        byte (or failed); its error, if any, is raised here."""
        if self._ahead is not None:
            self._ahead.wait_done()

    def wait_verified(self) -> None:
        """For in-place layers: block until the background hash is done, raise on mismatch."""
        if self._box is None:
            return
        import time

        while not self._box:
            time.sleep(0.002)
        exc = self._box[0]
        if exc is not None:
            if isinstance(exc, ConverterError):
                raise exc
            raise IntegrityError(f"{self.label}: verification failed: {exc}")

    def close(self) -> None:
        if self._ahead is not None:
            self._ahead.stop()
            try:
                self._raw.close()
            except Exception:
                pass
            if not self._kept:
                self._ahead.close_file()


def _in_place_expectations(layer: Layer) -> list[Expectation]:
    """An uncompressed blob is its own tar: its digest and diff_id hash the same bytes."""
    exps = []
    what = layer.label
    if layer.digest:
        exps.append(Expectation(layer.digest, layer.size, what=f"{what} blob"))
    if layer.diff_id and layer.diff_id != layer.digest:
        exps.append(Expectation(layer.diff_id, None, what=f"{what} content (diff_id)"))
    return exps


def sniff_layer(layer: Layer) -> tuple[str, Optional[int]]:
    """(compression, stored size) of a layer from its first bytes, without reading it."""
    region = layer.blob.region
    if region is not None:
        head = os.pread(region.fd, compression.SNIFF_BYTES, region.offset)
        return compression.detect(head, what=layer.label), region.size
    raw = layer.blob.open()
    try:
        head = raw.read(compression.SNIFF_BYTES)
    finally:
        raw.close()
    return compression.detect(head, what=layer.label), layer.size
