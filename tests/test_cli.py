"""The command line's conventions: help with examples, version, one-line errors, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from converter.errors import EXIT_CODES

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "fixtures" / "sample" / "sample-image.tar"


def rootfs(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "120", **(env or {})}
    return subprocess.run([sys.executable, "-m", "converter", *args], capture_output=True, text=True, env=full_env, **kw)


@pytest.mark.parametrize("command", ["convert", "ls", "inspect"])
def test_every_command_has_help_with_examples(command: str) -> None:
    r = rootfs(command, "--help")
    assert r.returncode == 0, r.stderr
    assert "Examples" in r.stdout
    assert "rootfs " + command in r.stdout


def test_version_names_the_gzip_and_zstd_backends() -> None:
    r = rootfs("--version")
    assert r.returncode == 0
    assert r.stdout.startswith("rootfs ")
    assert "gzip:" in r.stdout and "zstd:" in r.stdout


def test_error_is_one_line_with_documented_exit_code(tmp_path: Path) -> None:
    r = rootfs("convert", str(tmp_path / "missing.tar"), "-o", str(tmp_path / "out"))
    assert r.returncode == 4 and 4 in EXIT_CODES
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("rootfs: error: ")
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_usage_error_needs_exactly_one_output(tmp_path: Path) -> None:
    r = rootfs("convert", str(SAMPLE))
    assert r.returncode == 2
    assert "exactly one of" in r.stderr


@pytest.mark.parametrize("args, says", [
    (["convert", "SAMPLE", "-o", "OUT", "--bogus"], "No such option: --bogus"),
    (["convert"], "Missing argument 'SOURCE'"),
    (["convert", "SAMPLE", "-o", "OUT", "--max-entries", "many"], "'many' is not a valid"),
    (["nosuch"], "No such command 'nosuch'"),
    (["convert", "SAMPLE", "-o", "OUT", "-q", "-v"], "-q (only errors) and -v"),
    (["convert", "SAMPLE", "-o", "OUT", "--max-size", "inf"], "bad size 'inf'"),
    (["convert", "SAMPLE", "-o", "OUT", "--max-size", "1e400"], "bad size '1e400'"),
], ids=["unknown-option", "missing-argument", "bad-number", "unknown-command", "quiet-and-verbose", "size-inf", "size-huge"])
def test_command_line_mistakes_are_one_line_usage_errors(tmp_path: Path, args: list[str], says: str) -> None:
    out = tmp_path / "out"
    r = rootfs(*[str(SAMPLE) if a == "SAMPLE" else str(out) if a == "OUT" else a for a in args])
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("rootfs: error: ") and r.stderr.count("\n") == 1, r.stderr
    assert says in r.stderr and "\u256d" not in r.stderr  # (no framed box)
    assert r.stdout == "" and not out.exists()


def test_help_says_what_each_option_takes() -> None:
    r = rootfs("convert", "--help")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()

    def line(option: str) -> str:
        return next(text for text in lines if f" {option} " in text)

    assert "DIR" in line("--output") and "FILE" in line("--flatten") and "DIR" in line("--bundle")
    assert "skip|empty" in line("--devices") and "none|xattr" in line("--keep-ids")
    assert "UID:GID" in line("--owner") and "C:H:N" in line("--uid-map")
    assert "SOURCE" in r.stdout
    assert not [text for text in lines if text.lstrip("│ ").startswith("-") and "<str>" in text]
    assert "--bundle" in " ".join(r.stdout.split()[:60])  # the description names all three outputs


def test_summary_says_what_its_bytes_count(tmp_path: Path) -> None:
    r = rootfs("convert", str(SAMPLE), "-o", str(tmp_path / "out"), "--path", "/etc/hostname")
    assert r.returncode == 0, r.stderr
    assert "  2 entries, 7 B of file contents" in r.stderr  # /etc and /etc/hostname
    r = rootfs("convert", str(SAMPLE), "--flatten", str(tmp_path / "out.tar"))
    size = (tmp_path / "out.tar").stat().st_size
    assert r.returncode == 0 and f"{size / 1024:.1f} KiB of tar\n" in r.stderr, r.stderr
    r = rootfs("convert", str(SAMPLE), "--flatten", str(tmp_path / "out.tar.gz"))
    small = (tmp_path / "out.tar.gz").stat().st_size
    assert r.returncode == 0 and f"{size / 1024:.1f} KiB of tar, {small / 1024:.1f} KiB gzip-compressed" in r.stderr, r.stderr


def test_max_size_bounds_the_flattened_tar_headers_included(tmp_path: Path) -> None:
    """The sample's contents are under 1 KiB but its tar is 34 KiB (headers, padding)."""
    r = rootfs("convert", str(SAMPLE), "--flatten", str(tmp_path / "out.tar"), "--max-size", "4K")
    assert r.returncode == 7 and "the flattened tar passes --max-size 4096 bytes" in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []
    r = rootfs("convert", str(SAMPLE), "--flatten", str(tmp_path / "out.tar"), "--max-size", "40K", "-q")
    assert r.returncode == 0 and (tmp_path / "out.tar").stat().st_size <= 40 << 10
    from converter.command import plural as _plural

    assert [_plural(n, "entry") for n in (0, 1, 2)] == ["0 entries", "1 entry", "2 entries"]
    assert _plural(1, "layer") == "1 layer" and _plural(3, "layer") == "3 layers"


def test_inspect_reports_a_bad_platform_instead_of_listing_the_choices(tmp_path: Path) -> None:
    from converter.testing.imagegen import File, ImageSpec, Layer, write_oci_layout

    amd = ImageSpec([Layer([File("hello.txt", b"amd")])], architecture="amd64")
    arm = ImageSpec([Layer([File("hello.txt", b"arm")])], architecture="arm64", variant="v8")
    write_oci_layout(tmp_path / "m", [(amd, None), (arm, None)], ref="latest", index="multiarch")
    r = rootfs("inspect", str(tmp_path / "m"), "--platform", "bogus")
    assert r.returncode == 2 and "bad platform 'bogus'" in r.stderr and r.stdout == "", (r.stdout, r.stderr)
    r = rootfs("inspect", str(tmp_path / "m"), "--platform", "linux/s390x")
    assert r.returncode == 4 and "no image for platform linux/s390x" in r.stderr, r.stderr
    assert "use --platform" not in r.stderr  # (it was used)


def test_force_never_deletes_the_source_the_current_directory_or_home(tmp_path: Path) -> None:
    """``-o . -f`` beside the image had deleted the image and everything else there."""
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    image = work / "image.tar"
    image.write_bytes(SAMPLE.read_bytes())
    (work / "notes.txt").write_text("mine")
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    for args, cwd, says in [
        (["./image.tar", "-o", ".", "-f"], work, "the source image included"),
        (["./image.tar", "-o", "..", "-f"], work, "the source image included"),
        ([str(SAMPLE), "-o", ".", "-f"], work / "sub", "the current directory included"),
        ([str(SAMPLE), "-o", str(work / "sub"), "-f"], tmp_path.parent, "your home directory included"),
        (["image.tar", "--flatten", "image.tar", "-f"], work, "is the source image itself"),
    ]:
        r = rootfs("convert", *args, cwd=cwd, env={"HOME": str(work / "sub")})
        assert r.returncode == 2 and says in r.stderr, (args, r.stderr)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before
    r = rootfs("convert", "image.tar", "-o", "sub", "-f", "-q", cwd=work, env={"HOME": str(tmp_path / "elsewhere")})
    assert r.returncode == 0 and (work / "sub" / "etc" / "hostname").is_file(), r.stderr


def test_inspect_reads_a_piped_image(tmp_path: Path) -> None:
    """`docker save app | rootfs inspect -`: the pipe is read once for the list of images
    and once for the image itself (it said "<stdin>: empty input")."""
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "120"}

    def piped(image: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "converter", "inspect", "-"], input=image.read_bytes(),
                              capture_output=True, env=env)

    r = piped(SAMPLE)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(b"sample/app:1.0  docker-archive  linux/amd64")
    r = piped(ROOT / "fixtures" / "real" / "edge-classic-buildkit.docker-save.tar")
    assert r.returncode == 2 and r.stdout.startswith(b"standard input holds 2 images"), (r.stdout, r.stderr)
    assert b"public/edge:classic" in r.stdout and b"public/edge:buildkit" in r.stdout


def test_no_verify_is_said_in_the_summary_and_the_report(tmp_path: Path) -> None:
    r = rootfs("convert", str(SAMPLE), "-o", str(tmp_path / "out"), "--no-verify", "--report", str(tmp_path / "r.json"))
    assert r.returncode == 0 and "digests NOT checked (--no-verify)" in r.stderr, r.stderr
    assert json.loads((tmp_path / "r.json").read_text())["verified"] is False
    r = rootfs("convert", str(SAMPLE), "-o", str(tmp_path / "out2"), "--report", str(tmp_path / "r2.json"))
    assert "NOT checked" not in r.stderr and json.loads((tmp_path / "r2.json").read_text())["verified"] is True
    assert "(docker-archive, linux/amd64, 3 layers)" in r.stderr  # (the platform converted is named)


def test_an_explicit_verbose_wins_over_quiet_from_the_environment(tmp_path: Path) -> None:
    r = rootfs("convert", str(SAMPLE), "-o", str(tmp_path / "out"), "-v", env={"ROOTFS_QUIET": "1"})
    assert r.returncode == 0 and "whiteout:" in r.stderr, r.stderr


def test_a_url_gets_the_docker_transport_hint_without_its_scheme(tmp_path: Path) -> None:
    r = rootfs("inspect", "https://ghcr.io/org/app:1")
    assert r.returncode == 4 and "write docker://ghcr.io/org/app:1)" in r.stderr, r.stderr
    r = rootfs("inspect", "http://localhost:5000/x")
    assert "write docker://localhost:5000/x, with --insecure" in r.stderr, r.stderr


def test_inspect_into_a_closed_pipe_exits_141() -> None:
    p = subprocess.Popen([sys.executable, "-m", "converter", "inspect", str(ROOT / "fixtures/real/edge-classic.oci-archive.tar")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None and p.stderr is not None
    p.stdout.close()
    err = p.stderr.read()
    assert p.wait(60) == 141 and err == b"", err


def test_diff_chooses_each_side_s_image_and_platform() -> None:
    real = ROOT / "fixtures" / "real"
    multi = str(real / "multiarch.oci-index")
    r = rootfs("diff", multi, multi, "--platform-a", "linux/amd64", "--platform-b", "linux/arm64/v8", "--json")
    assert r.returncode in (0, 1), r.stderr
    same = rootfs("diff", multi, multi, "--platform-a", "linux/amd64", "--platform-b", "linux/amd64")
    assert same.returncode == 0 and same.stdout == "", same.stderr
    two = str(real / "edge-classic-buildkit.docker-save.tar")
    r = rootfs("diff", two, two)
    assert r.returncode == 2 and "--ref-a/--ref-b" in r.stderr, r.stderr
    r = rootfs("diff", two, two, "--ref-a", "public/edge:classic", "--ref-b", "#1")
    assert r.returncode == 0 and r.stdout == "", r.stderr


def test_inspect_shows_what_is_well_formed_of_a_malformed_config(tmp_path: Path) -> None:
    """Labels as a list, Env as a number, history lines as objects: shown as absent, not
    an internal error; NaN is not JSON (and is refused like any malformed JSON)."""
    from converter.testing.imagegen import File, ImageSpec, Layer, write_docker_archive

    odd = {"config": {"Labels": ["a"], "Env": 5, "Cmd": {"x": 1}, "User": 7, "ExposedPorts": {"80/tcp": {}}},
           "history": [{"created_by": {"x": 1}, "empty_layer": "yes"}], "created": [[[]]]}
    write_docker_archive(tmp_path / "odd.tar", ImageSpec([Layer([File("f", b"x")])], config_overrides=odd))
    r = rootfs("inspect", str(tmp_path / "odd.tar"), "--json")
    assert r.returncode == 0, r.stderr
    config = json.loads(r.stdout)["config"]
    assert (config["labels"], config["env"], config["cmd"], config["user"], config["created"]) == ({}, [], None, "", None)
    assert config["exposed_ports"] == ["80/tcp"]
    from converter.errors import InputError
    from converter.sources.archive import parse_json

    for constant in (b"NaN", b"Infinity", b"-Infinity"):
        with pytest.raises(InputError, match="is not JSON"):
            parse_json(b'{"created": %s}' % constant, what="config")


def test_output_to_a_pipe_has_no_progress_or_colour(tmp_path: Path) -> None:
    r = rootfs("convert", str(SAMPLE), "--flatten", str(tmp_path / "x.tar"), env={"NO_COLOR": ""})
    assert r.returncode == 0, r.stderr
    assert "\x1b[" not in r.stderr and "\x1b[" not in r.stdout
    assert r.stderr.startswith("converted sample/app:1.0")


def test_ls_lists_the_merged_view_without_writing(tmp_path: Path) -> None:
    r = rootfs("ls", str(SAMPLE), "/opt/app", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert any(line.endswith(" opt/app/VERSION") for line in lines)
    assert not any("legacy.so" in line for line in lines)  # hidden by the opaque marker
    assert list(tmp_path.iterdir()) == []


def test_ls_path_follows_symlinks_inside_the_image_and_globs(tmp_path: Path) -> None:
    """``ls IMG PATH`` lists what ``convert --path PATH`` would write: on a merged-/usr
    image /lib/x is found through the lib -> usr/lib symlink, and globs expand."""

    def paths(*args: str) -> list[str]:
        r = rootfs("ls", str(SAMPLE), *args, "--format", "paths")
        assert r.returncode == 0, r.stderr
        return r.stdout.splitlines()

    assert paths("/lib/libsample.so.1") == ["lib", "usr", "usr/lib", "usr/lib/libsample.so.1"]
    assert paths("/lib/") == ["lib", "usr", "usr/lib", "usr/lib/libsample.so", "usr/lib/libsample.so.1"]
    assert paths("/usr/bin/hello*") == ["usr", "usr/bin", "usr/bin/hello", "usr/bin/hello-again"]
    r = rootfs("ls", str(SAMPLE), "/lib/missing.so")
    assert r.returncode == 4 and r.stderr == "rootfs: error: /lib/missing.so: not in the image\n" and r.stdout == ""


def test_ls_and_convert_keep_dirlinks_when_asked(tmp_path: Path) -> None:
    from converter.testing.imagegen import Dir, File, ImageSpec, Layer, Symlink, write_docker_archive

    src = tmp_path / "merged-usr.tar"
    write_docker_archive(src, ImageSpec(layers=[
        Layer([Dir("usr/"), Dir("usr/lib/"), Symlink("lib", "usr/lib")]),
        Layer([Dir("lib/"), File("lib/libm.so", b"m")]),
    ]))
    default = rootfs("ls", str(src), "--format", "paths")
    kept = rootfs("ls", str(src), "--format", "paths", "--keep-dirlinks")
    assert default.returncode == 0 and kept.returncode == 0, default.stderr + kept.stderr
    assert "lib/libm.so" in default.stdout.split() and "usr/lib/libm.so" not in default.stdout.split()
    assert "usr/lib/libm.so" in kept.stdout.split() and "lib/libm.so" not in kept.stdout.split()
    r = rootfs("convert", str(src), "-o", str(tmp_path / "out"), "--keep-dirlinks", "-v")
    assert r.returncode == 0, r.stderr
    assert os.path.islink(tmp_path / "out" / "lib")
    assert (tmp_path / "out" / "usr" / "lib" / "libm.so").read_bytes() == b"m"
    assert "keep-dirlink" in r.stderr


def test_an_existing_output_is_kept_unless_it_is_empty_or_forced(tmp_path: Path) -> None:
    """EDGE-CASES 76: a non-empty destination is refused (exit 8) and left as it was."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine").write_text("keep")
    r = rootfs("convert", str(SAMPLE), "-o", str(out))
    assert r.returncode == 8 and "not empty" in r.stderr and (out / "mine").read_text() == "keep"
    tar = tmp_path / "old.tar"
    tar.write_bytes(b"someone's data")
    r = rootfs("convert", str(SAMPLE), "--flatten", str(tar))
    assert r.returncode == 8 and "exists" in r.stderr and tar.read_bytes() == b"someone's data"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert rootfs("convert", str(SAMPLE), "-o", str(empty), "-q").returncode == 0
    assert rootfs("convert", str(SAMPLE), "-o", str(out), "--force", "-q").returncode == 0
    assert not (out / "mine").exists() and (out / "etc").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "old.tar", "out"]


def test_inspect_json_has_the_documented_top_level_keys() -> None:
    import json

    r = rootfs("inspect", str(SAMPLE), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    for key in ("reference", "digest", "platform", "config", "layers"):
        assert key in doc
    assert doc["reference"] == "sample/app:1.0"
    assert [layer["index"] for layer in doc["layers"]] == [1, 2, 3]
    assert doc["config"]["entrypoint"] == ["/usr/local/bin/app"]


@pytest.mark.parametrize("how", ["-o", "--flatten", "--bundle"])
def test_a_failed_run_removes_the_parent_directories_it_created(tmp_path: Path, how: str) -> None:
    """Found by an audit: ``-o a/b/out`` created a/b, and a run that failed later left them."""
    from converter.testing.imagegen import File, ImageSpec, Layer, blob_path, corrupt, write_oci_layout

    built = write_oci_layout(tmp_path / "layout", ImageSpec([Layer([File("f", b"x" * 4000)], compression="none")],
                                                          entrypoint=["/f"]), ref="v1")
    corrupt(blob_path(built.path, built.layer_digests[0]), 600, b"Y")  # found only when verified, after writing
    work = tmp_path / "work"
    work.mkdir()
    (work / "kept").mkdir()  # an existing parent stays
    r = rootfs("convert", f"oci:{tmp_path}/layout:v1", how, "kept/a/b/out", cwd=work)
    assert r.returncode == 5, r.stderr
    assert sorted(p.name for p in work.rglob("*")) == ["kept"]
    ok = rootfs("convert", f"oci:{tmp_path}/layout:v1", how, "kept/a/b/out", "--no-verify", cwd=work)
    assert ok.returncode == 0, ok.stderr
    assert (work / "kept" / "a" / "b" / "out").exists()


@pytest.mark.parametrize("where", ["stdout", "stdin"])
def test_binary_data_is_never_written_to_or_read_from_a_terminal(tmp_path: Path, where: str) -> None:
    """Found by a review: `--flatten -` on a terminal poured the tar onto it, and `convert -`
    waited silently on a terminal's input."""
    import pty

    master, slave = pty.openpty()
    try:
        if where == "stdout":
            args, kw = ["convert", str(SAMPLE), "--flatten", "-"], {"stdout": slave}
        else:
            args, kw = ["convert", "-", "-o", str(tmp_path / "out")], {"stdin": slave, "stdout": subprocess.PIPE}
        full_env = {**os.environ, "NO_COLOR": "1"}
        p = subprocess.run([sys.executable, "-m", "converter", *args], stderr=subprocess.PIPE, text=True, env=full_env,
                           **kw)
    finally:
        os.close(slave)
        os.close(master)
    assert p.returncode == 2 and "is a terminal" in p.stderr, p.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["root.tar.bz2", "root.tbz2", "root.tar.lz4"])
def test_a_compression_suffix_this_tool_does_not_write_is_refused(tmp_path: Path, name: str) -> None:
    """Found by a review: --flatten f.tar.bz2 wrote a plain tar under that name."""
    r = rootfs("convert", str(SAMPLE), "--flatten", str(tmp_path / name))
    assert r.returncode == 2 and "output is not supported" in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []
