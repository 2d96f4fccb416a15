"""Machine-readable output (issue 9): goldens for ``--report``, ``ls --json``, ``inspect --json``
and ``diff``; and what a non-terminal (CI log, pipe) and ``NO_COLOR`` get.

Goldens live in ``tests/golden/``. What varies between machines or with the generator is
normalised before comparing: temporary paths become ``<TMP>``, every ``sha256:`` digest
becomes ``sha256:<N>`` (numbered by first appearance, so equal digests stay visibly equal;
short ``sha256:0123456789ab…`` prefixes get the number of their digest), the tool version
becomes ``<version>`` and the stored size of a compressed layer ``<compressed>`` (it depends
on the zlib/zstd build). The exact digests are asserted in code instead.

To rewrite the goldens after an intended change::

    UPDATE_GOLDENS=1 .venv/bin/python -m pytest tests/test_report.py

and review ``git diff tests/golden/``: a key that disappears or changes type breaks users.
"""

from __future__ import annotations

import difflib
import gzip
import json
import os
import re
import select
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import pytest

from converter import __version__
from converter.testing.imagegen import (
    Device,
    Dir,
    File,
    Hardlink,
    ImageSpec,
    Layer,
    Symlink,
    Whiteout,
    blob_path,
    corrupt,
    write_docker_archive,
    write_oci_archive,
    write_oci_layout,
)

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "fixtures" / "sample" / "sample-image.tar"
GOLDEN = Path(__file__).resolve().parent / "golden"
UPDATE = os.environ.get("UPDATE_GOLDENS", "") not in ("", "0")

# environment variables that change what the CLI prints; the tests set them explicitly
_AMBIENT = ("NO_COLOR", "FORCE_COLOR", "CLICOLOR_FORCE", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS", "LINES",
            "SOURCE_DATE_EPOCH", "ROOTFS_REF", "ROOTFS_PLATFORM", "ROOTFS_QUIET", "ROOTFS_DEBUG", "ROOTFS_WRITERS")


def cli_env(extra: Optional[dict[str, str]] = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _AMBIENT}
    env.update(extra or {})
    return env


def rootfs(*args: str, env: Optional[dict[str, str]] = None, cwd: Optional[Path] = None,
           **kw: Any) -> subprocess.CompletedProcess[bytes]:
    """Run the CLI with stdout and stderr piped (a non-terminal), as a CI log would."""
    return subprocess.run([sys.executable, "-m", "converter", *args], capture_output=True, env=cli_env(env),
                          cwd=cwd, **kw)


def ok(r: subprocess.CompletedProcess[bytes], code: int = 0) -> subprocess.CompletedProcess[bytes]:
    assert r.returncode == code, f"exit {r.returncode}, expected {code}; stderr:\n{r.stderr.decode(errors='replace')}"
    return r


# --------------------------------------------------------------------------- goldens


class Normaliser:
    """Make machine- and generator-specific values comparable (see the module docstring)."""

    _FULL = re.compile(r"sha256:([0-9a-f]{64})")
    _SHORT = re.compile(r"sha256:([0-9a-f]{12})…")

    def __init__(self, *tmp: Path) -> None:
        self.tmp = sorted({str(p) for t in tmp for p in (t, t.resolve())}, key=len, reverse=True)

    def json(self, obj: Any) -> Any:
        """Temporary paths, the version and compressed sizes (digests: see :meth:`digests`)."""
        if isinstance(obj, dict):
            out = {k: self.json(v) for k, v in obj.items()}
            if out.get("compression") not in (None, "none"):
                for key in ("size", "stored_bytes"):
                    if isinstance(out.get(key), int):
                        out[key] = "<compressed>"
            return out
        if isinstance(obj, list):
            return [self.json(v) for v in obj]
        if isinstance(obj, str):
            for t in self.tmp:
                obj = obj.replace(t, "<TMP>")
            return obj.replace(f"rootfs {__version__}", "rootfs <version>")
        return obj

    def digests(self, text: str) -> str:
        """Number the full digests by first appearance, then map short prefixes onto them."""
        numbers: dict[str, int] = {}
        for m in self._FULL.finditer(text):
            numbers.setdefault(m.group(1), len(numbers) + 1)

        def short(m: re.Match[str]) -> str:
            full = [d for d in numbers if d.startswith(m.group(1))]
            return f"sha256:<{numbers[full[0]]}>…" if len(full) == 1 else "sha256:<?>…"

        text = self._SHORT.sub(short, text)
        return self._FULL.sub(lambda m: f"sha256:<{numbers[m.group(1)]}>", text)


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return
    if not path.exists():
        pytest.fail(f"no golden tests/golden/{name}: create it with UPDATE_GOLDENS=1", pytrace=False)
    expected = path.read_text(encoding="utf-8")
    if text != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True), f"golden/{name}", "actual"))
        pytest.fail(f"output differs from tests/golden/{name} (UPDATE_GOLDENS=1 rewrites it after review):\n{diff}",
                    pytrace=False)


def check_golden_json(name: str, doc: Any, norm: Normaliser) -> None:
    check_golden(name, norm.digests(json.dumps(norm.json(doc), indent=2, ensure_ascii=False) + "\n"))


# --------------------------------------------------------------------------- --report


def _report_image(path: Path) -> Any:
    """Two layers whose conversion with a uid map warns: xattr dropped, parent replaced,
    owner outside the map (written as --unmapped-id)."""
    return write_docker_archive(path, ImageSpec([
        Layer([
            Dir("etc/"), File("etc/old", b"deleted above"),
            File("etc/conf", b"k=v\n", xattrs={"security.selinux": b"system_u:object_r:etc_t:s0\0", "user.origin": b"t"}),
            File("a", b"a file that a later layer uses as a directory"),
            File("home/u5000/file", b"owned by 5000", uid=5000, gid=5000),
            File("bin/tool", b"#!/bin/sh\n", mode=0o755), Hardlink("bin/tool-link", "bin/tool"),
        ]),
        Layer([File("a/b", b"under a former file"), Whiteout("etc/old")], compression="gzip"),
    ]), tags="report/app:1")


REPORT_KEYS = ["report_version", "tool", "status", "source", "output", "verified", "layers", "counts", "events", "error"]
EVENT_KEYS = ["kind", "path", "layer", "message"]


def _sort_events(doc: dict[str, Any]) -> dict[str, Any]:
    # the order of events depends on the directory writer (test_report_events_in_a_stable_order)
    doc = dict(doc)
    doc["events"] = sorted(doc["events"], key=lambda e: (e["kind"], e["path"] or "", e["message"]))
    return doc


@pytest.mark.skipif(os.geteuid() != 0, reason="the golden describes a conversion as root (rootless runs warn more)")
def test_report_success_directory(tmp_path: Path) -> None:
    built = _report_image(tmp_path / "image.tar")
    report = tmp_path / "report.json"
    ok(rootfs("convert", str(built.path), "-o", str(tmp_path / "out"), "--report", str(report),
              "--uid-map", "0:100000:1000", "--gid-map", "0:100000:1000", "--unmapped-id", "65534"))
    doc = json.loads(report.read_text("utf-8"))
    assert list(doc) == REPORT_KEYS
    assert doc["status"] == "ok" and doc["error"] is None and doc["report_version"] == 1
    assert doc["source"]["config_digest"] == built.config_digest
    assert [layer["diff_id"] for layer in doc["layers"]] == built.diff_ids
    assert [layer["index"] for layer in doc["layers"]] == [1, 2]
    assert doc["output"]["kind"] == "dir" and doc["output"]["entries"] > 0
    assert doc["counts"]["warnings"] == {"parent-replaced": 1, "unmapped-id": 2, "xattr-dropped": 1}
    assert sum(doc["counts"]["warnings"].values()) == len(doc["events"])
    assert all(list(e) == EVENT_KEYS for e in doc["events"])
    check_golden_json("report-ok-dir.json", _sort_events(doc), Normaliser(tmp_path))


def test_report_success_tar_on_stdout(tmp_path: Path) -> None:
    built = write_oci_layout(tmp_path / "layout", ImageSpec([
        Layer([Dir("etc/"), File("etc/os-release", b"ID=test\n")], compression="gzip"),
        Layer([File("usr/bin/app", b"\x7fELF", mode=0o755)], compression="zstd"),
    ], entrypoint=["/usr/bin/app"]), ref="v1")
    r = ok(rootfs("convert", f"oci:{tmp_path}/layout:v1", "--flatten", str(tmp_path / "root.tar.gz"), "--report", "-"))
    doc = json.loads(r.stdout)  # stdout holds the report and nothing else
    assert r.stderr.decode().startswith("converted v1 (oci, linux/amd64, 2 layers) to tar ")
    assert doc["source"]["manifest_digest"] == built.manifest_digest
    assert [layer["digest"] for layer in doc["layers"]] == built.layer_digests
    assert [layer["compression"] for layer in doc["layers"]] == ["gzip", "zstd"]
    # output.bytes counts the tar stream, before output compression
    tar = gzip.decompress((tmp_path / "root.tar.gz").read_bytes())
    assert doc["output"]["kind"] == "tar" and doc["output"]["bytes"] == len(tar)
    check_golden_json("report-ok-tar.json", doc, Normaliser(tmp_path))


def test_report_error_not_found(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    r = ok(rootfs("convert", "missing.tar", "-o", "out", "--report", str(report), cwd=tmp_path), 4)
    assert r.stderr.decode().startswith("rootfs: error: missing.tar")
    doc = json.loads(report.read_text("utf-8"))
    assert list(doc) == REPORT_KEYS
    assert doc["status"] == "error" and doc["output"] is None and doc["layers"] == []
    assert doc["error"]["exit_code"] == 4 == r.returncode
    check_golden_json("report-error-not-found.json", doc, Normaliser(tmp_path))


def test_report_error_integrity(tmp_path: Path) -> None:
    built = write_oci_layout(tmp_path / "layout", ImageSpec([Layer([File("f", b"x" * 4000)], compression="none")]),
                             ref="v1")
    corrupt(blob_path(built.path, built.layer_digests[0]), 600, b"Y")
    r = ok(rootfs("convert", f"oci:{tmp_path}/layout:v1", "--flatten", str(tmp_path / "root.tar"), "--report", "-"), 5)
    doc = json.loads(r.stdout)
    assert doc["status"] == "error" and doc["error"]["kind"] == "integrity" and doc["error"]["exit_code"] == 5
    assert not (tmp_path / "root.tar").exists()
    check_golden_json("report-error-integrity.json", doc, Normaliser(tmp_path))


@pytest.mark.parametrize("where", ["missing-dir/r.json", "/proc/r.json", "."])
def test_a_report_path_that_cannot_be_written_fails_first_with_exit_8(tmp_path: Path, where: str) -> None:
    """Found by an audit: the run converted, then failed writing the report (exit 70,
    the output in place, a stray temporary file)."""
    built = _report_image(tmp_path / "image.tar")
    work = tmp_path / "work"
    work.mkdir()
    r = ok(rootfs("convert", str(built.path), "-o", "out", "--report", where, cwd=work), 8)
    lines = r.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"rootfs: error: --report {where}: "), lines
    assert sorted(os.listdir(work)) == []


def test_report_source_has_the_same_keys_on_error(tmp_path: Path) -> None:
    built = _report_image(tmp_path / "image.tar")
    good = json.loads(ok(rootfs("convert", str(built.path), "--flatten", str(tmp_path / "a.tar"), "--report", "-")).stdout)
    bad = json.loads(rootfs("convert", str(tmp_path / "missing.tar"), "-o", str(tmp_path / "b"), "--report", "-").stdout)
    assert list(bad["source"]) == list(good["source"])


def test_report_every_entry_event_names_its_path(tmp_path: Path) -> None:
    built = _report_image(tmp_path / "image.tar")
    doc = json.loads(ok(rootfs("convert", str(built.path), "--flatten", str(tmp_path / "a.tar"), "--report", "-")).stdout)
    assert doc["events"] and all(e["path"] for e in doc["events"]), doc["events"]


def test_report_events_in_a_stable_order(tmp_path: Path) -> None:
    entries = [File(f"d{i % 7}/f{i:03d}", b"x" * (i * 37 % 900), xattrs={"security.selinux": b"l\0"}) for i in range(120)]
    built = write_docker_archive(tmp_path / "image.tar", ImageSpec([Layer(entries)]))
    orders = {}
    for name, env in (("default", {}), ("again", {}), ("threads", {"ROOTFS_WRITERS": "threads"})):
        r = ok(rootfs("convert", str(built.path), "-o", str(tmp_path / name), "--report", "-", "-q", env=env))
        orders[name] = [e["path"] for e in json.loads(r.stdout)["events"]]
    assert len(orders["default"]) == 120
    assert orders["default"] == orders["again"] == orders["threads"]


def test_report_output_bytes_is_what_the_tree_holds(tmp_path: Path) -> None:
    r = ok(rootfs("convert", str(SAMPLE), "-o", str(tmp_path / "out"), "--report", "-"))
    inodes = {}
    for dirpath, _, files in os.walk(tmp_path / "out"):
        for f in files:
            st = os.lstat(os.path.join(dirpath, f))
            if not os.path.islink(os.path.join(dirpath, f)):
                inodes[st.st_ino] = st.st_size
    assert json.loads(r.stdout)["output"]["bytes"] == sum(inodes.values())


# --------------------------------------------------------------------------- ls --json


def test_ls_json_golden_on_the_sample_image() -> None:
    r = ok(rootfs("ls", str(SAMPLE), "--json"))
    doc = json.loads(r.stdout.decode("utf-8"))
    assert list(doc) == ["entries"]
    for e in doc["entries"]:
        assert list(e)[:7] == ["path", "type", "mode", "uid", "gid", "size", "target"]
        assert not e["path"].startswith(("/", "./")) and not e["path"].endswith("/")
        assert e["type"] in set("fdlcbps") and re.fullmatch(r"[0-7]+", e["mode"])
        assert (e["size"] is not None) == (e["type"] == "f") and (e["target"] is not None) == (e["type"] == "l")
    paths = [e["path"] for e in doc["entries"]]
    assert paths == sorted(paths, key=os.fsencode)
    check_golden("ls-sample.json", r.stdout.decode("utf-8"))


def test_ls_other_formats_golden_on_the_sample_image() -> None:
    check_golden("ls-sample-etc.json", ok(rootfs("ls", str(SAMPLE), "/etc", "--json")).stdout.decode("utf-8"))
    check_golden("ls-sample.txt", ok(rootfs("ls", str(SAMPLE))).stdout.decode("utf-8"))
    check_golden("ls-sample.tree", ok(rootfs("ls", str(SAMPLE), "--format", "tree")).stdout.decode("utf-8"))
    assert ok(rootfs("ls", str(SAMPLE), "/no/such/path"), 4).stdout == b""


def _odd_names(path: Path) -> Any:
    return write_docker_archive(path, ImageSpec([Layer([
        File("back\\slash", b"1"), File("tab\there", b"2"), File(b"caf\xe9", b"3"), File("caf\\xe9", b"4"),
        Symlink("latin-link", b"caf\xe9"),
    ])]))


def test_ls_json_is_valid_utf8_for_any_name(tmp_path: Path) -> None:
    built = _odd_names(tmp_path / "image.tar")
    r = ok(rootfs("ls", str(built.path), "--json"))
    json.loads(r.stdout.decode("utf-8"))


def test_ls_json_paths_are_unambiguous_and_match_diff_json(tmp_path: Path) -> None:
    built = _odd_names(tmp_path / "image.tar")
    empty = write_docker_archive(tmp_path / "empty.tar", ImageSpec([Layer([Dir("d/")])]))
    paths = [e["path"] for e in json.loads(ok(rootfs("ls", str(built.path), "--json")).stdout.decode("utf-8",
                                                                                                  "replace"))["entries"]]
    assert len(set(paths)) == len(paths) == 5
    added = json.loads(ok(rootfs("diff", str(empty.path), str(built.path), "--json"), 1).stdout)["added"]
    assert sorted(paths) == sorted(added)


# --------------------------------------------------------------------------- inspect --json


INSPECT_KEYS = {"reference", "digest", "config_digest", "platform", "format", "source", "config", "layers", "history",
                "choices"}


def _spec(compression: str = "none", **kw: Any) -> ImageSpec:
    fields: dict[str, Any] = dict(
        entrypoint=["/usr/bin/app"], cmd=["--serve"], env=["PATH=/usr/bin:/bin", "LANG=C.UTF-8"], working_dir="/srv",
        user="1000:1000", labels={"org.opencontainers.image.title": "golden"}, exposed_ports=["8080/tcp"],
        history=[{"created": "2023-11-14T22:13:20Z", "created_by": "COPY etc /etc"},
                 {"created": "2023-11-14T22:13:20Z", "created_by": "ENV LANG=C.UTF-8", "empty_layer": True},
                 {"created": "2023-11-14T22:13:20Z", "created_by": "COPY app /usr/bin/app", "comment": "buildkit"}])
    fields.update(kw)
    return ImageSpec([
        Layer([Dir("etc/"), File("etc/os-release", b"ID=golden\n")], compression=compression),
        Layer([File("usr/bin/app", b"#!/bin/sh\necho hi\n", mode=0o755)], compression=compression),
    ], **fields)


def _arm() -> ImageSpec:
    return _spec("gzip", architecture="arm64", variant="v8")


# name -> (writer, spec string relative to the temporary directory, extra CLI arguments)
LAYOUTS: dict[str, tuple[Any, str, tuple[str, ...]]] = {
    "docker-legacy": (lambda d: write_docker_archive(d / "img.tar", _spec(), tags="golden/app:1"), "img.tar", ()),
    "docker-skopeo": (lambda d: write_docker_archive(d / "img.tar", _spec(), tags="golden/app:1", style="skopeo"),
                      "img.tar", ()),
    "docker25": (lambda d: write_docker_archive(d / "img.tar", _spec(), tags="golden/app:1", style="docker25"),
                 "img.tar", ()),
    "docker-containerd": (lambda d: write_docker_archive(d / "img.tar", _spec("gzip"), tags="golden/app:1",
                                                         style="containerd"), "img.tar", ()),
    "docker-two-images": (lambda d: write_docker_archive(d / "img.tar", [(_spec(), "golden/app:1"),
                                                                         (_spec(labels={"v": "2"}), "golden/app:2")]),
                          "docker-archive:img.tar:golden/app:2", ()),
    "oci-gzip": (lambda d: write_oci_layout(d / "layout", _spec("gzip"), ref="1.0"), "oci:layout:1.0", ()),
    "oci-zstd": (lambda d: write_oci_layout(d / "layout", _spec("zstd"), ref="1.0"), "layout", ()),
    "oci-archive": (lambda d: write_oci_archive(d / "img.tar", _spec("gzip"), ref="1.0"), "oci-archive:img.tar", ()),
    "oci-index-amd64": (lambda d: write_oci_layout(d / "layout", [(_spec("gzip"), None), (_arm(), None)], ref="1.0",
                                                   index="multiarch", attestations=True),
                        "oci:layout:1.0", ("--platform", "linux/amd64")),
    "oci-index-arm64": (lambda d: write_oci_layout(d / "layout", [(_spec("gzip"), None), (_arm(), None)], ref="1.0",
                                                   index="multiarch", attestations=True),
                        "oci:layout:1.0", ("--platform", "linux/arm64/v8")),
    "oci-nested-docker-types": (lambda d: write_oci_layout(d / "layout", [(_spec("gzip"), None), (_arm(), None)],
                                                           index="nested", docker_media_types=True, ref="1.0"),
                                "layout", ("--platform", "linux/arm64/v8")),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_inspect_json_golden(layout: str, tmp_path: Path) -> None:
    write, spec, extra = LAYOUTS[layout]
    built = write(tmp_path)
    if isinstance(built, list):  # the image the spec or --platform chooses
        built = next(b for b in built if (extra and b.platform == extra[1]) or b.ref == "golden/app:2")
    doc = json.loads(ok(rootfs("inspect", spec, "--json", *extra, cwd=tmp_path)).stdout)
    assert INSPECT_KEYS <= set(doc)
    assert doc["config_digest"] == built.config_digest
    assert [layer["diff_id"] for layer in doc["layers"]] == built.diff_ids
    assert [layer["index"] for layer in doc["layers"]] == [1, 2]
    if built.manifest_digest and not layout.startswith("docker"):
        assert doc["digest"] == built.manifest_digest
    check_golden_json(f"inspect-{layout}.json", doc, Normaliser(tmp_path))


def test_inspect_json_with_entries_golden(tmp_path: Path) -> None:
    write_oci_archive(tmp_path / "img.tar", _spec("zstd"), ref="1.0")
    doc = json.loads(ok(rootfs("inspect", str(tmp_path / "img.tar"), "--json", "--entries")).stdout)
    assert [(layer["entries"], layer["uncompressed_size"]) for layer in doc["layers"]] == [(2, 2560), (1, 2048)]
    check_golden_json("inspect-entries.json", doc, Normaliser(tmp_path))


def test_inspect_docker25_reports_the_manifest_digest(tmp_path: Path) -> None:
    built = write_docker_archive(tmp_path / "img.tar", _spec(), tags="golden/app:1", style="docker25")
    doc = json.loads(ok(rootfs("inspect", str(built.path), "--json")).stdout)
    assert doc["digest"] == built.manifest_digest


# --------------------------------------------------------------------------- diff


def _diff_pair(d: Path) -> tuple[Path, Path]:
    common = [Dir("etc/"), File("etc/same", b"same"), Symlink("etc/same-link", "same")]
    a = [
        *common,
        File("only-a", b"removed"), Dir("gone/"), File("gone/child", b"removed with its dir"),
        File("mode", b"m", mode=0o644), File("owner", b"o"), File("content", b"aaaa"), File("size", b"s"),
        Symlink("link", "old-target"), File("type", b"becomes a directory"), Symlink("type2", "x"),
        Device("dev/null", "c", 1, 3), File("xattr", b"x", xattrs={"user.a": b"1"}),
        File("hard1", b"h"), File("hard2", b"h"),
        File("mtime", b"t", mtime=1_600_000_000),
    ]
    b_base = [e for e in a if getattr(e, "path", "") not in {
        "only-a", "gone/", "gone/child", "mode", "owner", "content", "size", "link", "type", "type2", "dev/null",
        "xattr", "hard2", "mtime"}]
    b = [
        *b_base,
        File("only-b", b"added"), Dir("new/"), File("new/child", b"added with its dir"),
        File("mode", b"m", mode=0o600), File("owner", b"o", uid=1000, gid=100), File("content", b"bbbb"),
        File("size", b"ss"), Symlink("link", "new-target"), Dir("type/"), File("type2", b"now a file"),
        Device("dev/null", "c", 1, 5), File("xattr", b"x", xattrs={"user.b": b"1"}),
        Hardlink("hard2", "hard1"),  # grouping differs, content does not: not a change
        File("mtime", b"t", mtime=1_700_000_000),  # times are not compared
    ]
    pa, pb = d / "a.tar", d / "b.tar"
    write_docker_archive(pa, ImageSpec([Layer(a)]), tags="diff/app:1")
    # b as an OCI archive built in two layers: formats and layering do not matter, only the trees
    write_oci_archive(pb, ImageSpec([Layer(b[:5], compression="gzip"), Layer(b[5:], compression="zstd")]), ref="2")
    return pa, pb


EXPECTED_CHANGES = {
    "content": {"content"}, "dev/null": {"device"}, "link": {"target"}, "mode": {"mode"}, "owner": {"owner"},
    "size": {"size"}, "type": {"type"}, "type2": {"type"}, "xattr": {"xattrs"},
}


def test_diff_reports_known_differences(tmp_path: Path) -> None:
    a, b = _diff_pair(tmp_path)
    r = ok(rootfs("diff", str(a), str(b), "--json"), 1)
    doc = json.loads(r.stdout)
    assert list(doc) == ["identical", "added", "removed", "changed"]
    assert doc["identical"] is False
    assert doc["removed"] == ["gone", "gone/child", "only-a"]
    assert doc["added"] == ["new", "new/child", "only-b"]
    assert {c["path"]: set(c["changes"]) for c in doc["changed"]} == EXPECTED_CHANGES
    changes = {c["path"]: c["changes"] for c in doc["changed"]}
    assert changes["mode"]["mode"] == ["644", "600"]
    assert changes["owner"]["owner"] == ["0:0", "1000:100"]
    assert changes["size"]["size"] == [1, 2]
    assert changes["link"]["target"] == ["old-target", "new-target"]
    assert changes["type"]["type"] == ["f", "d"] and changes["type2"]["type"] == ["l", "f"]
    assert changes["dev/null"]["device"] == [[1, 3], [1, 5]]
    assert len(set(changes["content"]["content"])) == 2
    check_golden_json("diff.json", doc, Normaliser(tmp_path))
    text = ok(rootfs("diff", str(a), str(b)), 1).stdout.decode("utf-8")
    check_golden("diff.txt", text)
    assert ok(rootfs("diff", str(b), str(a)), 1).stdout != r.stdout


def test_diff_identical_trees_exit_0(tmp_path: Path) -> None:
    """The same tree from another format, other layering, other times: identical."""
    entries = [Dir("etc/"), File("etc/f", b"f"), Symlink("l", "etc/f"), File("x", b"x", uid=5)]
    write_docker_archive(tmp_path / "a.tar", ImageSpec([Layer(entries)]))
    late = [File(e.path, e.data, uid=e.uid, mtime=1_800_000_000) if isinstance(e, File) else e for e in entries]
    write_oci_layout(tmp_path / "b", ImageSpec([Layer(late[:2], compression="gzip"), Layer(late[2:], compression="zstd")]))
    r = ok(rootfs("diff", str(tmp_path / "a.tar"), str(tmp_path / "b")))
    assert r.stdout == b"" and r.stderr == b""
    doc = json.loads(ok(rootfs("diff", str(tmp_path / "a.tar"), str(tmp_path / "b"), "--json")).stdout)
    assert doc == {"identical": True, "added": [], "removed": [], "changed": []}


def test_diff_errors_are_not_exit_1(tmp_path: Path) -> None:
    write_docker_archive(tmp_path / "a.tar", ImageSpec([Layer([File("f", b"f")])]))
    r = ok(rootfs("diff", str(tmp_path / "a.tar"), str(tmp_path / "missing.tar")), 4)
    assert r.stdout == b"" and r.stderr.decode().startswith("rootfs: error: ")


def test_diff_xattr_value_change_is_visible(tmp_path: Path) -> None:
    write_docker_archive(tmp_path / "a.tar", ImageSpec([Layer([File("f", b"", xattrs={"user.a": b"1"})])]))
    write_docker_archive(tmp_path / "b.tar", ImageSpec([Layer([File("f", b"", xattrs={"user.a": b"2"})])]))
    doc = json.loads(ok(rootfs("diff", str(tmp_path / "a.tar"), str(tmp_path / "b.tar"), "--json"), 1).stdout)
    before, after = doc["changed"][0]["changes"]["xattrs"]
    assert before != after


# --------------------------------------------------------------------------- non-terminal output, NO_COLOR

_ESC = re.compile(rb"\x1b")
_COLOUR = re.compile(rb"\x1b\[(?:[0-9;]*;)?(?:3[0-9]|4[0-9]|9[0-7]|10[0-7])(?:;[0-9;]*)?m")
_PROGRESS_GLYPHS = ("━", "╸", "╺", "⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏", "\r")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("tty")
    layers = [
        Layer([Dir("etc/")] + [File(f"etc/f{i}", b"x" * 5000) for i in range(200)], compression="gzip"),
        Layer([Whiteout("etc/f1"), File("etc/new", b"n"), File("sel", b"", xattrs={"security.selinux": b"l\0"})],
              compression="zstd"),
    ]
    write_oci_archive(d / "a.tar", ImageSpec(layers), ref="1")
    write_docker_archive(d / "b.tar", ImageSpec([Layer([File("other", b"o")])]), tags="b:1")
    return {"a": str(d / "a.tar"), "b": str(d / "b.tar"), "dir": str(d)}


def _commands(images: dict[str, str], out: Path) -> dict[str, list[str]]:
    return {
        "convert-dir": ["convert", images["a"], "-o", str(out / "dir")],
        "convert-tar": ["convert", images["a"], "--flatten", str(out / "root.tar.zst"), "-v"],
        "convert-error": ["convert", images["a"] + ".missing", "-o", str(out / "x")],
        "usage-error": ["convert", "--no-such-option"],
        "inspect": ["inspect", images["a"], "--entries"],
        "ls": ["ls", images["a"]],
        "diff": ["diff", images["a"], images["b"]],
        "help": ["convert", "--help"],
    }


def _run_all(commands: dict[str, list[str]], env: Optional[dict[str, str]] = None) -> dict[str, Any]:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(rootfs, *args, env=env) for name, args in commands.items()}
        return {name: f.result() for name, f in futures.items()}


def test_piped_output_has_no_progress_bars_or_escape_codes(images: dict[str, str], tmp_path: Path) -> None:
    for name, r in _run_all(_commands(images, tmp_path)).items():
        for stream, data in (("stdout", r.stdout), ("stderr", r.stderr)):
            assert not _ESC.search(data), f"{name}: escape codes on {stream}: {data[:300]!r}"
            text = data.decode("utf-8", "replace")
            if stream == "stderr":  # (stdout may hold a table drawn with the same glyphs)
                assert not any(g in text for g in _PROGRESS_GLYPHS), f"{name}: progress on stderr: {text[:300]!r}"
        if name == "convert-dir":
            lines = r.stderr.decode().splitlines()
            # nothing but warnings and the summary (what was produced, and warnings by kind)
            assert lines[0].startswith("rootfs: warning: ") and "security.selinux" in lines[0]
            assert len(lines) == 4 and lines[1].startswith("converted 1 (oci-archive, linux/amd64, 2 layers) to directory ")
            assert "202 entries" in lines[2] and lines[3] == "  warnings: xattr-dropped x1"
            assert r.stdout == b""
        if name == "convert-error":
            assert r.returncode == 4 and r.stderr.count(b"\n") == 1 and r.stdout == b""


def test_quiet_prints_nothing_on_success(images: dict[str, str], tmp_path: Path) -> None:
    r = ok(rootfs("convert", images["a"], "--flatten", str(tmp_path / "q.tar"), "--quiet"))
    assert r.stdout == b"" and r.stderr == b""
    r = ok(rootfs("convert", images["a"], "--flatten", str(tmp_path / "e.tar"), env={"ROOTFS_QUIET": "1"}))
    assert r.stderr == b""


def test_no_color_wins_over_force_color_on_a_pipe(images: dict[str, str], tmp_path: Path) -> None:
    forced = rootfs("convert", "--help", env={"FORCE_COLOR": "1"})
    assert _COLOUR.search(forced.stdout), "control: FORCE_COLOR should colour the help"
    for name, r in _run_all(_commands(images, tmp_path), env={"FORCE_COLOR": "1", "NO_COLOR": "1"}).items():
        assert not _COLOUR.search(r.stdout + r.stderr), f"{name}: colour despite NO_COLOR"


def _run_on_terminal(args: list[str], env: dict[str, str], timeout: float = 30) -> tuple[int, bytes]:
    """Run the CLI with stdin, stdout and stderr on a pseudo-terminal; return (status, output)."""
    import pty

    try:
        master, slave = pty.openpty()
    except OSError as exc:  # pragma: no cover - containers without /dev/ptmx
        pytest.skip(f"no pseudo-terminal: {exc}")
    os.set_blocking(master, False)
    p = subprocess.Popen([sys.executable, "-m", "converter", *args], stdin=slave, stdout=slave, stderr=slave,
                         env=cli_env({"TERM": "xterm-256color", "COLUMNS": "120", **env}), close_fds=True)
    os.close(slave)
    chunks = []
    try:
        while True:
            ready, _, _ = select.select([master], [], [], timeout)
            if not ready:
                p.kill()
                pytest.fail(f"{args}: no output for {timeout}s on the terminal")
            try:
                data = os.read(master, 65536)
            except BlockingIOError:
                continue
            except OSError:  # EIO: the other side is closed
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    return p.wait(timeout=timeout), b"".join(chunks)


def test_no_color_on_a_terminal(images: dict[str, str], tmp_path: Path) -> None:
    code, out = _run_on_terminal(["convert", "--help"], {})
    assert code == 0 and _COLOUR.search(out), "control: a terminal without NO_COLOR gets colour"
    for name, args in _commands(images, tmp_path).items():
        if name in ("convert-error", "ls", "diff"):
            continue
        code, out = _run_on_terminal(args, {"NO_COLOR": "1"})
        assert not _COLOUR.search(out), f"{name}: colour codes on a terminal with NO_COLOR=1: {out[:400]!r}"
        if name.startswith("convert-"):
            assert code == 0 and b"converted 1 (oci-archive, linux/amd64, 2 layers)" in out


def test_inspect_to_a_pipe_keeps_each_field_on_one_line(images: dict[str, str]) -> None:
    lines = ok(rootfs("inspect", images["a"])).stdout.decode().splitlines()
    assert any(re.fullmatch(r"\s*config\s+sha256:[0-9a-f]{64}", line) for line in lines), lines


@pytest.mark.parametrize("args", [["inspect", "{a}", "--json"], ["inspect", "{a}"], ["ls", "{a}"], ["diff", "{a}", "{b}"]])
def test_closed_pipe_is_a_quiet_exit(images: dict[str, str], args: list[str]) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # like `| head` that has already exited
    try:
        p = subprocess.run([sys.executable, "-m", "converter", *(a.format(**images) for a in args)], stdout=write_end,
                           stderr=subprocess.PIPE, env=cli_env())
    finally:
        os.close(write_end)
    # quiet, and not a success: the output was cut short (141 is what a SIGPIPE-killed tool gives)
    assert p.stderr == b"" and p.returncode not in (0, 70), (p.returncode, p.stderr)


def test_a_flattened_tar_to_a_closed_pipe_is_a_quiet_exit(tmp_path: Path) -> None:
    """`rootfs convert X --flatten - | head`: the tar is written by a forked assembler,
    whose broken pipe used to come back as 'standard output: write failed' (exit 8)."""
    src = tmp_path / "big.tar"
    write_docker_archive(src, ImageSpec([Layer([File("big", os.urandom(3 << 20)), File("small", b"x")])]))
    args = ["convert", str(src), "--flatten", "-"]
    p = subprocess.Popen([sys.executable, "-m", "converter", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=cli_env())
    assert p.stdout is not None and p.stderr is not None
    p.stdout.read(1000)  # like `head -c 1000`
    p.stdout.close()
    err = p.stderr.read()
    assert p.wait() == 141 and b"error" not in err, (p.returncode, err)
