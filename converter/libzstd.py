"""The system's libzstd through ``ctypes``: zstd decoding that skips the frames' XXH64
checksums, for layers whose content a sha256 checks anyway.

Why: every byte of a verified layer is hashed with sha256 for its diff_id (DESIGN: both
digests are always checked), so the checksum zstd keeps per frame adds nothing but
work, and python-zstandard has no way to turn it off.  libzstd has
(``ZSTD_d_forceIgnoreChecksum``, since 1.4.7).  Measured: a 259 MB layer of the zstd
bench image decodes in 0.16-0.17 instead of 0.19-0.21 s of CPU (about 45 ms less for the
image's 582 MB, of ~2.2 CPU-s in all), and a staging helper no longer imports zstandard
before its first byte (5-10 ms, ``platform`` with it).

Only a decoder, and only ever a faster equivalent: when the library is missing, too old
or refuses a setting, :func:`decoder` returns None and python-zstandard decodes as
before.  Everything else is libzstd's own checking (a corrupt block, an unknown frame
descriptor, a window above the limit are errors it reports); the frame structure (a
stream cut between or inside frames) is still walked by
:class:`~converter.compression.ZstdFrames`.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Any, Callable, Optional

#: ZSTD_d_experimentalParam3 (ZSTD_d_forceIgnoreChecksum): stable in every release from 1.4.7 on
_FORCE_IGNORE_CHECKSUM = 1002
_MIN_VERSION = 10407
_NAMES = ("libzstd.1.dylib",) if sys.platform == "darwin" else ("libzstd.so.1",)


class _Buffer(ctypes.Structure):
    """ZSTD_inBuffer and ZSTD_outBuffer (the same layout)."""

    _fields_ = [("ptr", ctypes.c_void_p), ("size", ctypes.c_size_t), ("pos", ctypes.c_size_t)]


class ZstdLibError(Exception):
    """libzstd reported an error (its own message, e.g. 'Data corruption detected')."""


_lib: Any = None
_loaded = False


def _load() -> Any:
    """The library with its prototypes declared, or None (loaded once per process)."""
    global _lib, _loaded
    if _loaded:
        return _lib
    _loaded = True
    for name in _NAMES:
        try:
            lib = ctypes.CDLL(name)
            if lib.ZSTD_versionNumber() < _MIN_VERSION:
                continue
            ptr, size = ctypes.c_void_p, ctypes.c_size_t
            lib.ZSTD_createDCtx.restype = ptr
            lib.ZSTD_createDCtx.argtypes = []
            lib.ZSTD_freeDCtx.restype = size
            lib.ZSTD_freeDCtx.argtypes = [ptr]
            lib.ZSTD_DCtx_setParameter.restype = size
            lib.ZSTD_DCtx_setParameter.argtypes = [ptr, ctypes.c_int, ctypes.c_int]
            lib.ZSTD_DCtx_setMaxWindowSize.restype = size
            lib.ZSTD_DCtx_setMaxWindowSize.argtypes = [ptr, size]
            lib.ZSTD_decompressStream.restype = size
            lib.ZSTD_decompressStream.argtypes = [ptr, ctypes.POINTER(_Buffer), ctypes.POINTER(_Buffer)]
            lib.ZSTD_isError.restype = ctypes.c_uint
            lib.ZSTD_isError.argtypes = [size]
            lib.ZSTD_getErrorName.restype = ctypes.c_char_p
            lib.ZSTD_getErrorName.argtypes = [size]
        except (OSError, AttributeError):
            continue
        _lib = lib
        break
    return _lib


def version() -> Optional[str]:
    """``1.5.4`` for the library in use, else None."""
    lib = _load()
    if lib is None:
        return None
    n = lib.ZSTD_versionNumber()
    return f"{n // 10000}.{n // 100 % 100}.{n % 100}"


class Decoder:
    """One zstd stream (any number of frames) decoded straight into the caller's buffers,
    the stored bytes pulled with ``raw_read(n)`` as they are needed."""

    def __init__(self, lib: Any, raw_read: Callable[[int], bytes], *, max_window: int, read_size: int) -> None:
        self._lib = lib
        self._raw_read = raw_read
        self._read_size = read_size
        self._dctx = lib.ZSTD_createDCtx()
        if not self._dctx:
            raise MemoryError("cannot allocate a zstd decoder")
        self._in = _Buffer(None, 0, 0)
        self._out = _Buffer(None, 0, 0)
        self._chunk = b""  # the stored bytes self._in points into (kept alive here)
        self._eof = False
        try:
            self._check(lib.ZSTD_DCtx_setMaxWindowSize(self._dctx, max_window))
            self._check(lib.ZSTD_DCtx_setParameter(self._dctx, _FORCE_IGNORE_CHECKSUM, 1))
        except ZstdLibError:
            self.close()
            raise

    def _check(self, code: int) -> int:
        if self._lib.ZSTD_isError(code):
            raise ZstdLibError(self._lib.ZSTD_getErrorName(code).decode("ascii", "replace"))
        return code

    def readinto(self, b: memoryview) -> int:
        """Fill ``b`` as far as the stream goes; 0 at its end."""
        if not len(b) or self._dctx is None:
            return 0
        target = (ctypes.c_char * len(b)).from_buffer(b)
        try:
            out, src = self._out, self._in
            out.ptr, out.size, out.pos = ctypes.addressof(target), len(b), 0
            decompress, check, dctx = self._lib.ZSTD_decompressStream, self._check, self._dctx
            out_ref, in_ref = ctypes.byref(out), ctypes.byref(src)
            while out.pos < out.size:
                if src.pos >= src.size and not self._eof:
                    chunk = self._raw_read(self._read_size)
                    if chunk:
                        self._chunk = bytes(chunk)
                        src.ptr = ctypes.cast(ctypes.c_char_p(self._chunk), ctypes.c_void_p).value
                        src.size, src.pos = len(self._chunk), 0
                    else:
                        self._eof = True
                        self._chunk, src.ptr, src.size, src.pos = b"", None, 0, 0
                before = out.pos
                check(decompress(dctx, out_ref, in_ref))
                if self._eof and out.pos == before:
                    break  # nothing more to flush: the end (a cut frame is ZstdFrames' to report)
            return out.pos
        finally:
            out.ptr = None
            del target

    def read(self, n: int) -> bytearray:
        """Up to ``n`` new bytes (a bytearray: no copy made to turn it into bytes)."""
        buf = bytearray(n)
        got = self.readinto(memoryview(buf))
        del buf[got:]
        return buf

    def close(self) -> None:
        dctx, self._dctx = self._dctx, None
        if dctx:
            self._lib.ZSTD_freeDCtx(dctx)

    def __del__(self) -> None:
        self.close()


def decoder(raw_read: Callable[[int], bytes], *, max_window: int, read_size: int) -> Optional[Decoder]:
    """A checksum-skipping decoder, or None when this system's libzstd cannot give one."""
    lib = _load()
    if lib is None:
        return None
    try:
        return Decoder(lib, raw_read, max_window=max_window, read_size=read_size)
    except ZstdLibError:
        return None
