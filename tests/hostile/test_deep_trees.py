"""Trees nested thousands of directories deep (found by a black-box audit): the output is
removed when the run fails, replaced with --force, and cleared when a dead run left it,
with no recursion anywhere (``shutil.rmtree`` recursed and failed past ~1,000 levels:
an internal error, the partial left behind)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from converter import convert
from converter.errors import OutputError
from converter.sinks.atomic import remove_path
from converter.testing.imagegen import Dir, File, ImageSpec, Layer, Symlink, write_docker_archive

DEPTH = 1500


@pytest.fixture(autouse=True)
def _clear(tmp_path: Path) -> Iterator[None]:
    """Remove what a test leaves: pytest's own clean-up of old temporary directories
    uses shutil.rmtree, which fails on trees this deep."""
    yield
    for child in tmp_path.iterdir():
        remove_path(str(child))


def _deep_image(path: Path, *extra: object) -> Path:
    entries: list[object] = [Dir("d/" * (i + 1)) for i in range(DEPTH)]
    entries += [File("d/" * DEPTH + "f", b"bottom"), *extra]
    write_docker_archive(path, ImageSpec(layers=[Layer(entries)]))
    return path


def _siblings(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir())


def test_a_deep_output_that_fails_is_removed_with_one_clear_error(tmp_path: Path) -> None:
    # a symlink target longer than the kernel takes (ENAMETOOLONG) fails the writer after
    # the deep directories exist
    src = _deep_image(tmp_path / "img.tar", Symlink("zz-link", "t" * 5000))
    with pytest.raises(OutputError, match="zz-link"):
        convert(str(src), tmp_path / "out")
    assert _siblings(tmp_path) == ["img.tar"]


def test_force_over_a_deep_output_replaces_it_and_removes_the_old_one(tmp_path: Path) -> None:
    src = _deep_image(tmp_path / "img.tar")
    convert(str(src), tmp_path / "out")
    convert(str(src), tmp_path / "out", force=True)
    assert (tmp_path / "out" / ("d/" * DEPTH) / "f").read_bytes() == b"bottom"
    assert _siblings(tmp_path) == ["img.tar", "out"]


def test_a_deep_partial_left_by_a_dead_run_is_removed_by_the_next(tmp_path: Path) -> None:
    src = _deep_image(tmp_path / "img.tar")
    convert(str(src), tmp_path / "first")
    dead = 2**22 + 12345  # above pid_max's default: no such process
    (tmp_path / "first").rename(tmp_path / f"out.partial-{dead}-0badc0de")
    convert(str(src), tmp_path / "out")
    assert _siblings(tmp_path) == ["img.tar", "out"]


def _tree(root: Path, depth: int) -> None:
    """``depth`` levels, each with a file, a symlink out, an empty mode-0 directory and a
    mode alternating 0500 / 0000 (an image's read-only and unreadable directories, as a
    run without privileges leaves them)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for i in range(depth):
        os.mkdir("d", dir_fd=fd)
        os.mkdir("e", 0, dir_fd=fd)
        os.close(os.open("f", os.O_WRONLY | os.O_CREAT, 0o400, dir_fd=fd))
        os.symlink("/etc", "l", dir_fd=fd)
        child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.chmod(f"/proc/self/fd/{fd}", 0o500 if i % 2 else 0)
        os.close(fd)
        fd = child
    os.close(fd)


_AS_NOBODY = """
import sys
import tempfile
from pathlib import Path
from typing import Iterator
sys.path[:0] = [{root!r}, {tests!r}]
from hostile.test_deep_trees import _tree
from converter.sinks.atomic import remove_path
_tree(Path({path!r}), {depth})
remove_path({path!r})
"""


def test_remove_path_takes_deep_unreadable_trees_without_following_links(tmp_path: Path) -> None:
    """As an unprivileged user when the suite is root (permissions then apply)."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_bytes(b"k")
    if os.geteuid() == 0 and shutil.which("setpriv"):
        # (pytest's base temporary directory is private to root: one nobody can reach)
        base = Path(tempfile.mkdtemp(prefix="rootfs-deep-"))
        try:
            os.chmod(base, 0o777)
            target = base / "tree"
            target.mkdir()
            os.chown(target, 65534, 65534)
            code = _AS_NOBODY.format(root=str(Path(__file__).parents[2]), tests=str(Path(__file__).parents[1]),
                                     path=str(target), depth=1200)
            proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
                                   code], capture_output=True, text=True, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
            assert proc.returncode == 0, proc.stderr
            assert not target.exists()
        finally:
            remove_path(str(base))
    else:
        target = tmp_path / "tree"
        target.mkdir()
        _tree(target, 1200)
        remove_path(str(target))
        assert not target.exists()
    assert sorted(p.name for p in victim.iterdir()) == ["keep"] and os.path.isdir("/etc")


@pytest.mark.parametrize("via", ["name", "symlink"])
def test_a_tree_deeper_than_any_path_can_name_is_refused(tmp_path: Path, via: str) -> None:
    """More than 2,048 directories (longer than PATH_MAX: nothing that extracts by path
    makes one) is a limit error, found where the parent is resolved; a crafted layer of a
    megabyte asked for 30,000 levels: 5.5 GB and the writer out of fds."""
    from converter.errors import LimitError
    from converter.merge import MAX_DEPTH

    if via == "name":
        entries: list[object] = [File("d/" * (MAX_DEPTH + 1) + "f", b"x")]
    else:  # each name is short; the symlink makes the path deep
        half = MAX_DEPTH // 2 + 10
        entries = [Dir("d/" * half), Symlink("l", "/" + "d/" * half), File("l/" + "e/" * half + "f", b"x")]
    write_docker_archive(tmp_path / "img.tar", ImageSpec(layers=[Layer(entries)]))
    for flatten in (False, True):
        out = tmp_path / ("out.tar" if flatten else "out")
        with pytest.raises(LimitError, match=f"more than {MAX_DEPTH} directories deep"):
            convert(str(tmp_path / "img.tar"), out, flatten=flatten)
        assert _siblings(tmp_path) == ["img.tar"]
