"""``--bundle DIR`` (issue 6, point 4): an OCI runtime bundle from an image.

``config.json`` is checked whole against the expected document (runc's template plus
what the image config says), user resolution against the image's own /etc/passwd and
/etc/group, the user-namespace mappings, the atomic protocol; and ``runc run`` (Debian's
runc) starts a converted test image whose command, a static program compiled here,
prints its identity, as root, with and without a user namespace.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest

from converter import convert
from converter.bundle import DEFAULT_PATH, bundle_config, resolve_user
from converter.errors import InputError, NotFoundError, OutputError, UsageError
from converter.testing.imagegen import Dir, File, ImageSpec, Layer, Symlink, write_docker_archive

IS_ROOT = os.geteuid() == 0
IN_CI = bool(os.environ.get("CI"))
RUNC = shutil.which("runc")
GCC = shutil.which("gcc")

PASSWD = (
    b"root:x:0:0:root:/root:/bin/sh\n"
    b"daemon:x:1:1::/usr/sbin:/usr/sbin/nologin\n"
    b"app:x:1000:1000:App,,,:/home/app:/bin/sh\n"
    b"# a comment\n"
    b"\n"
    b"broken-line\n"
)
GROUP = (
    b"root:x:0:\n"
    b"daemon:x:1:\n"
    b"wheel:x:10:root,app\n"
    b"audio:x:20:bob,app\n"
    b"app:x:1000:\n"
    b"staff:x:50:\n"
)
ETC = [
    Dir("etc/"),
    Dir("usr/"),
    Dir("usr/share/"),
    File("usr/share/passwd", PASSWD),
    Symlink("etc/passwd", "../usr/share/passwd"),  # read through the symlink, inside the image
    File("etc/group", GROUP),
]


def _image(tmp_path: Path, entries: list, name: str = "image.tar", **config: Any) -> Path:
    src = tmp_path / name
    write_docker_archive(src, ImageSpec(layers=[Layer(entries)], **config))
    return src


def _config(bundle: Path) -> dict:
    return json.loads((bundle / "config.json").read_text())


# =====================================================================================
# config.json
# =====================================================================================


def expected_config(process: dict, linux_extra: dict | None = None, gid5: bool = True) -> dict:
    caps = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
    linux: dict = dict(linux_extra or {})
    linux.update({
        "resources": {"devices": [{"allow": False, "access": "rwm"}]},
        "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]
        + ([{"type": "user"}] if linux_extra else []),
        "maskedPaths": [
            "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
            "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi",
        ],
        "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
    })
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            **process,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps, "ambient": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": False},
        "hostname": "rootfs",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"] + (["gid=5"] if gid5 else [])},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
        ],
        "linux": linux,
    }


def test_config_json_from_the_image_config(tmp_path: Path) -> None:
    src = _image(
        tmp_path, ETC + [Dir("app/"), File("app/run", b"#!/bin/sh\n", mode=0o755)],
        entrypoint=["/app/run", "--flag"], cmd=["arg one"], env=["GREETING=hi", "LANG=C.UTF-8"],
        working_dir="app", user="app",
    )
    out = tmp_path / "bundle"
    result = convert(str(src), out, bundle=True)
    assert result.kind == "bundle"
    assert sorted(os.listdir(out)) == ["config.json", "rootfs"]
    assert sorted(os.listdir(out / "rootfs")) == ["app", "etc", "usr"]
    assert os.stat(out).st_mode & 0o777 == 0o700  # setuid-root programs reachable by root alone
    assert _config(out) == expected_config({
        "user": {"uid": 1000, "gid": 1000, "additionalGids": [10, 20]},
        "args": ["/app/run", "--flag", "arg one"],
        "env": [DEFAULT_PATH, "GREETING=hi", "LANG=C.UTF-8"],
        "cwd": "/app",
    })
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_cmd_alone_keeps_the_image_path_and_root_defaults(tmp_path: Path) -> None:
    src = _image(tmp_path, [File("x", b"x")], cmd=["/x", "-v"], env=["PATH=/custom/bin", "A=1"])
    out = tmp_path / "bundle"
    convert(str(src), out, bundle=True)
    cfg = _config(out)
    assert cfg["process"]["args"] == ["/x", "-v"]
    assert cfg["process"]["env"] == ["PATH=/custom/bin", "A=1"]
    assert cfg["process"]["cwd"] == "/"
    assert cfg["process"]["user"] == {"uid": 0, "gid": 0}


USERS = [
    ("", {"uid": 0, "gid": 0, "additionalGids": [10]}),  # root is listed in wheel
    ("root", {"uid": 0, "gid": 0, "additionalGids": [10]}),
    ("app", {"uid": 1000, "gid": 1000, "additionalGids": [10, 20]}),
    ("1000", {"uid": 1000, "gid": 1000, "additionalGids": [10, 20]}),  # a known uid: its passwd entry
    ("4242", {"uid": 4242, "gid": 0}),  # an unknown uid needs no passwd entry
    ("app:staff", {"uid": 1000, "gid": 50}),  # an explicit group: no supplementary groups
    ("app:77", {"uid": 1000, "gid": 77}),
    ("4242:4343", {"uid": 4242, "gid": 4343}),
    ("daemon", {"uid": 1, "gid": 1}),
]


@pytest.mark.parametrize("user,want", USERS, ids=[u or "empty" for u, _ in USERS])
def test_user_resolution_against_the_image(tmp_path: Path, user: str, want: dict) -> None:
    src = _image(tmp_path, ETC, cmd=["/bin/true"], user=user)
    out = tmp_path / "bundle"
    convert(str(src), out, bundle=True)
    assert _config(out)["process"]["user"] == want


@pytest.mark.parametrize("user,missing", [("nobody", "user 'nobody'"), ("app:nogroup", "group 'nogroup'"), ("app:", "empty group")])
def test_unknown_user_or_group_is_an_error_and_nothing_is_written(tmp_path: Path, user: str, missing: str) -> None:
    src = _image(tmp_path, ETC, cmd=["/bin/true"], user=user)
    out = tmp_path / "bundle"
    with pytest.raises(InputError) as info:
        convert(str(src), out, bundle=True)
    assert missing in str(info.value) and repr(user) in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.tar"]


def test_numeric_user_without_passwd_and_named_user_without_passwd(tmp_path: Path) -> None:
    assert resolve_user("123:456", None, None) == {"uid": 123, "gid": 456}
    assert resolve_user("123", None, None) == {"uid": 123, "gid": 0}
    with pytest.raises(InputError, match="no /etc/passwd"):
        resolve_user("app", None, None)


def test_no_command_is_an_error(tmp_path: Path) -> None:
    src = _image(tmp_path, [File("x", b"x")])
    with pytest.raises(InputError, match="neither Entrypoint nor Cmd"):
        convert(str(src), tmp_path / "bundle", bundle=True)
    assert not (tmp_path / "bundle").exists()


def test_cmd_and_user_replace_the_image_process(tmp_path: Path) -> None:
    """An image with no command and a user its /etc/passwd lacks still makes a bundle
    when the caller says what to run and as whom (names resolved as the image's are)."""
    src = _image(tmp_path, ETC + [File("x", b"x")], user="ghost")
    out = tmp_path / "bundle"
    convert(str(src), out, bundle=True, bundle_args=["/x", "two words"], bundle_user="app")
    process = _config(out)["process"]
    assert process["args"] == ["/x", "two words"]
    assert process["user"] == {"uid": 1000, "gid": 1000, "additionalGids": [10, 20]}
    convert(str(src), out, bundle=True, bundle_args=["/x"], bundle_user="0:50", force=True)
    assert _config(out)["process"]["user"] == {"uid": 0, "gid": 50}


def test_a_program_runc_could_not_start_is_warned_about(tmp_path: Path) -> None:
    """The program, its #! interpreter or its ELF interpreter missing from the rootfs is
    a warning (runc would only say "no such file or directory" about a file that exists)."""
    true_elf = Path("/bin/true").read_bytes()  # (dynamic: needs the host's ELF interpreter)
    entries = ETC + [Dir("bin/"), File("bin/script", b"#!/bin/sh\necho hi\n", mode=0o755),
                     File("bin/true", true_elf, mode=0o755), File("bin/ok", b"\x7fELF static enough", mode=0o755)]
    src = _image(tmp_path, entries, cmd=["/bin/script"], env=["PATH=/bin"])
    cases = [
        ({}, "is a script for /bin/sh, which is not in the rootfs"),
        ({"bundle_args": ["nosuch"]}, "'nosuch' is not in the rootfs (looked up in its PATH)"),
        ({"bundle_args": ["true"]}, "needs the ELF interpreter"),
        ({"bundle_args": ["ok"]}, None),
        ({"bundle_args": ["/etc/passwd"]}, None),
    ]
    for i, (kw, says) in enumerate(cases):
        result = convert(str(src), tmp_path / f"b{i}", bundle=True, **kw)
        got = [w.message for w in result.events.warnings if w.kind == "bundle-program-missing"]
        if says is None:
            assert got == [], (kw, got)
        else:
            assert len(got) == 1 and says in got[0], (kw, got)


@pytest.mark.parametrize("kw, error, says", [
    ({"bundle_args": ["/x"]}, UsageError, "need --bundle"),
    ({"bundle_user": "0"}, UsageError, "need --bundle"),
    ({"bundle": True, "bundle_args": []}, UsageError, "give the program"),
    ({"bundle": True, "bundle_args": ["/x"], "bundle_user": "nobody"}, UsageError, "--user 'nobody': no user 'nobody'"),
    ({"bundle": True, "bundle_args": ["/x"], "bundle_user": "\u00b2"}, UsageError, "no user '\u00b2'"),  # (isdigit, not a number)
    ({"bundle": True, "bundle_args": ["/x"], "bundle_user": "\u0661\u0662"}, UsageError, "no user"),  # (int() reads it; ids are ASCII)
], ids=["cmd-alone", "user-alone", "empty-cmd", "unknown-user", "superscript-digit", "arabic-digits"])
def test_bad_process_overrides_write_nothing(tmp_path: Path, kw: dict, error: type, says: str) -> None:
    src = _image(tmp_path, ETC + [File("x", b"x")], cmd=["/x"])
    with pytest.raises(error, match=re.escape(says)):
        convert(str(src), tmp_path / "bundle", **kw)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.tar"]


def test_user_namespace_mappings_and_mapped_owners(tmp_path: Path) -> None:
    if not IS_ROOT:
        pytest.skip("owners can only be checked as root")
    src = _image(tmp_path, ETC + [File("data", b"d", uid=1000, gid=1000)], cmd=["/bin/true"], user="app")
    out = tmp_path / "bundle"
    convert(str(src), out, bundle=True, uid_map=["0:100000:65536"], gid_map=["0:200000:65536"])
    maps = {
        "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
        "gidMappings": [{"containerID": 0, "hostID": 200000, "size": 65536}],
    }
    assert _config(out) == expected_config({
        "user": {"uid": 1000, "gid": 1000, "additionalGids": [10, 20]},
        "args": ["/bin/true"], "env": [DEFAULT_PATH], "cwd": "/",
    }, maps)
    st = os.lstat(out / "rootfs" / "data")
    assert (st.st_uid, st.st_gid) == (101000, 201000)
    st = os.lstat(out / "rootfs")
    assert (st.st_uid, st.st_gid) == (100000, 200000)
    assert os.stat(out).st_mode & 0o777 == 0o755  # the container's root, host uid 100000, reaches rootfs/


def test_mapping_checks(tmp_path: Path) -> None:
    cfg = {"config": {"Cmd": ["/x"], "User": "7:9"}}
    from converter.api import make_id_mapper

    only_uid = make_id_mapper(["0:100000:65536"], [])
    with pytest.raises(UsageError, match="both"):
        bundle_config(cfg, ids=only_uid, passwd=[], group=[])
    small = make_id_mapper(["0:100000:5"], ["0:100000:65536"])
    with pytest.raises(UsageError, match="uid 7"):
        bundle_config(cfg, ids=small, passwd=[], group=[])
    # gid 5 (tty) unmapped: devpts is mounted without gid=5
    tiny = make_id_mapper(["0:100000:10"], ["0:100000:1", "9:100009:1"])
    doc = bundle_config(cfg, ids=tiny, passwd=[], group=[])
    assert [m for m in doc["mounts"] if m["type"] == "devpts"][0]["options"] == [
        "nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620",
    ]
    assert doc["linux"]["gidMappings"] == [{"containerID": 0, "hostID": 100000, "size": 1}, {"containerID": 9, "hostID": 100009, "size": 1}]


def test_existing_destination_force_and_path_selection(tmp_path: Path) -> None:
    src = _image(tmp_path, ETC + [Dir("app/"), File("app/run", b"r", mode=0o755), File("app/other", b"o")], cmd=["/app/run"], user="app")
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "keep").write_text("old")
    with pytest.raises(OutputError):
        convert(str(src), out, bundle=True)
    assert (out / "keep").read_text() == "old"
    # --path prunes the rootfs, but the user is resolved against the whole image first
    convert(str(src), out, bundle=True, force=True, paths=["/app/run"])
    assert not (out / "rootfs" / "etc" / "passwd").exists()
    assert _config(out)["process"]["user"]["uid"] == 1000
    assert not (out / "keep").exists()
    convert(str(src), out, bundle=True, force=True, paths=["/app/run", "/etc/passwd", "/etc/group"])
    assert sorted(os.listdir(out)) == ["config.json", "rootfs"]
    assert sorted(os.listdir(out / "rootfs" / "app")) == ["run"]
    assert sorted(os.listdir(out / "rootfs" / "etc")) == ["group", "passwd"]
    assert _config(out)["process"]["user"]["uid"] == 1000
    with pytest.raises(NotFoundError):
        convert(str(src), tmp_path / "b2", bundle=True, paths=["/nothing"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("b2")]


def test_cli_bundle(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from converter.cli import app

    src = _image(tmp_path, [File("x", b"x")], cmd=["/x"])
    res = CliRunner().invoke(app, ["convert", str(src), "--bundle", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    assert _config(tmp_path / "b")["process"]["args"] == ["/x"]
    res = CliRunner().invoke(app, ["convert", str(src), "--bundle", str(tmp_path / "c"), "--flatten", str(tmp_path / "c.tar")])
    assert res.exit_code == 2
    res = CliRunner().invoke(app, ["convert", str(src), "--bundle", str(tmp_path / "d"), "--cmd", "/x 'a b' c", "--user", "7:8"])
    assert res.exit_code == 0, res.output
    assert _config(tmp_path / "d")["process"]["args"] == ["/x", "a b", "c"]
    assert _config(tmp_path / "d")["process"]["user"] == {"uid": 7, "gid": 8}
    res = CliRunner().invoke(app, ["convert", str(src), "--bundle", str(tmp_path / "e"), "--cmd", "/x 'unclosed"])
    assert res.exit_code == 2 and "No closing quotation" in res.output and not (tmp_path / "e").exists()


# =====================================================================================
# runc run
# =====================================================================================

HELLO_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>
int main(int argc, char **argv) {
    gid_t groups[64];
    int n = getgroups(64, groups);
    char cwd[256], host[256];
    struct stat st, data;
    if (!getcwd(cwd, sizeof cwd)) cwd[0] = 0;
    gethostname(host, sizeof host);
    stat(argv[0], &st);
    stat("/app/data", &data);
    printf("hello from the bundle\n");
    printf("uid=%d gid=%d groups=", (int)getuid(), (int)getgid());
    for (int i = 0; i < n; i++) printf("%s%d", i ? "," : "", (int)groups[i]);
    printf("\ncwd=%s\nhostname=%s\nargs=", cwd, host);
    for (int i = 1; i < argc; i++) printf("[%s]", argv[i]);
    printf("\nGREETING=%s\n", getenv("GREETING") ? getenv("GREETING") : "(unset)");
    printf("owners=%d:%d %d:%d\n", (int)st.st_uid, (int)st.st_gid, (int)data.st_uid, (int)data.st_gid);
    return 0;
}
"""


@pytest.fixture(scope="module")
def hello_static(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    if GCC is None:
        if IN_CI:
            pytest.fail("gcc is needed in CI")
        pytest.skip("gcc not installed")
    tmp = tmp_path_factory.mktemp("hello")
    (tmp / "hello.c").write_text(HELLO_C)
    res = subprocess.run([GCC, "-static", "-O1", "-o", str(tmp / "hello"), str(tmp / "hello.c")], capture_output=True, text=True)
    if res.returncode != 0:
        if IN_CI:
            pytest.fail(f"gcc -static failed (libc6-dev installed?): {res.stderr}")
        pytest.skip(f"gcc -static failed: {res.stderr}")
    return (tmp / "hello").read_bytes()


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A scratch directory every user can traverse: with a user namespace, runc's
    container root is an unprivileged host uid that must reach the bundle's rootfs."""
    d = Path(tempfile.mkdtemp(prefix="rootfs-bundle-test-", dir="/tmp"))
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(d)], check=False)


def _need_runc() -> None:
    if not IS_ROOT:
        if IN_CI:
            pytest.fail("runc tests must run as root in CI")
        pytest.skip("runc run needs root")
    if RUNC is None:
        if IN_CI:
            pytest.fail("runc is needed in CI (apt-get install runc)")
        pytest.skip("runc not installed (apt-get install runc)")


def _runc_run(bundle: Path, cid: str) -> subprocess.CompletedProcess:
    """``runc run`` the bundle (the container removed afterwards, whatever happened); it
    must succeed."""
    try:
        res = subprocess.run([RUNC, "run", "-b", str(bundle), cid], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)  # type: ignore[list-item]
    finally:
        subprocess.run([RUNC, "delete", "-f", cid], capture_output=True)  # type: ignore[list-item]
    assert res.returncode == 0, res.stderr
    return res


@pytest.mark.parametrize("userns", [False, True], ids=["plain", "userns"])
def test_runc_runs_the_bundle(open_dir: Path, hello_static: bytes, userns: bool) -> None:
    _need_runc()
    entries = ETC + [
        Dir("app/"),
        File("app/hello", hello_static, mode=0o755),
        File("app/data", b"data", uid=1000, gid=50),
        Dir("work/", mode=0o777),
    ]
    src = _image(open_dir, entries, entrypoint=["/app/hello", "first"], cmd=["second arg"],
                 env=["PATH=/app", "GREETING=hi there"], working_dir="/work", user="app")
    out = open_dir / "bundle"
    maps: dict[str, Any] = {"uid_map": ["0:100000:65536"], "gid_map": ["0:100000:65536"]} if userns else {}
    convert(str(src), out, bundle=True, **maps)
    res = _runc_run(out, f"rootfs-test-{os.getpid()}-{int(userns)}")
    assert res.stdout == (
        "hello from the bundle\n"
        "uid=1000 gid=1000 groups=10,20\n"
        "cwd=/work\n"
        "hostname=rootfs\n"
        "args=[first][second arg]\n"
        "GREETING=hi there\n"
        "owners=0:0 1000:50\n"  # as the container sees them, with or without the mapping
    )
    if userns:
        st = os.lstat(out / "rootfs" / "app" / "data")
        assert (st.st_uid, st.st_gid) == (101000, 100050)


def test_runc_runs_the_command_and_user_given(open_dir: Path, hello_static: bytes) -> None:
    """An image with no command of its own, run as another user than its own."""
    _need_runc()
    entries = ETC + [Dir("app/"), File("app/hello", hello_static, mode=0o755), File("app/data", b"data")]
    src = _image(open_dir, entries, env=["GREETING=set"], user="app")
    out = open_dir / "bundle"
    r = subprocess.run([sys.executable, "-m", "converter", "convert", str(src), "--bundle", str(out), "-q",
                        "--cmd", "/app/hello 'one arg' two", "--user", "daemon"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    res = _runc_run(out, f"rootfs-test-{os.getpid()}-cmd")
    assert res.stdout.splitlines()[:6] == [
        "hello from the bundle", "uid=1 gid=1 groups=", "cwd=/", "hostname=rootfs", "args=[one arg][two]", "GREETING=set",
    ]
