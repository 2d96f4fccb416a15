"""Remote layers download ahead: layer N+1 is fetched while layer N applies."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

from converter.image import Blob, Image, Layer
from converter.listing import list_tar
from converter.merge import build_plan
from converter.prefetch import Prefetcher
from converter.sinks.tar import write_tar
from converter.testing.imagegen import File, Layer as GenLayer, layer_tar


def _layers(n: int) -> list[bytes]:
    return [layer_tar(GenLayer([File(f"f{i}", b"x" * (1000 * i))])) for i in range(n)]


def test_the_next_layer_is_prefetched_before_the_current_one_is_read(tmp_path: Path) -> None:
    log: list[str] = []
    tars = _layers(3)

    def blob(i: int) -> Blob:
        def open_() -> io.BytesIO:
            log.append(f"open {i}")
            return io.BytesIO(tars[i])

        return Blob(open=open_, prefetch=lambda: log.append(f"prefetch {i}"))

    import hashlib

    layers = [Layer(index=i, blob=blob(i), diff_id="sha256:" + hashlib.sha256(t).hexdigest()) for i, t in enumerate(tars)]
    image = Image(source="test", layers=layers, config={})
    plan = build_plan(image)
    try:
        write_tar(plan, str(tmp_path / "out.tar"))
    finally:
        plan.close()
    assert log == ["prefetch 1", "open 0", "prefetch 2", "open 1", "open 2"]
    assert "f2\tf" in list_tar(tmp_path / "out.tar")


class _Trickle(io.RawIOBase):
    """A slow remote stream: a few bytes at a time, with pauses."""

    def __init__(self, data: bytes, step: int = 7000) -> None:
        self._data = data
        self._pos = 0
        self._step = step

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def]
        time.sleep(0.001)
        n = min(len(b), self._step, len(self._data) - self._pos)
        b[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


def test_a_reader_follows_a_download_still_in_progress() -> None:
    data = bytes(range(256)) * 400
    pf = Prefetcher(lambda: _Trickle(data))
    try:
        got = pf.open().read()
    finally:
        pf.close()
    assert got == data


def test_a_download_error_reaches_the_reader() -> None:
    class Broken(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, b) -> int:  # type: ignore[no-untyped-def]
            raise OSError("connection reset")

    pf = Prefetcher(lambda: Broken())
    try:
        reader = pf.open()
        try:
            reader.read()
        except OSError as exc:
            assert "connection reset" in str(exc)
        else:
            raise AssertionError("no error")
    finally:
        pf.close()
    assert threading.active_count() >= 1
