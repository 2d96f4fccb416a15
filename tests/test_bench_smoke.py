"""Smoke test of the benchmark inputs (``bench/images.py``, issue 8).

The benchmark itself is not part of the test suite and nothing here measures time: this
only checks, on a tiny configuration, that the generator is deterministic and that the
images it writes (docker save, OCI gzip, OCI zstd, small files) convert, with whiteouts,
the opaque directory and hard links merged as the generator says they should be.
"""

from __future__ import annotations

import filecmp
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `bench` is a top-level directory, not an installed package
    sys.path.insert(0, str(REPO))

from bench.images import ALL_INPUTS, REALISTIC_INPUTS, check_directory, ensure_inputs  # noqa: E402
from converter.api import convert  # noqa: E402
from converter.listing import list_directory  # noqa: E402


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("bench-inputs")
    return ensure_inputs(root, set(ALL_INPUTS), scale="tiny")


def test_generated_inputs_are_shaped_as_described(inputs) -> None:
    assert set(inputs) == set(ALL_INPUTS)
    docker, gz, zst = (inputs[n] for n in REALISTIC_INPUTS)
    assert docker.entries == gz.entries == zst.entries > 100
    assert docker.tar_bytes == gz.tar_bytes == zst.tar_bytes
    assert [len(i.layers) for i in (docker, gz, zst)] == [4, 4, 4]
    assert gz.compression == "gzip" and zst.compression == "zstd"
    assert gz.blob_bytes < gz.tar_bytes and zst.blob_bytes < zst.tar_bytes
    for info in inputs.values():
        assert all(os.path.getsize(p) > 0 for p in info.layers)
    assert docker.expectations and docker.expectations["deleted"] and docker.expectations["hardlinks"]


def test_generation_is_deterministic_and_cached(inputs, tmp_path: Path) -> None:
    again = ensure_inputs(tmp_path, {"realistic-docker"}, scale="tiny")["realistic-docker"]
    first = inputs["realistic-docker"]
    assert filecmp.cmp(first.source, again.source, shallow=False)
    cached = ensure_inputs(tmp_path, {"realistic-docker"}, scale="tiny")["realistic-docker"]
    assert cached.cached and cached.key == again.key


def test_generated_images_convert(inputs, tmp_path: Path) -> None:
    listings = {}
    for name in REALISTIC_INPUTS:
        info = inputs[name]
        out = tmp_path / name
        result = convert(info.source, out)
        assert result.kind == "dir"
        assert check_directory(out, info.expectations) == []
        listings[name] = list_directory(out)
    assert len(set(listings.values())) == 1, "the three formats of one image must give the same tree"

    small = inputs["smallfiles-docker"]
    out = tmp_path / "small"
    convert(small.source, out)
    files = sum(len(names) for _, _, names in os.walk(out))
    assert files == small.entries - sum(1 for _ in Path(out, "data").iterdir()) - 1  # minus the dirs

    flat = tmp_path / "flat.tar"
    result = convert(inputs["realistic-docker"].source, flat, flatten=True)
    assert result.kind == "tar" and flat.stat().st_size > 0
