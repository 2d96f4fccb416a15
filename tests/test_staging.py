"""Staging (issue 8): the helper that inflates a compressed layer writes each big regular
file straight to a staging directory beside the destination, and the directory writer
renames it into place.  The tree must be exactly what the copying path gives, whatever
happens to the staged files later (deleted, replaced, hard-linked, read before writing),
and nothing may be left beside the destination, on success or on failure."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from converter import convert, workers
from converter.errors import InputError, IntegrityError
from converter.inflate import InflateSpec
from converter.listing import list_directory
from converter.staging import STAGE_MIN, StageSource
from converter.tar.reader import FileSource, TarReader
from converter.testing.imagegen import (
    Dir,
    File,
    Hardlink,
    ImageSpec,
    Layer,
    Opaque,
    Sparse,
    Symlink,
    Whiteout,
    write_docker_archive,
    write_oci_layout,
)


def _big(seed: int, size: int = 3 * STAGE_MIN) -> bytes:
    return bytes((i * 7 + seed) % 251 for i in range(size))


def _spec(compression: str) -> ImageSpec:
    """Every fate a staged file can meet, and sizes around the threshold."""
    passwd = b"root:x:0:0::/root:/bin/sh\napp:x:1234:1234::/home/app:/bin/sh\n" + b"#" * STAGE_MIN + b"\n"
    first = Layer([
        Dir("etc/"), File("etc/passwd", passwd),
        File("at-threshold", _big(1, STAGE_MIN)), File("below-threshold", _big(2, STAGE_MIN - 1)),
        File("empty", b""),
        File("deleted-later", _big(3)), File("replaced-later", _big(4)),
        Dir("opaque/"), File("opaque/hidden", _big(5)),
        File("linked", _big(6)), Hardlink("linked-too", "linked"),
        File("setuid", _big(7), mode=0o4755, uid=1000, gid=1000, mtime=1234567),
        File("with-xattr", _big(8), xattrs={"user.note": b"kept"}),
        File("read-only", _big(9), mode=0o400),
        Symlink("to-big", "linked"),
        Sparse("sparse", 4 * STAGE_MIN, [(4096, _big(10, STAGE_MIN + 5)), (3 * STAGE_MIN, b"end")]),
    ], compression=compression)
    second = Layer([
        Whiteout("deleted-later"), File("replaced-later", _big(11)), Opaque("opaque"),
        File("opaque/new", _big(12)), Hardlink("late-link", "linked"),
    ], compression=compression)
    # the first layer again (EDGE-CASES 6): staged a second time, into its own directory
    return ImageSpec(layers=[first, second, first], user="app", cmd=["/bin/sh"])


def _oci(tmp_path: Path, compression: str) -> str:
    write_oci_layout(tmp_path / "layout", _spec(compression))
    return f"oci:{tmp_path / 'layout'}"


def _leftovers(parent: Path, keep: set[str]) -> list[str]:
    return sorted(n for n in os.listdir(parent) if n not in keep)


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_staged_files_give_the_same_tree_as_copying_them(tmp_path: Path, compression: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    src = _oci(tmp_path, compression)
    write_docker_archive(tmp_path / "plain.tar", _spec("none"))  # uncompressed: nothing staged
    used = []
    from converter import staging

    original = staging.Staging.layer_dir

    def spy(self: staging.Staging) -> int:
        fd = original(self)
        used.append(fd)
        return fd

    monkeypatch.setattr(staging.Staging, "layer_dir", spy)
    convert(src, tmp_path / "staged")
    assert len(used) == 3 and min(used) >= 0  # one staging directory per layer position
    monkeypatch.setattr(workers, "CAN_FORK", False)
    convert(src, tmp_path / "copied")
    convert(str(tmp_path / "plain.tar"), tmp_path / "plain")
    listing = list_directory(tmp_path / "staged")
    assert listing == list_directory(tmp_path / "copied") == list_directory(tmp_path / "plain")
    out = tmp_path / "staged"
    assert (out / "replaced-later").read_bytes() == _big(4)  # the first layer came back on top
    assert (out / "opaque" / "hidden").read_bytes() == _big(5)
    assert (out / "opaque" / "new").read_bytes() == _big(12)
    assert not (out / "deleted-later").exists() or (out / "deleted-later").read_bytes() == _big(3)
    # the third layer made "linked" anew: the second layer's link keeps the first inode
    assert os.stat(out / "linked").st_ino == os.stat(out / "linked-too").st_ino != os.stat(out / "late-link").st_ino
    assert (out / "late-link").read_bytes() == (out / "linked").read_bytes() == _big(6)
    st_ = os.stat(out / "setuid")
    assert (oct(st_.st_mode & 0o7777), st_.st_uid, st_.st_gid, int(st_.st_mtime)) == (oct(0o4755), 1000, 1000, 1234567)
    assert oct(os.stat(out / "read-only").st_mode & 0o7777) == oct(0o400)
    assert os.getxattr(out / "with-xattr", "user.note") == b"kept"
    assert (out / "sparse").read_bytes()[4096:4096 + STAGE_MIN + 5] == _big(10, STAGE_MIN + 5)
    assert _leftovers(tmp_path, {"layout", "plain.tar", "staged", "copied", "plain"}) == []


def test_a_bundle_reads_the_image_user_from_a_staged_passwd(tmp_path: Path) -> None:
    """Reading a file of the merged view before writing (the bundle's user lookup) finds
    staged contents too."""
    import json

    src = _oci(tmp_path, "zstd")
    convert(src, tmp_path / "bundle", bundle=True)
    config = json.loads((tmp_path / "bundle" / "config.json").read_text())
    assert (config["process"]["user"]["uid"], config["process"]["user"]["gid"]) == (1234, 1234)
    assert _leftovers(tmp_path, {"layout", "bundle"}) == []


def test_files_left_out_by_path_selection_are_removed_with_the_staging_directory(tmp_path: Path) -> None:
    src = _oci(tmp_path, "gzip")
    convert(src, tmp_path / "out", paths=["/linked"])
    assert (tmp_path / "out" / "linked").read_bytes() == _big(6)
    assert not (tmp_path / "out" / "setuid").exists()
    assert _leftovers(tmp_path, {"layout", "out"}) == []


@pytest.mark.parametrize("damage", ["diff_id", "corrupt-blob", "truncated-tar"])
def test_a_failing_staged_layer_leaves_nothing_beside_the_destination(tmp_path: Path, damage: str) -> None:
    spec = _spec("zstd")
    if damage == "diff_id":
        spec.config_overrides = lambda cfg: {**cfg, "rootfs": {"type": "layers", "diff_ids": [
            cfg["rootfs"]["diff_ids"][0], "sha256:" + "0" * 64, cfg["rootfs"]["diff_ids"][2]]}}
    if damage == "truncated-tar":
        spec.layers[1] = Layer(spec.layers[1].entries, compression="zstd", raw=None)
    built = write_oci_layout(tmp_path / "layout", spec)
    blob = tmp_path / "layout" / "blobs" / "sha256" / built.layer_digests[1].split(":", 1)[1]
    if damage == "corrupt-blob":
        data = bytearray(blob.read_bytes())
        data[len(data) // 2] ^= 0xFF
        blob.chmod(0o644)
        blob.write_bytes(bytes(data))
    if damage == "truncated-tar":
        # a valid zstd stream whose tar stops inside a big file's data, with digests to match
        import hashlib
        import json

        import zstandard

        from converter.testing.imagegen import layer_tar

        tar = layer_tar(spec.layers[1])
        cut = tar[: len(tar) // 2]
        stored = zstandard.ZstdCompressor().compress(cut)
        _rewrite_layer(tmp_path / "layout", built, 1, stored, "sha256:" + hashlib.sha256(cut).hexdigest(), json)
    out = tmp_path / "out"
    with pytest.raises(InputError, match="layer 2") as info:
        convert(f"oci:{tmp_path / 'layout'}", out)
    if damage != "truncated-tar":
        assert isinstance(info.value, IntegrityError)
    assert not out.exists()
    assert _leftovers(tmp_path, {"layout"}) == []


def _rewrite_layer(layout: Path, built: object, index: int, stored: bytes, diff_id: str, json: object) -> None:
    """Replace one layer blob of an OCI layout, fixing the manifest, config and index."""
    import hashlib
    import json as json_

    blobs = layout / "blobs" / "sha256"

    def put(data: bytes) -> str:
        hexd = hashlib.sha256(data).hexdigest()
        (blobs / hexd).write_bytes(data)
        return "sha256:" + hexd

    index_doc = json_.loads((layout / "index.json").read_text())
    mdesc = index_doc["manifests"][0]
    manifest = json_.loads((blobs / mdesc["digest"].split(":", 1)[1]).read_bytes())
    config = json_.loads((blobs / manifest["config"]["digest"].split(":", 1)[1]).read_bytes())
    config["rootfs"]["diff_ids"][index] = diff_id
    cfg_bytes = json_.dumps(config).encode()
    manifest["config"]["digest"], manifest["config"]["size"] = put(cfg_bytes), len(cfg_bytes)
    manifest["layers"][index]["digest"], manifest["layers"][index]["size"] = put(stored), len(stored)
    man_bytes = json_.dumps(manifest).encode()
    mdesc["digest"], mdesc["size"] = put(man_bytes), len(man_bytes)
    (layout / "index.json").write_text(json_.dumps(index_doc))


@pytest.mark.parametrize("made", ["dir-staging", "dir-partial", "tar-partial"])
def test_an_interrupt_just_after_a_working_path_is_made_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, made: str
) -> None:
    """Signal handlers run between bytecodes, so Ctrl-C can land right after the mkdir
    (or open) that made a staging directory or a partial output, before anyone noted it.
    A kill test caught a staging directory left behind that way under load."""
    src = tmp_path / "image"
    write_oci_layout(src, _spec("gzip"))
    sink, marker = made.split("-")
    marker = f".{marker}-"
    real_mkdir, real_open = os.mkdir, os.open

    def mkdir(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        real_mkdir(path, *args, **kwargs)
        if marker in os.fsdecode(path):
            raise KeyboardInterrupt

    def open_(path, flags, *args, **kwargs):  # type: ignore[no-untyped-def]
        fd = real_open(path, flags, *args, **kwargs)
        if flags & os.O_CREAT and marker in os.fsdecode(path):
            os.close(fd)
            raise KeyboardInterrupt
        return fd

    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "open", open_)
    out = tmp_path / ("out" if sink == "dir" else "out.tar")
    with pytest.raises(KeyboardInterrupt):
        convert(f"oci:{src}", out, flatten=sink == "tar")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("out")) == []


def test_a_stale_staging_directory_of_a_dead_run_is_removed(tmp_path: Path) -> None:
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"out.staging-{dead.stdout.strip()}-0badc0de"
    (stale / "0").mkdir(parents=True)
    (stale / "0" / "1a00").write_bytes(b"x" * 10)
    convert(_oci(tmp_path, "gzip"), tmp_path / "out")
    assert _leftovers(tmp_path, {"layout", "out"}) == []


def _stage_layer(tmp_path: Path, compression: str) -> tuple[bytes, Path, int, Path]:
    """Run a helper's staging job in this process over the first layer of _spec."""
    from converter import helper

    built = write_oci_layout(tmp_path / "layout", _spec(compression))
    blob = tmp_path / "layout" / "blobs" / "sha256" / built.layer_digests[0].split(":", 1)[1]
    from converter.testing.imagegen import layer_tar

    tar = layer_tar(_spec("none").layers[0])
    stage = tmp_path / "stage"
    stage.mkdir()
    src = os.open(blob, os.O_RDONLY)
    out = os.open(tmp_path, os.O_TMPFILE | os.O_RDWR, 0o600)
    stage_fd = os.open(stage, os.O_RDONLY | os.O_DIRECTORY)
    ours, theirs = socket.socketpair()
    received = bytearray()
    reader = threading.Thread(target=lambda: [received.extend(c) for c in iter(lambda: ours.recv(1 << 16), b"")])
    reader.start()
    spec = InflateSpec(kind=compression, what="layer 1", diff_id=built.diff_ids[0])
    try:
        helper._run_stage({"offset": 0, "size": os.fstat(src).st_size, "spec": spec._asdict()},
                          [src, out, stage_fd], [0, 0], theirs)
    finally:
        theirs.close()
        reader.join()
        os.close(src)
        os.close(stage_fd)
    assert bytes(received[:1]) == b"R" and helper.REC.unpack_from(received, len(received) - helper.REC.size)[0] == b"F"
    return tar, stage, out, tmp_path


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_a_staging_helper_puts_big_files_in_files_of_their_own_and_the_rest_at_their_offsets(
    tmp_path: Path, compression: str
) -> None:
    tar, stage, out, _ = _stage_layer(tmp_path, compression)
    try:
        staged = {int(name, 16): (stage / name).read_bytes() for name in os.listdir(stage)}
        inflated = os.pread(out, len(tar) + 1, 0)
    finally:
        os.close(out)
    expected_staged = {}
    for entry in TarReader(FileSource(_fd_of(tar, tmp_path))):
        data = tar[entry.data_offset:entry.data_offset + entry.size]
        if entry.type == b"0" and entry.sparse is None and entry.size >= STAGE_MIN:
            expected_staged[entry.data_offset] = data
        elif entry.type == b"0" and entry.size:
            assert inflated[entry.data_offset:entry.data_offset + entry.size] == data, entry.name
    assert staged == expected_staged and len(staged) >= 8
    for start, data in staged.items():  # left out of the temporary file: a hole
        assert inflated[start + (256 << 10):start + len(data)].count(0) == max(0, len(data) - (256 << 10))


def _fd_of(data: bytes, tmp_path: Path) -> int:
    path = tmp_path / "layer.tar"
    path.write_bytes(data)
    return os.open(path, os.O_RDONLY)


class _Pieces:
    """A stream handing out ``data`` in the given piece sizes (readinto never crosses one)."""

    def __init__(self, data: bytes, sizes: list[int]) -> None:
        self.pieces, at = [], 0
        for n in sizes:
            self.pieces.append(memoryview(data)[at:at + n])
            at += n

    def readinto(self, b: memoryview) -> int:
        while self.pieces and not len(self.pieces[0]):
            self.pieces.pop(0)
        if not self.pieces:
            return 0
        piece = self.pieces[0]
        n = min(len(b), len(piece))
        b[:n] = piece[:n]
        self.pieces[0] = piece[n:]
        return n


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 5000), min_size=1, max_size=40),
    cuts=st.lists(st.tuples(st.integers(0, 60_000), st.integers(0, 9000)), max_size=6),
    steps=st.lists(st.integers(1, 7000), min_size=1, max_size=20),
    ahead=st.integers(0, 9000),
)
def test_stage_source_writes_every_byte_outside_the_excluded_ranges(sizes: list[int], cuts: list, steps: list[int],
                                                                     ahead: int) -> None:
    """A reader consumes the stream step by step, reading up to ``ahead`` bytes further
    than it has consumed, and excludes each range when it reaches its start (as the
    helper does at a big file's header): the file holds every byte outside the ranges at
    its offset, and nothing of a range read after it was excluded."""
    data = bytes((i * 31) % 256 or 1 for i in range(sum(sizes)))
    ranges, last = [], 0
    for gap, length in cuts:  # increasing, non-overlapping
        start = last + gap
        ranges.append((start, start + length))
        last = start + length
    fd = os.memfd_create("stage-test")
    try:
        source = StageSource(_Pieces(data, sizes), fd, lambda exc: exc)  # type: ignore[arg-type]
        buf = memoryview(bytearray(8000))
        offset = got = 0
        pending = list(ranges)
        read_before: dict[tuple[int, int], int] = {}  # how far the source had read at each exclusion
        i = 0
        while offset < len(data):
            target = min(len(data), offset + steps[i % len(steps)])
            i += 1
            while got < min(len(data), target + ahead):
                got += source.readinto(buf[:min(len(buf), target + ahead - got)])
            while pending and pending[0][0] <= target:
                rng = pending.pop(0)
                read_before[rng] = got
                source.exclude(*rng)
            offset = target
        assert source.readinto(buf) == 0
        written = os.pread(fd, len(data) + 1, 0).ljust(len(data), b"\0")
    finally:
        os.close(fd)
    inside = bytearray(len(data))
    for start, end in ranges:
        for k in range(start, min(end, len(data))):
            inside[k] = 1
            if k >= read_before.get((start, end), len(data)):
                assert written[k] == 0, (k, start, end)  # read after exclusion: a hole
    assert all(written[k] == data[k] for k in range(len(data)) if not inside[k])
