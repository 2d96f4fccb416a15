"""Compression: sniffed from the first bytes, never from media types or file names.

Decompression runs in a producer thread that fills a small bounded queue (every codec here
releases the GIL), so inflating one layer overlaps with parsing and writing it.  Output is
pulled in bounded pieces (``max_length``), so a decompression bomb costs at most one piece of
memory before the caller's limits see it.
"""

from __future__ import annotations

import threading
import zlib
from typing import Any, Callable, Iterator, Optional

from .errors import ConverterError, InputError, IntegrityError, LimitError

NONE, GZIP, ZSTD, XZ, BZIP2 = "none", "gzip", "zstd", "xz", "bzip2"
KINDS = (NONE, GZIP, ZSTD, XZ, BZIP2)
SNIFF_BYTES = 512
PIECE = 512 << 10  # decompressed bytes per queue item
_SLICE = 32 << 10  # stored bytes fed to a gzip/xz/bzip2 decompressor at a time (see _Inflater.feed)
#: the most memory a decoder may ask for: a zstd window or an xz dictionary is allocated
#: whole, whatever the data (a 1 GiB window in a few bytes of header cost 1 GB of RSS).
#: 128 MiB is zstd's own default limit (--long=27) and twice what xz -9 needs.
MAX_DECODER_MEMORY = 128 << 20

try:  # isal inflates about twice as fast as zlib; zlib-ng next; stdlib zlib always works
    from isal import isal_zlib as _gzip_impl  # type: ignore[import-not-found]

    GZIP_BACKEND = "isal"
except ImportError:  # pragma: no cover - depends on the platform
    try:
        from zlib_ng import zlib_ng as _gzip_impl  # type: ignore[import-not-found,no-redef]

        GZIP_BACKEND = "zlib-ng"
    except ImportError:
        _gzip_impl = zlib  # type: ignore[no-redef]
        GZIP_BACKEND = "zlib"


def sniff(head: bytes) -> Optional[str]:
    """The compression of a blob from its first bytes, or None when it is not recognised.

    A plain tar is recognised by the ustar magic, a valid v7 header checksum, or an all-zero
    first block (an empty layer); a zero-length blob counts as an empty plain tar."""
    if head[:2] == b"\x1f\x8b":
        return GZIP
    if head[:4] == b"\x28\xb5\x2f\xfd":
        return ZSTD
    if len(head) >= 4 and head[1:4] == b"\x2a\x4d\x18" and head[0] & 0xF0 == 0x50:
        return ZSTD  # skippable frame first
    if head[:6] == b"\xfd7zXZ\x00":
        return XZ
    if head[:3] == b"BZh":
        return BZIP2
    if not head:
        return NONE
    block = head[:512]
    if len(block) == 512:
        if block[257:262] == b"ustar" or not any(block) or _v7_checksum_ok(block):
            return NONE
    return None


def _v7_checksum_ok(block: bytes) -> bool:
    field = block[148:156].split(b"\0", 1)[0].strip()
    try:
        want = int(field, 8)
    except ValueError:
        return False
    unsigned = sum(block[:148]) + 256 + sum(block[156:])
    return want == unsigned


def detect(head: bytes, *, what: str) -> str:
    kind = sniff(head)
    if kind is None:
        raise InputError(f"{what}: unknown compression or not a tar (first bytes: {head[:8].hex(' ')})")
    return kind


class _Inflater:
    """Incremental decoder with one ``feed(data) -> iterator of pieces`` and ``end()``.

    Handles multi-member gzip / multi-stream xz and bzip2, and NUL padding after the last
    member (EDGE-CASES 10); other garbage after the compressed data is an error."""

    def __init__(self, kind: str, what: str) -> None:
        self.kind = kind
        self.what = what
        # (lzma and bz2 are imported only for their layers: a few ms of every start)
        self._errors: tuple[type[BaseException], ...] = (*_GZIP_ERRORS, OSError, ValueError, EOFError)
        self._xz_error: Optional[type[BaseException]] = None
        if kind == XZ:
            import lzma

            self._xz_error = lzma.LZMAError
            self._errors += (lzma.LZMAError,)
        self._d = self._new()
        self._between = False  # finished a member; only NULs or a new member may follow

    def _new(self):  # type: ignore[no-untyped-def]
        if self.kind == GZIP:
            return _gzip_impl.decompressobj(wbits=31)
        if self.kind == XZ:
            import lzma

            return lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=MAX_DECODER_MEMORY)
        if self.kind == BZIP2:
            import bz2

            return bz2.BZ2Decompressor()
        raise AssertionError(self.kind)

    def feed(self, data: bytes) -> Iterator[bytes]:
        # In slices: at the end of each member the decompressor copies the input left
        # over (``unused_data``), so a layer of many small members (eStargz has one per
        # file) copied half a 512 KiB read per member: 9 us a member, against 3.3 us in
        # 32 KiB slices, and no change for one big member.
        if len(data) <= _SLICE:
            yield from self._feed(data)
            return
        view = memoryview(data)
        for at in range(0, len(data), _SLICE):
            yield from self._feed(bytes(view[at:at + _SLICE]))

    def _feed(self, data: bytes) -> Iterator[bytes]:
        while data:
            if self._between:
                stripped = data.lstrip(b"\0")
                if not stripped:
                    return
                data = stripped
                self._d = self._new()
                self._between = False
            try:
                if self.kind == GZIP:
                    out = self._d.decompress(data, PIECE)
                    data = self._d.unconsumed_tail
                    if out:
                        yield out
                    while data and not self._d.eof and len(out) == PIECE:
                        out = self._d.decompress(data, PIECE)
                        data = self._d.unconsumed_tail
                        if out:
                            yield out
                    if self._d.eof:
                        data = self._d.unused_data + data
                        self._between = True
                else:  # lzma / bz2: max_length with needs_input
                    out = self._d.decompress(data, PIECE)
                    if out:
                        yield out
                    while not self._d.eof and not self._d.needs_input:
                        out = self._d.decompress(b"", PIECE)
                        if out:
                            yield out
                    if self._d.eof:
                        data = self._d.unused_data
                        self._between = True
                    else:
                        data = b""
            except self._errors as exc:
                if self._xz_error is not None and isinstance(exc, self._xz_error) and "memory" in str(exc).lower():
                    raise _too_much_memory(self.what, "xz") from None
                raise InputError(f"{self.what}: corrupt {self.kind} data: {exc}") from None

    def end(self) -> Iterator[bytes]:
        if self._between:
            return
        if self.kind == GZIP:
            try:
                tail = self._d.flush()
            except (*_GZIP_ERRORS, OSError) as exc:
                raise IntegrityError(f"{self.what}: truncated gzip data: {exc}") from None
            if tail:
                yield tail
            if not self._d.eof:
                raise IntegrityError(f"{self.what}: truncated gzip data (stream ends mid-member)")
        else:
            raise IntegrityError(f"{self.what}: truncated {self.kind} data (stream ends mid-stream)")


_GZIP_ERRORS: tuple[type[BaseException], ...] = (zlib.error,) + (
    (_gzip_impl.error,) if getattr(_gzip_impl, "error", zlib.error) is not zlib.error else ()
)


class ZstdFrames:
    """Walks the zstd frame structure of the stored bytes (headers and block sizes only,
    no decompression), so a stream cut between or inside frames is caught: the zstd
    stream reader itself reports a truncated last frame as a clean EOF."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._need = 4  # bytes wanted by the current state
        self._state = "magic"
        self._buf = b""
        self._skip = 0
        self._checksum = False
        self.frames = 0

    @property
    def complete(self) -> bool:
        return self._state == "magic" and not self._buf and not self._skip and self.frames > 0

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._skip:
                n = min(self._skip, len(view))
                self._skip -= n
                view = view[n:]
                if self._skip == 0 and self._state == "block-data-last":
                    self._end_of_blocks()
                elif self._skip == 0 and self._state == "skippable":
                    self._state, self._need = "magic", 4
                    self.frames += 1
                elif self._skip == 0 and self._state == "block-data":
                    self._state, self._need = "block", 3
                continue
            take = min(self._need - len(self._buf), len(view))
            self._buf += bytes(view[:take])
            view = view[take:]
            if len(self._buf) < self._need:
                return
            self._step()

    def _end_of_blocks(self) -> None:
        if self._checksum:
            self._state, self._need, self._skip = "magic", 4, 4
        else:
            self._state, self._need = "magic", 4
        self.frames += 1

    def _step(self) -> None:
        buf, self._buf = self._buf, b""
        state = self._state
        if state == "magic":
            magic = int.from_bytes(buf, "little")
            if magic == 0xFD2FB528:
                self._state, self._need = "fhd", 1
            elif magic & 0xFFFFFFF0 == 0x184D2A50:
                self._state, self._need = "skip-size", 4
            elif not any(buf):
                raise InputError(f"{self.what}: NUL bytes after zstd data")
            else:
                raise InputError(f"{self.what}: corrupt zstd data (bad frame magic {buf.hex()})")
        elif state == "skip-size":
            self._skip = int.from_bytes(buf, "little")
            self._state, self._need = "magic", 4
            self.frames += 1 if self._skip == 0 else 0
            if self._skip:
                self._state = "skippable"
                self._need = 4
        elif state == "fhd":
            fhd = buf[0]
            fcs_flag, single, dict_flag = fhd >> 6, (fhd >> 5) & 1, fhd & 3
            self._checksum = bool((fhd >> 2) & 1)
            window = 0 if single else 1
            dict_id = (0, 1, 2, 4)[dict_flag]
            fcs = (1 if single else 0) if fcs_flag == 0 else (2, 4, 8)[fcs_flag - 1]
            size = window + dict_id + fcs
            if size:
                self._state, self._need = "fh-rest", size
            else:
                self._state, self._need = "block", 3
        elif state == "fh-rest":
            self._state, self._need = "block", 3
        elif state == "block":
            header = int.from_bytes(buf, "little")
            last, btype, bsize = header & 1, (header >> 1) & 3, header >> 3
            if btype == 3:
                raise InputError(f"{self.what}: corrupt zstd data (reserved block type)")
            length = 1 if btype == 1 else bsize
            self._state = "block-data-last" if last else "block-data"
            self._skip = length
            if length == 0:
                if last:
                    self._end_of_blocks()
                else:
                    self._state, self._need = "block", 3


class ZstdReader:
    """A zstd stream (any number of frames, skippable ones included) decompressed on
    demand: ``read(n)`` returns new bytes, ``readinto(b)`` decompresses straight into the
    caller's buffer (no piece allocated or copied).  A stream cut between or inside frames
    is an error (:class:`ZstdFrames`), and so is anything after the last frame that is not
    a whole frame.

    ``checksums=False`` (for a stream whose inflated bytes a sha256 checks: the diff_id)
    decodes with the system libzstd without the frames' XXH64 checksums when it can (see
    :mod:`converter.libzstd`); python-zstandard, which always checks them, otherwise."""

    def __init__(self, raw_read: Callable[[int], bytes], *, what: str, checksums: bool = True) -> None:
        self.what = what
        self._frames = frames = ZstdFrames(what)

        class _Raw:
            def read(self, n: int) -> bytes:
                chunk = raw_read(n)
                frames.feed(chunk)
                return chunk

        self._raw = _Raw()
        self._ended = False
        #: whether the frames' XXH64 checksums are checked (False only with libzstd)
        self.frame_checksums = True
        if not checksums:
            from . import libzstd

            native = libzstd.decoder(self._raw.read, max_window=MAX_DECODER_MEMORY, read_size=PIECE)
            if native is not None:
                self.frame_checksums = False
                self._reader: Any = native
                self._codec_error: type[BaseException] = libzstd.ZstdLibError
                return
        import zstandard

        self._reader = zstandard.ZstdDecompressor(max_window_size=MAX_DECODER_MEMORY).stream_reader(
            self._raw, read_size=PIECE, read_across_frames=True)
        self._codec_error = zstandard.ZstdError

    def read(self, n: int) -> bytes:
        return self._call(self._reader.read, n)

    def readinto(self, b: memoryview) -> int:
        return self._call(self._reader.readinto, b)

    def _call(self, method: Callable[[Any], Any], arg: Any) -> Any:
        try:
            out = method(arg)
        except self._codec_error as exc:
            raise self._error(exc) from None
        if not out:  # (no bytes, or 0 of them)
            self._end()
        return out

    def _end(self) -> None:
        if self._ended:
            return
        self._ended = True
        while self._raw.read(PIECE):  # anything the reader left must still be whole frames
            pass
        if not self._frames.complete:
            raise IntegrityError(f"{self.what}: truncated zstd data (stream ends mid-frame)")

    def _error(self, exc: BaseException) -> InputError:
        msg = str(exc)
        if "too much memory" in msg or "window" in msg.lower():
            return _too_much_memory(self.what, "zstd")
        if "incomplete" in msg or "truncat" in msg or "end of" in msg:
            return IntegrityError(f"{self.what}: truncated zstd data: {msg}")
        return InputError(f"{self.what}: corrupt zstd data: {msg}")


def _too_much_memory(what: str, kind: str) -> LimitError:
    return LimitError(f"{what}: the {kind} data needs more than {MAX_DECODER_MEMORY >> 20} MiB of memory to "
                      f"decode (a window or dictionary larger than any real image uses)")


def inflate_pieces(kind: str, raw_read: Callable[[int], bytes], *, what: str, checksums: bool = True) -> Iterator[bytes]:
    """The decompressed bytes of a stored stream, in pieces of at most PIECE bytes
    (``checksums``: see :class:`ZstdReader`)."""
    if kind == NONE:
        while True:
            chunk = raw_read(PIECE)
            if not chunk:
                return
            yield chunk
    elif kind == ZSTD:
        reader = ZstdReader(raw_read, what=what, checksums=checksums)
        while True:
            out = reader.read(PIECE)
            if not out:
                return
            yield out
    else:
        inflater = _Inflater(kind, what)
        while True:
            chunk = raw_read(PIECE)
            if not chunk:
                yield from inflater.end()
                return
            yield from inflater.feed(chunk)


_EOF = object()


class DecompressingReader:
    """A readable stream of decompressed bytes fed by a producer thread.

    ``raw_read(n)`` supplies the stored bytes (the caller wraps it with its blob hashing);
    ``on_output`` sees every decompressed byte (diff_id hashing, size limits) in the producer
    thread.  Errors raised there surface from :meth:`readinto` in the consumer.
    """

    def __init__(
        self,
        kind: str,
        raw_read: Callable[[int], bytes],
        *,
        what: str,
        on_output: Optional[Callable[[bytes], None]] = None,
        queue_items: int = 4,
    ) -> None:
        self.kind = kind
        self.what = what
        self._raw_read = raw_read
        self._on_output = on_output
        import queue

        self._q: "queue.Queue[object]" = queue.Queue(maxsize=queue_items)
        self._full = queue.Full
        self._stop = threading.Event()
        self._buf = memoryview(b"")
        self._done = False
        self._thread = threading.Thread(target=self._produce, name=f"inflate {what}", daemon=True)
        self._thread.start()

    def _pieces(self) -> Iterator[bytes]:
        return inflate_pieces(self.kind, self._raw_read, what=self.what)

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except self._full:
                continue
        return False

    def _produce(self) -> None:
        try:
            for piece in self._pieces():
                if self._on_output is not None:
                    self._on_output(piece)
                if not self._put(piece):
                    return
            self._put(_EOF)
        except BaseException as exc:  # handed to the consumer thread
            self._put(exc)

    def readinto(self, b: memoryview) -> int:
        while not self._buf:
            if self._done:
                return 0
            item = self._q.get()
            if item is _EOF:
                self._done = True
                return 0
            if isinstance(item, BaseException):
                self._done = True
                if isinstance(item, ConverterError):
                    raise item
                raise InputError(f"{self.what}: {item}") from item
            self._buf = memoryview(item)  # type: ignore[arg-type]
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            parts = []
            while True:
                part = self.read(PIECE)
                if not part:
                    return b"".join(parts)
                parts.append(part)
        out = bytearray(n)
        got = self.readinto(memoryview(out))
        return bytes(out[:got])

    def skip(self, n: int) -> int:
        done = 0
        scratch = memoryview(bytearray(min(n, PIECE) or 1))
        while done < n:
            got = self.readinto(scratch[: min(len(scratch), n - done)])
            if not got:
                break
            done += got
        return done

    def close(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:  # an interrupt may have landed before start()
            self._thread.join(timeout=5)
