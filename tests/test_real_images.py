"""Images made by real tools, converted by the project, must list exactly as their expected trees.

``fixtures/real/`` is a copy of the shared real-images set (see its README.md): artefacts
written by docker, BuildKit, buildah, skopeo and podman, each with the merged root
filesystem that overlayfs, umoci and (for docker images) ``docker export`` agree on.  For
every (artefact, image) pair of ``images.json`` we convert to a directory and to a
flattened tar and compare the canonical listing (``converter.listing``) byte for byte.

The expected trees describe extraction as root (owners, devices, security.* xattrs), so the
directory sink runs only as root; the flattened tar needs no privileges and always runs.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from converter.listing import list_directory, list_tar

REAL = Path(__file__).resolve().parent.parent / "fixtures" / "real"
IMAGES: list[dict[str, Any]] = json.loads((REAL / "images.json").read_text("utf-8"))

IS_ROOT = os.geteuid() == 0
ROOT_REASON = (
    "directory sink needs root: the expected trees describe extraction as root "
    "(image owners, device nodes, security.capability); the flattened-tar variant still runs"
)

# images.json "format" -> skopeo-style transport of the source spec
_TRANSPORTS = {
    "docker-save-legacy": "docker-archive",
    "docker-archive": "docker-archive",
    "oci-archive-gzip": "oci-archive",
    "oci-layout-gzip": "oci",
    "oci-layout-zstd": "oci",
    "oci-layout-uncompressed": "oci",
    "oci-layout-index-gzip": "oci",
}


def source_spec(item: dict[str, Any]) -> str:
    """``transport:path:ref`` for an images.json item (the ref stored in the artefact)."""
    transport = _TRANSPORTS.get(item["format"])
    if transport is None:
        raise AssertionError(f"images.json: unknown format {item['format']!r}; add it to _TRANSPORTS")
    path = REAL / item["artefact"]
    if ":" in str(path):
        pytest.skip(f"the fixture path {path} contains ':', which a transport:path:ref spec cannot carry")
    return f"{transport}:{path}:{item['ref']}"


def _image_label(item: dict[str, Any]) -> str:
    if item["platform"]:
        return item["platform"].replace("/", "-")
    return item["image"].rsplit(":", 1)[-1]


def _params() -> list[Any]:
    params = []
    for item in IMAGES:
        for sink in ("dir", "tar"):
            marks = [pytest.mark.skipif(not IS_ROOT, reason=ROOT_REASON)] if sink == "dir" else []
            params.append(pytest.param(item, sink, id=f"{item['artefact']}@{_image_label(item)}-{sink}", marks=marks))
    return params


def _convert_api() -> Callable[..., Any]:
    """``converter.convert``, with a clear message while the API has not landed yet."""
    try:
        from converter import convert
    except ImportError as e:
        raise ImportError(
            f"the conversion API `from converter import convert` is not available ({e}); "
            "these tests need convert(source, output, *, flatten=False, platform=None, force=False)"
        ) from e
    if not callable(convert):
        raise AttributeError(f"converter.convert is not callable: {convert!r}")
    return convert


def listing_mismatch(expected: str, actual: str, *, what: str, context: int = 1, max_lines: int = 60) -> str:
    """A short report: entry counts and the unified diff of the first differing lines only."""
    exp = expected.splitlines(keepends=True)
    act = actual.splitlines(keepends=True)
    diff = list(difflib.unified_diff(exp, act, "expected", "actual", n=context))
    shown = diff[:max_lines]
    more = f"... ({len(diff) - max_lines} more diff lines)\n" if len(diff) > max_lines else ""
    first = next((i for i, (a, b) in enumerate(zip(exp, act)) if a != b), min(len(exp), len(act)))
    return (
        f"{what}: listing differs from the expected tree "
        f"({len(exp)} expected entries, {len(act)} listed; first difference at line {first + 1})\n"
        + "".join(line if line.endswith("\n") else line + "\n" for line in shown)
        + more
    )


def assert_same_listing(actual: str, expected_file: Path, *, what: str) -> None:
    expected = expected_file.read_bytes().decode("utf-8")
    if actual != expected:
        pytest.fail(listing_mismatch(expected, actual, what=what), pytrace=False)


# --------------------------------------------------------------------------------------
# the fixtures themselves


def test_fixture_manifest_intact() -> None:
    """Every file of fixtures/real/ matches MANIFEST (as `sha256sum -c MANIFEST` would check)."""
    bad = []
    for line in (REAL / "MANIFEST").read_text("utf-8").splitlines():
        digest, name = line.split(maxsplit=1)
        name = name.lstrip("*")
        path = REAL / name
        if not path.is_file():
            bad.append(f"missing: {name}")
        elif hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            bad.append(f"changed: {name}")
    assert not bad, "fixtures/real/ does not match its MANIFEST:\n" + "\n".join(bad)


@pytest.mark.parametrize("item", IMAGES, ids=[f"{i['artefact']}@{_image_label(i)}" for i in IMAGES])
def test_expected_tree_has_the_announced_entries(item: dict[str, Any]) -> None:
    data = (REAL / item["expected_tree"]).read_bytes()
    assert data.endswith(b"\n") or data == b""
    assert data.count(b"\n") == item["entries"]
    assert (REAL / item["artefact"]).exists()


# --------------------------------------------------------------------------------------
# conversion


@pytest.mark.parametrize(("item", "sink"), _params())
def test_real_image_converts_to_expected_tree(item: dict[str, Any], sink: str, tmp_path: Path) -> None:
    convert = _convert_api()
    spec = source_spec(item)
    out = tmp_path / ("rootfs.tar" if sink == "tar" else "rootfs")
    convert(spec, out, flatten=(sink == "tar"), platform=item["platform"])
    # output is atomic: nothing but the result is left beside it (no OUT.partial-*)
    assert sorted(os.listdir(tmp_path)) == [out.name]
    actual = list_tar(out) if sink == "tar" else list_directory(out)
    assert_same_listing(actual, REAL / item["expected_tree"], what=f"convert({spec!r}, flatten={sink == 'tar'})")


CLI_ITEM = next(i for i in IMAGES if i["artefact"] == "edge-scratch.podman-save.docker-archive.tar")


@pytest.mark.skipif(not IS_ROOT, reason=ROOT_REASON)
def test_cli_convert_smoke(tmp_path: Path) -> None:
    spec = source_spec(CLI_ITEM)
    out = tmp_path / "rootfs"
    proc = subprocess.run(
        [sys.executable, "-m", "converter", "convert", spec, "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, (
        f"`python -m converter convert {spec} -o {out}` exited {proc.returncode}\n"
        f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    )
    assert_same_listing(list_directory(out), REAL / CLI_ITEM["expected_tree"], what="CLI convert")
