"""Open one layer for reading, with every byte verified on the way (DESIGN §2).

Two shapes, chosen per layer:

* **in place**: the blob is an uncompressed tar sitting in a regular file (docker save,
  uncompressed OCI layouts).  Headers are parsed by seeking over data, file contents are
  later copied straight from the source with ``sendfile``, and the blob is hashed in the
  background over the whole region (trailing bytes included).
* **inflated ahead**: anything compressed, or a blob that only exists as a stream (a
  registry).  A producer (:func:`converter.inflate.inflate_layer`) reads and hashes the
  stored bytes, decompresses and hashes the tar, and writes it to an anonymous file; the
  header pass then reads that file in place, exactly like the first shape.
* **staged** (a compressed blob in a file, for a directory output, with helper
  processes): the inflating helper also parses the tar and sends the entries, and writes
  big files straight beside the destination (:mod:`converter.staging`); the rest of the
  contents go to the anonymous file as above.

The background work runs in helper processes (:mod:`converter.workers`), or in threads
for streamed blobs.  Either way the layer's digest, size and diff_id are checked before
anything is committed: :meth:`LayerReading.finish` raises the producer's error,
:meth:`wait_verified` the hash's.
"""

from __future__ import annotations


import os
from typing import Any, BinaryIO, NamedTuple, Optional

from . import compression
from .errors import ConverterError, InputError, IntegrityError, LimitError
from .image import FileRegion, Layer
from .inflate import FollowSource, InflateAhead, InflateSpec, Inflation
from .staging import Staging
from .tar.reader import FileSource, TarReader
from .workers import Job, RemoteTarReader, Workers

GIB = 1 << 30


class Limits(NamedTuple):
    """Caps on the work one conversion may do (issue 4: bombs fail fast)."""

    max_entries: int = 10_000_000
    max_ratio: int = 1000  # 0 disables; applies once a layer passes ratio_floor decompressed bytes
    ratio_floor: int = GIB
    max_size: Optional[int] = None  # total bytes written by the sink


class LayerReading:
    """A layer opened for parsing: ``source`` feeds the tar reader."""

    def __init__(
        self,
        layer: Layer,
        *,
        verify: bool,
        workers: Workers,
        limits: Limits,
        spool_dir: Optional[str] = None,
        staging: Optional[Staging] = None,
    ) -> None:
        self.layer = layer
        self.label = layer.label
        self._verify = verify
        self.region: Optional[FileRegion] = None  # set when entry data can be read in place
        self.compression = compression.NONE
        self._check: Any = None  # the background hash of an in-place layer
        self._remote: Optional[Job] = None  # ... when that helper also parses it
        self._diff_check: Any = None  # the diff_id check of a layer inflated by a helper
        self._ahead: Optional[Inflation] = None
        self._raw: Optional[BinaryIO] = None
        self._kept = False
        #: the directory this layer's big files are staged in (see converter.staging), or -1
        self.stage_fd = -1
        self.compressed_size = layer.size
        region = layer.blob.region
        what = self.label
        if region is not None:
            head = os.pread(region.fd, compression.SNIFF_BYTES, region.offset)
            self.compression = compression.detect(head, what=what)
            self.compressed_size = region.size
        if region is not None and self.compression == compression.NONE:
            self.region = region
            exps = _in_place_expectations(layer) if verify else []
            if workers.forks and workers.parse_remote:
                self._remote = workers.parse(region, what=what)  # see RemoteTarReader
            if exps:
                self._check = workers.hash(region, exps, what=what)
            self.source = FileSource(region.fd, region.offset, region.size)
            return
        raw: Optional[BinaryIO] = None
        if region is None:
            raw = layer.blob.open()
            first = raw.read(compression.SNIFF_BYTES)
            self.compression = compression.detect(first, what=what)
        diff_id = None
        if verify and layer.diff_id and not (self.compression == compression.NONE and layer.diff_id == layer.digest):
            diff_id = layer.diff_id  # (an uncompressed blob's digest check covers an equal diff_id)
        spec = InflateSpec(
            kind=self.compression, what=what,
            digest=layer.digest if verify else None, size=layer.size if verify else None,
            diff_id=diff_id, max_ratio=limits.max_ratio, ratio_floor=limits.ratio_floor,
        )
        if region is not None and workers.forks:
            # the blob check, and the diff_id check of the inflated file once complete,
            # run as jobs of their own: the balancer puts them beside the inflations,
            # which the merge waits for, instead of inside them
            if spec.digest or spec.size is not None:
                spec = spec._replace(raw_checked_elsewhere=True)
                self._check = workers.hash(region, [(layer.digest, layer.size, f"{what} blob")], what=what)
            stage_fd = staging.layer_dir() if staging is not None else -1
            if stage_fd >= 0:
                # parsed, hashed (diff_id) and its big files staged by the inflating helper
                job = workers.stage(region, spec, stage_fd, directory=spool_dir)
                self.stage_fd = stage_fd
                self._remote = job
            else:
                if spec.diff_id:
                    spec = spec._replace(diff_checked_elsewhere=True)
                job = workers.inflate(region, spec, directory=spool_dir)
                if spec.diff_id:
                    diff_id = spec.diff_id

                    def check_diff_id() -> None:
                        inflated = FileRegion(job.fd, 0, job.counters[1])
                        self._diff_check = workers.hash(
                            inflated, [(diff_id, None, f"{what} uncompressed content (diff_id)")], what=what)

                    job.then = check_diff_id
            self._ahead = job
        else:
            if raw is None:
                raw = layer.blob.open()
                first = b""
            pending = [first] if first else []
            stream = raw

            def raw_read(n: int) -> bytes:
                return pending.pop() if pending else stream.read(n)

            self._raw = raw
            self._ahead = InflateAhead(spec, raw_read, directory=spool_dir)
        self.region = FileRegion(self._ahead.fd, 0, 0)  # entry data is read in place, from the inflated file
        self.source = FollowSource(self._ahead)

    def open_reader(self, *, buffer_size: int) -> "TarReader | RemoteTarReader":
        """The layer's entries: parsed by its helper when one does, else here."""
        if self._remote is not None:
            return RemoteTarReader(self._remote)
        return TarReader(self.source, name=self.label, buffer_size=buffer_size)

    def stored_bytes_read(self, tar_offset: int) -> int:
        """How much of the stored blob has been consumed (for progress)."""
        if self._ahead is None:
            return tar_offset
        return self._ahead.counters[0]

    def keep_file(self) -> Optional[Inflation]:
        """The inflated file must outlive this reading (sinks copy from it): hand it, and
        its closing, to the caller."""
        self._kept = True
        return self._ahead

    def declared_limit(self, limits: Limits) -> float:
        """The tar offset no entry's data may end past (:meth:`check_declared`); the merge
        compares each entry with it and calls that only past it."""
        if limits.max_ratio and self.compression != compression.NONE and self.compressed_size:
            return max(limits.ratio_floor, limits.max_ratio * self.compressed_size)
        return float("inf")

    def check_declared(self, end_offset: int, limits: Limits) -> None:
        """Bomb check from headers alone: a 20 GiB entry in a 1 MB layer fails at once."""
        if end_offset > self.declared_limit(limits):
            raise LimitError(
                f"{self.label}: entries declare {end_offset} bytes from a {self.compressed_size}-byte blob "
                f"(more than {limits.max_ratio}x: likely a decompression bomb; see --max-ratio)"
            )

    def finish(self) -> None:
        """Called after the tar reader drained the layer: the producer has verified every
        byte (or failed); its error, if any, is raised here."""
        if self._ahead is not None:
            self._ahead.wait_done()

    def blame(self, exc: InputError) -> None:
        """A layer that will not parse, or holds an entry the merge refuses, may simply be
        corrupt: when its blob does not match its digest, that is the error to report
        (raised from ``exc``); else this returns and the caller raises ``exc``.

        Why here: nothing else may have looked yet.  Where the diff_id checks the content
        the zstd frame checksums are skipped (see :mod:`converter.libzstd`), and a gzip
        member's CRC or an uncompressed blob's digest is only known at its end, so
        garbage reaches the tar parser before any check has run.  The blob is hashed in
        this process, on this error path only: the helpers may be busy with, or blocked
        on, later layers."""
        if isinstance(exc, IntegrityError) or not self._verify or not self.layer.digest:
            return
        region = self.layer.blob.region
        try:
            if region is not None:
                from .digest import Expectation
                from .hashing import hash_region

                hash_region(region, [Expectation(self.layer.digest, self.layer.size, what=f"{self.label} blob")])
            elif isinstance(self._ahead, InflateAhead):
                self._ahead.wait_done()  # (a stream: its producer checks the digest at the end)
        except IntegrityError as integrity:
            raise integrity from exc
        except (ConverterError, OSError):
            pass

    def wait_verified(self) -> None:
        """For in-place layers: block until the background hash is done, raise on mismatch."""
        if self._check is not None:
            self._check.wait_done()
        if self._diff_check is not None:
            self._diff_check.wait_done()

    def close(self) -> None:
        if self._ahead is not None:
            self._ahead.stop()
            if self._raw is not None:
                try:
                    self._raw.close()
                except Exception:
                    pass
            if not self._kept:
                self._ahead.close_file()


def _in_place_expectations(layer: Layer) -> list[tuple[Optional[str], Optional[int], str]]:
    """An uncompressed blob is its own tar: its digest and diff_id hash the same bytes."""
    exps: list[tuple[Optional[str], Optional[int], str]] = []
    what = layer.label
    if layer.digest:
        exps.append((layer.digest, layer.size, f"{what} blob"))
    if layer.diff_id and layer.diff_id != layer.digest:
        exps.append((layer.diff_id, None, f"{what} content (diff_id)"))
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
