"""``--bundle DIR``: an OCI runtime bundle (``DIR/rootfs/`` + ``DIR/config.json``).

The bundle follows the OCI runtime specification (what ``runc run -b DIR`` and ``crun``
start).  ``config.json`` starts from runc's own ``runc spec`` template (mounts,
namespaces, capabilities, rlimits, masked and read-only paths) and takes from the image
config what a container engine would:

* ``process.args``: ``Entrypoint`` + ``Cmd``, or ``--cmd`` (``Cmd`` alone without an entrypoint; an
  image with none of them is an error: there is nothing to run);
* ``process.env``: ``Env``, plus a default ``PATH`` when the image sets none;
* ``process.cwd``: ``WorkingDir`` (made absolute), else ``/``;
* ``process.user``: ``User`` or ``--user`` (``name``, ``uid``, ``name:group``, ``uid:gid``...) resolved
  against the image's own ``/etc/passwd`` and ``/etc/group`` as runc/Docker resolve it:
  a name must exist; a bare uid takes the primary group its passwd entry gives (else 0);
  without an explicit group, the groups listing the user become ``additionalGids``;
* ``hostname``, ``terminal: false``, a writable root (``root.readonly: false``);
* with ``--uid-map``/``--gid-map``: a ``user`` namespace and ``linux.uidMappings`` /
  ``gidMappings`` from the same ranges the rootfs owners were mapped with.

The bundle is built atomically like every output: in ``DIR.partial-<pid>-<random>``
(mode 0700) and renamed into place at the end; an error leaves ``DIR`` as it was.  It
stays 0700 unless ids are mapped (see :func:`bundle_mode`).
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional, Sequence

from .errors import InputError, OutputError, UsageError
from .ids import IdMapper, IdRange
from .image import Image
from .merge import REG, Node, Plan
from .sinks.atomic import begin_directory, commit, discard
from .sinks.directory import DirectoryOptions, DirResult, write_directory

OCI_VERSION = "1.0.2"
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_HOSTNAME = "rootfs"
#: what ``runc spec`` grants (bounding = effective = permitted = ambient)
DEFAULT_CAPS = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
MASKED_PATHS = [
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
    "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi",
]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
MAX_ID_FILE = 4 << 20


# ------------------------------------------------------------------------ user lookup


def _id_file(plan: Optional[Plan], path: bytes) -> Optional[list[list[str]]]:
    """The colon-separated records of /etc/passwd or /etc/group in the plan (symlinks
    followed inside the image); None when the file is not there."""
    if plan is None:
        return None
    from .pathselect import Selector

    data = Selector(plan, plan.events).read_file(path, MAX_ID_FILE)
    if data is None:
        return None
    records = []
    for line in data.decode("utf-8", "replace").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "+", "-")):
            continue
        records.append(line.split(":"))
    return records


def missing_program(plan: Plan, config: dict[str, Any]) -> Optional[str]:
    """Why runc could not start the bundle's program in ``plan``'s tree, or None: the
    program (a name without ``/`` looked up in the process's PATH, as runc does), its
    ``#!`` interpreter or its ELF interpreter is not there.  The sample image's own
    entrypoint is a script for a /bin/sh it does not have: worth a word before runc says
    "no such file or directory" about a file that exists."""
    from .elf import ElfError, parse_elf
    from .pathselect import Selector, read_node

    process = config.get("process", {})
    args = process.get("args") or []
    if not args:
        return None
    sel = Selector(plan, plan.events)

    def find(path: str) -> Optional[Node]:
        stack, _ = sel.lookup(os.fsencode(path))
        node = stack[-1][1] if stack else None
        return node if node is not None and node.kind == REG else None

    prog = args[0]
    if "/" in prog:
        node = find(prog if prog.startswith("/") else os.path.join(process.get("cwd") or "/", prog))
    else:
        path = next((e[5:] for e in process.get("env", []) if e.startswith("PATH=")), "")
        node = next((n for n in (find(os.path.join(d or ".", prog)) for d in path.split(":") if d.startswith("/")) if n), None)
    if node is None:
        return f"the bundle's program {prog!r} is not in the rootfs" + ("" if "/" in prog else " (looked up in its PATH)")
    try:
        head = read_node(node, 0, min(node.size, 256))
        if head.startswith(b"#!"):
            words = head[2:].split(b"\n", 1)[0].split()
            interp = os.fsdecode(words[0]) if words else ""
            if interp and find(interp) is None:
                return f"the bundle's program {prog!r} is a script for {interp}, which is not in the rootfs"
        elif head[:4] == b"\x7fELF":
            info = parse_elf(lambda off, n: read_node(node, off, n), node.size)
            if info is not None and info.interp and find(os.fsdecode(info.interp)) is None:
                return f"the bundle's program {prog!r} needs the ELF interpreter {os.fsdecode(info.interp)}, which is not in the rootfs"
    except (OSError, ElfError):
        return None
    return None


def _num(text: str) -> Optional[int]:
    if text.isascii() and text.isdigit():  # (not '²' or Arabic-Indic digits, which isdigit() accepts)
        value = int(text)
        if value < 1 << 32:
            return value
    return None


def resolve_user(user: str, passwd: Optional[list[list[str]]], group: Optional[list[list[str]]], *,
                 what: str = "image config User") -> dict[str, Any]:
    """The OCI ``process.user`` for an image's ``User`` (runc's ``GetExecUser`` rules);
    ``what`` names where the text came from, for errors."""
    user = (user or "").strip()
    # a name the image lacks: the image's own mistake, or the command line's (--user)
    missing = UsageError if what == "--user" else InputError
    user_part, _, group_part = user.partition(":")
    has_group = ":" in user
    if has_group and not group_part:
        raise InputError(f"{what} {user!r}: empty group")
    uid = 0
    gid = 0
    name: Optional[str] = None
    if user_part:
        entry = None
        num = _num(user_part)
        for rec in passwd or []:
            if len(rec) < 4:
                continue
            if (num is None and rec[0] == user_part) or (num is not None and _num(rec[2]) == num):
                entry = rec
                break
        if num is None:
            if entry is None:
                where = "the image's /etc/passwd" if passwd is not None else "the image (it has no /etc/passwd; with --path, add --path /etc/passwd)"
                raise missing(f"{what} {user!r}: no user {user_part!r} in {where}")
            uid = _num(entry[2]) or 0
        else:
            uid = num
        if entry is not None:
            name = entry[0]
            gid = _num(entry[3]) or 0
    elif passwd is not None:
        for rec in passwd:
            if len(rec) >= 4 and _num(rec[2]) == 0:
                name = rec[0]
                gid = _num(rec[3]) or 0
                break
    additional: list[int] = []
    if has_group:
        num = _num(group_part)
        if num is not None:
            gid = num
        else:
            match = next((rec for rec in group or [] if len(rec) >= 3 and rec[0] == group_part), None)
            if match is None:
                where = "the image's /etc/group" if group is not None else "the image (it has no /etc/group; with --path, add --path /etc/group)"
                raise missing(f"{what} {user!r}: no group {group_part!r} in {where}")
            gid = _num(match[2]) or 0
    elif name is not None:
        for rec in group or []:
            if len(rec) >= 4 and name in rec[3].split(","):
                g = _num(rec[2])
                if g is not None and g != gid and g not in additional:
                    additional.append(g)
    out: dict[str, Any] = {"uid": uid, "gid": gid}
    if additional:
        out["additionalGids"] = additional
    return out


# ------------------------------------------------------------------------ config.json


def _mappings(ranges: list[IdRange]) -> list[dict[str, int]]:
    return [{"containerID": r.container, "hostID": r.host, "size": r.size} for r in ranges]


def _covered(ranges: list[IdRange], value: int) -> bool:
    return any(r.container <= value < r.container + r.size for r in ranges)


def bundle_config(
    image_config: dict[str, Any],
    *,
    plan: Optional[Plan] = None,
    ids: Optional[IdMapper] = None,
    hostname: str = DEFAULT_HOSTNAME,
    passwd: Optional[list[list[str]]] = None,
    group: Optional[list[list[str]]] = None,
    args: Optional[Sequence[str]] = None,
    user: Optional[str] = None,
) -> dict[str, Any]:
    """The ``config.json`` document for an image config (the whole config blob, or just
    its ``config`` object).  ``/etc/passwd`` and ``/etc/group`` are read from ``plan``
    unless given as parsed records.

    ``args`` replaces ``Entrypoint`` + ``Cmd`` and ``user`` the image's ``User`` (resolved
    the same way), as ``docker run --entrypoint ... --user ...`` would: the program a
    pipeline runs is often not the image's own, and an image may have none."""
    cfg = image_config.get("config") if isinstance(image_config.get("config"), dict) else None
    if cfg is None:
        cfg = image_config if any(k in image_config for k in ("Cmd", "Entrypoint", "Env")) else {}

    def strings(key: str) -> list[str]:
        value = cfg.get(key)
        if value is None:
            return []
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InputError(f"image config {key}: expected a list of strings")
        return list(value)

    if args is not None:
        args = list(args)
        if not args or not args[0]:
            raise UsageError("--cmd: give the program to run (and its arguments)")
    else:
        args = strings("Entrypoint") + strings("Cmd")
        if not args:
            raise InputError("image config has neither Entrypoint nor Cmd: a bundle needs a command to run "
                             "(give one with --cmd)")
    env = strings("Env")
    if not any(e.startswith("PATH=") for e in env):
        env.insert(0, DEFAULT_PATH)
    cwd = cfg.get("WorkingDir") or "/"
    if not isinstance(cwd, str):
        raise InputError("image config WorkingDir: expected a string")
    if not cwd.startswith("/"):
        cwd = "/" + cwd
    user_text = (cfg.get("User") or "") if user is None else user
    if not isinstance(user_text, str):
        raise InputError("image config User: expected a string")
    if passwd is None:
        passwd = _id_file(plan, b"/etc/passwd")
    if group is None:
        group = _id_file(plan, b"/etc/group")
    user_doc = resolve_user(user_text, passwd, group, what="image config User" if user is None else "--user")

    ids = ids or IdMapper()
    uranges, granges = ids.uids.ranges, ids.gids.ranges
    userns = bool(uranges or granges)
    if userns:
        if ids.owner is not None:
            raise UsageError("--bundle: --owner cannot be combined with --uid-map/--gid-map")
        if not (uranges and granges):
            raise UsageError("--bundle with a user namespace needs both --uid-map and --gid-map")
        for kind, value, ranges in [("uid", user_doc["uid"], uranges), ("gid", user_doc["gid"], granges)] + [
            ("gid", g, granges) for g in user_doc.get("additionalGids", [])
        ]:
            if not _covered(ranges, value):
                raise UsageError(f"--bundle: the image's user needs container {kind} {value}, which --{kind}-map does not map")

    devpts = ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]
    if not userns or _covered(granges, 5):
        devpts.append("gid=5")
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": devpts},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
    ]
    namespaces = [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")]
    linux: dict[str, Any] = {}
    if userns:
        namespaces.append({"type": "user"})
        linux["uidMappings"] = _mappings(uranges)
        linux["gidMappings"] = _mappings(granges)
    linux.update({
        "resources": {"devices": [{"allow": False, "access": "rwm"}]},
        "namespaces": namespaces,
        "maskedPaths": list(MASKED_PATHS),
        "readonlyPaths": list(READONLY_PATHS),
    })
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": False,
            "user": user_doc,
            "args": args,
            "env": env,
            "cwd": cwd,
            "capabilities": {k: list(DEFAULT_CAPS) for k in ("bounding", "effective", "permitted", "ambient")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": False},
        "hostname": hostname,
        "mounts": mounts,
        "linux": linux,
    }


# ------------------------------------------------------------------------ the sink


def write_bundle(
    plan: Plan, image: Image, dest: str, options: Optional[DirectoryOptions] = None, *, config: Optional[dict[str, Any]] = None,
) -> DirResult:
    """Write ``plan`` as ``dest/rootfs`` and the image's ``dest/config.json``, atomically;
    the image is verified before the bundle appears.

    ``config``: a document made earlier by :func:`bundle_config` (e.g. on the plan before
    ``--path`` pruned /etc/passwd away); by default it is made here from ``plan``."""
    options = options or DirectoryOptions()
    dest = os.path.abspath(dest)
    # the config first: a bad User or a command-less image fails before anything is written
    if config is None:
        config = bundle_config(image.config or {}, plan=plan, ids=options.ids)
    document = (json.dumps(config, indent=2) + "\n").encode()
    partial = begin_directory(dest, force=options.force)
    try:
        inner = DirectoryOptions(**{**options.__dict__, "force": False})
        result = write_directory(plan, os.path.join(partial, "rootfs"), inner)
        _write_config(os.path.join(partial, "config.json"), document, dest)
        os.chmod(partial, bundle_mode(options.ids))
        commit(partial, dest)
    except BaseException:
        discard(partial)
        raise
    result.path = dest
    return result


def bundle_mode(ids: Any) -> int:
    """0700 (EDGE-CASES 76, umoci#181): the rootfs holds the image's setuid-root programs,
    which no other host user should reach.  With --uid-map/--gid-map, 0755: the
    container's root is then an unprivileged host uid that must reach rootfs/, and the
    programs are owned by mapped, unprivileged ids."""
    return 0o755 if ids.uids.ranges or ids.gids.ranges else 0o700


def _write_config(path: str, document: bytes, dest: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            view = memoryview(document)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise OutputError(f"{dest}: cannot write config.json: {exc.strerror}") from None
