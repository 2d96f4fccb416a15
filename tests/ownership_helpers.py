"""Helpers for ``test_ownership.py`` (issue 5): id maps, rootless runs, user namespaces.

* :func:`map_id` / :func:`remap_listing`: the test's own, deliberately naive version of the
  ``--uid-map``/``--gid-map`` arithmetic, applied to column 4 (``uid:gid``) of a canonical
  listing, so expected trees are written once (identity) and derived for every map.
* :class:`Unprivileged`: run the CLI as uid/gid 65534 through ``setpriv`` (the suite runs
  as root here and in CI).  The interpreter must be reachable by that user: the test
  interpreter when it is, else the system ``pythonX.Y`` of the same version, with this
  checkout and the test interpreter's site-packages on ``PYTHONPATH`` (copied to /tmp
  first when they sit under a private directory such as /root).
* :func:`decode_rootless`: an independent decoder of the ``user.rootlesscontainers`` value
  (protobuf ``Resource{uint32 uid = 1; uint32 gid = 2}``).
* :func:`host_program_entries`: image entries for host programs and their shared libraries
  (found with ``ldd``), placed at the same paths, symlinks (``/bin -> usr/bin``) included.
* :func:`run_in_userns`: run a program chrooted into a tree inside a new user namespace
  whose ids ``HOST..HOST+N`` appear as ``0..N``.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import os
import re
import shutil
import stat
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import pytest

from converter.listing import Record, format_listing
from converter.testing.imagegen import Entry, File, Symlink

IS_ROOT = os.geteuid() == 0
NOBODY = 65534
REPO = Path(__file__).resolve().parent.parent


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def require(condition: bool, reason: str) -> None:
    """Skip with ``reason`` -- or fail in CI, where these tests must run."""
    if condition:
        return
    if in_ci():
        pytest.fail(f"must run in CI: {reason}")
    pytest.skip(reason)


# ----------------------------------------------------------------------------- id maps


def map_id(value: int, ranges: Sequence[str], unmapped: Optional[int] = None) -> int:
    """``value`` through ``C:H:N`` ranges (none: identity); outside all -> ``unmapped``."""
    if not ranges:
        return value
    for text in ranges:
        container, host, size = (int(x) for x in text.split(":"))
        if container <= value < container + size:
            return host + (value - container)
    if unmapped is None:
        raise KeyError(f"{value} is outside {list(ranges)}")
    return unmapped


def remap_listing(
    listing: str,
    uid_map: Sequence[str] = (),
    gid_map: Sequence[str] = (),
    *,
    unmapped: Optional[int] = None,
    owner: Optional[tuple[int, int]] = None,
) -> str:
    """Column 4 of every line of a canonical listing, mapped (or replaced by ``owner``)."""
    out = []
    for line in listing.splitlines():
        cols = line.split("\t")
        assert len(cols) == 8, line
        if owner is not None:
            uid, gid = owner
        else:
            u, g = (int(x) for x in cols[3].split(":"))
            uid, gid = map_id(u, uid_map, unmapped), map_id(g, gid_map, unmapped)
        cols[3] = f"{uid}:{gid}"
        out.append("\t".join(cols))
    return "\n".join(out) + "\n"


def tar_root(path: Path) -> tuple[int, int, int]:
    """(mode, uid, gid) of the root member ``./`` of a flattened tar."""
    with tarfile.open(path) as tf:
        first = tf.next()
        assert first is not None and first.name in (".", "./") and first.isdir(), first
        return first.mode & 0o7777, first.uid, first.gid


def dir_root(path: Path) -> tuple[int, int, int]:
    st = os.lstat(path)
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid


# ----------------------------------------------------------------------------- expected trees


def _ids(owner: str) -> tuple[int, int]:
    u, g = owner.split(":")
    return int(u), int(g)


def _inode(link: Optional[str]) -> Optional[tuple[str, str]]:
    return None if link is None else ("group", link)


def D(path: str, mode: int = 0o755, owner: str = "0:0", xattrs: Optional[dict[str, bytes]] = None) -> Record:
    return Record(path.encode(), "d", mode, *_ids(owner), xattrs=dict(xattrs or {}))


def F(path: str, data: bytes = b"", mode: int = 0o644, owner: str = "0:0", link: Optional[str] = None,
      xattrs: Optional[dict[str, bytes]] = None) -> Record:
    """A regular file with exactly ``data``; ``link`` labels its hard-link group."""
    return Record(path.encode(), "f", mode, *_ids(owner), size=len(data), sha256=hashlib.sha256(data).hexdigest(),
                  inode=_inode(link), xattrs=dict(xattrs or {}))


def L(path: str, target: str, owner: str = "0:0") -> Record:
    return Record(path.encode(), "l", 0o777, *_ids(owner), target=target.encode())


def C(path: str, major: int, minor: int, mode: int = 0o644, owner: str = "0:0") -> Record:
    return Record(path.encode(), "c", mode, *_ids(owner), rdev=(major, minor))


def B(path: str, major: int, minor: int, mode: int = 0o644, owner: str = "0:0") -> Record:
    return Record(path.encode(), "b", mode, *_ids(owner), rdev=(major, minor))


def P(path: str, mode: int = 0o644, owner: str = "0:0") -> Record:
    return Record(path.encode(), "p", mode, *_ids(owner))


def expect(records: Iterable[Record]) -> str:
    """The canonical listing of exactly these records."""
    return format_listing(records)


# ----------------------------------------------------------------------------- rootless


@dataclass(frozen=True)
class Tree:
    """``path -> (kind, mode, uid, gid, size)`` of a directory tree by ``os.lstat`` (the
    root is ``""``), plus xattrs of files and directories."""

    entries: dict[str, tuple[str, int, int, int, int]]
    xattrs: dict[str, dict[str, bytes]]


_KIND = {stat.S_IFREG: "f", stat.S_IFDIR: "d", stat.S_IFLNK: "l", stat.S_IFCHR: "c", stat.S_IFBLK: "b",
         stat.S_IFIFO: "p", stat.S_IFSOCK: "s"}


def scan(root: Path) -> Tree:
    entries: dict[str, tuple[str, int, int, int, int]] = {}
    xattrs: dict[str, dict[str, bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir
        names = [""] if not rel_dir else []
        for name in names + dirnames + filenames:
            rel = os.path.join(rel_dir, name) if name else rel_dir
            full = os.path.join(root, rel) if rel else str(root)
            st = os.lstat(full)
            kind = _KIND[stat.S_IFMT(st.st_mode)]
            entries[rel] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_size if kind == "f" else 0)
            if kind in "fd":
                xattrs[rel] = {k: os.getxattr(full, k, follow_symlinks=False) for k in os.listxattr(full, follow_symlinks=False)}
    return Tree(entries, xattrs)


def world_traversable(path: Path) -> bool:
    p = path.resolve()
    for d in [p, *p.parents]:
        if not os.stat(d).st_mode & stat.S_IXOTH:
            return False
    return True


def nobody_workdir() -> Path:
    """A fresh directory owned by 65534 in a temp dir every user can reach."""
    bases = [Path(tempfile.gettempdir()), Path("/tmp"), Path("/var/tmp")]
    for base in bases:
        if base.is_dir() and world_traversable(base):
            break
    else:  # pragma: no cover
        raise RuntimeError("no world-traversable temporary directory")
    work = Path(tempfile.mkdtemp(prefix="rootfs-rootless-", dir=base))
    os.chown(work, NOBODY, NOBODY)
    os.chmod(work, 0o755)
    return work


def give_to_nobody(path: Path) -> None:
    os.chown(path, NOBODY, NOBODY)
    os.chmod(path, 0o644)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for CLI subprocesses: no ROOTFS_* settings leak in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOTFS_")}
    env.update(PYTHONDONTWRITEBYTECODE="1", NO_COLOR="1", LC_ALL="C.UTF-8")
    env.update(extra)
    return env


SETPRIV = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]


class Unprivileged:
    """Runs ``python -m converter ...`` as 65534:65534 with no capabilities."""

    def __init__(self, *, force_copy: bool = False) -> None:
        self.python, self.env, self.problem = _find_unprivileged_python(force_copy)

    def cli(self, args: Sequence[str], cwd: Path, *, wrap: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
        """``wrap`` goes between setpriv and python (e.g. ``unshare --user --map-root-user``)."""
        assert self.python is not None, self.problem
        cmd = [*SETPRIV, *wrap, *self.python, "-m", "converter", *args]
        return subprocess.run(cmd, cwd=cwd, env=self.env, capture_output=True, text=True, timeout=60)


_PROBE = (
    "import os, converter.cli, zstandard, typer\n"
    "caps = [l for l in open('/proc/self/status') if l.startswith('CapEff:')][0].split()[1]\n"
    "print(os.geteuid(), os.getegid(), os.getgroups(), int(caps, 16))\n"
)


#: not needed to run the converter: left out when site-packages has to be copied
_NOT_COPIED = ("pip", "setuptools", "pkg_resources", "_distutils_hack", "_pytest", "pytest", "py.py", "hypothesis",
               "_hypothesis*", "pluggy", "iniconfig", "__pycache__", "*.pth")


def _readable_pythonpath(force_copy: bool = False) -> list[str]:
    """This checkout and the test interpreter's site-packages, as paths uid 65534 can read:
    as they are when every parent directory is world-traversable (the usual case), else
    copied once into a world-readable temporary directory (a checkout under /root)."""
    paths = sysconfig.get_paths()
    wanted = list(dict.fromkeys([str(REPO), paths["purelib"], paths["platlib"]]))
    if not force_copy and all(world_traversable(Path(p)) for p in wanted):
        return wanted
    copy = Path(tempfile.mkdtemp(prefix="rootfs-pythonpath-", dir="/tmp"))
    atexit.register(shutil.rmtree, copy, True)
    os.chmod(copy, 0o755)
    out = []
    for i, p in enumerate(wanted):
        dest = copy / str(i)
        if p == str(REPO):
            shutil.copytree(REPO / "converter", dest / "converter", ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copytree(p, dest, ignore=shutil.ignore_patterns(*_NOT_COPIED), symlinks=True)
        out.append(str(dest))
    for dirpath, dirnames, filenames in os.walk(copy):
        for name in dirnames:
            os.chmod(os.path.join(dirpath, name), 0o755)
        for name in filenames:
            full = os.path.join(dirpath, name)
            if not os.path.islink(full):
                os.chmod(full, os.stat(full).st_mode | 0o444)
    return out


@functools.lru_cache(maxsize=None)
def _find_unprivileged_python(force_copy: bool = False) -> tuple[Optional[tuple[str, ...]], dict[str, str], str]:
    if shutil.which("setpriv") is None:
        return None, {}, "setpriv (util-linux) is not installed"
    pythonpath = os.pathsep.join(_readable_pythonpath(force_copy))
    env = clean_env(PYTHONPATH=pythonpath, HOME="/nonexistent")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [sys.executable]
    for name in (f"/usr/bin/python{version}", f"/usr/local/bin/python{version}", shutil.which(f"python{version}")):
        if name and name not in candidates and os.path.exists(name):
            candidates.append(name)
    problems = []
    for python in candidates:
        # setpriv execs while it still holds its capabilities, so an interpreter under a
        # private directory (e.g. /root/.pyenv) would start -- and then find no stdlib
        real = Path(os.path.realpath(python))
        stdlib = Path(sysconfig.get_paths()["stdlib"]) if python == sys.executable else None
        if not (real.stat().st_mode & stat.S_IXOTH and world_traversable(real.parent)
                and (stdlib is None or world_traversable(stdlib))):
            problems.append(f"{python}: not reachable by other users")
            continue
        proc = subprocess.run([*SETPRIV, python, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=30)
        if proc.returncode == 0:
            words = proc.stdout.split()
            # euid, egid, no supplementary groups, no effective capabilities
            assert (int(words[0]), int(words[1]), words[2], int(words[3])) == (NOBODY, NOBODY, "[]", 0), proc.stdout
            return (python,), env, ""
        problems.append(f"{python}: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
    return None, env, "no Python interpreter usable by uid 65534 (" + "; ".join(problems) + ")"


# ----------------------------------------------------------------------------- user.rootlesscontainers


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def decode_rootless(value: bytes) -> tuple[int, int]:
    """(uid, gid) of a ``user.rootlesscontainers`` value; absent fields are 0."""
    fields = {1: 0, 2: 0}
    pos = 0
    while pos < len(value):
        key, pos = _varint(value, pos)
        number, wire = key >> 3, key & 7
        assert wire == 0, f"field {number}: wire type {wire}, expected varint"
        fields[number], pos = _varint(value, pos)
    return fields[1], fields[2]


# ----------------------------------------------------------------------------- host programs


def _shared_libraries(program: str) -> list[str]:
    proc = subprocess.run(["ldd", program], capture_output=True, text=True)
    if proc.returncode != 0:  # static
        return []
    libs = []
    for line in proc.stdout.splitlines():
        m = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x[0-9a-f]+\)", line)
        if m:
            libs.append(m.group(1))
    return libs


def _add_host_path(path: str, entries: dict[str, Entry], hops: int = 0) -> None:
    """Add ``path`` as the host has it: every symlink met on the way becomes a Symlink entry
    (same target text) and the final regular file a File entry with its bytes and mode."""
    assert hops < 40, path
    parts = [p for p in path.split("/") if p]
    cur = ""
    for i, comp in enumerate(parts):
        cand = f"{cur}/{comp}"
        st = os.lstat(cand)
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(cand)
            entries.setdefault(cand[1:], Symlink(cand[1:], target))
            base = target if target.startswith("/") else os.path.join(cur or "/", target)
            rest = "/".join(parts[i + 1 :])
            _add_host_path(os.path.normpath(base + ("/" + rest if rest else "")), entries, hops + 1)
            return
        cur = cand
    st = os.stat(cur)
    assert stat.S_ISREG(st.st_mode), cur
    if cur[1:] not in entries:
        entries[cur[1:]] = File(cur[1:], Path(cur).read_bytes(), mode=stat.S_IMODE(st.st_mode))


def host_program_entries(programs: Iterable[str]) -> list[Entry]:
    entries: dict[str, Entry] = {}
    for program in programs:
        for path in [program, *_shared_libraries(program)]:
            _add_host_path(path, entries)
    return list(entries.values())


# ----------------------------------------------------------------------------- user namespaces


def userns_problem() -> Optional[str]:
    """Why user namespaces cannot be used here (None: they can)."""
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    proc = subprocess.run(["unshare", "--user", "true"], capture_output=True, text=True)
    if proc.returncode != 0:
        return f"the kernel forbids user namespaces: `unshare --user true` failed: {proc.stderr.strip()}"
    return None


# A child that unshares its user namespace, waits for the parent (root) to write its maps,
# then chroots, becomes uid/gid 0 inside and execs: what newuidmap does, by hand.
_NS_CHILD = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(0x10000000) != 0:  # CLONE_NEWUSER
    sys.exit("unshare(CLONE_NEWUSER): " + os.strerror(ctypes.get_errno()))
print("ready", flush=True)
if sys.stdin.readline().strip() != "go":
    sys.exit("parent gave up")
os.chroot(sys.argv[1])
os.chdir("/")
os.setgroups([])
os.setresgid(0, 0, 0)
os.setresuid(0, 0, 0)
os.execve(sys.argv[2], sys.argv[2:], {"PATH": "/bin:/usr/bin", "LC_ALL": "C"})
"""


def _unshare_supports_map_users() -> bool:
    proc = subprocess.run(["unshare", "--help"], capture_output=True, text=True)
    return "--map-users" in proc.stdout


def run_in_userns(root: Path, argv: Sequence[str], host: int, size: int) -> tuple[str, subprocess.CompletedProcess[str]]:
    """Run ``argv`` chrooted into ``root`` as uid/gid 0 of a new user namespace where host
    ids ``host..host+size-1`` are ``0..size-1``.  Returns (method, result).

    ``unshare --map-users`` (util-linux >= 2.38) is used when newuidmap/newgidmap exist
    (unshare runs them); otherwise, as root, the maps are written to /proc/PID/uid_map
    directly.  The ``OUTER,INNER,COUNT`` form is the one both 2.38 and 2.39+ accept
    (2.39 reads ``A:B:C`` as ``INNER:OUTER:COUNT``)."""
    problems = []
    if _unshare_supports_map_users() and shutil.which("newuidmap") and shutil.which("newgidmap"):
        cmd = ["unshare", "--user", f"--map-users={host},0,{size}", f"--map-groups={host},0,{size}",
               "--setuid", "0", "--setgid", "0", f"--root={root}", *argv]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env={"PATH": "/bin:/usr/bin", "LC_ALL": "C"})
        if proc.returncode == 0:
            return "unshare --map-users", proc
        problems.append(f"{' '.join(cmd)}: exit {proc.returncode}: {proc.stderr.strip()}")
        if not IS_ROOT:
            return "unshare --map-users", proc
    if not IS_ROOT:
        pytest.skip("user namespace with 65536 ids needs newuidmap/newgidmap or root: " + "; ".join(problems))
    child = subprocess.Popen(
        [sys.executable, "-c", _NS_CHILD, str(root), *argv],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        ready = child.stdout.readline()
        if ready.strip() != "ready":
            child.stdin.close()
            out, err = child.communicate(timeout=30)
            return "unshare(2) + /proc/PID/uid_map", subprocess.CompletedProcess(argv, child.wait(), ready + out, err)
        for name in ("uid_map", "gid_map"):
            with open(f"/proc/{child.pid}/{name}", "w") as f:
                f.write(f"0 {host} {size}\n")
        child.stdin.write("go\n")
        child.stdin.flush()
        out, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return "unshare(2) + /proc/PID/uid_map", subprocess.CompletedProcess(argv, child.returncode, out, err)
