"""The helper processes (issue 8): layer hashing and inflating run in forked helpers, the
flattened tar is assembled by a forked writer.  Whatever runs where, the result must be
the same bytes as the single-process fallback, and a helper that dies must give a clear
error, never a hang or a half-written output."""

from __future__ import annotations

import hashlib
import os
import signal
import time
from pathlib import Path

import pytest

from converter import convert, workers
from proctools import child_processes, fd_targets, live_group_members
from converter.errors import ConverterError, IntegrityError, OutputError
from converter.listing import list_directory
from converter.sinks import directory as directory_sink
from converter.sinks import tar as tar_sink
from converter.testing.imagegen import (
    Dir,
    File,
    Hardlink,
    ImageSpec,
    Layer,
    Sparse,
    Symlink,
    Whiteout,
    write_docker_archive,
    write_oci_layout,
)

BIG = bytes(range(256)) * 1200  # 300 KB: above the size the tar builder copies itself


def _spec(compression: str = "none") -> ImageSpec:
    return ImageSpec(layers=[
        Layer([Dir("etc"), File("etc/a", b"a" * 10), File("big1", BIG), File("big2", BIG[::-1] * 2),
               File("gone", BIG), Symlink("lnk", "etc/a")], compression=compression),
        Layer([Whiteout("gone"), File("etc/b", b"b" * 700), Hardlink("etc/h", "big1"), File("big3", BIG + b"x"),
               Sparse("sparse", 1 << 20, [(4096, b"data"), (600_000, BIG[:9000])])], compression=compression),
        Layer([File(f"many/f{i:04d}", b"%d" % i * (i % 50)) for i in range(300)], compression=compression),
    ])


def _source(tmp_path: Path, kind: str) -> str:
    if kind == "docker":
        write_docker_archive(tmp_path / "img.tar", _spec())
        return str(tmp_path / "img.tar")
    write_oci_layout(tmp_path / "layout", _spec(kind))
    return f"oci:{tmp_path / 'layout'}"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(params=[True, False], ids=["parsed-by-helpers", "parsed-here"])
def parse_remote(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Both ways of parsing in-place layers (the merge picks one per image)."""
    from converter import opening

    monkeypatch.setattr(opening, "PARSE_REMOTE", request.param)
    return bool(request.param)


@pytest.mark.parametrize("kind", ["docker", "gzip", "zstd"])
@pytest.mark.parametrize("suffix", [".tar", ".tar.gz", ".tar.zst"])
def test_flattened_tar_is_the_same_bytes_with_or_without_helper_processes(
    tmp_path: Path, kind: str, suffix: str, monkeypatch: pytest.MonkeyPatch, parse_remote: bool
) -> None:
    src = _source(tmp_path, kind)
    convert(src, tmp_path / f"forked{suffix}", flatten=True)
    # every big content copied by the builder itself, at its offset (the assembler skips)
    monkeypatch.setattr(tar_sink, "_COPY_COST", 1 << 40)
    convert(src, tmp_path / f"placed{suffix}", flatten=True)
    monkeypatch.setattr(workers, "CAN_FORK", False)
    monkeypatch.setattr(tar_sink, "CAN_FORK", False)
    convert(src, tmp_path / f"single{suffix}", flatten=True)
    assert _sha(tmp_path / f"forked{suffix}") == _sha(tmp_path / f"single{suffix}") == _sha(tmp_path / f"placed{suffix}")


@pytest.mark.parametrize("kind", ["docker", "gzip", "zstd"])
def test_directory_is_the_same_with_or_without_helper_processes(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch, parse_remote: bool
) -> None:
    src = _source(tmp_path, kind)
    convert(src, tmp_path / "forked")
    monkeypatch.setattr(workers, "CAN_FORK", False)
    convert(src, tmp_path / "threads")
    assert list_directory(tmp_path / "forked") == list_directory(tmp_path / "threads")
    assert (tmp_path / "forked" / "big3").read_bytes() == BIG + b"x"
    assert not (tmp_path / "forked" / "gone").exists()


def _serving(pid: int) -> None:
    """Wait until a fresh helper runs its loop: it then ignores SIGINT, and pytest's fault
    handler (inherited through fork) is off, so a SIGBUS sent to it ends it as SIGBUS
    rather than through a traceback dump of the parent's threads (seen as SIGSEGV)."""
    for _ in range(10_000):  # (a polling bound, not a speed check)
        try:
            with open(f"/proc/{pid}/status") as f:
                ignored = next(int(line.split()[1], 16) for line in f if line.startswith("SigIgn:"))
        except (OSError, StopIteration):
            return  # gone already, or no /proc: nothing to wait for
        if ignored & (1 << (signal.SIGINT - 1)):
            return
        time.sleep(0.0005)


@pytest.mark.parametrize("kind,sig,error,message", [
    # the OOM killer, kill -9: the merge must not wait forever for the helper's report
    ("docker", signal.SIGKILL, OutputError, "helper process died.*signal 9"),
    ("gzip", signal.SIGKILL, OutputError, "helper process died.*signal 9"),
    # hashing reads the source through mmap: a file truncated under it raises SIGBUS
    ("docker", signal.SIGBUS, IntegrityError, r"layer \d.*changed while it was read"),
])
def test_a_helper_killed_mid_job_fails_the_run_with_one_clear_error(
    tmp_path: Path, kind: str, sig: int, error: type, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _source(tmp_path, kind)
    original = workers.Workers._send

    def send_then_kill(self: workers.Workers, job: workers.Job, helper: object) -> None:
        original(self, job, helper)
        for h in self._helpers:
            if h.jobs:
                _serving(h.pid)
                os.kill(h.pid, sig)

    monkeypatch.setattr(workers.Workers, "_send", send_then_kill)
    out = tmp_path / "out"
    with pytest.raises(error, match=message):
        convert(src, out)
    assert not out.exists()


@pytest.mark.parametrize("kind", ["docker", "gzip"])
def test_a_helper_dead_before_its_next_job_fails_every_job_it_held_with_how_it_ended(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The next job cannot even be sent (the socket is closed): that job and the ones
    the helper already held fail with how it ended, instead of waiting forever."""
    src = _source(tmp_path, kind)
    original = workers.Workers._send
    killed: list[int] = []

    def kill_then_send(self: workers.Workers, job: workers.Job, helper: workers._Helper) -> None:
        if helper.jobs and not killed:
            os.kill(helper.pid, signal.SIGKILL)
            os.waitid(os.P_PID, helper.pid, os.WEXITED | os.WNOWAIT)  # dead, not reaped
            killed.append(helper.pid)
        original(self, job, helper)

    monkeypatch.setattr(workers.Workers, "_send", kill_then_send)
    out = tmp_path / "out"
    with pytest.raises(OutputError, match=r"layer \d.*a helper process died \(killed by signal 9\)"):
        convert(src, out)
    assert killed and not out.exists()


def test_a_digest_mismatch_found_by_a_helper_keeps_its_message(tmp_path: Path) -> None:
    """Errors cross the process boundary as the same class with the same message."""
    spec = _spec("gzip")
    built = write_oci_layout(tmp_path / "layout", spec)
    blob = tmp_path / "layout" / "blobs" / "sha256" / built.layer_digests[2].split(":", 1)[1]
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="layer 3"):
        convert(f"oci:{tmp_path / 'layout'}", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_thread_fallback_hashes_and_reports_like_the_helpers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workers, "CAN_FORK", False)
    src = tmp_path / "img.tar"
    write_docker_archive(src, _spec())
    data = bytearray(src.read_bytes())
    at = data.find(BIG[::-1][:64])
    data[at] ^= 0xFF
    src.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="layer 1"):
        convert(str(src), tmp_path / "out")


def test_big_inflated_files_are_freed_by_an_orphan_that_leaves_no_child_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Freeing gigabytes of inflated layers is handed to a double-forked orphan: the run
    returns a complete output, and this process is left with no child (no zombie) and no
    descriptor of the inflated files."""
    from converter import inflate

    monkeypatch.setattr(inflate, "DETACH_AT", 0)
    src = _source(tmp_path, "gzip")
    fds_before = set(os.listdir("/proc/self/fd"))
    kids_before = child_processes()
    convert(src, tmp_path / "out")
    assert (tmp_path / "out" / "big3").read_bytes() == BIG + b"x"
    assert not child_processes() - kids_before
    leaked = set(os.listdir("/proc/self/fd")) - fds_before
    assert not [fd for fd in leaked if "rootfs-layer" in os.readlink(f"/proc/self/fd/{fd}")]


def _wait_for_children(pids: set[int]) -> dict[int, int]:
    """Reap ``pids`` (children of this process): their exit statuses."""
    return {pid: os.waitpid(pid, 0)[1] for pid in pids}


def _exited_cleanly(statuses: dict[int, int]) -> bool:
    return bool(statuses) and all(os.WIFEXITED(s) and os.WEXITSTATUS(s) == 0 for s in statuses.values())


@pytest.fixture
def ending_process(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """This process as one that ends after the run (as the command's does): the helpers
    left to be reaped at its end (a list of its own, not shared with other tests)."""
    from converter import forking

    left: list[int] = []
    monkeypatch.setattr(forking, "PROCESS_ENDS", True)
    monkeypatch.setattr(forking, "_LEFT", left)
    monkeypatch.setattr(forking, "_LAST", [])
    return left


def test_a_process_that_ends_after_the_run_hands_big_inflated_files_to_a_helper_and_reaps_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ending_process: list[int]
) -> None:
    """The command's process ends right after a run: instead of stopping and reaping
    its helpers and forking an orphan to free big inflated layers, it hands the files to
    an idle helper (which, like the orphan, is not waited for) and hangs up.  The output
    is complete, this process holds none of the files, the other helpers are left to
    reap at the end, and every helper ends on its own (exit status 0, not killed)."""
    from converter import forking, inflate

    src = _source(tmp_path, "gzip")
    with monkeypatch.context() as plain:
        plain.setattr(forking, "PROCESS_ENDS", False)
        convert(src, tmp_path / "library")
    monkeypatch.setattr(inflate, "DETACH_AT", 0)  # (every inflated file counts as big)
    orphans = []
    monkeypatch.setattr(inflate, "_free_in_orphan", lambda fds: orphans.append(fds) or -1)
    fds_before = set(os.listdir("/proc/self/fd"))
    kids_before = child_processes()
    convert(src, tmp_path / "out")
    assert list_directory(tmp_path / "out") == list_directory(tmp_path / "library")
    assert not orphans, "the files went to an orphan, not to a helper"
    kids = child_processes() - kids_before
    # left to reap: every helper but the holder, and the forked writers, which reported
    # and exit on their own
    writers = directory_sink._WORKERS - 1
    assert len(kids) == workers.SIZE + writers and len(ending_process) == workers.SIZE - 1 + writers
    holder = kids - set(ending_process)
    (pid,) = holder
    held = _inflated_files(pid, tmp_path)
    assert held and held <= _inflated_files(os.getpid(), tmp_path)  # (ours go last: see reap_left)
    forking.reap_left()
    assert not ending_process and child_processes() - kids_before <= holder
    assert not _inflated_files(os.getpid(), tmp_path), "this process still holds inflated files"
    assert _exited_cleanly(_wait_for_children(holder))


def test_a_forked_writer_that_reported_is_left_to_reap_and_one_that_failed_is_waited_for(
    ending_process: list[int],
) -> None:
    """In a process that ends with the run, a forked writer's result is taken as soon as
    its report ends (it closes the pipe before exiting) and the writer is reaped at the
    end; a writer that failed is waited for at once, its error raised here."""
    from converter import forking

    pid, r = forking.fork_reporting(lambda: {"files": 3})
    assert forking.collect_report(pid, r, failed="writer failed") == {"files": 3}
    assert ending_process == [pid]

    def fail() -> dict:
        raise OutputError("output x: cannot create: No space left on device")

    bad, r = forking.fork_reporting(fail)
    with pytest.raises(OutputError, match="No space left"):
        forking.collect_report(bad, r, failed="writer failed")
    assert ending_process == [pid]
    with pytest.raises(ChildProcessError):
        os.waitpid(bad, os.WNOHANG)  # (reaped already)
    forking.reap_left()
    assert not ending_process and pid not in child_processes()


def _inflated_files(pid: int, where: Path) -> set[str]:
    """The unnamed temporary files (inflated layers) process ``pid`` holds in ``where``."""
    return {t for t in fd_targets(pid) if t.startswith(f"{where}/#") or "rootfs-layer" in t}


def test_small_inflated_files_are_freed_here_and_every_helper_is_reaped_as_the_process_ends(
    tmp_path: Path, ending_process: list[int]
) -> None:
    """Small inflated files (below DETACH_AT) cost little to free: they are closed here,
    no helper holds anything, and reap_left leaves no child at all, zombies included
    (an init that never reaps would otherwise collect two a run)."""
    from converter import forking

    kids_before = child_processes()
    convert(_source(tmp_path, "zstd"), tmp_path / "out")
    assert (tmp_path / "out" / "big3").read_bytes() == BIG + b"x"
    assert len(ending_process) == workers.SIZE + directory_sink._WORKERS - 1  # (helpers, forked writers)
    forking.reap_left()
    assert not ending_process and not child_processes() - kids_before


def test_the_command_returns_a_complete_output_and_leaves_no_process_behind(tmp_path: Path) -> None:
    """The same through the command, whose process does end after the run: the output is
    the library's, nothing else is left beside it, and no process of the run is left,
    not even a zombie."""
    import subprocess
    import sys

    src = _source(tmp_path, "zstd")
    convert(src, tmp_path / "library")
    proc = subprocess.Popen([sys.executable, "-m", "converter", "convert", src, "-q", "-o", str(tmp_path / "out")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert list_directory(tmp_path / "out") == list_directory(tmp_path / "library")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["layout", "library", "out"]
    assert not live_group_members(proc.pid, zombies=True)


def test_an_interrupt_while_the_helpers_are_reaped_does_not_undo_a_finished_run() -> None:
    """Once the outcome is decided, SIGTERM, SIGINT or SIGHUP during the last wait for
    the helpers neither changes the exit status nor leaves a child unreaped."""
    import subprocess
    import sys

    script = (
        "import os, sys, time\n"
        "from converter import forking\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    time.sleep(2.0)\n"
        "    os._exit(0)\n"
        "forking.leave_to_reap(pid)\n"
        "print(pid, flush=True)\n"
        "forking.end_process(3)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout is not None
    child = int(proc.stdout.readline())
    deadline = time.monotonic() + 60
    while not _blocks(proc.pid, signal.SIGTERM):  # (end_process has begun its wait)
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.005)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        os.kill(proc.pid, sig)
    assert proc.wait(timeout=60) == 3
    assert not live_group_members(proc.pid, zombies=True), f"{child} left behind"


def _blocks(pid: int, sig: int) -> bool:
    """Whether process ``pid`` blocks ``sig`` now (its SigBlk mask in /proc)."""
    with open(f"/proc/{pid}/status") as f:
        mask = next(int(line.split()[1], 16) for line in f if line.startswith("SigBlk:"))
    return bool(mask & (1 << (sig - 1)))


def test_the_helper_left_freeing_big_files_holds_nothing_else(tmp_path: Path, ending_process: list[int]) -> None:
    """The helper that frees big inflated files after the command has returned holds
    only them and its socket: not the caller's standard streams nor any pipe, which a
    caller reading the command's output to its end (``$(rootfs ...)``) would wait on.
    It exits once this process has let go of its own copies (reap_left)."""
    from converter import forking
    from converter.image import FileRegion
    from converter.inflate import anonymous_file

    data = tmp_path / "data"
    data.write_bytes(b"x" * 4096)
    src = os.open(data, os.O_RDONLY)
    held = anonymous_file(str(tmp_path))
    os.write(held, b"y" * 10000)
    kids_before = child_processes()
    pool = workers.Workers()
    try:
        pool.hash(FileRegion(src, 0, 4096), [(None, None, "data")], what="data").wait_done()
        holder = pool._helpers[0].pid
        assert pool.leave([held])
        deadline = time.monotonic() + 60
        while True:  # (until it has taken the files in; it closes the others meanwhile)
            targets = sorted(fd_targets(holder))
            if any(t.startswith(f"{tmp_path}/#") for t in targets) and len(targets) == 2:
                break
            assert time.monotonic() < deadline, targets
            time.sleep(0.01)
        assert targets[0].startswith("socket:") or targets[1].startswith("socket:"), targets
        forking.reap_left()
        assert _exited_cleanly(_wait_for_children(child_processes() - kids_before))
        with pytest.raises(OSError):
            os.fstat(held)  # (this process's copy was closed by reap_left)
    finally:
        pool.close()
        os.close(src)


def test_the_command_works_when_started_with_sigchld_ignored(tmp_path: Path) -> None:
    """A parent that ignores SIGCHLD passes that on: the kernel would then reap the
    writers itself and waiting for them failed (exit 70).  The command restores it."""
    import subprocess
    import sys

    src = _source(tmp_path, "gzip")
    convert(src, tmp_path / "library")
    script = ("import signal, subprocess, sys\n"
              "signal.signal(signal.SIGCHLD, signal.SIG_IGN)\n"
              "sys.exit(subprocess.call(sys.argv[1:]))\n")
    done = subprocess.run([sys.executable, "-c", script, sys.executable, "-m", "converter", "convert", src, "-q",
                           "-o", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert list_directory(tmp_path / "out") == list_directory(tmp_path / "library")


def test_a_failed_run_stops_and_reaps_its_helpers_even_when_the_process_ends_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Helpers still at work when a run fails are stopped as always: nothing is left
    running into a staging directory being removed, and no child is left behind."""
    from converter import forking

    monkeypatch.setattr(forking, "PROCESS_ENDS", True)
    built = write_oci_layout(tmp_path / "layout", _spec("gzip"))
    blob = tmp_path / "layout" / "blobs" / "sha256" / built.layer_digests[0].split(":", 1)[1]
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    kids_before = child_processes()
    with pytest.raises(ConverterError, match="layer 1"):
        convert(f"oci:{tmp_path / 'layout'}", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not child_processes() - kids_before


def test_helpers_with_work_left_are_not_left_running(tmp_path: Path, ending_process: list[int]) -> None:
    """``leave`` refuses while a job is unanswered; once idle, the helpers are told to
    exit and reap_left collects them (exit status 0: not killed)."""
    from converter import forking
    from converter.image import FileRegion

    data = tmp_path / "data"
    data.write_bytes(os.urandom(1 << 20) * 64)
    fd = os.open(data, os.O_RDONLY)
    kids_before = child_processes()
    pool = workers.Workers()
    try:
        job = pool.hash(FileRegion(fd, 0, 64 << 20), [(None, None, "data")], what="data")
        assert not pool.idle()
        assert not pool.leave([])
        job.wait_done()
        assert pool.idle()
        assert pool.leave([])
        assert pool._helpers == [] and set(ending_process) == child_processes() - kids_before
        statuses = _wait_for_children(set(ending_process))
        assert _exited_cleanly(statuses)
        ending_process.clear()
        forking.reap_left()  # (nothing left: returns at once)
    finally:
        pool.close()
        os.close(fd)


def test_an_image_of_hundreds_of_compressed_layers_never_fills_the_helpers_job_sockets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every job of a 200-layer image was sent at once: this process blocked in send()
    on a full job socket while the helper blocked sending reports nobody read, and the
    run hung (SIGTERM too).  A helper now has at most _IN_FLIGHT jobs sent; the rest
    wait here.  Checked through the command (a hang becomes a failure there) and here,
    with the tree and the tar complete."""
    import subprocess
    import sys

    layers = [Layer([File(f"d{i:03d}/f", b"%d" % i * 50)] + ([Whiteout(f"d{i - 1:03d}/f")] if i % 2 else []),
                    compression="gzip" if i % 3 else "zstd") for i in range(200)]
    write_oci_layout(tmp_path / "layout", ImageSpec(layers=layers))
    src = f"oci:{tmp_path / 'layout'}"
    for args in (["-o", str(tmp_path / "cli")], ["--flatten", str(tmp_path / "cli.tar")]):
        done = subprocess.run([sys.executable, "-m", "converter", "convert", src, "-q", *args],
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
    most = [0]
    original = workers.Workers._transmit

    def counting(self: workers.Workers, job: workers.Job, helper: workers._Helper) -> None:
        original(self, job, helper)
        most[0] = max(most[0], len(helper.jobs))

    monkeypatch.setattr(workers.Workers, "_transmit", counting)
    convert(src, tmp_path / "out")
    assert 1 < most[0] <= workers._IN_FLIGHT
    kept = sorted(p.parent.name for p in (tmp_path / "out").glob("d*/f"))
    assert kept == [f"d{i:03d}" for i in range(200) if i % 2 or i == 199]
    assert list_directory(tmp_path / "out") == list_directory(tmp_path / "cli")
    assert _sha(tmp_path / "cli.tar") == _sha(_flatten(src, tmp_path / "lib.tar"))


def _flatten(src: str, out: Path) -> Path:
    convert(src, out, flatten=True)
    return out


def test_a_parse_error_found_by_a_helper_comes_after_the_entries_before_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The helper parses ahead; its error must surface with the same message, at the
    entry where it happened, as when this process parses."""
    from converter import opening
    from converter.errors import InputError
    from converter.testing.imagegen import Raw

    layers = [Layer([File("ok1", b"1"), File("ok2", b"2" * 700), Raw(name=b"broken", chksum=12345), File("after", b"a")])]
    write_docker_archive(tmp_path / "img.tar", ImageSpec(layers=layers))
    messages = []
    for remote in (True, False):
        monkeypatch.setattr(opening, "PARSE_REMOTE", remote)
        with pytest.raises(InputError) as info:
            convert(str(tmp_path / "img.tar"), tmp_path / f"out{remote}")
        messages.append(str(info.value))
        assert not (tmp_path / f"out{remote}").exists()
    assert messages[0] == messages[1] and "broken" in messages[0] and "checksum" in messages[0]


@pytest.mark.parametrize("refused", [1, 2])
def test_when_the_system_refuses_helpers_the_run_makes_do_or_says_why(
    tmp_path: Path, refused: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fork() failing (process limit, memory): with one helper the run goes on; with none
    it fails with one line saying how to run without them, and leaves nothing behind."""
    import errno as errno_

    original = workers.Workers._spawn
    calls = []

    def spawn(self: workers.Workers) -> object:
        calls.append(1)
        if len(calls) > 2 - refused:
            raise OSError(errno_.EAGAIN, "Resource temporarily unavailable")
        return original(self)

    monkeypatch.setattr(workers.Workers, "_spawn", spawn)
    src = _source(tmp_path, "gzip")
    out = tmp_path / "out"
    if refused == 1:
        convert(src, out)
        assert (out / "big3").read_bytes() == BIG + b"x"
    else:
        with pytest.raises(OutputError, match="cannot start a helper process.*ROOTFS_WRITERS=threads"):
            convert(src, out)
        assert not out.exists()


def test_directory_times_and_modes_are_final_when_writers_finish_their_own_directories(tmp_path: Path) -> None:
    """Each forked writer sets the metadata of the directories only it wrote into; the
    rest (shared ones, those hard links go into, those holding only directories) come
    last.  Every directory must end with the image's mode and mtime either way."""
    entries: list = [Dir("top/", mode=0o755, mtime=1000), Dir("top/only-dirs/", mode=0o700, mtime=1001)]
    for d in range(4):
        entries.append(Dir(f"top/only-dirs/d{d}/", mode=0o555, mtime=2000 + d))
        entries += [File(f"top/only-dirs/d{d}/f{i:04d}", b"%d" % i, mtime=5) for i in range(700)]
    entries += [Dir("links/", mode=0o750, mtime=3000), Hardlink("links/h", "top/only-dirs/d0/f0001")]
    write_docker_archive(tmp_path / "img.tar", ImageSpec(layers=[Layer(entries)]))
    out = tmp_path / "out"
    convert(str(tmp_path / "img.tar"), out)
    expected = {"top": (0o755, 1000), "top/only-dirs": (0o700, 1001), "links": (0o750, 3000)}
    expected.update({f"top/only-dirs/d{d}": (0o555, 2000 + d) for d in range(4)})
    for rel, (mode, mtime) in expected.items():
        st = os.stat(out / rel)
        assert (oct(st.st_mode & 0o7777), int(st.st_mtime)) == (oct(mode), mtime), rel
    assert os.stat(out / "links" / "h").st_ino == os.stat(out / "top/only-dirs/d0/f0001").st_ino


@pytest.mark.parametrize("privileged", [True, False], ids=["privileged", "rootless"])
def test_hard_links_made_by_each_forked_writer_after_its_chunk_name_their_first_names_inode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, privileged: bool
) -> None:
    """The forked writers share the files out in many chunks and each makes the hard
    links whose first name its chunk wrote, into directories anywhere in the tree (before
    and after the first name's, its own, one holding only links).  Every link must name
    its first name's inode, with the right link count, and the directories that links go
    into keep the image's mode and mtime: the same tree as the threads' writers make."""
    entries: list = []
    for d in range(12):
        entries.append(Dir(f"d{d:02d}/", mode=0o755, mtime=4000 + d))
        entries += [File(f"d{d:02d}/f{i:03d}", b"%d-%d" % (d, i) * (i % 7 + 1), mtime=7) for i in range(400)]
    entries.append(Dir("only-links/", mode=0o750, mtime=3000))
    links: dict[str, str] = {}
    for k in range(90):
        head = f"d{(k * 7 + 3) % 12:02d}/f{k * 3 % 400:03d}"
        name = f"only-links/l{k}" if k % 3 == 0 else f"d{(k * 5) % 12:02d}/l{k}"
        entries.append(Hardlink(name, head))
        links[name] = head
    write_docker_archive(tmp_path / "img.tar", ImageSpec(layers=[Layer(entries)]))
    convert(str(tmp_path / "img.tar"), tmp_path / "forked", privileged=privileged)
    monkeypatch.setattr(workers, "CAN_FORK", False)
    from converter.sinks import directory

    monkeypatch.setattr(directory, "CAN_FORK", False)
    convert(str(tmp_path / "img.tar"), tmp_path / "threads", privileged=privileged)
    assert list_directory(tmp_path / "forked") == list_directory(tmp_path / "threads")
    out = tmp_path / "forked"
    counts: dict[str, int] = {}
    for head in links.values():
        counts[head] = counts.get(head, 1) + 1
    for name, head in links.items():
        st, first = os.lstat(out / name), os.lstat(out / head)
        assert (st.st_ino, st.st_nlink) == (first.st_ino, counts[head]), name
    for d in range(12):
        st = os.stat(out / f"d{d:02d}")
        assert (oct(st.st_mode & 0o7777), int(st.st_mtime)) == (oct(0o755), 4000 + d)
    st = os.stat(out / "only-links")
    assert (oct(st.st_mode & 0o7777), int(st.st_mtime)) == (oct(0o750), 3000)


def test_writers_get_chunks_smaller_towards_the_end_covering_every_job_once_in_order() -> None:
    """Guided chunks (see directory._chunks): contiguous runs in tree order, every job
    exactly once, none bigger than a quarter of the whole for two writers, and the last
    ones small, so that the writers finish close together."""
    from converter.sinks.directory import _SMALLEST, _chunks

    jobs = [((b"d%d" % i,), None, [b"f"]) for i in range(2000)]
    costs = [1000 + (i * 7919) % 5000 for i in range(2000)]
    chunks = _chunks(jobs, costs, 2)  # type: ignore[arg-type]
    assert [job for chunk in chunks for job in chunk] == jobs
    cost_of = {id(job): cost for job, cost in zip(jobs, costs)}
    sizes = [sum(cost_of[id(job)] for job in chunk) for chunk in chunks]
    total = sum(costs)
    assert max(sizes) <= total // 4 + max(costs)
    assert sizes[-2] <= total // _SMALLEST + max(costs)
    assert 8 <= len(chunks) <= 40
    assert sizes[0] > sizes[len(sizes) // 2] > sizes[-2]
    assert _chunks([], [], 2) == []


def test_entries_parsed_by_a_helper_are_the_entries_parsed_here_every_field(tmp_path: Path) -> None:
    """A helper sends plain entries in a short form and the others whole (see
    helper._Batches): rebuilt, every one must equal what this process's reader gives,
    slot by slot, index included, whatever form it travelled in."""
    import base64

    from converter.image import FileRegion
    from converter.tar.reader import FileSource, TarEntry, TarReader
    from converter.testing.imagegen import Device, Fifo, Raw, layer_tar

    entries = [Dir("d"), File("d/plain", b"p" * 700), Symlink("d/l", "plain"), Hardlink("d/h", "d/plain"),
               Fifo("fifo"), Device("dev", "c", 1, 3), File("x" * 150, b"long name"),
               File("xattr", b"x", xattrs={"user.a": b"1"}),
               Raw(b"pax", data=b"p", pax={"mtime": "1700000000.5", "uid": "70000", "comment": "kept"}),
               Raw(b"lib", data=b"l", pax={"LIBARCHIVE.xattr.user.b": base64.b64encode(b"2").decode()}),
               Sparse("sparse", 1 << 20, [(4096, b"data"), (600_000, BIG[:9000])]),
               *(File(f"many/f{i:04d}", b"%d" % i) for i in range(1200))]  # several batches
    path = tmp_path / "layer.tar"
    path.write_bytes(layer_tar(Layer(entries)))
    fd = os.open(path, os.O_RDONLY)
    try:
        region = FileRegion(fd, 0, os.fstat(fd).st_size)
        here = list(TarReader(FileSource(fd, 0, region.size), name="layer"))
        pool = workers.Workers()
        try:
            remote = list(workers.RemoteTarReader(pool.parse(region, what="layer")))
        finally:
            pool.close()
    finally:
        os.close(fd)
    assert len(here) == len(remote) > 1200
    for a, b in zip(here, remote):
        assert [getattr(a, s) for s in TarEntry.__slots__] == [getattr(b, s) for s in TarEntry.__slots__], a


def test_a_failed_run_stops_and_reaps_idle_helpers_too(tmp_path: Path, ending_process: list[int]) -> None:
    """The test above was flaky (1 run in 3 to 7): when every job had been answered by
    the time the error arrived, the failed run took the successful one's way out, hanging
    up on its helpers to be reaped as the process ends.  A failed run now stops and reaps
    them whatever their state; a run that ended well still leaves idle ones."""
    from converter import forking
    from converter.layerstream import Limits
    from converter.opening import Opening
    from converter.sources import open_image

    src = _source(tmp_path, "gzip")
    for failed in (True, False):
        kids_before = child_processes()
        with open_image(src) as image:
            opening = Opening(list(image.layers), verify=True, limits=Limits(), spool_dir=str(tmp_path),
                              stage_beside=None)
            opening.open_ahead(0)
            for reading in opening.readings:
                reading.finish()
                reading.wait_verified()
            assert opening.pool.idle()
            helpers = [h.pid for h in opening.pool._helpers]
            opening.close(failed=failed)
        if failed:
            assert not child_processes() - kids_before and not ending_process
        else:
            assert sorted(ending_process) == sorted(helpers)
            forking.reap_left()
            assert not child_processes() - kids_before
