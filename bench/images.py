"""Benchmark inputs, generated deterministically with :mod:`converter.testing.imagegen`.

Two images (issue 8):

* **realistic**: 4 layers, about 35k entries, about 580 MiB of tar: a base OS layer, a
  "packages" layer that rewrites some base files and adds a 100 MB file and a cache
  directory, a third layer, and an application layer that deletes the big file (and a few
  hundred other files and one directory) with whiteouts and makes the cache directory
  opaque. Many small files (1–16 KiB), some of 1–10 MiB, symlinks (relative, absolute,
  dangling), hard links, files owned by uid 1000. Written three ways: legacy
  ``docker save`` (uncompressed layers), OCI layout with gzip layers, OCI layout with
  zstd layers.
* **smallfiles**: one layer of 50k files of 1–4 KiB in 100 directories, legacy
  ``docker save``.

File contents are slices of one seeded pseudo-random pool mixing incompressible bytes,
low-entropy bytes and repeats, so gzip and zstd compress it about 2.1–2.4×, like real
binaries (not absurdly, as zeros or one repeated block would).

``imagegen`` builds layers in memory (``layer_tar`` returns ``bytes``), so each layer's
tar is built once, its entries dropped, and the same tars (as ``Layer(raw=...)``) are
written in the three formats: peak memory is about twice the image (1.2 GB here;
about 35 s on 2 cores, and 2 GB under .bench/).

Everything lands under ``.bench/<input>/`` (``image.tar`` or ``layout/``, the layer blobs
again as plain files in ``layers/`` for GNU tar, ``meta.json``), and is rebuilt only when
the key changes: a hash of this file, ``imagegen.py``, the shape and the Python version.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import shutil
import sys
import tarfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from converter.testing import imagegen
from converter.testing.imagegen import (
    Dir,
    Entry,
    File,
    Hardlink,
    ImageSpec,
    Layer,
    Opaque,
    Symlink,
    Whiteout,
    layer_tar,
    write_docker_archive,
    write_oci_layout,
)

KiB = 1024
MiB = 1024 * KiB

REF = "bench"
"""Tag of every generated image (``bench:latest`` in docker saves, ``bench`` as the OCI
ref name, so ``umoci unpack --image LAYOUT:bench`` works)."""

BIG_FILE = "opt/data/dataset.bin"
OPAQUE_DIR = "opt/app/cache"


# --------------------------------------------------------------------------- shapes


@dataclass(frozen=True)
class LayerShape:
    """One layer of the realistic image: where its files go and how many."""

    bases: tuple[str, ...]  # directories this layer writes under (ancestors get Dir entries)
    stem: str  # name stem of generated subdirectories
    dirs: int  # generated subdirectories
    small: int  # files of small_range
    medium: int  # files of medium_range


@dataclass(frozen=True)
class RealisticShape:
    layers: tuple[LayerShape, LayerShape, LayerShape, LayerShape]
    big: int  # the file added by layer 1 and deleted by layer 3
    overwrite: int  # base files rewritten by layer 1
    whiteouts: int  # lower files deleted by layer 3 (besides the big file and one dir)
    opaque_files: int  # files layer 1 puts in OPAQUE_DIR (layer 3 adds a tenth as many)
    small_range: tuple[int, int] = (1 * KiB, 16 * KiB)
    medium_range: tuple[int, int] = (1 * MiB, 10 * MiB)
    symlink_share: float = 0.045  # symlinks per small file
    hardlink_share: float = 0.015  # hard links per small file
    pool: int = 32 * MiB
    seed: str = "rootfs-bench-realistic"


@dataclass(frozen=True)
class SmallFilesShape:
    files: int
    dirs: int
    size_range: tuple[int, int] = (1 * KiB, 4 * KiB)
    pool: int = 8 * MiB
    seed: str = "rootfs-bench-smallfiles"


_BASE = ("bin", "sbin", "etc", "lib", "usr/bin", "usr/sbin", "usr/lib/x86_64-linux-gnu", "usr/share/doc", "usr/share/locale", "usr/share/man/man1", "var/lib/dpkg/info", "var/log", "root", "tmp")
_PACKAGES = ("usr/lib/python3/dist-packages", "usr/share/javascript", "usr/include", OPAQUE_DIR, "opt/data")
_THIRD = ("usr/local/lib/node_modules", "srv/www")
_APP = ("app", "app/static", "home/app")


def realistic_shape(scale: str = "full") -> RealisticShape:
    """``full``: the issue's image (~35k entries, ~580 MiB). ``quick``: a few MB for a
    smoke run. ``tiny``: the unit test's (a few hundred entries, under 1 MB)."""
    if scale == "full":
        return RealisticShape(
            layers=(
                LayerShape(_BASE, "pkg", 900, 13_000, 22),
                LayerShape(_PACKAGES, "py", 700, 9_000, 16),
                LayerShape(_THIRD, "mod", 300, 3_000, 6),
                LayerShape(_APP, "app", 250, 3_500, 10),
            ),
            big=100 * MiB, overwrite=600, whiteouts=300, opaque_files=800,
        )
    if scale == "quick":
        return RealisticShape(
            layers=(
                LayerShape(_BASE, "pkg", 40, 600, 1),
                LayerShape(_PACKAGES, "py", 30, 400, 1),
                LayerShape(_THIRD, "mod", 15, 150, 0),
                LayerShape(_APP, "app", 12, 150, 1),
            ),
            big=4 * MiB, overwrite=30, whiteouts=20, opaque_files=40,
            medium_range=(256 * KiB, 1 * MiB), pool=4 * MiB,
        )
    if scale == "tiny":
        return RealisticShape(
            layers=(
                LayerShape(_BASE, "pkg", 8, 80, 0),
                LayerShape(_PACKAGES, "py", 6, 60, 0),
                LayerShape(_THIRD, "mod", 3, 20, 0),
                LayerShape(_APP, "app", 3, 20, 0),
            ),
            big=256 * KiB, overwrite=5, whiteouts=5, opaque_files=10,
            small_range=(100, 4 * KiB), pool=1 * MiB,
        )
    raise ValueError(f"unknown scale {scale!r} (full, quick, tiny)")


def smallfiles_shape(scale: str = "full") -> SmallFilesShape:
    if scale == "full":
        return SmallFilesShape(files=50_000, dirs=100)
    if scale == "quick":
        return SmallFilesShape(files=2_000, dirs=10, pool=1 * MiB)
    if scale == "tiny":
        return SmallFilesShape(files=200, dirs=4, pool=256 * KiB)
    raise ValueError(f"unknown scale {scale!r} (full, quick, tiny)")


# --------------------------------------------------------------------------- contents


def content_pool(size: int, seed: str) -> bytes:
    """``size`` pseudo-random bytes that compress about 2.1–2.4× (gzip -6, zstd -3), even
    when cut into 1–16 KiB slices: runs of 32–512 B that are random (12%), of 4-bit
    entropy (45%) or copies of a run at most 1.5 KiB back (43%, so a slice keeps most of
    its matches). Costs about 10 ms per MB."""
    rng = random.Random(seed)
    low = bytes((i & 0x0F) * 17 for i in range(256))
    out = bytearray()
    while len(out) < size:
        kind = rng.random()
        n = rng.randrange(32, 512)
        if kind < 0.12:
            out += rng.randbytes(n)
        elif kind < 0.57 or len(out) < 2 * KiB:
            out += rng.randbytes(n).translate(low)
        else:
            start = rng.randrange(len(out) - 1500, len(out) - n)
            out += out[start : start + n]
    return bytes(out[:size])


class _Contents:
    """File data: slices of the pool at seeded offsets (large files are several slices)."""

    def __init__(self, pool: bytes, rng: random.Random) -> None:
        self.pool, self.rng = pool, rng

    def __call__(self, size: int) -> bytes:
        pool, rng = self.pool, self.rng
        chunk = len(pool) // 2
        if size <= chunk:
            start = rng.randrange(0, len(pool) - size + 1)
            return pool[start : start + size]
        parts, left = [], size
        while left:
            n = min(left, chunk)
            start = rng.randrange(0, len(pool) - n + 1)
            parts.append(pool[start : start + n])
            left -= n
        return b"".join(parts)


def _sort_key(path: str) -> list[str]:
    return path.rstrip("/").split("/")


def _ancestors(path: str) -> Iterator[str]:
    """``a/b/c`` → ``a/``, ``a/b/`` (not the path itself)."""
    parts = path.rstrip("/").split("/")
    for i in range(1, len(parts)):
        yield "/".join(parts[:i]) + "/"


# --------------------------------------------------------------------------- realistic image


@dataclass
class Expectations:
    """What a correct merge of the realistic image must show (checked by the smoke test)."""

    deleted: list[str] = field(default_factory=list)  # paths that must not exist
    opaque_dir: str = OPAQUE_DIR
    opaque_kept: list[str] = field(default_factory=list)  # the only files left in it
    hardlinks: list[tuple[str, str]] = field(default_factory=list)  # pairs sharing an inode
    overwritten: list[str] = field(default_factory=list)  # base files whose data layer 1 replaced


class _LayerBuilder:
    """Collects one layer's entries by path, then emits them in docker's walk order."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}

    def dir(self, path: str, **kw: Any) -> None:
        path = path.rstrip("/") + "/"
        for anc in _ancestors(path):
            self.entries.setdefault(anc, Dir(anc))
        self.entries.setdefault(path, Dir(path, **kw))

    def add(self, path: str, entry: Entry) -> None:
        for anc in _ancestors(path):
            self.entries.setdefault(anc, Dir(anc))
        self.entries[path] = entry

    def hardlink(self, target: str, name: str) -> tuple[str, str]:
        """Link ``name`` to the File at ``target``; whichever sorts first keeps the data
        (docker writes an inode's first path as the file, later ones as links)."""
        if _sort_key(name) < _sort_key(target):
            data = self.entries[target]
            assert isinstance(data, File)
            data.path = name
            self.add(name, data)
            self.entries[target] = Hardlink(target, name)
            return name, target
        self.add(name, Hardlink(name, target))
        return target, name

    def sorted(self) -> list[Entry]:
        return [self.entries[p] for p in sorted(self.entries, key=_sort_key)]


def _generated_dirs(rng: random.Random, shape: LayerShape) -> list[str]:
    """``shape.dirs`` subdirectories under the layer's bases, up to three levels deep."""
    dirs = [b for b in shape.bases]
    parents = list(dirs)
    for n in range(shape.dirs):
        parent = rng.choice(parents)
        child = f"{parent}/{shape.stem}{n:04d}"
        dirs.append(child)
        if child.count("/") - parent.count("/") < 3 and rng.random() < 0.5:
            parents.append(child)
    return dirs


_EXTS = ("so", "py", "txt", "js", "h", "json", "mo", "gz", "conf", "html", "pyc", "")


def realistic_layers(shape: RealisticShape) -> Iterator[tuple[list[Entry], Expectations]]:
    """The realistic image's layers, bottom to top, one at a time (so the caller can
    serialise a layer and drop its entries before the next is built). The
    :class:`Expectations` object yielded is the same each time and complete after the
    last layer."""
    pool = content_pool(shape.pool, shape.seed + "-pool")
    expect = Expectations()
    lower_plain: list[str] = []  # plain files of layers 0-1 safe to rewrite or delete
    lower_leaf_dirs: list[str] = []  # layer 0 dirs holding only plain files
    overwritten: list[str] = []
    files_seen = 0
    for index, lshape in enumerate(shape.layers):
        rng = random.Random(f"{shape.seed}-layer{index}")
        data = _Contents(pool, rng)
        b = _LayerBuilder()
        dirs = _generated_dirs(rng, lshape)
        for d in dirs:
            owned = d.startswith("home/app")
            b.dir(d, uid=1000 if owned else 0, gid=1000 if owned else 0, mode=0o750 if owned else 0o755)
        files_by_dir: dict[str, list[str]] = {}
        plain: list[str] = []
        # Small files.
        lo, hi = shape.small_range
        for n in range(lshape.small):
            d = rng.choice(dirs)
            ext = rng.choice(_EXTS)
            path = f"{d}/f{files_seen + n:06d}" + (f".{ext}" if ext else "")
            size = int(lo * (hi / lo) ** rng.random())  # log-uniform
            executable = "/bin" in f"/{d}" or "sbin" in d
            owned = d.startswith("home/app")
            b.add(path, File(path, data(size), mode=0o755 if executable else 0o644, uid=1000 if owned else 0, gid=1000 if owned else 0))
            files_by_dir.setdefault(d, []).append(path)
            plain.append(path)
        files_seen += lshape.small
        # Medium files (libraries, archives, fonts...).
        mlo, mhi = shape.medium_range
        for n in range(lshape.medium):
            d = rng.choice(dirs)
            path = f"{d}/big{index}-{n:03d}.so"
            b.add(path, File(path, data(rng.randrange(mlo, mhi + 1))))
        # Symlinks: versioned library names, absolute links, dangling ones.
        linked: set[str] = set()
        for n in range(int(lshape.small * shape.symlink_share)):
            target = rng.choice(plain)
            kind = rng.random()
            d = target.rpartition("/")[0]
            if kind < 0.7:
                name, dest = f"{target}.{n}", target.rpartition("/")[2]
            elif kind < 0.9:
                name, dest = f"{rng.choice(dirs)}/abs{n:04d}", "/" + target
            else:
                name, dest = f"{d}/dangling{n:04d}", f"/proc/self/fd/{n}"
            b.add(name, Symlink(name, dest))
            linked.add(target)
        # Hard links (within the layer, as tar requires; none inside OPAQUE_DIR, so the
        # opaque marker never separates the two names of one inode).
        hardlinked: set[str] = set()
        outside = [d for d in dirs if not (d + "/").startswith(OPAQUE_DIR + "/")]
        for n in range(int(lshape.small * shape.hardlink_share)):
            target = rng.choice(plain)
            if target in hardlinked or target in linked or target.startswith(OPAQUE_DIR + "/"):
                continue
            name = f"{rng.choice(outside)}/hl{index}-{n:04d}"
            pair = b.hardlink(target, name)
            hardlinked.update(pair)
            if len(expect.hardlinks) < 20 and index in (0, 3):
                expect.hardlinks.append(pair)
        safe = [p for p in plain if p not in hardlinked and p not in linked and not p.startswith(OPAQUE_DIR + "/")]

        if index == 0:
            lower_plain.extend(safe)
            bad = {p.rpartition("/")[0] for p in hardlinked | linked}
            parents = {d.rpartition("/")[0] for d in dirs}
            lower_leaf_dirs = [d for d in dirs if d not in bad and d not in parents and d not in lshape.bases and d in files_by_dir]
        elif index == 1:
            # apt upgrade: rewrite some base files with new contents.
            chosen = sorted(rng.sample(lower_plain, min(shape.overwrite, len(lower_plain))), key=_sort_key)
            for path in chosen:
                b.add(path, File(path, data(int(lo * (hi / lo) ** rng.random()))))
                lower_plain.remove(path)
            overwritten = chosen
            expect.overwritten = chosen[:50]
            # The big file and the directory the last layer makes opaque.
            b.add(BIG_FILE, File(BIG_FILE, data(shape.big)))
            b.dir(OPAQUE_DIR)
            for n in range(shape.opaque_files):
                path = f"{OPAQUE_DIR}/c{n:05d}.bin"
                b.add(path, File(path, data(int(lo * (hi / lo) ** rng.random()))))
            lower_plain.extend(safe)
        elif index == 3:
            # rm of the big file, of some lower files, of one whole directory.
            b.add(_whiteout_path(BIG_FILE), Whiteout(BIG_FILE))
            expect.deleted.append(BIG_FILE)
            lower_leaf_dirs = [d for d in lower_leaf_dirs if not any(p.startswith(d + "/") for p in overwritten)]
            gone_dir = rng.choice(lower_leaf_dirs)
            b.add(_whiteout_path(gone_dir), Whiteout(gone_dir))
            expect.deleted.append(gone_dir)
            candidates = [p for p in lower_plain if not p.startswith(gone_dir + "/")]
            for path in sorted(rng.sample(candidates, min(shape.whiteouts, len(candidates))), key=_sort_key):
                b.add(_whiteout_path(path), Whiteout(path))
                expect.deleted.append(path)
            # An opaque directory: everything layer 1 put there disappears.
            b.dir(OPAQUE_DIR)
            b.add(f"{OPAQUE_DIR}/.wh..wh..opq", Opaque(OPAQUE_DIR))
            for n in range(max(1, shape.opaque_files // 10)):
                path = f"{OPAQUE_DIR}/new{n:04d}.bin"
                b.add(path, File(path, data(int(lo * (hi / lo) ** rng.random()))))
                expect.opaque_kept.append(path)
            expect.deleted.append(f"{OPAQUE_DIR}/c00000.bin")
        if index == 0:
            # Links to directories and to the top, as in merged-/usr systems.
            for name, dest in (("lib64", "usr/lib/x86_64-linux-gnu"), ("usr/lib64", "lib/x86_64-linux-gnu"), ("etc/mtab", "/proc/self/mounts")):
                b.add(name, Symlink(name, dest))
        yield b.sorted(), expect


def _whiteout_path(path: str) -> str:
    head, sep, base = path.rstrip("/").rpartition("/")
    return f"{head}{sep}.wh.{base}"


def smallfiles_entries(shape: SmallFilesShape) -> list[Entry]:
    rng = random.Random(shape.seed)
    data = _Contents(content_pool(shape.pool, shape.seed + "-pool"), rng)
    b = _LayerBuilder()
    per_dir = -(-shape.files // shape.dirs)
    lo, hi = shape.size_range
    for n in range(shape.files):
        d = f"data/d{n // per_dir:03d}"
        if n % per_dir == 0:
            b.dir(d)
        path = f"{d}/f{n:05d}.txt"
        b.add(path, File(path, data(rng.randint(lo, hi))))
    return b.sorted()


# --------------------------------------------------------------------------- writing inputs


@dataclass
class InputInfo:
    """One generated input, as the runner needs it (also stored as ``meta.json``)."""

    name: str
    kind: str  # "docker" or "oci"
    compression: str  # of the layer blobs: none, gzip, zstd
    source: str  # what `rootfs convert` takes
    layout: str | None  # OCI layout directory (umoci), else None
    layers: list[str]  # the layer blobs as plain files, bottom to top (GNU tar)
    entries: int  # entries in all layers (whiteouts included)
    tar_bytes: int  # uncompressed layer tars, summed
    blob_bytes: int  # layer blobs as stored, summed
    key: str = ""
    generated_seconds: float = 0.0  # how long the group this input belongs to took
    cached: bool = False
    expectations: dict[str, Any] | None = None

    @property
    def ratio(self) -> float:
        return self.tar_bytes / self.blob_bytes if self.blob_bytes else 1.0


REALISTIC_INPUTS = ("realistic-docker", "realistic-oci-gzip", "realistic-oci-zstd")
SMALLFILES_INPUTS = ("smallfiles-docker",)
ALL_INPUTS = REALISTIC_INPUTS + SMALLFILES_INPUTS


def generator_key(shape: Any) -> str:
    """Changes whenever the generated bytes could: this file, imagegen, the shape, Python."""
    h = hashlib.sha256()
    for path in (Path(__file__), Path(imagegen.__file__)):
        h.update(path.read_bytes())
    h.update(repr(shape).encode())
    h.update(("%d.%d" % sys.version_info[:2]).encode())
    return h.hexdigest()[:16]


def _extract_docker_layers(archive: Path, dest: Path) -> list[str]:
    """Copy each ``layer.tar`` of a docker save (manifest order) to ``dest/NNN.tar``."""
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    with tarfile.open(archive, "r:") as t:
        manifest = json.load(t.extractfile("manifest.json"))  # type: ignore[arg-type]
        for i, name in enumerate(manifest[0]["Layers"]):
            target = dest / f"{i:03d}.tar"
            src = t.extractfile(name)
            assert src is not None
            with src, open(target, "wb") as f:
                shutil.copyfileobj(src, f, 1 << 20)
            out.append(str(target))
    return out


def _link_oci_layers(layout: Path, dest: Path, suffix: str) -> list[str]:
    """Hard-link (or copy) each layer blob of an OCI layout to ``dest/NNN.tar<suffix>``."""
    dest.mkdir(parents=True, exist_ok=True)
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads(imagegen.blob_path(layout, index["manifests"][0]["digest"]).read_text())
    out = []
    for i, desc in enumerate(manifest["layers"]):
        src = imagegen.blob_path(layout, desc["digest"])
        target = dest / f"{i:03d}.tar{suffix}"
        try:
            os.link(src, target)
        except OSError:
            shutil.copyfile(src, target)
        out.append(str(target))
    return out


def _finish(tmp: Path, final: Path, info: InputInfo) -> InputInfo:
    """Write meta.json (paths relative to the final directory) and move into place."""
    def rel(p: str | None) -> str | None:
        return None if p is None else os.path.relpath(p, tmp)

    meta = asdict(info)
    meta["source"] = ("oci:" + rel(info.source[4:])) if info.source.startswith("oci:") else rel(info.source)  # type: ignore[operator]
    meta["layout"] = rel(info.layout)
    meta["layers"] = [rel(p) for p in info.layers]
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return load_input(final)  # type: ignore[return-value]


def load_input(directory: Path) -> InputInfo | None:
    """The input stored in ``directory`` (absolute paths), or None if absent or broken."""
    try:
        meta = json.loads((directory / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    def absolute(p: str | None) -> str | None:
        return None if p is None else str(directory / p)

    src = meta["source"]
    meta["source"] = ("oci:" + absolute(src[4:])) if src.startswith("oci:") else absolute(src)  # type: ignore[operator]
    meta["layout"] = absolute(meta["layout"])
    meta["layers"] = [absolute(p) for p in meta["layers"]]
    return InputInfo(**meta)


def _fresh(directory: Path) -> Path:
    tmp = directory.with_name(directory.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def build_realistic(root: Path, shape: RealisticShape, key: str, log: Callable[[str], None] = lambda s: None) -> dict[str, InputInfo]:
    """Generate the three realistic inputs under ``root`` (one directory each)."""
    started = time.perf_counter()
    tars: list[bytes] = []
    expect = Expectations()
    entries = 0
    for i, (layer_entries, expect) in enumerate(realistic_layers(shape)):
        entries += len(layer_entries)
        tars.append(layer_tar(Layer(layer_entries)))
        log(f"  layer {i}: {len(layer_entries)} entries, {len(tars[-1]) / MiB:.0f} MiB")
        del layer_entries
    tar_bytes = sum(len(t) for t in tars)
    results: dict[str, InputInfo] = {}
    for name, compression in zip(REALISTIC_INPUTS, ("none", "gzip", "zstd")):
        t0 = time.perf_counter()
        final = root / name
        tmp = _fresh(final)
        spec = ImageSpec(layers=[Layer(raw=t, compression=compression) for t in tars], cmd=["/bin/sh"])
        if compression == "none":
            write_docker_archive(tmp / "image.tar", spec, tags=[f"{REF}:latest"], style="legacy")
            layers = _extract_docker_layers(tmp / "image.tar", tmp / "layers")
            source, layout = str(tmp / "image.tar"), None
        else:
            write_oci_layout(tmp / "layout", spec, ref=REF)
            layers = _link_oci_layers(tmp / "layout", tmp / "layers", ".gz" if compression == "gzip" else ".zst")
            source, layout = f"oci:{tmp / 'layout'}:{REF}", str(tmp / "layout")
        blob_bytes = sum(os.path.getsize(p) for p in layers)
        info = InputInfo(
            name, "docker" if compression == "none" else "oci", compression, source, layout, layers,
            entries, tar_bytes, blob_bytes, key, expectations=asdict(expect),
        )
        log(f"  {name}: {blob_bytes / MiB:.0f} MiB of blobs ({time.perf_counter() - t0:.1f} s)")
        results[name] = _finish(tmp, final, info)
    elapsed = time.perf_counter() - started
    for info in results.values():
        info.generated_seconds = elapsed
        _rewrite_meta(root / info.name, generated_seconds=elapsed)
    return results


def build_smallfiles(root: Path, shape: SmallFilesShape, key: str, log: Callable[[str], None] = lambda s: None) -> dict[str, InputInfo]:
    started = time.perf_counter()
    entries = smallfiles_entries(shape)
    tar = layer_tar(Layer(entries))
    count = len(entries)
    del entries
    name = SMALLFILES_INPUTS[0]
    final = root / name
    tmp = _fresh(final)
    write_docker_archive(tmp / "image.tar", ImageSpec(layers=[Layer(raw=tar)], cmd=["/bin/sh"]), tags=[f"{REF}:latest"], style="legacy")
    layers = _extract_docker_layers(tmp / "image.tar", tmp / "layers")
    elapsed = time.perf_counter() - started
    info = InputInfo(name, "docker", "none", str(tmp / "image.tar"), None, layers, count, len(tar), len(tar), key, elapsed)
    log(f"  {name}: {count} entries, {len(tar) / MiB:.0f} MiB ({elapsed:.1f} s)")
    return {name: _finish(tmp, final, info)}


def _rewrite_meta(directory: Path, **changes: Any) -> None:
    path = directory / "meta.json"
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta, indent=1))


def ensure_inputs(root: Path, names: set[str], scale: str = "full", log: Callable[[str], None] = lambda s: None) -> dict[str, InputInfo]:
    """The inputs in ``names``, generated under ``root`` unless already there with the
    current key."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two benches at once: the second waits, then reuses
        return _ensure_locked(root, names, scale, log)


def _ensure_locked(root: Path, names: set[str], scale: str, log: Callable[[str], None]) -> dict[str, InputInfo]:
    out: dict[str, InputInfo] = {}
    groups = (
        (REALISTIC_INPUTS, realistic_shape(scale), build_realistic),
        (SMALLFILES_INPUTS, smallfiles_shape(scale), build_smallfiles),
    )
    for members, shape, build in groups:
        wanted = [n for n in members if n in names]
        if not wanted:
            continue
        key = generator_key(shape)
        cached = {n: load_input(root / n) for n in members}
        if all(info is not None and info.key == key for info in cached.values()):
            for n in wanted:
                info = cached[n]
                assert info is not None
                info.cached = True
                out[n] = info
            continue
        log(f"generating {', '.join(members)} ({scale}) under {root} ...")
        built = build(root, shape, key, log)  # type: ignore[operator]
        out.update({n: built[n] for n in wanted})
    return out


def check_directory(root: str | os.PathLike[str], expectations: dict[str, Any] | None) -> list[str]:
    """What is wrong with a converted realistic image in ``root`` (empty: nothing found):
    deleted paths present, the opaque directory not reduced to the last layer's files,
    hard-linked pairs not sharing an inode. Cheap (a few hundred ``lstat`` calls)."""
    if not expectations:
        return []
    base = Path(root)
    problems = []
    for path in expectations["deleted"]:
        if os.path.lexists(base / path):
            problems.append(f"{path} should have been deleted by a whiteout or opaque marker")
    opaque = base / expectations["opaque_dir"]
    kept = {Path(p).name for p in expectations["opaque_kept"]}
    found = set(os.listdir(opaque)) if opaque.is_dir() else set()
    if found != kept:
        problems.append(f"{expectations['opaque_dir']} (opaque) holds {len(found)} names, expected the {len(kept)} of the last layer")
    for a, b in expectations["hardlinks"]:
        try:
            sa, sb = os.lstat(base / a), os.lstat(base / b)
        except OSError as exc:
            problems.append(f"hard link {a} / {b}: {exc}")
            continue
        if (sa.st_dev, sa.st_ino) != (sb.st_dev, sb.st_ino):
            problems.append(f"{a} and {b} should be one inode (hard link)")
    return problems
