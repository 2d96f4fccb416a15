"""zstd decoding without frame checksums (converter.libzstd): the same bytes and the same
errors as python-zstandard, except a frame checksum, which only the diff_id then checks."""

from __future__ import annotations

import hashlib
import io
import os
from typing import Callable

import pytest
import zstandard

from converter import libzstd
from converter.compression import ZstdReader, inflate_pieces
from converter.errors import InputError, IntegrityError, LimitError
from converter.inflate import InflateSpec, InflatedStream, inflated_pieces
from converter.testing.imagegen import ZSTD_SKIPPABLE_FRAME, compress

#: skipped only off CI, which installs libzstd1 (.ci/run): there a missing library fails
needs_libzstd = pytest.mark.skipif(libzstd.version() is None and os.environ.get("CI") != "true",
                                   reason="no system libzstd >= 1.4.7 here")


def _reader(blob: bytes, step: int = 1 << 20) -> Callable[[int], bytes]:
    stream = io.BytesIO(blob)
    return lambda n: stream.read(min(n, step))


def _content(size: int, seed: int = 1) -> bytes:
    """Bytes that compress a little, like a layer's (neither zeros nor noise)."""
    out = bytearray()
    block = hashlib.sha256(str(seed).encode()).digest()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block * (1 + block[0] % 4)
    return bytes(out[:size])


def _read_all(reader: ZstdReader, into: bool, piece: int = 100_000) -> bytes:
    out = bytearray()
    if into:
        buf = bytearray(piece)
        while True:
            n = reader.readinto(memoryview(buf))
            if not n:
                return bytes(out)
            out += buf[:n]
    while True:
        chunk = reader.read(piece)
        if not chunk:
            return bytes(out)
        out += chunk


def _frames() -> tuple[bytes, bytes]:
    """A stream mixing every frame shape real tools write: with and without content size
    and checksum, an empty frame, a skippable frame first and between, several frames."""
    data = _content(3 << 20)
    parts = [
        ZSTD_SKIPPABLE_FRAME,
        zstandard.ZstdCompressor(level=3, write_checksum=True).compress(data[: 1 << 20]),
        zstandard.ZstdCompressor(level=1, write_checksum=False, write_content_size=False).compress(data[1 << 20 : 2 << 20]),
        zstandard.ZstdCompressor(write_checksum=True).compress(b""),
        ZSTD_SKIPPABLE_FRAME,
        compress(data[2 << 20 :], "zstd", members=3),
    ]
    return b"".join(parts), data


@needs_libzstd
@pytest.mark.parametrize("into", [True, False])
@pytest.mark.parametrize("step", [1, 4096, 1 << 20])
def test_without_checksums_every_frame_shape_decodes_to_the_same_bytes(into: bool, step: int) -> None:
    blob, data = _frames()
    if step == 1:
        blob, data = blob[:200_000], None  # (byte by byte: a prefix is enough, and a cut is fine here)
    fast = ZstdReader(_reader(blob, step), what="layer 1", checksums=False)
    assert not fast.frame_checksums
    if data is None:
        slow = ZstdReader(_reader(blob, step), what="layer 1")
        with pytest.raises(IntegrityError, match="truncated"):
            _read_all(slow, into)
        with pytest.raises(IntegrityError, match="truncated"):
            _read_all(fast, into)
        return
    assert _read_all(fast, into) == data


@needs_libzstd
def test_a_wrong_frame_checksum_is_an_error_only_where_nothing_else_checks_the_content() -> None:
    data = _content(300_000)
    blob = bytearray(compress(data, "zstd"))
    blob[-1] ^= 0xFF  # the XXH64 checksum closes the frame
    with pytest.raises(InputError, match="checksum"):
        _read_all(ZstdReader(_reader(bytes(blob)), what="layer 1"), True)
    assert _read_all(ZstdReader(_reader(bytes(blob)), what="layer 1", checksums=False), True) == data


@needs_libzstd
def test_inflating_skips_frame_checksums_exactly_when_a_diff_id_is_checked() -> None:
    data = _content(300_000)
    blob = bytearray(compress(data, "zstd"))
    blob[-1] ^= 0xFF
    diff_id = "sha256:" + hashlib.sha256(data).hexdigest()
    verified = InflateSpec("zstd", "layer 1", diff_id=diff_id)
    assert b"".join(inflated_pieces(verified, _reader(bytes(blob)), [0, 0])) == data
    stream = InflatedStream(verified, _reader(bytes(blob)), [0, 0])
    buf = bytearray(1 << 16)
    got = bytearray()
    while n := stream.readinto(memoryview(buf)):
        got += buf[:n]
    assert got == data
    with pytest.raises(InputError, match="checksum"):  # --no-verify: the frame checksum is all there is
        b"".join(inflated_pieces(InflateSpec("zstd", "layer 1"), _reader(bytes(blob)), [0, 0]))
    wrong = InflateSpec("zstd", "layer 1", diff_id="sha256:" + "0" * 64)
    with pytest.raises(IntegrityError, match="diff_id"):
        b"".join(inflated_pieces(wrong, _reader(bytes(blob)), [0, 0]))


def _corrupt_block(blob: bytes) -> bytes:
    out = bytearray(blob)
    for at in range(len(out) // 3, len(out) // 3 + 64):
        out[at] ^= 0x5A
    return bytes(out)


def _huge_window() -> bytes:
    # frame header: magic, descriptor (no content size, single segment off), window log 31
    return b"\x28\xb5\x2f\xfd" + bytes([0x00, (31 - 10) << 3]) + b"\x00" * 64


@needs_libzstd
@pytest.mark.parametrize(
    ("name", "make", "error", "words"),
    [
        ("a stream cut inside a frame", lambda b: b[: len(b) // 2], IntegrityError, "truncated"),
        ("a stream cut inside the checksum", lambda b: b[:-2], IntegrityError, "truncated"),
        ("garbage after the last frame", lambda b: b + b"garbage!", InputError, "zstd"),
        ("a frame asking for a 2 GiB window", lambda b: _huge_window(), LimitError, "MiB of memory"),
        ("not zstd at all", lambda b: b"\x28\xb5\x2f\xfd" + b"\xff" * 32, InputError, "zstd"),
    ],
)
def test_bad_streams_fail_the_same_way_with_or_without_checksums(name: str, make: Callable[[bytes], bytes],
                                                                 error: type, words: str) -> None:
    blob = make(compress(_content(500_000), "zstd", members=2))
    for checksums in (True, False):
        with pytest.raises(error, match=words) as caught:
            _read_all(ZstdReader(_reader(blob, 65536), what="layer 3", checksums=checksums), True)
        assert "layer 3" in str(caught.value), name


@needs_libzstd
def test_a_corrupt_block_never_passes_where_the_diff_id_stands_in_for_the_checksums() -> None:
    """Corruption inside a block's literals decodes without complaint once the frame
    checksum is ignored; the diff_id is then what refuses the layer."""
    data = _content(500_000)
    blob = _corrupt_block(compress(data, "zstd", members=2))
    with pytest.raises(InputError, match="corrupt zstd data|checksum"):
        _read_all(ZstdReader(_reader(blob), what="layer 3"), True)
    spec = InflateSpec("zstd", "layer 3", diff_id="sha256:" + hashlib.sha256(data).hexdigest())
    with pytest.raises((InputError, IntegrityError), match="layer 3") as caught:
        for _ in inflated_pieces(spec, _reader(blob), [0, 0]):
            pass
    assert "corrupt zstd data" in str(caught.value) or "diff_id" in str(caught.value)


@needs_libzstd
def test_a_zstd_bomb_is_stopped_by_the_ratio_limit_with_libzstd_too() -> None:
    blob = zstandard.ZstdCompressor(level=19).compress(b"\0" * (64 << 20))
    spec = InflateSpec("zstd", "layer 1", diff_id="sha256:" + "0" * 64, max_ratio=100, ratio_floor=1 << 20)
    with pytest.raises(LimitError, match="100x"):
        for _ in inflated_pieces(spec, _reader(blob), [0, 0]):
            pass


def test_without_the_library_python_zstandard_decodes_with_checksums(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(libzstd, "_loaded", True)
    monkeypatch.setattr(libzstd, "_lib", None)
    assert libzstd.version() is None and libzstd.decoder(_reader(b""), max_window=1 << 20, read_size=1024) is None
    blob, data = _frames()
    reader = ZstdReader(_reader(blob), what="layer 1", checksums=False)
    assert reader.frame_checksums
    assert _read_all(reader, True) == data
    assert b"".join(inflate_pieces("zstd", _reader(blob), what="layer 1", checksums=False)) == data


@needs_libzstd
def test_a_decoder_frees_its_context_once_and_reads_nothing_after() -> None:
    blob, data = _frames()
    dec = libzstd.decoder(_reader(blob), max_window=128 << 20, read_size=1 << 16)
    assert dec is not None
    assert len(dec.read(1000)) == 1000
    dec.close()
    dec.close()
    assert dec.readinto(memoryview(bytearray(10))) == 0

