"""The plain ``rootfs convert SOURCE -o DIR`` (or ``--flatten FILE``) runs without typer
(converter.command.run_plain): the same output, report, messages and exit codes as the
typer command, which every other command line still goes through."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from converter import command
from converter.listing import list_directory
from converter.testing.imagegen import Dir, File, ImageSpec, Layer, Symlink, Whiteout, write_oci_layout

#: set to its default, this makes the command line go through typer with the same meaning
THROUGH_TYPER = {"ROOTFS_MAX_RATIO": "1000"}


def _image(tmp_path: Path) -> str:
    write_oci_layout(tmp_path / "layout", ImageSpec([
        Layer([Dir("etc/"), File("etc/a", b"a" * 3000), File("etc/gone", b"x"),
               File("old", b"from before 1970", mtime=-86400)], compression="zstd"),
        Layer([Whiteout("etc/gone"), File("etc/b", os.urandom(70_000)), Symlink("lnk", "etc/a")], compression="gzip"),
    ]))
    return f"oci:{tmp_path / 'layout'}"


def _run(args: list[str], cwd: Path, *, typer: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in command.OPTION_ENVIRONMENT}
    env.update(NO_COLOR="1", COLUMNS="120", **(THROUGH_TYPER if typer else {}))
    return subprocess.run([sys.executable, "-m", "converter", *args], capture_output=True, cwd=cwd, env=env,
                          timeout=300)


def _outcome(tmp_path: Path, args: list[str], typer: bool) -> tuple:
    """What a user sees: exit code, stdout, stderr, and what was written."""
    work = tmp_path / ("typer" if typer else "plain")
    work.mkdir()
    done = _run([a.replace("@", str(work)) for a in args], work, typer=typer)
    stdout = hashlib.sha256(done.stdout).hexdigest() if args.count("-") else done.stdout.decode()
    written = {}
    for name in sorted(os.listdir(work)):
        path = work / name
        if path.is_dir():
            written[name] = list_directory(path)
        elif name.endswith(".json"):
            report = json.loads(path.read_text())
            written[name] = json.dumps(report, sort_keys=True).replace(str(work), "@")
        else:
            written[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return done.returncode, stdout, done.stderr.decode().replace(str(work), "@"), written


@pytest.mark.parametrize("args", [
    ["convert", "SRC", "-o", "@/out"],
    ["convert", "SRC", "--flatten", "@/out.tar"],
    ["convert", "-q", "SRC", "--output=@/out"],
    ["convert", "SRC", "-o", "@/out", "-v"],
    ["convert", "SRC", "-o", "@/out", "-vv", "--no-verify"],
    ["convert", "SRC", "-o", "@/out", "--report", "@/r.json"],
    ["convert", "SRC", "--flatten", "-", "--debug"],
    ["convert", "SRC", "-o", "@/out", "-q", "-v"],  # a usage error
    ["convert", "@/missing.tar", "-o", "@/out"],  # no such source
    ["convert", "SRC", "-o", "/proc/version/x"],  # cannot write there
], ids=lambda a: " ".join(a[1:]))
def test_a_plain_conversion_without_typer_looks_exactly_like_one_through_it(tmp_path: Path, args: list[str]) -> None:
    src = _image(tmp_path)
    args = [src if a == "SRC" else a for a in args]
    plain, typer = _outcome(tmp_path, args, typer=False), _outcome(tmp_path, args, typer=True)
    assert plain == typer
    assert ("converted" in plain[2]) == (plain[0] == 0 and "-q" not in args)


def test_the_plain_form_never_imports_typer_and_the_rest_does(tmp_path: Path) -> None:
    src = _image(tmp_path)
    for args, through in ((["convert", src, "-o", str(tmp_path / "a")], False),
                          (["convert", src, "-o", str(tmp_path / "b"), "--force"], True),
                          (["convert", src, "-o", str(tmp_path / "c")], True)):
        env = {k: v for k, v in os.environ.items() if k not in command.OPTION_ENVIRONMENT}
        if args[-1].endswith("/c"):
            env.update(THROUGH_TYPER)  # (an option's variable: typer resolves it)
        done = subprocess.run([sys.executable, "-X", "importtime", "-m", "converter", *args], capture_output=True,
                              text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr
        imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line}
        assert ("typer" in imported) == through, args


def test_every_option_of_the_typer_command_has_the_same_default_and_variable_here() -> None:
    """ConvertArgs is what the plain form runs with: a default changed on one side only
    would make ``rootfs convert x -o y`` mean two things."""
    import typer.main

    from converter.cli import app

    group = typer.main.get_command(app)
    params = {p.name: p for p in group.commands["convert"].params}  # type: ignore[attr-defined]
    assert set(params) == set(command.ConvertArgs._fields)
    for name, default in command.ConvertArgs._field_defaults.items():
        value = params[name].default
        assert (tuple(value) if isinstance(value, list) else value) == default, name
    envvars = {e for p in params.values() for e in ([p.envvar] if isinstance(p.envvar, str) else p.envvar or [])}
    assert envvars == set(command.OPTION_ENVIRONMENT)


@pytest.mark.parametrize("typer", [False, True], ids=["plain", "typer"])
def test_a_closed_error_stream_drops_the_messages_and_keeps_the_exit_code(tmp_path: Path, typer: bool) -> None:
    """``2>&-``: Python starts with no sys.stderr, and print's fallback is stdout, where
    a tar may be going.  Messages are dropped instead (the progress display's isatty()
    used to fail as an internal error, exit 70); the exit code still tells."""
    src = _image(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in command.OPTION_ENVIRONMENT}
    env.update(THROUGH_TYPER if typer else {})

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "converter", *args], stdout=subprocess.PIPE, env=env,
                              preexec_fn=lambda: os.close(2), timeout=300)

    ok = run("convert", src, "--flatten", "-", "-v")
    assert ok.returncode == 0 and ok.stdout[257:263] == b"ustar\0"
    assert hashlib.sha256(ok.stdout).hexdigest() == hashlib.sha256(
        run("convert", src, "--flatten", "-").stdout).hexdigest()  # (nothing but the tar)
    bad = run("convert", str(tmp_path / "missing.tar"), "-o", str(tmp_path / "out"))
    assert bad.returncode == 4 and bad.stdout == b"" and not (tmp_path / "out").exists()
