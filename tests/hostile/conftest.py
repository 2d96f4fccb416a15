"""Fixtures of the hostile-input suite (issue 4).

Every attack runs in an *arena*: a fresh directory holding a ``victim`` tree with known
content, the hostile image, and the output (``out`` or ``out.tar``), side by side, so that
``../victim`` from the output root (and from the directory GNU tar extracts the flattened
tar into) is the victim, and the victim's absolute path is known to the image::

    <top>/                 nothing but ``arena`` (a listing checks that)
      arena/
        victim/            known content: files, a read-only file, hard links, a symlink,
                           subdirectories, fixed mtimes
        image.tar          the hostile image
        out/ | out.tar     the output
        xroot/             GNU tar's extraction of out.tar

A :class:`Snapshot` records every path under the victim (type, mode, owner, size, sha256,
symlink target, mtime, ctime, inode, link count, xattrs), plus the listing (with lstat) of
the arena and of ``<top>``: "byte-for-byte unchanged" means all of that is equal, so a
chmod to the same mode (ctime), a hard link to a victim file (link count), a replaced file
(inode) or a new file next to the output are all caught.

Runners: ``root`` converts in a long-lived root worker process (when the suite runs as
root); ``nobody`` converts in a worker process dropped to uid/gid 65534 with ``setpriv``
(or in this process when the suite already runs unprivileged).  For ``nobody`` the arena
belongs to 65534, so an escape would not be stopped by permissions: only the converter
stands in the way.  GNU tar extractions and CLI runs happen as the same user.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import select
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import pytest

from converter import convert
from converter.errors import EXIT_CODES, ConverterError, InputError
from converter.testing.imagegen import FIXED_MTIME, ImageSpec, Layer, write_docker_archive, write_oci_layout

IS_ROOT = os.geteuid() == 0
IN_CI = os.environ.get("CI", "").lower() not in ("", "0", "false", "no")
SETPRIV = shutil.which("setpriv")
GNU_TAR = shutil.which("tar")
NOBODY = 65534
PYTHON = sys.executable
REPO = Path(__file__).resolve().parents[2]

PWNED = b"written by a hostile layer\n"
SECRET = b"the victim's secret\n"
VICTIM_MTIME = 1_234_567_890

# --------------------------------------------------------------------------- snapshots


def _xattrs(path: str) -> tuple[tuple[str, bytes], ...]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return ()
    out = []
    for name in sorted(names):
        try:
            out.append((name, os.getxattr(path, name, follow_symlinks=False)))
        except OSError:
            out.append((name, b"<unreadable>"))
    return tuple(out)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return h.hexdigest()
            h.update(chunk)
    finally:
        os.close(fd)


def stat_record(path: str, *, content: bool = True) -> dict[str, Any]:
    """Everything that can change about one path, without following it."""
    st = os.lstat(path)
    kind = stat.S_IFMT(st.st_mode)
    rec: dict[str, Any] = {
        "type": stat.filemode(st.st_mode)[0],
        "mode": oct(stat.S_IMODE(st.st_mode)),
        "uid": st.st_uid,
        "gid": st.st_gid,
        "size": st.st_size if kind != stat.S_IFDIR else None,
        "ino": st.st_ino,
        "nlink": st.st_nlink,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
        "xattrs": _xattrs(path),
    }
    if kind in (stat.S_IFCHR, stat.S_IFBLK):
        rec["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
    if kind == stat.S_IFLNK:
        rec["target"] = os.readlink(path)
    elif kind == stat.S_IFREG and content:
        rec["sha256"] = _sha256(path)
    return rec


def snapshot_tree(root: str | Path) -> dict[str, dict[str, Any]]:
    """Every path under ``root`` (``"."`` is root itself), iteratively (no recursion)."""
    root = str(root)
    out: dict[str, dict[str, Any]] = {}
    stack = ["."]
    while stack:
        rel = stack.pop()
        path = root if rel == "." else os.path.join(root, rel)
        rec = stat_record(path)
        out[rel] = rec
        if rec["type"] == "d":
            for name in sorted(os.listdir(path), reverse=True):
                stack.append(name if rel == "." else os.path.join(rel, name))
    return out


def listing(directory: str | Path, exclude: Callable[[str], bool] = lambda name: False) -> dict[str, dict[str, Any]]:
    """One directory's entries with their lstat records (file contents hashed)."""
    out = {}
    for name in sorted(os.listdir(directory)):
        if exclude(name):
            continue
        out[name] = stat_record(os.path.join(directory, name))
    return out


def _diff(before: dict[str, dict], after: dict[str, dict]) -> list[str]:
    lines = []
    for key in sorted(set(before) | set(after)):
        a, b = before.get(key), after.get(key)
        if a == b:
            continue
        if a is None:
            lines.append(f"  + {key}: {b}")
        elif b is None:
            lines.append(f"  - {key}: {a}")
        else:
            changed = {k: (a.get(k), b.get(k)) for k in set(a) | set(b) if a.get(k) != b.get(k)}
            lines.append(f"  ~ {key}: {changed}")
    return lines


@dataclass
class Snapshot:
    victim: dict[str, dict[str, Any]]
    arena: dict[str, dict[str, Any]]
    top: dict[str, dict[str, Any]]


# --------------------------------------------------------------------------- the arena

OUTPUT_NAMES = ("out", "out.tar", "xroot")


def _is_output(name: str) -> bool:
    return name in OUTPUT_NAMES or ".partial-" in name or ".staging-" in name or ".old-" in name


@dataclass
class Arena:
    top: Path
    dir: Path
    victim: Path
    owner: int

    @property
    def V(self) -> str:
        """The victim's absolute path (what an image would name to escape)."""
        return str(self.victim)

    @property
    def out_dir(self) -> Path:
        return self.dir / "out"

    @property
    def out_tar(self) -> Path:
        return self.dir / "out.tar"

    @property
    def xroot(self) -> Path:
        return self.dir / "xroot"

    def out(self, sink: str) -> Path:
        return self.out_tar if sink == "tar" else self.out_dir

    def give(self, path: Path) -> Path:
        """Hand ``path`` (and what is under it) to the arena's owner."""
        if self.owner != os.geteuid():
            for p in [path, *(path.rglob("*") if path.is_dir() and not path.is_symlink() else [])]:
                os.chown(p, self.owner, self.owner, follow_symlinks=False)
        return path

    def write_image(
        self, image: ImageSpec | Sequence[Layer], *, name: str = "image.tar", layout: str = "docker", **kwargs: Any
    ) -> Path:
        spec = image if isinstance(image, ImageSpec) else ImageSpec(layers=list(image))
        path = self.dir / name
        if layout == "docker":
            write_docker_archive(path, spec, **kwargs)
        elif layout == "oci":
            write_oci_layout(path, spec, **kwargs)
        else:
            raise ValueError(layout)
        return self.give(path)

    def snapshot(self) -> Snapshot:
        return Snapshot(
            victim=snapshot_tree(self.victim),
            arena=listing(self.dir, exclude=_is_output),
            top={**listing(self.top, exclude=lambda n: n == "arena"), "arena": {"type": "d"}},
        )

    def assert_unchanged(self, before: Snapshot) -> None:
        """The victim is byte-for-byte as it was, nothing appeared next to it or the
        output, and ``<top>`` still holds only the arena."""
        after = self.snapshot()
        problems = []
        if after.victim != before.victim:
            problems.append("victim changed:\n" + "\n".join(_diff(before.victim, after.victim)))
        if after.arena != before.arena:
            problems.append("arena changed:\n" + "\n".join(_diff(before.arena, after.arena)))
        if after.top != before.top:
            problems.append("directory above the arena changed:\n" + "\n".join(_diff(before.top, after.top)))
        if problems:
            pytest.fail("CONFINEMENT VIOLATED\n" + "\n".join(problems))

    def partials(self) -> list[str]:
        return sorted(n for n in os.listdir(self.dir) if ".partial-" in n or ".staging-" in n or ".old-" in n)


def _populate_victim(victim: Path) -> None:
    victim.mkdir(mode=0o755)
    (victim / "secret").write_bytes(SECRET)
    os.chmod(victim / "secret", 0o644)
    (victim / "ro").write_bytes(b"read-only\n")
    os.chmod(victim / "ro", 0o444)
    (victim / "exec").write_bytes(b"#!/bin/sh\necho hi\n")
    os.chmod(victim / "exec", 0o755)
    (victim / "hl1").write_bytes(b"two names, one inode\n")
    os.link(victim / "hl1", victim / "hl2")
    os.symlink("secret", victim / "link")
    (victim / "sub").mkdir(mode=0o755)
    (victim / "sub" / "inner").write_bytes(b"inner\n")
    os.chmod(victim / "sub" / "inner", 0o600)
    (victim / "sub" / "deeper").mkdir(mode=0o750)
    (victim / "sub" / "deeper" / "leaf").write_bytes(b"leaf\n")
    (victim / "empty").mkdir(mode=0o700)
    try:
        os.setxattr(victim / "secret", "user.victim", b"original")
    except OSError:
        pass  # file system without user xattrs: the snapshot simply has none
    for dirpath, dirnames, filenames in os.walk(victim, topdown=False):
        for name in filenames + dirnames:
            os.utime(os.path.join(dirpath, name), ns=(VICTIM_MTIME * 10**9,) * 2, follow_symlinks=False)
    os.utime(victim, ns=(VICTIM_MTIME * 10**9,) * 2)


def remove_tree(path: str | Path) -> None:
    """Remove a tree that may be thousands of levels deep, read-only or full of symlinks:
    iteratively, relative to directory fds (no path grows past PATH_MAX, nothing is
    followed, no recursion for pytest's or shutil's stack to overflow on)."""
    path = str(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    if not IS_ROOT:
        os.chmod(path, 0o700)
    fd = os.open(path, flags)
    names: list[str] = []
    try:
        while True:
            sub = None
            with os.scandir(fd) as it:
                entries = list(it)
            for e in entries:
                if e.is_dir(follow_symlinks=False):
                    sub = sub or e.name
                else:
                    os.unlink(e.name, dir_fd=fd)
            if sub is not None:
                if not IS_ROOT:
                    os.chmod(sub, 0o700, dir_fd=fd)
                child = os.open(sub, flags, dir_fd=fd)
                os.close(fd)
                fd = child
                names.append(sub)
                continue
            if not names:
                break
            parent = os.open("..", flags, dir_fd=fd)
            os.close(fd)
            fd = parent
            os.rmdir(names.pop(), dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(path)


@pytest.fixture(scope="session")
def hostile_base() -> Iterator[Path]:
    """A world-traversable base directory (pytest's tmp dirs are 0700 to others)."""
    base = Path(tempfile.mkdtemp(prefix="rootfs-hostile-", dir="/tmp"))
    os.chmod(base, 0o755)
    yield base
    remove_tree(base)


def make_arena(base: Path, owner: int, prefix: str = "t") -> Arena:
    top = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    os.chmod(top, 0o755)
    arena = top / "arena"
    arena.mkdir(mode=0o755)
    _populate_victim(arena / "victim")
    a = Arena(top=top, dir=arena, victim=arena / "victim", owner=owner)
    a.give(top)
    return a


# --------------------------------------------------------------------------- runners


@dataclass
class Outcome:
    """What one conversion did: success, or the error it raised."""

    ok: bool
    error: Optional[str] = None
    mro: tuple[str, ...] = ()
    exit_code: Optional[int] = None
    message: str = ""
    internal: bool = False
    traceback: str = ""
    warnings: dict[str, int] = field(default_factory=dict)

    def is_a(self, cls: type) -> bool:
        return cls.__name__ in self.mro

    def __str__(self) -> str:
        if self.ok:
            return f"success (warnings {self.warnings})"
        return f"{self.error} (exit {self.exit_code}): {self.message}\n{self.traceback}"


def outcome_of(fn: Callable[[], Any]) -> Outcome:
    import traceback

    try:
        result = fn()
    except ConverterError as exc:
        return Outcome(False, type(exc).__name__, tuple(c.__name__ for c in type(exc).__mro__), exc.exit_code, str(exc))
    except Exception as exc:  # noqa: BLE001 - exactly what the tests look for
        return Outcome(
            False, type(exc).__name__, tuple(c.__name__ for c in type(exc).__mro__), None, str(exc),
            internal=True, traceback=traceback.format_exc(),
        )
    return Outcome(True, warnings=dict(getattr(result, "warnings", {}) or {}))


_WORKER = r"""
import json, os, sys, traceback
proto = os.fdopen(os.dup(1), "w", buffering=1)
os.dup2(2, 1)
sys.stdout = sys.stderr
from converter import convert
from converter.errors import ConverterError
proto.write(json.dumps({"ready": [os.getuid(), os.getgid(), os.getgroups()]}) + "\n")
for line in sys.stdin:
    req = json.loads(line)
    saved = {k: os.environ.get(k) for k in req["env"]}
    os.environ.update(req["env"])
    try:
        res = convert(req["source"], req["output"], **req["kwargs"])
        reply = {"ok": True, "warnings": dict(res.warnings)}
    except ConverterError as exc:
        reply = {"ok": False, "error": type(exc).__name__, "mro": [c.__name__ for c in type(exc).__mro__],
                 "exit_code": exc.exit_code, "message": str(exc)}
    except BaseException as exc:
        reply = {"ok": False, "error": type(exc).__name__, "mro": [c.__name__ for c in type(exc).__mro__],
                 "internal": True, "message": str(exc), "traceback": traceback.format_exc()}
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    proto.write(json.dumps(reply) + "\n")
"""


def drop_privileges_prefix() -> list[str]:
    assert SETPRIV
    return [SETPRIV, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


class _Worker:
    """A long-lived converter process (one per session and user: starting Python for each
    of hundreds of attacks would dominate the suite's runtime).  With ``unprivileged`` it
    runs as uid/gid 65534 through setpriv.  Root conversions run in a worker too, not in
    pytest's own process: the converter forks writers, and forking a small process is
    much cheaper than forking pytest."""

    def __init__(self, unprivileged: bool = True) -> None:
        self.proc: Optional[subprocess.Popen] = None
        self.unprivileged = unprivileged

    def start(self) -> None:
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        prefix = drop_privileges_prefix() if self.unprivileged else []
        if self.unprivileged:
            env["HOME"] = "/nonexistent"
        self.proc = subprocess.Popen(
            prefix + [PYTHON, "-c", _WORKER],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd="/", env=env, text=True, bufsize=1,
        )
        hello = self._read(60)
        ids = json.loads(hello)["ready"]
        if self.unprivileged:
            assert ids == [NOBODY, NOBODY, []], ids

    def _read(self, timeout: float) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            self.stop()
            raise AssertionError(f"the unprivileged converter did not answer within {timeout}s (hang?)")
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            self.proc = None
            raise AssertionError(f"the unprivileged converter died (exit {code})")
        return line

    def convert(self, source: str, output: str, timeout: float = 120, env: Optional[dict[str, str]] = None,
                **kwargs: Any) -> Outcome:
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        assert self.proc is not None and self.proc.stdin is not None
        req = {"source": source, "output": output, "kwargs": kwargs, "env": env or {}}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        reply = json.loads(self._read(timeout))
        if reply["ok"]:
            return Outcome(True, warnings=reply.get("warnings", {}))
        return Outcome(
            False, reply["error"], tuple(reply["mro"]), reply.get("exit_code"), reply["message"],
            internal=reply.get("internal", False), traceback=reply.get("traceback", ""),
        )

    def stop(self) -> None:
        if self.proc is not None:
            try:
                self.proc.stdin.close()  # type: ignore[union-attr]
                self.proc.wait(timeout=10)
            except Exception:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


@dataclass
class Runner:
    """Runs conversions, the CLI and GNU tar as one user."""

    name: str  # "root" or "nobody"
    uid: int
    privileged: bool
    prefix: list[str] = field(default_factory=list)  # setpriv ... for subprocesses
    worker: Optional[_Worker] = None

    def convert(self, source: str | Path, output: str | Path, env: Optional[dict[str, str]] = None,
                **kwargs: Any) -> Outcome:
        """``env``: variables set for this conversion only (``ROOTFS_STREAM=0``)."""
        if self.worker is not None:
            return self.worker.convert(str(source), str(output), env=env, **kwargs)
        saved = {k: os.environ.get(k) for k in env or {}}
        os.environ.update(env or {})
        try:
            return outcome_of(lambda: convert(str(source), output, **kwargs))
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def cli_cmd(self, *args: str | Path) -> list[str]:
        return self.prefix + [PYTHON, "-m", "converter", *map(str, args)]

    def cli(self, *args: str | Path, timeout: float = 300, **kwargs: Any) -> subprocess.CompletedProcess:
        env = dict(os.environ, NO_COLOR="1", PYTHONDONTWRITEBYTECODE="1")
        env.pop("ROOTFS_DEBUG", None)
        if self.prefix:
            env["HOME"] = "/nonexistent"
        return subprocess.run(self.cli_cmd(*args), capture_output=True, timeout=timeout, env=env, cwd="/", **kwargs)

    def extract(self, tar: Path, dest: Path) -> subprocess.CompletedProcess:
        """Extract a flattened tar with GNU tar, as this user (as root: owners and modes)."""
        cmd = [GNU_TAR or "tar", "-x", "-p", "-f", str(tar), "-C", str(dest), "--numeric-owner"]
        if self.uid == 0:
            cmd += ["--same-owner"]
        return subprocess.run(self.prefix + cmd, capture_output=True, timeout=120)


def _unprivileged_runner(request: pytest.FixtureRequest) -> Runner:
    if not IS_ROOT:
        return Runner("nobody", os.geteuid(), privileged=False)
    if SETPRIV is None:
        if IN_CI:
            pytest.fail("setpriv (util-linux) is missing: CI must run the unprivileged variant")
        pytest.skip("setpriv (util-linux) is missing: cannot drop to uid 65534")
    worker = request.getfixturevalue("_nobody_worker")
    return Runner("nobody", NOBODY, privileged=False, prefix=drop_privileges_prefix(), worker=worker)


@pytest.fixture(scope="session")
def _nobody_worker() -> Iterator[_Worker]:
    w = _Worker()
    yield w
    w.stop()


@pytest.fixture(scope="session")
def _root_worker() -> Iterator[_Worker]:
    w = _Worker(unprivileged=False)
    yield w
    w.stop()


@pytest.fixture(params=["root", "nobody"])
def runner(request: pytest.FixtureRequest) -> Runner:
    """Each test runs once as root and once as an unprivileged user (uid 65534), each in
    its own worker process."""
    if request.param == "root":
        if not IS_ROOT:
            pytest.skip("the suite does not run as root")
        return Runner("root", 0, privileged=True, worker=request.getfixturevalue("_root_worker"))
    return _unprivileged_runner(request)


@pytest.fixture
def unprivileged(request: pytest.FixtureRequest) -> Runner:
    return _unprivileged_runner(request)


@pytest.fixture
def as_root() -> Runner:
    if not IS_ROOT:
        pytest.skip("the suite does not run as root")
    return Runner("root", 0, privileged=True)


@pytest.fixture(params=["dir", "tar"])
def sink(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def arena(request: pytest.FixtureRequest, hostile_base: Path) -> Iterator[Arena]:
    """A fresh arena owned by the test's runner (root when there is none)."""
    owner = 0 if IS_ROOT else os.geteuid()
    if "runner" in request.fixturenames:
        owner = request.getfixturevalue("runner").uid
    elif "unprivileged" in request.fixturenames:
        owner = request.getfixturevalue("unprivileged").uid
    a = make_arena(hostile_base, owner)
    yield a
    remove_tree(a.top)


@pytest.fixture(scope="session")
def gnu_tar() -> str:
    if GNU_TAR is None or b"GNU tar" not in subprocess.run([GNU_TAR, "--version"], capture_output=True).stdout:
        if IN_CI:
            pytest.fail("GNU tar is missing")
        pytest.skip("GNU tar is missing")
    return GNU_TAR


# --------------------------------------------------------------------------- assertions

_LAYER_RE = re.compile(r"layer \d+")


def assert_clean_failure(
    outcome: Outcome, arena: Arena, out: Path, *, error: type = ConverterError, member: Optional[str] = None,
    layer: bool = True,
) -> None:
    """Failed the documented way: a ConverterError subclass with its exit code, one line
    naming the layer and the member, no output and no partial left."""
    assert not outcome.internal, f"not a ConverterError: {outcome}"
    assert not outcome.ok, "the conversion succeeded; it should have been refused"
    assert outcome.is_a(error), f"expected {error.__name__}, got {outcome}"
    assert outcome.exit_code in EXIT_CODES and outcome.exit_code not in (0, 70), outcome
    assert outcome.exit_code == error.exit_code or error in (ConverterError, InputError), outcome
    msg = outcome.message
    assert msg and "\n" not in msg, f"message is not one line: {msg!r}"
    if layer:
        assert _LAYER_RE.search(msg), f"message does not name the layer: {msg!r}"
    if member is not None:
        assert member in msg, f"message does not name the member {member!r}: {msg!r}"
    assert not os.path.lexists(out), f"{out} was left behind after a failure"
    assert not arena.partials(), f"partial output left behind: {arena.partials()}"


def check_flat_tar(path: Path, *, allow_wh_dirs: bool = False) -> dict[str, tarfile.TarInfo]:
    """Structural confinement of a flattened tar, independent of any extractor: every name
    relative and normalised, no ``..``, no ``.wh.`` entry, no member below a member that is
    not a directory (which an extractor would follow: GNU tar CVE-2025-45582), hard links
    naming an earlier non-directory member reached through directories only.
    ``allow_wh_dirs`` tolerates the known bug of ``.wh.*`` *directories* (implied parents)."""
    members: dict[str, tarfile.TarInfo] = {}
    with tarfile.open(path, "r:*") as tar:
        for i, m in enumerate(tar):
            name = m.name
            if i == 0:
                assert name in (".", "./") and m.isdir(), f"first member is {name!r}, not ./"
                members["."] = m
                continue
            assert not name.startswith("/"), f"absolute member name {name!r}"
            parts = name.rstrip("/").split("/")
            assert all(p not in ("", ".", "..") for p in parts), f"member name not normalised: {name!r}"
            if not (allow_wh_dirs and m.isdir()):
                assert not parts[-1].startswith(".wh."), f"whiteout entry in a flattened tar: {name!r}"
            key = "/".join(parts)
            assert key not in members, f"duplicate member {name!r}"
            for j in range(1, len(parts)):
                parent = members.get("/".join(parts[:j]))
                assert parent is not None, f"{name!r} comes before its parent directory"
                assert parent.isdir(), f"{name!r} lies below {parent.name!r}, which is not a directory ({parent.type!r})"
            if m.islnk():
                link = m.linkname
                lparts = link.split("/")
                assert not link.startswith("/") and all(p not in ("", ".", "..") for p in lparts), (
                    f"hard link {name!r} -> {link!r} is not a normalised relative name"
                )
                target = members.get(link)
                assert target is not None, f"hard link {name!r} names {link!r}, not an earlier member"
                assert not target.isdir(), f"hard link {name!r} to directory {link!r}"
            members[key] = m
    return members


_TAR_BENIGN = (
    re.compile(rb"Cannot mknod: Operation not permitted"),
    re.compile(rb"Exiting with failure status due to previous errors"),
    re.compile(rb"time stamp .* in the future"),  # a warning, not an error
)


def extract_flat_tar(runner: Runner, tar: Path, arena: Arena, *, tolerate: Sequence[bytes] = ()) -> Path:
    """GNU tar extraction (as the runner) into ``xroot`` beside the victim.  Unprivileged,
    device nodes cannot be made; that is the only failure accepted (plus ``tolerate``:
    regexes of GNU tar complaints caused by known converter bugs)."""
    dest = arena.xroot
    dest.mkdir(mode=0o755)
    arena.give(dest)
    res = runner.extract(tar, dest)
    if res.returncode != 0:
        lines = [line for line in res.stderr.splitlines() if line.strip()]
        tolerated = [line for line in lines if any(re.search(t, line) for t in tolerate)]
        bad = [line for line in lines if line not in tolerated and not any(p.search(line) for p in _TAR_BENIGN)]
        assert not bad, f"GNU tar failed ({res.returncode}): {res.stderr!r}"
        assert not runner.privileged or tolerated, f"GNU tar failed ({res.returncode}): {res.stderr!r}"
    return dest


class Tree:
    """Read-only checks on an output root that never follow a symlink of the output (the
    checker must not be led out of the root either)."""

    def __init__(self, root: Path, privileged: bool) -> None:
        self.root = root
        self.privileged = privileged

    def _path(self, rel: str | bytes) -> bytes:
        raw = rel if isinstance(rel, bytes) else rel.encode("utf-8", "surrogateescape")
        parts = [p for p in raw.split(b"/") if p and p != b"."]
        assert b".." not in parts
        path = os.fsencode(self.root)
        for p in parts[:-1]:
            path = path + b"/" + p
            st = os.lstat(path)
            assert stat.S_ISDIR(st.st_mode), f"{path!r} is not a directory (symlink?) in the output"
        return path + b"/" + parts[-1] if parts else path

    def lstat(self, rel: str | bytes) -> Optional[os.stat_result]:
        try:
            return os.lstat(self._path(rel))
        except FileNotFoundError:
            return None

    def exists(self, rel: str | bytes) -> bool:
        return self.lstat(rel) is not None

    def absent(self, rel: str | bytes) -> None:
        assert self.lstat(rel) is None, f"{rel!r} should not exist in the output"

    def file(self, rel: str | bytes, data: Optional[bytes] = None) -> os.stat_result:
        st = self.lstat(rel)
        assert st is not None and stat.S_ISREG(st.st_mode), f"{rel!r} is not a regular file in the output: {st}"
        if data is not None:
            with open(self._path(rel), "rb") as f:
                assert f.read() == data, f"{rel!r} has the wrong content"
        return st

    def dir(self, rel: str | bytes, mode: Optional[int] = None) -> os.stat_result:
        st = self.lstat(rel)
        assert st is not None and stat.S_ISDIR(st.st_mode), f"{rel!r} is not a directory in the output: {st}"
        if mode is not None:
            assert stat.S_IMODE(st.st_mode) == mode, f"{rel!r} has mode {oct(st.st_mode)}, expected {oct(mode)}"
        return st

    def symlink(self, rel: str | bytes, target: Optional[str | bytes] = None) -> None:
        st = self.lstat(rel)
        assert st is not None and stat.S_ISLNK(st.st_mode), f"{rel!r} is not a symlink in the output: {st}"
        if target is not None:
            want = target if isinstance(target, bytes) else target.encode("utf-8", "surrogateescape")
            assert os.readlink(self._path(rel)) == want, f"{rel!r} -> {os.readlink(self._path(rel))!r}, expected {want!r}"

    def fifo(self, rel: str | bytes) -> None:
        st = self.lstat(rel)
        assert st is not None and stat.S_ISFIFO(st.st_mode), f"{rel!r} is not a fifo in the output: {st}"

    def chardev(self, rel: str | bytes, major: int, minor: int) -> None:
        """A device node as root; unprivileged it is skipped (absent)."""
        st = self.lstat(rel)
        if not self.privileged:
            assert st is None or stat.S_ISREG(st.st_mode), f"unexpected {rel!r} unprivileged: {st}"
            return
        assert st is not None and stat.S_ISCHR(st.st_mode), f"{rel!r} is not a char device: {st}"
        assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (major, minor)

    def same_inode(self, a: str | bytes, b: str | bytes) -> None:
        sa, sb = self.lstat(a), self.lstat(b)
        assert sa is not None and sb is not None, (a, b)
        assert (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino), f"{a!r} and {b!r} are not one inode"

    def names(self, rel: str | bytes = ".") -> list[bytes]:
        return sorted(os.listdir(self._path(rel)))


def inroot(path: str) -> str:
    """Where an absolute host path lands inside the output root."""
    return path.lstrip("/")


def all_in_root(root: Path, victim: Path) -> None:
    """No file of the output is the victim's inode (a hard link out of the root).  Walks
    by directory fds: outputs may hold paths longer than PATH_MAX."""
    victim_inodes = {(st.st_dev, st.st_ino) for st in (os.lstat(p) for p in _walk(victim))}
    for _, name, st in walk_fd(root):
        if not stat.S_ISDIR(st.st_mode):
            assert (st.st_dev, st.st_ino) not in victim_inodes, f"{name!r} in the output is a hard link to a victim file"


def _walk(root: Path) -> Iterator[str]:
    stack = [str(root)]
    while stack:
        p = stack.pop()
        yield p
        if stat.S_ISDIR(os.lstat(p).st_mode):
            stack.extend(os.path.join(p, n) for n in os.listdir(p))




# --------------------------------------------------------------------------- big generated inputs


def ustar_header(name: bytes, size: int = 0, typeflag: bytes = b"0", mode: int = 0o644, mtime: int = FIXED_MTIME) -> bytes:
    """One ustar header block, built directly (imagegen's tarfile route costs ~30 us per
    entry; images of hundreds of thousands of entries need ~1)."""
    assert len(name) <= 100
    middle = b"%07o\0" % mode + b"0000000\0" * 2 + b"%011o\0" % size + b"%011o\0" % mtime
    tail = typeflag + bytes(100) + b"ustar\x0000" + bytes(512 - 265)
    chksum = sum(name) + sum(middle) + sum(tail) + 8 * 32
    return name.ljust(100, b"\0") + middle + b"%06o\0 " % chksum + tail


def write_oci_layout_streaming(
    directory: Path, blob_chunks: Iterator[bytes], diff_id: str, *, media_type: str = "application/vnd.oci.image.layer.v1.tar+gzip"
) -> None:
    """An OCI layout of one layer whose blob is written chunk by chunk (never whole in
    memory): for layers of gigabytes.  ``diff_id`` must be given (known in advance)."""
    blobs = directory / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    tmp = blobs / "incoming"
    h = hashlib.sha256()
    size = 0
    with open(tmp, "wb") as f:
        for chunk in blob_chunks:
            f.write(chunk)
            h.update(chunk)
            size += len(chunk)
    layer_digest = "sha256:" + h.hexdigest()
    tmp.rename(blobs / h.hexdigest())

    def put(doc: dict) -> dict:
        data = json.dumps(doc, separators=(",", ":")).encode()
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"digest": "sha256:" + digest, "size": len(data)}

    config = put({"architecture": "amd64", "os": "linux", "config": {}, "rootfs": {"type": "layers", "diff_ids": [diff_id]}})
    manifest = put({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
        "layers": [{"mediaType": media_type, "digest": layer_digest, "size": size}],
    })
    index = {"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", **manifest}]}
    (directory / "index.json").write_bytes(json.dumps(index).encode())
    (directory / "oci-layout").write_bytes(b'{"imageLayoutVersion":"1.0.0"}')


def walk_fd(root: Path) -> Iterator[tuple[int, str, os.stat_result]]:
    """(depth, name, lstat) of every entry under ``root``, iteratively and relative to
    directory fds: works at any depth (os.walk recurses, paths pass PATH_MAX)."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    stack = [(os.open(root, flags), 0)]
    try:
        while stack:
            fd, depth = stack.pop()
            try:
                with os.scandir(fd) as it:
                    entries = [(e.name, e.stat(follow_symlinks=False)) for e in it]
                for name, st in entries:
                    yield depth + 1, name, st
                    if stat.S_ISDIR(st.st_mode):
                        stack.append((os.open(name, flags, dir_fd=fd), depth + 1))
            finally:
                os.close(fd)
    finally:
        for fd, _ in stack:
            os.close(fd)
