"""Atomic under interruption (issue 4, point 3).

A large generated image (30k files, ~200 MB, one layer in place and one gzip layer that is
spooled) is converted by the CLI in a subprocess, and SIGINT, SIGTERM, SIGHUP or SIGKILL arrives
at a chosen moment: right after start, during the merge (the process has the image open
but no partial output exists yet), or while writing (the partial directory has entries,
the partial tar has grown past a few MB).  The moments are found by polling the process
and the destination's directory, never by timing.

Afterwards the destination is absent, or exactly its previous content (``OUT`` is
pre-populated by an earlier small conversion for half the runs, replaced with
``--force``).  After SIGINT/SIGTERM/SIGHUP the exit code is 130 with one line on stderr and no
``OUT.partial-*`` or ``OUT.staging-*`` is left; after SIGKILL they may remain, and the
next run for the same destination must succeed and remove them.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
import pytest

from converter import convert, workers
from proctools import child_processes, fd_targets, live_group_members
from converter.errors import Interrupted
from converter.testing.imagegen import File, ImageSpec, Layer, Symlink, write_docker_archive

from .conftest import (
    PYTHON,
    Arena,
    make_arena,
    remove_tree,
    snapshot_tree,
    ustar_header,
    walk_fd,
)

FILES_PLAIN = 20_000
FILES_GZIP = 10_000


def _layer(prefix: bytes, n: int, avg: int, pool: bytes) -> bytes:
    parts = [ustar_header(b"%s%02d/" % (prefix, d), typeflag=b"5", mode=0o755) for d in range(100)]
    for i in range(n):
        size = (i * 7919) % (2 * avg)
        off = (i * 104729) % (len(pool) - size)
        parts.append(ustar_header(b"%s%02d/f%05d" % (prefix, i % 100, i), size))
        parts.append(pool[off : off + size])
        parts.append(bytes(-size % 512))
    parts.append(bytes(1024))
    return b"".join(parts)


@dataclass
class BigImage:
    path: Path
    small: Path  # a tiny image: the "previous conversion" and quick re-runs
    files: int


@pytest.fixture(scope="module")
def big_image(hostile_base: Path) -> BigImage:
    where = hostile_base / "kill-images"
    where.mkdir()
    os.chmod(where, 0o755)
    random_pool = os.urandom(1 << 20)
    text_pool = b"".join(b"line %d of a compressible file\n" % i for i in range(40_000))[: 1 << 20]
    layers = [
        Layer(raw=_layer(b"a", FILES_PLAIN, 7500, random_pool)),
        Layer(raw=_layer(b"b", FILES_GZIP, 5000, text_pool), compression="gzip"),
    ]
    path = where / "big.tar"
    write_docker_archive(path, ImageSpec(layers=layers))
    small = where / "small.tar"
    write_docker_archive(small, ImageSpec(layers=[Layer([File("previous", b"the previous conversion\n"),
                                                         Symlink("link", "previous")])]))
    return BigImage(path, small, FILES_PLAIN + FILES_GZIP)


def _args(image: Path, out: Path, sink: str, force: bool) -> list[str]:
    cmd = [PYTHON, "-m", "converter", "convert", str(image), "-q"]
    cmd += ["-o", str(out)] if sink == "dir" else ["--flatten", str(out)]
    return cmd + (["--force"] if force else [])


def _run(image: Path, out: Path, sink: str, force: bool) -> subprocess.CompletedProcess:
    return subprocess.run(_args(image, out, sink, force), capture_output=True, timeout=300,
                          env=dict(os.environ, NO_COLOR="1"))


def _partials(arena: Arena) -> list[str]:
    """What a conversion leaves beside its destination while it runs: the partial output
    and the staging directory of big inflated files."""
    return [n for n in os.listdir(arena.dir) if ".partial-" in n or ".staging-" in n]


def _image_open(pid: int, image: Path) -> bool:
    try:
        return str(image) in fd_targets(pid)
    except OSError:  # (the process is gone)
        return False


def _written(arena: Arena, sink: str) -> int:
    """How far the partial output got: entries at the top of the partial directory, or
    bytes of the partial tar."""
    total = 0
    for name in _partials(arena):
        if ".partial-" not in name:
            continue  # staged files are written during the merge, not output yet
        path = arena.dir / name
        try:
            if sink == "dir":
                total += len(os.listdir(path))
            else:
                total += path.stat().st_size
        except OSError:
            pass
    return total


def _wait_for(proc: subprocess.Popen, what: str, cond, timeout: float = 120) -> bool:  # type: ignore[no-untyped-def]
    """Poll until ``cond()``; False if the process ended first (the moment was missed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if cond():
            return True
        time.sleep(0.002)
    proc.kill()
    raise AssertionError(f"never reached {what!r}")


@dataclass(frozen=True)
class Kill:
    sig: signal.Signals
    moment: str  # early, merge, writing
    previous: bool  # OUT holds an earlier conversion (and the run uses --force)
    group: bool = False  # to the whole process group, as a terminal's Ctrl-C (the forked writer too)

    @property
    def id(self) -> str:
        return f"{self.sig.name}{'-group' if self.group else ''}-{self.moment}-{'previous' if self.previous else 'absent'}"


KILLS = [
    Kill(signal.SIGINT, "early", False),
    Kill(signal.SIGTERM, "early", True),
    Kill(signal.SIGINT, "merge", True),
    Kill(signal.SIGTERM, "merge", False),
    Kill(signal.SIGKILL, "merge", True),
    Kill(signal.SIGINT, "writing", False),
    Kill(signal.SIGTERM, "writing", True),
    Kill(signal.SIGKILL, "writing", False),
    Kill(signal.SIGKILL, "writing", True),
    Kill(signal.SIGINT, "writing", False, group=True),
    Kill(signal.SIGTERM, "writing", True, group=True),
    Kill(signal.SIGKILL, "writing", False, group=True),
    # a closed terminal or ssh session: SIGHUP to the whole group
    Kill(signal.SIGHUP, "merge", False, group=True),
    Kill(signal.SIGHUP, "writing", True, group=True),
]


@pytest.fixture
def kill_arena(hostile_base: Path) -> Arena:
    a = make_arena(hostile_base, os.geteuid())
    yield a  # type: ignore[misc]
    remove_tree(a.top)


def _fingerprint(out: Path, sink: str) -> object:
    """The destination's complete content (small outputs only)."""
    if not os.path.lexists(out):
        return None
    if sink == "dir":
        return snapshot_tree(out)
    return snapshot_tree(out)["."]


@pytest.mark.parametrize("kill", KILLS, ids=lambda k: k.id)
def test_kill(kill: Kill, sink: str, big_image: BigImage, kill_arena: Arena) -> None:
    arena = kill_arena
    out = arena.out(sink)
    if kill.previous:
        prev = _run(big_image.small, out, sink, force=False)
        assert prev.returncode == 0, prev.stderr
    before = _fingerprint(out, sink)
    victim_before = arena.snapshot()

    proc = subprocess.Popen(_args(big_image.path, out, sink, kill.previous), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=dict(os.environ, NO_COLOR="1"), start_new_session=True)
    try:
        if kill.moment == "early":
            reached = True
        elif kill.moment == "merge":
            # the image is open and nothing is written yet (the streaming directory writer
            # creates its partial at the start and fills it as the merge goes)
            reached = _wait_for(proc, "merge", lambda: _image_open(proc.pid, big_image.path) and _written(arena, sink) == 0)
        else:
            threshold = 20 if sink == "dir" else 20 << 20
            reached = _wait_for(proc, "writing", lambda: _written(arena, sink) >= threshold)
        if reached:
            if kill.group:
                os.killpg(proc.pid, kill.sig)
            else:
                proc.send_signal(kill.sig)
        _, err = proc.communicate(timeout=120)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    finally:
        _reap_group(proc.pid)
    stderr = err.decode("utf-8", "replace")
    code = proc.returncode

    arena.assert_unchanged(victim_before)
    if not reached or code == 0:
        # the conversion finished before the moment came: a complete new result
        assert code == 0, stderr
        assert os.path.lexists(out) and not _partials(arena)
        pytest.skip(f"conversion finished before the {kill.moment!r} moment (machine too fast)")

    # the destination invariant: exactly as before (absent, or the previous conversion)
    assert _fingerprint(out, sink) == before, "the destination changed after an interrupted conversion"

    if kill.sig == signal.SIGKILL:
        assert code == -signal.SIGKILL
        stale = _partials(arena)
        # the next run for the same destination succeeds and removes what the killed one
        # left (the whole big image once, for the tar; the small one otherwise: writing
        # 30k files again costs seconds and proves nothing more about the cleanup)
        full = sink == "tar" and not kill.previous
        again = _run(big_image.path if full else big_image.small, out, sink, force=kill.previous)
        assert again.returncode == 0, again.stderr
        assert not _partials(arena), f"stale partials not removed: {_partials(arena)} (were {stale})"
        if full:
            _check_complete(out, sink, big_image)
        return

    if kill.moment == "early" and code != 130:
        # the signal came before the CLI installed its handlers (Python still starting):
        # the default action, nothing had been created
        assert code in (-kill.sig, 1, 130), (code, stderr)
        assert not _partials(arena)
        return
    assert code == 130, f"exit {code} after {kill.sig.name}: {stderr}"
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("rootfs: error: ") and "interrupted" in lines[0], stderr
    assert not _partials(arena), f"partial left after {kill.sig.name}: {_partials(arena)}"


def _reap_group(pgid: int) -> None:
    """No process of the conversion may survive it (a forked writer outliving a SIGKILLed
    parent would keep writing into the partial the next run removes)."""
    deadline = time.monotonic() + 10
    while live_group_members(pgid):
        if time.monotonic() > deadline:
            os.killpg(pgid, signal.SIGKILL)
            raise AssertionError("a process of the killed conversion was still alive 10 s later")
        time.sleep(0.01)


def _check_complete(out: Path, sink: str, big: BigImage) -> None:
    if sink == "dir":
        files = sum(1 for _, _, st in walk_fd(out) if stat.S_ISREG(st.st_mode))
        assert files == big.files
    else:
        listed = subprocess.run(["tar", "-tf", str(out)], capture_output=True, check=True).stdout
        assert listed.count(b"\n") == big.files + 200 + 1


def test_stale_partial_of_another_live_process_is_left_alone(big_image: BigImage, kill_arena: Arena) -> None:
    """Only partials whose process is gone are removed: one named after a live process
    (this test's) survives a conversion to the same destination."""
    arena = kill_arena
    live = arena.dir / f"out.partial-{os.getpid()}-deadbeef"
    live.mkdir()
    (live / "marker").write_bytes(b"x")
    res = _run(big_image.small, arena.out_dir, "dir", force=False)
    assert res.returncode == 0, res.stderr
    assert (live / "marker").read_bytes() == b"x"


def test_stale_partial_of_a_dead_process_is_removed(big_image: BigImage, kill_arena: Arena) -> None:
    """A partial named after a process that is gone (a SIGKILLed conversion) is removed by
    the next conversion to the same destination, tar or directory."""
    arena = kill_arena
    dead = subprocess.Popen(["true"])
    dead.wait()
    for name in ("out", "out.tar"):
        stale = arena.dir / f"{name}.partial-{dead.pid}-0badc0de"
        if name == "out":
            stale.mkdir()
            (stale / "sub").mkdir(mode=0o500)  # a read-only directory must not stop cleanup
        else:
            stale.write_bytes(b"half a tar")
    assert _run(big_image.small, arena.out_dir, "dir", force=False).returncode == 0
    assert _run(big_image.small, arena.out_tar, "tar", force=False).returncode == 0
    assert _partials(arena) == []


def _interrupt_thread_start(monkeypatch: pytest.MonkeyPatch, prefix: str) -> None:
    """Make ``Thread.start`` of the converter's thread named ``prefix...`` raise
    KeyboardInterrupt, as a Ctrl-C landing in its ``_started.wait()`` does."""
    original = threading.Thread.start

    def start(self: threading.Thread) -> None:
        if self.name.startswith(prefix):
            raise KeyboardInterrupt
        original(self)

    monkeypatch.setattr(threading.Thread, "start", start)


def _two_layers(arena: Arena) -> Path:
    return arena.write_image([Layer([File("a", b"x")]), Layer([File("b", b"y")], compression="gzip")])


@pytest.mark.parametrize("sink", ["dir", "tar"])
def test_interrupt_while_the_verify_thread_starts(arena: Arena, sink: str, monkeypatch: pytest.MonkeyPatch) -> None:
    image = _two_layers(arena)
    monkeypatch.setattr(workers, "CAN_FORK", False)  # the thread fallback
    _interrupt_thread_start(monkeypatch, "verify")
    with pytest.raises((KeyboardInterrupt, Interrupted)):
        convert(str(image), arena.out(sink), flatten=sink == "tar")
    assert not os.path.lexists(arena.out(sink)) and not arena.partials()


@pytest.mark.parametrize("sink", ["dir", "tar"])
def test_interrupt_while_the_inflate_thread_starts(arena: Arena, sink: str, monkeypatch: pytest.MonkeyPatch) -> None:
    image = _two_layers(arena)
    monkeypatch.setattr(workers, "CAN_FORK", False)
    _interrupt_thread_start(monkeypatch, "inflate")
    with pytest.raises((KeyboardInterrupt, Interrupted)):
        convert(str(image), arena.out(sink), flatten=sink == "tar")
    assert not os.path.lexists(arena.out(sink)) and not arena.partials()


@pytest.mark.parametrize("where", ["_spawn", "pump"])
@pytest.mark.parametrize("sink", ["dir", "tar"])
def test_interrupt_while_helpers_start_or_report(arena: Arena, sink: str, where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ctrl-C landing while a helper process is forked, or while the merge waits for
    one, stops the run; the helpers go with it and nothing is left behind."""
    image = _two_layers(arena)
    original = getattr(workers.Workers, where)
    calls = []

    def interrupted(self: workers.Workers, *args: object, **kwargs: object) -> object:
        calls.append(where)
        if len(calls) == (2 if where == "_spawn" else 1):  # the second helper; the first wait
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(workers.Workers, where, interrupted)
    before = child_processes(zombies=False)
    with pytest.raises((KeyboardInterrupt, Interrupted)):
        convert(str(image), arena.out(sink), flatten=sink == "tar")
    assert not os.path.lexists(arena.out(sink)) and not arena.partials()
    assert not child_processes(zombies=False) - before, "a helper process outlived the run"




@pytest.mark.parametrize("when", ["before-commit", "after-commit"])
def test_an_interrupt_once_the_result_is_in_place_lets_the_run_finish(tmp_path: Path, when: str,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C before the result is put in place: exit 130, nothing left.  After it (while
    the run removes its staging directory and temporary files), the run finishes: the
    result is complete and claiming "the destination was left as it was" would be false."""
    from converter import cli, convert
    from converter.sinks import atomic, directory
    from converter.testing.imagegen import ImageSpec, Layer, write_oci_layout

    write_oci_layout(tmp_path / "layout", ImageSpec(layers=[Layer([File("big", os.urandom(1 << 20))], compression="zstd")]))
    original = atomic.commit

    def commit(partial: str, dest: str) -> None:
        if when == "before-commit":
            os.kill(os.getpid(), signal.SIGINT)
        original(partial, dest)
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(directory, "commit", commit)
    out = tmp_path / "out"
    if when == "before-commit":
        with pytest.raises(SystemExit) as info:
            cli.run_guarded(lambda: convert(f"oci:{tmp_path / 'layout'}", out))
        assert info.value.code == 130 and not out.exists()
    else:
        cli.run_guarded(lambda: convert(f"oci:{tmp_path / 'layout'}", out))
        assert (out / "big").stat().st_size == 1 << 20
    assert sorted(os.listdir(tmp_path)) == ["layout"] + (["out"] if when == "after-commit" else [])
