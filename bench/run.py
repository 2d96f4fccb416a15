"""The runner: times each case's tools side by side and checks the targets of issue 8.

Every measurement spawns the tool with :class:`subprocess.Popen` and reaps it with
:func:`os.wait4`, which gives the wall time and the child's peak RSS (``ru_maxrss``,
which on Linux also covers the descendants it waited for, such as ``pigz`` under
``tar -I pigz``). Tools sharing an input run interleaved (A, B, C, A, B, C, ...), the
best of ``runs`` counts, and the output directory (on tmpfs when there is room) is
emptied between runs, outside the timed part.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

from .images import ALL_INPUTS, REF, InputInfo, check_directory, ensure_inputs

MB = 1024 * 1024
REPO = Path(__file__).resolve().parent.parent


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- tools


def rootfs_binary() -> str:
    """The ``rootfs`` script next to this interpreter (the venv's), else on PATH."""
    candidate = Path(sys.executable).parent / "rootfs"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("rootfs")
    if not found:
        raise SystemExit("bench: cannot find the rootfs command (run `make venv` first)")
    return found


@dataclass
class Paths:
    """Where one measurement writes (all under the work directory, removed between runs)."""

    work: Path

    @property
    def dir(self) -> Path:
        return self.work / "out"

    @property
    def tar(self) -> Path:
        return self.work / "out.tar"

    @property
    def bundle(self) -> Path:
        return self.work / "bundle"

    @property
    def stderr(self) -> Path:
        return self.work / "stderr.log"


@dataclass
class Tool:
    """How to run one tool on one input: a list of commands run in turn and timed as one."""

    key: str
    label: str
    commands: Callable[[InputInfo, Paths], list[list[str]]]
    prepare: Callable[[Paths], None] = lambda p: None


def _tar_decompressor(compression: str) -> list[str] | None:
    """GNU tar's flags for a layer blob, with the fastest external decompressor."""
    if compression == "none":
        return []
    if compression == "gzip":
        return ["-I", "pigz"] if shutil.which("pigz") else ["-z"]
    if compression == "zstd":
        return ["-I", "zstd"] if shutil.which("zstd") else None
    return None


def tar_label(compression: str) -> str:
    flags = _tar_decompressor(compression)
    if compression == "none":
        return "GNU tar"
    if flags is None:
        return f"GNU tar (no {compression} tool)"
    return "GNU tar " + " ".join(flags)


def make_tools() -> dict[str, Tool]:
    rootfs = rootfs_binary()
    rootless = [] if os.geteuid() == 0 else ["--rootless"]

    def tar_commands(inp: InputInfo, p: Paths) -> list[list[str]]:
        flags = _tar_decompressor(inp.compression)
        assert flags is not None
        base = ["tar", "--same-owner", "--xattrs", "--numeric-owner", *flags, "-xf"]
        return [[*base, layer, "-C", str(p.dir)] for layer in inp.layers]

    return {
        "tar": Tool("tar", "GNU tar", tar_commands, prepare=lambda p: p.dir.mkdir()),
        "rootfs-dir": Tool("rootfs-dir", "rootfs -o DIR", lambda i, p: [[rootfs, "convert", i.source, "-o", str(p.dir)]]),
        "rootfs-flatten": Tool("rootfs-flatten", "rootfs --flatten", lambda i, p: [[rootfs, "convert", i.source, "--flatten", str(p.tar)]]),
        "umoci": Tool("umoci", "umoci unpack", lambda i, p: [["umoci", "unpack", *rootless, "--image", f"{i.layout}:{REF}", str(p.bundle)]]),
    }


def tool_available(key: str, inp: InputInfo) -> str | None:
    """None when the tool can run on this input, else why not."""
    if key == "tar":
        if not shutil.which("tar"):
            return "GNU tar not installed"
        if _tar_decompressor(inp.compression) is None:
            return f"no {inp.compression} decompressor for tar (make bench-deps)"
    if key == "umoci":
        if not shutil.which("umoci"):
            return "umoci not installed (make bench-deps)"
        if inp.layout is None:
            return "umoci needs an OCI layout"
    return None


# --------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    """One target of issue 8: ``tool`` against ``baseline`` on ``input``."""

    id: str
    number: int  # the target's number in issue 8
    title: str
    input: str
    baseline: str
    tool: str
    max_ratio: float | None
    rss_limit: Optional[Callable[[InputInfo], int]] = None  # bytes
    rss_text: str = ""
    ratio_text: str = ""


def _dir_rss(inp: InputInfo) -> int:
    return 64 * MB


def _flatten_rss(inp: InputInfo) -> int:
    return 64 * MB + 1024 * inp.entries


CASES: tuple[Case, ...] = (
    Case("docker", 1, "dir from docker save", "realistic-docker", "tar", "rootfs-dir", 1.0, _dir_rss, "≤64 MB"),
    Case("gzip", 2, "dir from OCI gzip", "realistic-oci-gzip", "tar", "rootfs-dir", 0.75, _dir_rss, "≤64 MB"),
    Case("zstd", 3, "dir from OCI zstd", "realistic-oci-zstd", "tar", "rootfs-dir", 1.0, _dir_rss, "≤64 MB"),
    Case("flatten", 4, "tar from docker save", "realistic-docker", "tar", "rootfs-flatten", 1.0, _flatten_rss, "≤64 MB+1 KB/entry"),
    Case("umoci", 5, "vs umoci, OCI gzip", "realistic-oci-gzip", "umoci", "rootfs-dir", 1 / 3, None, "", "≤0.33× (≥3× faster)"),
    Case("small", 7, "dir, 50k small files", "smallfiles-docker", "tar", "rootfs-dir", 1.3, _dir_rss, "≤64 MB"),
)
CASE_IDS = tuple(c.id for c in CASES) + ("startup",)
STARTUP_LIMIT = 0.200  # seconds, `rootfs --version`


# --------------------------------------------------------------------------- measuring


@dataclass
class Measurement:
    input: str
    tool: str
    label: str
    times: list[float] = field(default_factory=list)
    rss_kb: list[int] = field(default_factory=list)
    error: str | None = None
    skipped: str | None = None

    @property
    def best(self) -> float | None:
        return min(self.times) if self.times and not self.error else None

    @property
    def peak_rss(self) -> int | None:
        """Bytes: the largest peak over the runs (what the target bounds)."""
        return max(self.rss_kb) * 1024 if self.rss_kb and not self.error else None


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        def retry(func, p, exc):  # type: ignore[no-untyped-def]
            os.chmod(os.path.dirname(p), 0o700)  # a read-only dir written as non-root
            func(p)

        shutil.rmtree(path, onerror=retry)


class Spawner:
    """The measuring helper (:mod:`bench.spawn`), a lean process of its own so that a
    child's peak RSS is not inflated by this process's (see there)."""

    def __init__(self) -> None:
        script = Path(__file__).with_name("spawn.py")
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )

    def run(self, commands: list[list[str]], stderr_path: Path) -> tuple[float, int, str | None]:
        """Run commands in turn; (wall seconds, peak RSS KB of any of them, error or None)."""
        stderr_path.write_bytes(b"")
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"commands": commands, "stderr": str(stderr_path)}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("bench: the measuring helper (bench/spawn.py) died")
        reply = json.loads(line)
        error = None
        if reply["failed"] is not None:
            tail = stderr_path.read_bytes()[-600:].decode("utf-8", "replace").strip()
            error = f"{' '.join(reply['failed'][:4])} ... exited {reply['status']}: {tail}"
        return reply["seconds"], reply["maxrss_kb"], error

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()


def warm(inp: InputInfo) -> None:
    """Read the input's files once so every tool starts from a warm page cache."""
    paths = [Path(inp.source)] if inp.kind == "docker" else [Path(inp.layout or "")]
    paths += [Path(p) for p in inp.layers]
    buf = bytearray(1 << 20)
    for root in paths:
        files = [root] if root.is_file() else [f for f in root.rglob("*") if f.is_file()]
        for f in files:
            with open(f, "rb", buffering=0) as fh:
                while fh.readinto(buf):
                    pass


def measure_group(spawner: Spawner, inp: InputInfo, tools: list[Tool], runs: int, paths: Paths) -> dict[str, Measurement]:
    """Run ``tools`` on ``inp`` interleaved, ``runs`` rounds."""
    results = {t.key: Measurement(inp.name, t.key, t.label) for t in tools}
    warm(inp)
    for r in range(runs):
        for tool in tools:
            m = results[tool.key]
            if m.error:
                continue
            for target in (paths.dir, paths.tar, paths.bundle):
                _remove(target)
            tool.prepare(paths)
            seconds, rss, error = spawner.run(tool.commands(inp, paths), paths.stderr)
            if error:
                m.error = error
                log(f"  [{inp.name}] {tool.label}: FAILED {error}")
                continue
            if r == 0 and tool.key == "rootfs-dir":
                # Untimed: a fast but wrong result must not pass.
                problems = check_directory(paths.dir, inp.expectations)
                if problems:
                    m.error = f"wrong output ({len(problems)} problem(s)): " + "; ".join(problems[:3])
                    log(f"  [{inp.name}] {tool.label}: {m.error}")
                    continue
            m.times.append(seconds)
            m.rss_kb.append(rss)
            log(f"  [{inp.name}] run {r + 1}/{runs} {tool.label:<18} {seconds:7.2f} s  {rss / 1024:7.1f} MB")
    for target in (paths.dir, paths.tar, paths.bundle):
        _remove(target)
    return results


def measure_startup(spawner: Spawner, rootfs: str, paths: Paths, runs: int = 5) -> tuple[Measurement, str]:
    m = Measurement("-", "rootfs-version", "rootfs --version")
    out = subprocess.run([rootfs, "--version"], capture_output=True, text=True)
    version = (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr).strip() else f"exit {out.returncode}"
    for _ in range(runs):
        seconds, rss, error = spawner.run([[rootfs, "--version"]], paths.stderr)
        if error:
            m.error = error
            break
        m.times.append(seconds)
        m.rss_kb.append(rss)
    return m, version


# --------------------------------------------------------------------------- machine


def _first_line(argv: list[str]) -> str | None:
    if not shutil.which(argv[0]):
        return None
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else None


def filesystem_type(path: Path) -> str:
    """The type of the mounted file system holding ``path`` (from /proc/mounts)."""
    real = os.path.realpath(path)
    best, kind = "", "unknown"
    try:
        with open("/proc/mounts") as f:
            for line in f:
                fields = line.split()
                if len(fields) < 3:
                    continue
                mount = fields[1].replace("\\040", " ")
                if (real == mount or real.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best):
                    best, kind = mount, fields[2]
    except OSError:
        pass
    return kind


def machine(rootfs_version: str, work: Path) -> dict[str, object]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gb": memory,
        "kernel": platform.release(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "rootfs_version": rootfs_version,
        "output_dir": str(work),
        "output_fs": filesystem_type(work),
        "loadavg_start": list(os.getloadavg()),
        "euid": os.geteuid(),
        "tools": {
            "tar": _first_line(["tar", "--version"]),
            "pigz": _first_line(["pigz", "--version"]),
            "zstd": _first_line(["zstd", "--version"]),
            "umoci": _first_line(["umoci", "--version"]),
        },
    }


def work_directory(need: int) -> Path:
    """A fresh directory for outputs: under ``$BENCH_DIR``, else /dev/shm when it has room
    for ``need`` bytes (twice, plus slack), else ``.bench/out`` (not tmpfs: noisier)."""
    env = os.environ.get("BENCH_DIR")
    if env:
        base = Path(env)
    else:
        base = REPO / ".bench" / "out"
        shm = Path("/dev/shm")
        if shm.is_dir() and os.access(shm, os.W_OK):
            st = os.statvfs(shm)
            if st.f_bavail * st.f_frsize > 2 * need + 256 * MB:
                base = shm
        if base != shm:
            log(f"bench: /dev/shm missing or too small; writing outputs to {base} (disk: expect noise)")
    base.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="rootfs-bench-", dir=base))


# --------------------------------------------------------------------------- report


@dataclass
class Row:
    case: str
    number: int | None
    title: str
    role: str  # "baseline" or "candidate"
    tool: str
    input: str
    best_s: float | None
    runs_s: list[float]
    ratio: float | None
    peak_rss_mb: float | None
    target: str
    ok: bool | None  # None: baseline row / skipped
    note: str = ""
    enforced: bool = True  # False with --quick: ok is shown in parentheses, never fails the run


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def evaluate(case: Case, inp: InputInfo, base: Measurement, cand: Measurement, enforce: bool) -> list[Row]:
    ratio = cand.best / base.best if cand.best is not None and base.best else None
    checks: list[bool] = []
    target_parts: list[str] = []
    which: list[str] = []
    note = ""
    if case.max_ratio is not None:
        target_parts.append(case.ratio_text or f"≤{case.max_ratio:.2f}×")
        checks.append(ratio is not None and ratio <= case.max_ratio + 1e-9)
        which.append("time")
    if case.rss_limit is not None:
        limit = case.rss_limit(inp)
        target_parts.append(f"RSS≤{limit / MB:.0f} MB")
        checks.append(cand.peak_rss is not None and cand.peak_rss <= limit)
        which.append("RSS")
    if base.skipped or cand.skipped:
        note = base.skipped or cand.skipped or ""
    elif base.error or cand.error:
        note = "error: " + (cand.error or base.error or "")[:300]
    elif not all(checks):
        note = "missed: " + ", ".join(w for w, ok in zip(which, checks) if not ok)
    ok = (None if (base.skipped or cand.skipped) else False) if (base.skipped or cand.skipped or base.error or cand.error) else all(checks)
    # A tool that failed fails the run even with --quick; a missed target does not.
    enforced = enforce or bool(base.error or cand.error)
    label = f"{case.number} {case.title}"
    rows = [
        Row(case.id, case.number, label, "baseline", base.label, inp.name, base.best, base.times, 1.0 if base.best else None,
            _mb(base.peak_rss), "baseline", None),
        Row(case.id, case.number, label, "candidate", cand.label, inp.name, cand.best, cand.times, ratio,
            _mb(cand.peak_rss), ", ".join(target_parts), ok, note, enforced),
    ]
    return rows


def _mb(value: int | None) -> float | None:
    return None if value is None else round(value / MB, 1)


def print_table(rows: list[Row]) -> None:
    headers = ("case", "tool", "best s", "ratio", "RSS MB", "target", "")
    lines = []
    previous = None
    for r in rows:
        mark = {True: "✓", False: "✗", None: ""}[r.ok]
        if r.note and r.ok is None:
            mark = "skip"
        elif r.ok is False and r.note.startswith("missed: "):
            mark += " " + r.note[len("missed: "):]
        elif r.ok is False:
            mark += " error"
        if r.ok is not None and not r.enforced:
            mark = f"({mark})"
        lines.append((r.title if r.title != previous else "", r.tool, _fmt(r.best_s, ".2f"), _fmt(r.ratio, ".2f") + ("×" if r.ratio is not None else ""),
                      _fmt(r.peak_rss_mb, ".1f"), r.target, mark))
        previous = r.title
    widths = [max(len(h), *(len(l[i]) for l in lines)) for i, h in enumerate(headers)]
    right = {2, 3, 4}

    def fmt(cols: tuple[str, ...]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cols, widths))).rstrip()

    print(fmt(headers))
    print("  ".join("-" * w for w in widths))
    for line in lines:
        print(fmt(line))
    for r in rows:
        if r.note and not r.note.startswith("missed: "):
            print(f"  note ({r.title}, {r.tool}): {r.note}")


# --------------------------------------------------------------------------- main


def compile_package() -> None:
    """Byte-compile the package first, as installing it does: an editable checkout run
    with PYTHONDONTWRITEBYTECODE=1 would otherwise compile every module at every start
    (measured: 0.21 s instead of 0.08 s before the first layer is read)."""
    import compileall

    compileall.compile_dir(str(REPO / "converter"), quiet=1)


def run(case_ids: list[str], runs: int, quick: bool, json_path: Path | None) -> int:
    started = time.perf_counter()
    selected = [c for c in CASES if c.id in case_ids]
    scale = "quick" if quick else "full"
    inputs_root = REPO / ".bench" / ("quick" if quick else "")
    names = {c.input for c in selected}
    t0 = time.perf_counter()
    inputs = ensure_inputs(inputs_root, names, scale, log) if names else {}
    generation = time.perf_counter() - t0
    for inp in inputs.values():
        log(f"input {inp.name}: {inp.entries} entries, {inp.tar_bytes / MB:.0f} MB of tar, {inp.blob_bytes / MB:.0f} MB of blobs"
            f" ({inp.ratio:.2f}×), {'cached' if inp.cached else f'generated in {inp.generated_seconds:.0f} s'}")

    compile_package()
    need = max((i.tar_bytes for i in inputs.values()), default=0)
    work = work_directory(need)
    paths = Paths(work)
    tools = make_tools()
    rootfs = rootfs_binary()
    spawner = Spawner()
    try:
        startup, version = measure_startup(spawner, rootfs, paths)
        _, floor_kb, _ = spawner.run([["true"]], paths.stderr)
        desc = machine(version, work)
        desc["rss_floor_mb"] = round(floor_kb / 1024, 1)
        log(f"outputs in {work} ({desc['output_fs']}); {runs} run(s) per tool, interleaved")

        # Group the (input, tool) pairs the selected cases need, by input, in case order.
        groups: dict[str, list[str]] = {}
        for c in selected:
            for key in (c.baseline, c.tool):
                if key not in groups.setdefault(c.input, []):
                    groups[c.input].append(key)
        measured: dict[tuple[str, str], Measurement] = {}
        for name, keys in groups.items():
            inp = inputs[name]
            runnable = []
            for key in keys:
                why = tool_available(key, inp)
                label = tar_label(inp.compression) if key == "tar" else tools[key].label
                if why:
                    measured[name, key] = Measurement(name, key, label, skipped=why)
                    log(f"  [{name}] {label}: skipped ({why})")
                else:
                    tool = tools[key]
                    runnable.append(Tool(tool.key, label, tool.commands, tool.prepare))
            for key, m in measure_group(spawner, inp, runnable, runs, paths).items():
                measured[name, key] = m

        rows: list[Row] = []
        for c in selected:
            rows += evaluate(c, inputs[c.input], measured[c.input, c.baseline], measured[c.input, c.tool], enforce=not quick)
        if "startup" in case_ids:
            best = startup.best
            ok: bool | None = best is not None and best < STARTUP_LIMIT
            rows.append(Row("startup", None, "start-up", "candidate", "rootfs --version", "-", best, startup.times, None,
                            _mb(startup.peak_rss), f"<{STARTUP_LIMIT:.2f} s (best of 5)", ok, startup.error or "",
                            enforced=not quick or bool(startup.error)))
        desc["loadavg_end"] = list(os.getloadavg())
    finally:
        spawner.close()
        shutil.rmtree(work, ignore_errors=True)

    elapsed = time.perf_counter() - started
    print()
    print(f"rootfs bench{' (--quick: targets not enforced)' if quick else ''}: {desc['cpu']}, {desc['cores']} cores, "
          f"{desc['memory_gb']} GB, {desc['python']}, output on {desc['output_fs']}; best of {runs}")
    print(f"{version}")
    print_table(rows)
    print(f"(peak RSS of each child via os.wait4; below {desc['rss_floor_mb']} MB a figure is the measuring helper's floor, not the tool's)")
    missed = [r for r in rows if r.ok is False and r.enforced]
    if quick:
        would = sum(1 for r in rows if r.ok is False and not r.enforced)
        verdict = f"--quick: targets not enforced ({would} would be missed)" + (f"; {len(missed)} tool error(s)" if missed else "")
    else:
        verdict = "all targets met" if not missed else f"{len(missed)} target(s) missed"
    print(f"\n{verdict}; "
          f"{elapsed:.0f} s in all ({generation:.0f} s preparing inputs); load average {desc['loadavg_start'][0]:.2f} → {desc['loadavg_end'][0]:.2f}")  # type: ignore[index]

    report = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "quick": quick,
        "runs": runs,
        "cases": case_ids,
        "machine": desc,
        "inputs": {
            i.name: {
                "entries": i.entries, "tar_mb": round(i.tar_bytes / MB, 1), "blob_mb": round(i.blob_bytes / MB, 1),
                "compression": i.compression, "compression_ratio": round(i.ratio, 2),
                "generated_seconds": round(i.generated_seconds, 1), "cached": i.cached,
            }
            for i in inputs.values()
        },
        "rows": [asdict(r) for r in rows],
        "all_targets_met": not missed and not any(r.ok is False for r in rows),
        "elapsed_seconds": round(elapsed, 1),
        "input_seconds": round(generation, 1),
    }
    if json_path is None:
        json_path = (REPO / ".bench" / "results-quick.json") if quick else (REPO / "bench" / "results.json")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    shown = os.path.relpath(json_path) if json_path.resolve().is_relative_to(Path.cwd()) else json_path
    print(f"results written to {shown}")
    return 1 if missed else 0


__all__ = ["run", "CASES", "CASE_IDS", "ALL_INPUTS"]
