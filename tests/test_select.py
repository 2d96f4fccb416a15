"""Layer selection (``--layers``, ``--skip-layer``, ``--only-layer``), both outputs.

One four-layer image whose tree after every prefix of layers is known; selections that cut
between a whiteout and what it deletes show the deleted entry back (the whiteout is not
applied), and a raw diff keeps its ``.wh.`` markers.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from converter import convert
from converter.errors import NotFoundError, UsageError
from converter.sources import open_image
from converter.testing.imagegen import Dir, File, Opaque, Symlink, Whiteout, write_docker_archive

from edge_helpers import IS_ROOT, D, F, L, expect, image, run, write_image

L1 = [Dir("etc/"), File("etc/a", b"a1"), File("etc/b", b"b1"), Dir("opt/"), File("opt/x", b"x")]
L2 = [File("etc/a", b"a2"), Whiteout("etc/b"), Symlink("link", "etc/a")]
L3 = [Dir("opt/"), Opaque("opt"), File("opt/y", b"y")]
L4 = [File("etc/b", b"b4"), Whiteout("link")]
SPEC = image(L1, L2, L3, L4)

AFTER = {
    1: expect(D("etc"), F("etc/a", b"a1"), F("etc/b", b"b1"), D("opt"), F("opt/x", b"x")),
    2: expect(D("etc"), F("etc/a", b"a2"), L("link", "etc/a"), D("opt"), F("opt/x", b"x")),
    3: expect(D("etc"), F("etc/a", b"a2"), L("link", "etc/a"), D("opt"), F("opt/y", b"y")),
    4: expect(D("etc"), F("etc/a", b"a2"), F("etc/b", b"b4"), D("opt"), F("opt/y", b"y")),
}


@pytest.fixture(params=["dir", "tar"])
def sink(request: pytest.FixtureRequest) -> str:
    if request.param == "dir" and not IS_ROOT:
        pytest.skip("the expected trees are root-owned: directory output needs root")
    return request.param


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_first_n_layers_give_the_tree_after_layer_n(tmp_path: Path, sink: str, n: int) -> None:
    assert run(SPEC, tmp_path, sink, layers=n).listing == AFTER[n]


def test_range_of_layers_starts_from_an_empty_tree(tmp_path: Path, sink: str) -> None:
    # layers 2..3 alone: the whiteout of etc/b and the opaque opt/ have nothing below them
    got = run(SPEC, tmp_path, sink, layers="2..3").listing
    assert got == expect(D("etc"), F("etc/a", b"a2"), L("link", "etc/a"), D("opt"), F("opt/y", b"y"))


def test_skipping_the_whiteout_layer_keeps_what_it_deleted(tmp_path: Path, sink: str) -> None:
    got = run(SPEC, tmp_path, sink, skip_layers=["2"]).listing
    assert got == expect(D("etc"), F("etc/a", b"a1"), F("etc/b", b"b4"), D("opt"), F("opt/y", b"y"))


def test_skipping_the_layer_a_whiteout_targets_makes_the_whiteout_a_no_op(tmp_path: Path, sink: str) -> None:
    # without layer 1, layer 2's .wh.b deletes nothing and etc/ is implied by etc/a
    got = run(SPEC, tmp_path, sink, skip_layers=["1"], layers=None).listing
    assert got == expect(D("etc"), F("etc/a", b"a2"), F("etc/b", b"b4"), D("opt"), F("opt/y", b"y"))


def test_skip_by_digest_prefix(tmp_path: Path, sink: str) -> None:
    src = write_image(SPEC, tmp_path)
    with open_image(str(src)) as img:
        third = img.layers[2].diff_id
    assert third is not None
    out = tmp_path / ("out" if sink == "dir" else "out.tar")
    convert(str(src), out, flatten=sink == "tar", skip_layers=[third.split(":")[1][:12]])
    from converter.listing import list_directory, list_tar

    got = list_directory(out) if sink == "dir" else list_tar(out)
    assert got == expect(D("etc"), F("etc/a", b"a2"), F("etc/b", b"b4"), D("opt"), F("opt/x", b"x"))


def test_only_layer_as_tar_is_the_raw_diff_with_its_whiteouts(tmp_path: Path) -> None:
    src = write_image(SPEC, tmp_path)
    out = tmp_path / "l2.tar"
    convert(str(src), out, flatten=True, only_layer="2")
    with tarfile.open(out) as t:
        names = sorted(m.name.rstrip("/") for m in t.getmembers())
    assert names == [".", "etc", "etc/.wh.b", "etc/a", "link"]


def test_only_layer_as_directory_applies_it_alone(tmp_path: Path) -> None:
    if not IS_ROOT:
        pytest.skip("root-owned expected tree")
    got = run(SPEC, tmp_path, "dir", only_layer="3").listing
    assert got == expect(D("opt"), F("opt/y", b"y"))


@pytest.mark.parametrize(
    "options, error, text",
    [
        ({"layers": 5}, NotFoundError, "only 4 layers"),
        ({"layers": "3..9"}, NotFoundError, "only 4 layers"),
        ({"layers": "3..2"}, UsageError, "reversed"),
        ({"layers": "x"}, UsageError, "A..B"),
        ({"skip_layers": ["7"]}, NotFoundError, "4 layers"),
        ({"skip_layers": ["sha256:ffff"]}, NotFoundError, "no layer matches"),
        ({"only_layer": "0"}, NotFoundError, "no layer 0"),
        ({"only_layer": "1", "layers": 2}, UsageError, "cannot be combined"),
    ],
)
def test_selecting_a_layer_that_does_not_exist_lists_the_layers(
    tmp_path: Path, options: dict, error: type, text: str
) -> None:
    src = write_image(SPEC, tmp_path)
    with pytest.raises(error) as info:
        convert(str(src), tmp_path / "out.tar", flatten=True, **options)
    assert text in str(info.value)
    if error is NotFoundError and "layers" in options or "skip_layers" in options:
        assert "1: sha256:" in str(info.value)  # the layers are listed
    assert not list(tmp_path.glob("out*"))


def test_cli_layers_options(tmp_path: Path) -> None:
    src = write_image(SPEC, tmp_path)
    r = subprocess.run([sys.executable, "-m", "converter", "convert", str(src), "--flatten", str(tmp_path / "o.tar"),
                        "--layers", "1..2", "--skip-layer", "2", "-q"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    from converter.listing import list_tar

    assert list_tar(tmp_path / "o.tar") == AFTER[1]
    r = subprocess.run([sys.executable, "-m", "converter", "convert", str(src), "--flatten", str(tmp_path / "p.tar"),
                        "--layers", "9"], capture_output=True, text=True)
    assert r.returncode == 4 and r.stderr.startswith("rootfs: error: --layers '9'")


def test_the_same_layer_twice_can_be_skipped_by_position(tmp_path: Path) -> None:
    a = [File("f", b"f")]
    b = [Whiteout("f")]
    path = tmp_path / "twice.tar"
    write_docker_archive(path, image(a, b, a))
    out = tmp_path / "o.tar"
    convert(str(path), out, flatten=True, skip_layers=["3"])
    from converter.listing import list_tar

    assert list_tar(out) == ""
    convert(str(path), tmp_path / "all.tar", flatten=True)
    assert list_tar(tmp_path / "all.tar") == expect(F("f", b"f"))
