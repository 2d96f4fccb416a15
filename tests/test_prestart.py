"""The head start (issue 8): a plain ``rootfs convert SOURCE -o DIR`` opens the image and
starts its helpers before the command line is parsed.  It may only ever save time: the
conversion takes it over when its real options open the same layers the same way, and
otherwise (other options, an error, a usage mistake, an interrupt) it is thrown away
with nothing left behind; the tree and the messages are the same either way."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import sys
from pathlib import Path
from typing import Iterator

import pytest

from converter import convert, merge, prestart
from converter.sinks.atomic import remove_path
from converter.listing import list_directory
from converter.staging import STAGE_MIN
from converter.testing.imagegen import File, ImageSpec, Layer, Whiteout, write_docker_archive, write_oci_layout


def _image(tmp_path: Path) -> str:
    """Two zstd layers with files big enough to be staged beside the output."""
    big = bytes(range(256)) * (2 * STAGE_MIN // 256)
    spec = ImageSpec(layers=[
        Layer([File("etc/os-release", b"ID=test\n"), File("big", big), File("gone", big[::-1])], compression="zstd"),
        Layer([Whiteout("gone"), File("app", b"app\n")], compression="zstd"),
    ])
    write_oci_layout(tmp_path / "layout", spec)
    return f"oci:{tmp_path / 'layout'}"


@pytest.fixture(autouse=True)
def _no_head_start_left() -> Iterator[None]:
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    yield
    prestart.discard()
    for signum, handler in handlers.items():  # (a head start's own, made in this process)
        signal.signal(signum, handler)


def _helpers(opening: object) -> list[int]:
    return [h.pid for h in opening.pool._helpers]  # type: ignore[attr-defined]


def _alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)  # (the pool reaps the helpers it stops)
            alive.append(pid)
        except ProcessLookupError:
            pass
    return alive


def _siblings(out: Path) -> list[str]:
    return sorted(n for n in os.listdir(out.parent) if n.startswith(out.name))


@pytest.mark.parametrize("args, expected", [
    # (source, output, verify, flatten, quiet, verbose, debug, report)
    (["convert", "img", "-o", "out"], ("img", "out", True, False, False, 0, False, None)),
    (["convert", "-o", "out", "img", "-q"], ("img", "out", True, False, True, 0, False, None)),
    (["convert", "img", "--output=out", "-vv", "--debug", "--report", "r.json"],
     ("img", "out", True, False, False, 2, True, "r.json")),
    (["convert", "img", "-v", "--verbose", "--quiet", "-o", "out"], ("img", "out", True, False, True, 2, False, None)),
    (["convert", "img", "--output", "out", "--no-verify", "--report=-"], ("img", "out", False, False, False, 0, False, "-")),
    (["convert", "img", "-o", "a", "-o", "b"], ("img", "b", True, False, False, 0, False, None)),  # (the last one, as the parser takes)
    (["convert", "img", "--flatten", "out.tar.zst"], ("img", "out.tar.zst", True, True, False, 0, False, None)),
    (["convert", "--flatten=-", "img"], ("img", "-", True, True, False, 0, False, None)),  # (start() then declines: no file)
    (["convert", "img", "-o", "out", "--flatten", "out.tar"], None),  # (a usage error)
    (["convert", "img", "-o", "out", "--layers", "2"], None),
    (["convert", "img", "-o", "out", "--platform", "linux/arm64"], None),
    (["convert", "img", "--bundle", "b"], None),
    (["convert", "img", "-qv", "-o", "out"], None),
    (["convert", "img", "-oout"], None),
    (["convert", "img", "--no-verify=1", "-o", "out"], None),
    (["convert", "img", "other", "-o", "out"], None),
    (["convert", "img", "-o"], None),
    (["convert", "img", "--output="], None),
    (["convert", "img", "--report", "r.json"], None),
    (["convert", "img", "-o", "out", "--help"], None),
    (["ls", "img"], None),
    ([], None),
])
def test_only_options_that_leave_the_opening_alone_make_a_plain_conversion(args: list[str], expected: object) -> None:
    assert prestart.plain_convert(args) == expected


@pytest.mark.parametrize("flatten", [False, True], ids=["dir", "tar"])
def test_a_plain_conversion_takes_over_its_head_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      flatten: bool) -> None:
    src = _image(tmp_path)
    out = tmp_path / ("out.tar" if flatten else "out")
    prestart.start(["convert", src, "--flatten" if flatten else "-o", str(out)])
    early = prestart._early
    assert early is not None
    pids = _helpers(early.opening)
    assert pids and _alive(pids) == pids  # inflating already
    opened = []
    monkeypatch.setattr(merge, "open_layers", lambda *a, **k: opened.append(a))  # (would fail if called)
    convert(src, out, flatten=flatten)
    assert opened == [] and prestart._early is None
    assert not _alive(pids)
    assert _siblings(out) == [out.name]  # the staging directory went with the plan
    monkeypatch.undo()
    cold = tmp_path / ("cold.tar" if flatten else "cold")
    convert(src, cold, flatten=flatten)
    if flatten:
        assert out.read_bytes() == cold.read_bytes()
    else:
        assert list_directory(out) == list_directory(cold)
        assert sorted(os.listdir(out)) == ["app", "big", "etc"]


def test_a_head_start_for_other_options_is_thrown_away(tmp_path: Path) -> None:
    src = _image(tmp_path)
    out = tmp_path / "out"
    prestart.start(["convert", src, "-o", str(out)])
    early = prestart._early
    assert early is not None and early.opening.staging is not None
    pids = _helpers(early.opening)
    staged = early.opening.staging.path
    assert staged is not None and os.path.isdir(staged)
    convert(src, out, layers="1")  # not what the head start opened
    assert pids and prestart._early is None and not _alive(pids) and not os.path.exists(staged)
    assert sorted(os.listdir(out)) == ["big", "etc", "gone"]  # the first layer alone
    assert _siblings(out) == ["out"]


@pytest.mark.parametrize("why, source, extra", [
    ("no such image", "missing.tar", []),
    ("not an image", "notes.txt", []),
    ("a pipe is read once", "fifo", []),
    ("the output exists", "img", []),
    ("a registry", "docker://127.0.0.1:9/x", []),
    ("ROOTFS_REF is an option", "img", ["ROOTFS_REF"]),
])
def test_no_head_start_where_it_could_not_help_or_would_read_a_stream(tmp_path: Path, why: str, source: str,
                                                                       extra: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    img = _image(tmp_path)
    (tmp_path / "notes.txt").write_text("hello\n")
    os.mkfifo(tmp_path / "fifo")
    out = tmp_path / "out"
    if why == "the output exists":
        out.mkdir()
    for name in extra:
        monkeypatch.setenv(name, "v1")
    spec = {"img": img, "fifo": str(tmp_path / "fifo")}.get(source, source if "://" in source else str(tmp_path / source))
    prestart.start(["convert", spec, "-o", str(out)])  # (a FIFO with no writer would block an open)
    assert prestart._early is None
    assert sorted(os.listdir(tmp_path)) == sorted(["layout", "notes.txt", "fifo"] + (["out"] if out.exists() else []))


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOTFS_")}
    return subprocess.run([sys.executable, "-m", "converter", *args], capture_output=True, text=True, cwd=cwd,
                          env={**env, "NO_COLOR": "1"})


def test_a_usage_mistake_after_the_head_start_leaves_nothing_behind(tmp_path: Path) -> None:
    src = _image(tmp_path)
    r = _cli("convert", src, "-o", "out", "-q", "-v", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "contradict" in r.stderr
    assert sorted(os.listdir(tmp_path)) == ["layout"]


@pytest.mark.parametrize("damage", ["layer", "config"])
def test_a_broken_image_says_the_same_with_or_without_a_head_start(tmp_path: Path, damage: str) -> None:
    built = write_oci_layout(tmp_path / "layout", ImageSpec(layers=[
        Layer([File("a", b"a" * 100_000)], compression="zstd"), Layer([File("b", b"b")], compression="zstd")]))
    blob = tmp_path / "layout" / "blobs" / "sha256" / (built.layer_digests[0] if damage == "layer" else built.config_digest).split(":")[1]  # type: ignore[union-attr]
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    plain = _cli("convert", "oci:layout", "-o", "out", cwd=tmp_path)
    # --max-ratio is not one of the options a head start is made for: the cold path
    cold = _cli("convert", "oci:layout", "-o", "out", "--max-ratio", "1000", cwd=tmp_path)
    assert plain.returncode == cold.returncode != 0
    assert plain.stderr == cold.stderr and plain.stderr.count("\n") == 1
    assert sorted(os.listdir(tmp_path)) == ["layout"]


def test_a_plain_conversion_from_the_command_line_gives_the_same_tree(tmp_path: Path) -> None:
    src = _image(tmp_path)
    write_docker_archive(tmp_path / "plain.tar", ImageSpec(layers=[Layer([File("x", b"x" * (3 * STAGE_MIN))])]))
    for source, name in ((src, "fast"), ("plain.tar", "fast-plain")):
        r = _cli("convert", source, "-o", name, "-q", cwd=tmp_path)
        assert r.returncode == 0 and r.stderr == "", r.stderr
        r = _cli("convert", source, "-o", name + "-cold", "-q", "--max-ratio", "1000", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert list_directory(tmp_path / name) == list_directory(tmp_path / (name + "-cold"))
    for source, name in ((src, "fast.tar"), ("plain.tar", "fast-plain.tar")):
        assert _cli("convert", source, "--flatten", name, "-q", cwd=tmp_path).returncode == 0
        assert _cli("convert", source, "--flatten", "cold-" + name, "--max-ratio", "1000", "-q", cwd=tmp_path).returncode == 0
        assert (tmp_path / name).read_bytes() == (tmp_path / ("cold-" + name)).read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["cold-fast-plain.tar", "cold-fast.tar", "fast", "fast-cold", "fast-plain",
                                            "fast-plain-cold", "fast-plain.tar", "fast.tar", "layout", "plain.tar"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupt_during_the_head_start_is_an_interrupt_like_any_other(tmp_path: Path, signum: int) -> None:
    """The head start makes its staging directory before the command has its own
    handlers: a signal then must still end in exit 130, one line, nothing left."""
    blob = os.urandom(1 << 20) * 3
    spec = ImageSpec(layers=[Layer([File(f"f{i}", blob[i:] + blob[:i]) for i in range(12)], compression="zstd")
                             for _ in range(2)])
    write_oci_layout(tmp_path / "layout", spec)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOTFS_")}
    caught = 0
    for attempt in range(5):
        out = tmp_path / f"out{attempt}"
        proc = subprocess.Popen([sys.executable, "-m", "converter", "convert", "oci:layout", "-o", out.name],
                                cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        while proc.poll() is None and not any(".staging-" in n for n in os.listdir(tmp_path)):
            time.sleep(0.0005)
        if proc.poll() is None:
            proc.send_signal(signum)
            caught += 1
        _, err = proc.communicate(timeout=60)
        if proc.returncode == 0:  # (the signal came after the result was in place: it is then ignored)
            remove_path(str(out))
            continue
        assert proc.returncode == 130 and err == "rootfs: error: interrupted; the destination was left as it was\n"
        assert sorted(os.listdir(tmp_path)) == ["layout"]
    assert caught


def test_what_a_taken_head_start_opened_is_closed_on_the_way_out(tmp_path: Path) -> None:
    """An interrupt may land between the conversion taking the head start and holding
    it in a ``try``: the command's exit path closes it all the same."""
    src = _image(tmp_path)
    out = tmp_path / "out"
    args = ["convert", src, "-o", str(out)]
    prestart.start(args)
    early = prestart._early
    assert early is not None
    pids, staged = _helpers(early.opening), early.opening.staging.path
    key = prestart._key(args)
    assert key is not None and prestart.take(key) is not None and prestart._early is None
    prestart.discard(leaving=True)  # (what cli.main does on its way out)
    assert pids and not _alive(pids) and staged and not os.path.exists(staged) and _siblings(out) == []


def test_standard_input_gets_no_head_start_even_beside_a_file_named_dash(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "-").write_bytes(b"a file that is not standard input")
    monkeypatch.chdir(tmp_path)
    for source in ("-", "oci-archive:-", "docker-archive:-"):
        prestart.start(["convert", source, "-o", "out"])
        assert prestart._early is None


def test_a_deleted_current_directory_is_one_line_with_or_without_a_head_start(tmp_path: Path) -> None:
    src = _image(tmp_path)
    gone = tmp_path / "gone"
    gone.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOTFS_")}
    results = []
    for extra in ([], ["--max-ratio", "1000"]):
        r = subprocess.run(["sh", "-c", f'cd "{gone}" && rmdir "{gone}" && exec "$@"', "sh", sys.executable, "-m",
                            "converter", "convert", src, "-o", "out", *extra], capture_output=True, text=True, env=env)
        gone.mkdir()
        results.append((r.returncode, r.stderr))
    assert results[0] == results[1] == (2, "rootfs: error: the current directory no longer exists: give absolute "
                                           "paths, or cd to a directory that exists\n")
