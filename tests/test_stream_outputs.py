"""Outputs that are not paths to replace: ``--flatten``/``--report`` into /dev/null, a named
pipe, /dev/stdout or a shell's ``>(...)`` stream into it; a symbolic link is replaced only
with --force; a block device, a socket or (for -o) any device is never replaced.

Every device node here is made in the test's own directory (never /dev's own): a bug
must not be able to break the machine's /dev/null."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "fixtures" / "sample" / "sample-image.tar"
IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="making device nodes needs root")


def rootfs(*args: str, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "converter", *args], capture_output=True, env=env, **kw)


def members(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [m.name for m in tar.getmembers()]


@pytest.fixture(scope="module")
def expected(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    out = tmp_path_factory.mktemp("ref") / "ref.tar"
    r = rootfs("convert", str(SAMPLE), "--flatten", str(out), "-q")
    assert r.returncode == 0, r.stderr
    return out.read_bytes()


@needs_root
def test_flatten_into_a_character_device_writes_into_it(tmp_path: Path) -> None:
    null = tmp_path / "null"
    os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    r = rootfs("convert", str(SAMPLE), "--flatten", str(null), "-q")
    assert r.returncode == 0, r.stderr
    assert stat.S_ISCHR(os.lstat(null).st_mode) and os.lstat(null).st_rdev == os.makedev(1, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["null"]  # (no partial left beside it)


def test_flatten_into_a_named_pipe_streams_the_tar(tmp_path: Path, expected: bytes) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    r = rootfs("convert", str(SAMPLE), "--flatten", str(fifo), "-q", timeout=120)
    reader.join(60)
    assert r.returncode == 0, r.stderr
    assert got and got[0] == expected
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


@pytest.mark.parametrize("name", ["/dev/stdout", "/proc/self/fd/1", "/dev/fd/1"])
def test_flatten_into_one_of_its_own_fds_is_like_dash(tmp_path: Path, expected: bytes, name: str) -> None:
    out = tmp_path / "redirected.tar"
    with open(out, "wb") as f:
        r = subprocess.run([sys.executable, "-m", "converter", "convert", str(SAMPLE), "--flatten", name, "-q"],
                           stdout=f, stderr=subprocess.PIPE)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["redirected.tar"]


def _compressed_image(tmp_path: Path) -> str:
    """Compressed layers are inflated to temporary files (which a stream output must not
    put in /dev/fd/, its "directory")."""
    from converter.testing.imagegen import File, ImageSpec, Layer, write_oci_layout

    write_oci_layout(tmp_path / "layout", ImageSpec(layers=[Layer([File("a", b"a" * 200_000)], compression="gzip"),
                                                            Layer([File("b", b"b")], compression="zstd")]))
    return f"oci:{tmp_path / 'layout'}"


@pytest.mark.parametrize("image", ["docker-archive", "compressed-oci"])
def test_flatten_into_an_inherited_fd(tmp_path: Path, expected: bytes, image: str) -> None:
    """What ``--flatten >(cmd)`` passes: /dev/fd/N of a pipe the shell opened."""
    source = str(SAMPLE) if image == "docker-archive" else _compressed_image(tmp_path)
    if image != "docker-archive":
        r = rootfs("convert", source, "--flatten", str(tmp_path / "ref.tar"), "-q")
        assert r.returncode == 0, r.stderr
        expected = (tmp_path / "ref.tar").read_bytes()
    read_end, write_end = os.pipe()
    chunks: list[bytes] = []

    def drain() -> None:
        with os.fdopen(read_end, "rb") as f:
            chunks.append(f.read())

    t = threading.Thread(target=drain, daemon=True)
    t.start()
    try:
        r = subprocess.run([sys.executable, "-m", "converter", "convert", source, "--flatten", f"/dev/fd/{write_end}", "-q"],
                           pass_fds=(write_end,), capture_output=True)
    finally:
        os.close(write_end)
    t.join(60)
    assert r.returncode == 0, r.stderr
    assert chunks[0] == expected


def test_a_symlink_is_replaced_only_with_force(tmp_path: Path, expected: bytes) -> None:
    keep = tmp_path / "keep.tar"
    keep.write_bytes(b"mine")
    link = tmp_path / "link.tar"
    link.symlink_to("keep.tar")
    r = rootfs("convert", str(SAMPLE), "--flatten", str(link), "-q")
    assert r.returncode == 8 and b"is a symbolic link (to keep.tar)" in r.stderr, r.stderr
    assert os.readlink(link) == "keep.tar" and keep.read_bytes() == b"mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.tar", "link.tar"]
    r = rootfs("convert", str(SAMPLE), "--flatten", str(link), "-q", "--force")
    assert r.returncode == 0, r.stderr
    assert not link.is_symlink() and link.read_bytes() == expected and keep.read_bytes() == b"mine"


def test_a_symlink_is_not_a_directory_to_replace_without_force(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to("real")
    r = rootfs("convert", str(SAMPLE), "-o", str(tmp_path / "link"), "-q")
    assert r.returncode == 8 and b"is a symbolic link (to real)" in r.stderr, r.stderr
    assert os.readlink(tmp_path / "link") == "real" and list((tmp_path / "real").iterdir()) == []


@needs_root
@pytest.mark.parametrize("kind", ["block", "socket"])
def test_a_block_device_or_socket_is_never_written(tmp_path: Path, kind: str) -> None:
    node = tmp_path / "node"
    if kind == "block":
        os.mknod(node, stat.S_IFBLK | 0o600, os.makedev(7, 250))  # (a loop device number: never opened)
    else:
        os.mknod(node, stat.S_IFSOCK | 0o600)
    for force in ([], ["--force"]):
        r = rootfs("convert", str(SAMPLE), "--flatten", str(node), "-q", *force)
        assert r.returncode == 8 and b"refusing to write over it" in r.stderr, r.stderr
        assert os.lstat(node).st_mode & 0o170000 == (stat.S_IFBLK if kind == "block" else stat.S_IFSOCK)


@needs_root
def test_a_device_is_never_replaced_by_a_directory(tmp_path: Path) -> None:
    null = tmp_path / "null"
    os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    for force in ([], ["--force"]):
        r = rootfs("convert", str(SAMPLE), "-o", str(null), "-q", *force)
        assert r.returncode == 8 and b"never replaced, even with --force" in r.stderr, r.stderr
        assert stat.S_ISCHR(os.lstat(null).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["null"]


def test_report_into_a_pipe_or_stderr_and_not_over_a_symlink(tmp_path: Path) -> None:
    r = rootfs("convert", str(SAMPLE), "-o", str(tmp_path / "a"), "-q", "--report", "/dev/stderr")
    assert r.returncode == 0 and json.loads(r.stderr)["status"] == "ok", r.stderr
    (tmp_path / "r.json").write_text("old")
    (tmp_path / "link.json").symlink_to("r.json")
    r = rootfs("convert", str(SAMPLE), "-o", str(tmp_path / "b"), "-q", "--report", str(tmp_path / "link.json"))
    assert r.returncode == 8 and b"is a symbolic link" in r.stderr and not (tmp_path / "b").exists(), r.stderr
    assert (tmp_path / "r.json").read_text() == "old"
    r = rootfs("convert", str(SAMPLE), "--flatten", "-", "-q", "--report", "/dev/stdout")
    assert r.returncode == 2 and b"cannot both use standard output" in r.stderr, r.stderr


def test_a_mount_point_is_refused_before_any_work() -> None:
    """The result is renamed into place, which a mount point cannot take (EBUSY): say so
    at once, with what to do instead, instead of after the whole conversion."""
    for force in ([], ["--force"]):
        r = rootfs("convert", str(SAMPLE), "-o", "/proc", "-q", *force)
        assert r.returncode == 8 and b"/proc: is a mount point" in r.stderr and b"tar -xpf - -C /proc" in r.stderr, r.stderr
    assert not [name for name in os.listdir("/") if name.startswith("proc.")]


def test_a_sparse_file_that_would_fill_a_tar_is_refused_but_written_as_holes(tmp_path: Path) -> None:
    """A 512-byte entry declaring 400 GiB: holes cost nothing in a directory, but a tar
    writes them out as zeros (it kept `--flatten -` busy for hours)."""
    from converter.testing.imagegen import ImageSpec, Layer, Sparse, write_docker_archive

    src = tmp_path / "img.tar"
    write_docker_archive(src, ImageSpec([Layer([Sparse("big", 400 << 30, [(0, b"x" * 512)], style="pax0.1")])]))
    r = rootfs("convert", str(src), "--flatten", "-", "-q")
    assert r.returncode == 7 and b"'big': a sparse file of 429496729600 bytes from 512 stored" in r.stderr, r.stderr
    assert r.stdout == b""
    r = rootfs("convert", str(src), "--flatten", str(tmp_path / "flat.tar"), "-q")
    assert r.returncode == 7 and b"'big': a sparse file of 429496729600 bytes" in r.stderr, r.stderr
    assert sorted(os.listdir(tmp_path)) == ["img.tar"]  # (no tar, nothing partial beside it)
    r = rootfs("convert", str(src), "-o", str(tmp_path / "out"), "-q")
    assert r.returncode == 0, r.stderr
    st = os.stat(tmp_path / "out" / "big")
    assert st.st_size == 400 << 30 and st.st_blocks * 512 < 1 << 20
    r = rootfs("ls", str(src), "--format", "tree")  # (a tree hash would read it whole too)
    assert r.returncode == 7 and b"'big': a sparse file of 429496729600 bytes" in r.stderr, r.stderr
    assert rootfs("ls", str(src)).returncode == 0  # (listing it costs nothing)


def test_a_directory_that_cannot_hold_temporary_files_is_an_output_error(tmp_path: Path) -> None:
    from converter.errors import OutputError
    from converter.inflate import anonymous_file

    with pytest.raises(OutputError, match="gone: cannot make a temporary file for an inflated layer there"):
        anonymous_file(str(tmp_path / "gone"))


def test_temporary_files_are_made_where_the_file_system_has_no_unnamed_files_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The unnamed file comes from O_TMPFILE when the file system has it, else from the
    tempfile module's fallback (a named file unlinked at once): either way a private,
    empty, writable file that leaves no name behind."""
    import errno

    from converter.inflate import anonymous_file

    real_open = os.open

    def no_tmpfile(path, flags, *args, **kw):  # type: ignore[no-untyped-def]
        if flags & getattr(os, "O_TMPFILE", 0) == getattr(os, "O_TMPFILE", -1):
            raise OSError(errno.EOPNOTSUPP, "Operation not supported")
        return real_open(path, flags, *args, **kw)

    for patched in (False, True):
        if patched:
            monkeypatch.setattr(os, "open", no_tmpfile)
        fd = anonymous_file(str(tmp_path))
        try:
            os.write(fd, b"x" * 5000)
            st = os.fstat(fd)
            assert st.st_size == 5000 and st.st_mode & 0o777 == 0o600 and st.st_nlink == 0
            assert not os.get_inheritable(fd)
        finally:
            os.close(fd)
        assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full here")
def test_a_report_to_a_full_standard_output_is_an_output_error(tmp_path: Path) -> None:
    with open("/dev/full", "wb") as full:
        r = subprocess.run([sys.executable, "-m", "converter", "convert", str(SAMPLE), "-o", str(tmp_path / "out"),
                            "--report", "-", "-q"], stdout=full, stderr=subprocess.PIPE, text=True)
    assert r.returncode == 8
    assert r.stderr == "rootfs: error: --report -: cannot write to standard output: No space left on device\n"


def test_a_closed_standard_output_is_no_internal_error(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "converter", "convert", str(SAMPLE), "-o", str(tmp_path / "out")],
                       stderr=subprocess.PIPE, text=True, preexec_fn=lambda: os.close(1))
    assert r.returncode == 0 and "Traceback" not in r.stderr and r.stderr.startswith("converted ")
    assert (tmp_path / "out" / "etc").is_dir()
