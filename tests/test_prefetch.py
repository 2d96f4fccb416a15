"""Layers inflate ahead: the next layers are read (downloaded, decompressed, hashed) while
layer N applies."""

from __future__ import annotations

import gzip
import hashlib
import io
from pathlib import Path

from converter.image import Blob, Image, Layer
from converter.listing import list_tar
from converter.merge import MergeOptions, build_plan
from converter.opening import AHEAD
from converter.sinks.tar import write_tar
from converter.testing.imagegen import File, Layer as GenLayer, layer_tar


def test_the_next_layer_is_opened_before_the_current_one_is_applied(tmp_path: Path) -> None:
    log: list[str] = []
    tars = [layer_tar(GenLayer([File(f"f{i}", b"x" * (1000 * i))])) for i in range(5)]
    blobs = [gzip.compress(t, mtime=0) for t in tars]

    def blob(i: int) -> Blob:
        def open_() -> io.BytesIO:
            log.append(f"open {i}")
            return io.BytesIO(blobs[i])

        return Blob(open=open_)

    layers = [
        Layer(index=i, blob=blob(i), digest="sha256:" + hashlib.sha256(b).hexdigest(), size=len(b),
              diff_id="sha256:" + hashlib.sha256(t).hexdigest())
        for i, (t, b) in enumerate(zip(tars, blobs))
    ]
    progress = lambda kind, info: log.append(f"done {info['layer']}") if kind == "layer-done" else None  # noqa: E731
    plan = build_plan(Image(source="test", layers=layers, config={}), options=MergeOptions(progress=progress))
    try:
        write_tar(plan, str(tmp_path / "out.tar"))
    finally:
        plan.close()
    # AHEAD layers (the current one included) are open at any time
    assert AHEAD == 2
    assert log == ["open 0", "open 1", "done 0", "open 2", "done 1", "open 3", "done 2", "open 4", "done 3", "done 4"]
    assert "f4\tf\t644\t0:0\t4000\t" in list_tar(tmp_path / "out.tar")
