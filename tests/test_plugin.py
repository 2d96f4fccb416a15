"""The pytest plugin users get by installing the package (issue 9, "Fixture helpers").

The plugin is registered through the ``pytest11`` entry point ``rootfs`` in pyproject.toml.
The main test runs a user's test file in a *separate* pytest process
(``pytester.runpytest_subprocess``), so the fixtures can only come from the installed
entry point: no conftest, no ``-p``, no ``pytest_plugins`` in the user's file. A negative
control with plugin autoloading disabled shows the fixtures then disappear.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from converter.testing import (
    Dir,
    File,
    Hardlink,
    ImageSpec,
    Layer,
    Opaque,
    Symlink,
    Whiteout,
    build_image,
    convert_image,
    listing,
)

pytest_plugins = ["pytester"]

USER_TESTS = textwrap.dedent(
    '''
    """A user's test file: it knows nothing about how the fixtures were registered."""
    import os
    import tarfile

    import pytest

    from converter.testing import Dir, File, Hardlink, Layer, Opaque, Symlink, Whiteout, listing

    BASE = [
        Dir("etc/"),
        File("etc/motd", b"hello\\n"),
        File("etc/old", b"gone soon"),
        Dir("opt/app/"),
        File("opt/app/legacy", b"hidden by the opaque marker"),
        File("bin/tool", b"#!/bin/sh\\n", mode=0o755, uid=1000, gid=1000),
        Hardlink("bin/tool-link", "bin/tool"),
    ]
    TOP = [
        Whiteout("etc/old"),
        Opaque("opt/app"),
        File("opt/app/VERSION", b"2\\n"),
        Symlink("etc/greeting", "motd"),
    ]


    def test_tree_is_the_merged_view(rootfs_image, rootfs_tree):
        image = rootfs_image([BASE, TOP], tag="fixture/app:1", entrypoint=["/bin/tool"])
        assert image.is_file() and image.suffix == ".tar"
        root = rootfs_tree(image)
        assert root.is_dir()
        assert (root / "etc/motd").read_bytes() == b"hello\\n"
        assert not (root / "etc/old").exists()
        assert sorted(os.listdir(root / "opt/app")) == ["VERSION"]
        assert os.readlink(root / "etc/greeting") == "motd"
        assert os.stat(root / "bin/tool").st_ino == os.stat(root / "bin/tool-link").st_ino
        assert os.stat(root / "bin/tool").st_mode & 0o777 == 0o755


    @pytest.mark.parametrize("fmt", ["docker-archive", "oci", "oci-archive"])
    def test_every_format_flattens_to_the_same_tree(rootfs_image, rootfs_tree, fmt):
        image = rootfs_image([BASE, TOP], format=fmt)
        reference = rootfs_tree(rootfs_image([BASE, TOP]), flatten=True)
        tar = rootfs_tree(image, flatten=True)
        assert tar.is_file() and tar.suffix == ".tar"
        assert listing(tar) == listing(reference)
        with tarfile.open(tar) as tf:
            names = tf.getnames()
        assert names == sorted(names, key=os.fsencode)
        assert "etc/old" not in names and not any(".wh." in n for n in names)


    def test_layers_go_straight_to_a_tree(rootfs_tree):
        root = rootfs_tree([[File("a.txt", b"a")], [File("b.txt", b"b")]])
        assert sorted(os.listdir(root)) == ["a.txt", "b.txt"]


    def test_layer_objects_and_options(rootfs_image, rootfs_tree):
        image = rootfs_image([Layer([Dir("d/"), File("d/f", b"x")], compression="zstd")], format="oci", tag="v1")
        assert (image / "index.json").is_file()
        tar = rootfs_tree(f"oci:{image}:v1", flatten=True, name="root.tar.zst", source_date_epoch=0)
        assert tar.name == "root.tar.zst"
        assert "d/f\\tf\\t644\\t0:0\\t1\\t" in listing(tar)


    def test_plugin_came_from_the_entry_point(pytestconfig):
        plugin = pytestconfig.pluginmanager.get_plugin("rootfs")
        assert plugin is not None and plugin.__name__ == "converter.testing.pytest_plugin"
        dists = {dist.project_name for _, dist in pytestconfig.pluginmanager.list_plugin_distinfo()}
        assert "rootfs-converter" in dists or "rootfs_converter" in dists
    '''
)


@pytest.fixture
def user_suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.delenv("PYTEST_PLUGINS", raising=False)
    pytester.makepyfile(test_user=USER_TESTS)
    return pytester


def test_user_suite_gets_the_fixtures_from_the_entry_point(user_suite: pytest.Pytester) -> None:
    result = user_suite.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=7)


def test_without_plugin_autoload_the_fixtures_are_missing(user_suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """Negative control: the fixtures come from the entry point and nothing else."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    result = user_suite.runpytest_subprocess("-p", "no:cacheprovider", "-q", "-k", "merged_view or straight")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*fixture 'rootfs_*' not found*"])


def test_plugin_import_is_light() -> None:
    """pytest imports the plugin in every run of every user: no generator, no converter."""
    code = (
        "import sys; import pytest; before = set(sys.modules)\n"
        "import converter.testing.pytest_plugin\n"
        "heavy = ['zstandard', 'tarfile', 'rich', 'typer', 'converter.api', 'converter.merge',"
        " 'converter.testing.imagegen', 'converter.listing']\n"
        "print([m for m in heavy if m in sys.modules and m not in before])\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]", r.stdout


# ------------------------------------------------------------------ the API behind the fixtures


BASE = [Dir("etc/"), File("etc/a", b"a\n"), File("etc/b", b"b\n", uid=5, gid=6), Hardlink("etc/c", "etc/b"),
        Dir("opt/"), File("opt/old", b"old")]
TOP = [Whiteout("etc/a"), Symlink("etc/l", "b"), Opaque("opt"), File("opt/new", b"n")]


@pytest.mark.parametrize("fmt", ["docker-archive", "oci", "oci-archive"])
def test_build_image_is_deterministic(tmp_path: Path, fmt: str) -> None:
    a = build_image(tmp_path / "a", [BASE, TOP], format=fmt, tag="t:1")
    b = build_image(tmp_path / "b", [BASE, TOP], format=fmt, tag="t:1")
    if fmt == "oci":
        files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
        assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
        assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    else:
        assert a.read_bytes() == b.read_bytes()


def test_compression_and_spec_fields(tmp_path: Path) -> None:
    import json

    image = build_image(tmp_path / "oci", [BASE, Layer([File("x", b"x")], compression="none")], format="oci",
                        compression="zstd", tag="v2", entrypoint=["/x"], labels={"k": "v"}, architecture="arm64",
                        variant="v8")
    index = json.loads((image / "index.json").read_text())
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == "v2"
    manifest = json.loads((image / "blobs/sha256" / index["manifests"][0]["digest"].split(":")[1]).read_text())
    assert [layer["mediaType"].rsplit(".", 1)[1] for layer in manifest["layers"]] == ["tar+zstd", "tar"]
    config = json.loads((image / "blobs/sha256" / manifest["config"]["digest"].split(":")[1]).read_text())
    assert config["config"]["Entrypoint"] == ["/x"] and config["config"]["Labels"] == {"k": "v"}
    assert (config["architecture"], config["variant"]) == ("arm64", "v8")


def test_image_spec_is_accepted_and_bad_layers_are_explained(tmp_path: Path) -> None:
    spec = ImageSpec([Layer(BASE)])
    assert build_image(tmp_path / "s.tar", spec).is_file()
    with pytest.raises(TypeError, match="ImageSpec"):
        build_image(tmp_path / "t.tar", spec, entrypoint=["/x"])
    with pytest.raises(TypeError, match="wrap it in another list"):
        build_image(tmp_path / "u.tar", BASE)  # entries, not a list of layers
    with pytest.raises(ValueError, match="format"):
        build_image(tmp_path / "v.tar", [BASE], format="docker")


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz", ".tar.zst", ".tar.xz"])
def test_listing_reads_dirs_and_every_tar_compression(tmp_path: Path, suffix: str) -> None:
    image = build_image(tmp_path / "i.tar", [BASE, TOP])
    tar = convert_image(image, tmp_path / f"root{suffix}", flatten=True)
    expected = (
        "etc\td\t755\t0:0\t-\t-\t-\t-\n"
        "etc/b\tf\t644\t5:6\t2\t0263829989b6fd954f72baaf2fc64bc2e2f01d692d4de72986ea808f6e99813f\tetc/b\t-\n"
        "etc/c\tf\t644\t5:6\t2\t0263829989b6fd954f72baaf2fc64bc2e2f01d692d4de72986ea808f6e99813f\tetc/b\t-\n"
        "etc/l\tl\t-\t0:0\t-\t->b\t-\t-\n"
        "opt\td\t755\t0:0\t-\t-\t-\t-\n"
        "opt/new\tf\t644\t0:0\t1\t1b16b1df538ba12dc3f97edbb85caa7050d46c148134290feba80f8236c83db9\t-\t-\n"
    )
    assert listing(tar) == expected
    if suffix == ".tar" and os.geteuid() == 0:  # owners 5:6 need root in a directory
        assert listing(convert_image(image, tmp_path / "dir")) == expected
