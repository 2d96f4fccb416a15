"""Command line: a thin typer layer over :mod:`converter.api`.

Errors are one line on stderr (``rootfs: error: ...``) with the exit codes documented in
README.md and :data:`converter.errors.EXIT_CODES`; ``--debug`` adds the traceback.
Results go to stdout, progress and summaries to stderr; colour only on a terminal and
never with ``NO_COLOR``.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, List, Optional

import typer

from . import __version__
from .command import ConvertArgs, human, Progress, registry_options, state, run_convert, run_process
from .command import run_guarded as _run_guarded

app = typer.Typer(
    name="rootfs",
    help="Turn a container image (docker save, OCI layout or archive, registry) into a plain root filesystem: "
         "a directory, one tar, or an OCI runtime bundle for runc/crun.",
    no_args_is_help=True,
    add_completion=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)

# registry options, shared by every command that can read docker://REF
CREDS = typer.Option(None, "--creds", envvar="ROOTFS_CREDS", metavar="USER:PASS", help="Registry USER:PASS (default: docker/podman auth files).")
AUTHFILE = typer.Option(None, "--authfile", envvar="REGISTRY_AUTH_FILE", metavar="FILE", help="Registry auth file (docker config.json format).")
INSECURE = typer.Option(False, "--insecure", help="Allow plain HTTP and unverified TLS for the registry.")
CERT_DIR = typer.Option(None, "--cert-dir", metavar="DIR", help="Directory with *.crt CAs and client.cert/client.key (docker certs.d layout).")
CA_FILE = typer.Option(None, "--ca-file", metavar="FILE", help="Extra CA bundle for the registry.")
KEEP_DIRLINKS = typer.Option(False, "--keep-dirlinks", help="A directory entry over a symlink to a directory keeps the symlink "
                             "and goes to its target (umoci's keep-dirlinks; default: replace it, as Docker does).")


def run_guarded(fn: Callable[[], Any]) -> Any:
    """:func:`converter.command.run_guarded`, letting typer's own exits through."""
    return _run_guarded(fn, passthrough=(typer.Exit,))


def _from_environment(ctx: typer.Context, name: str) -> bool:
    """Whether option ``name`` took its value from its environment variable."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name == "ENVIRONMENT"


def _broken_pipe() -> None:
    raise BrokenPipeError  # (run_guarded makes it a quiet exit 141, as for ls)


def _version(value: bool) -> None:
    if value:
        from .compression import GZIP_BACKEND
        from .libzstd import version as libzstd_version

        native = libzstd_version()
        zstd = f"libzstd {native}" if native else "zstandard"
        print(f"rootfs {__version__} (gzip: {GZIP_BACKEND}, zstd: {zstd}, python {sys.version.split()[0]})")
        raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """rootfs converter."""


@app.command(
    epilog=(
        "[b]Examples[/b]\n\n"
        "  rootfs convert httpd.tar -o rootfs/\n\n"
        "  rootfs convert httpd.tar --flatten httpd-rootfs.tar.zst\n\n"
        "  rootfs convert oci:layout:v1 --platform linux/arm64 -o arm-root\n\n"
        "  docker save app | rootfs convert - --flatten - | tar -tv\n\n"
        "  rootfs convert app.tar -o out --uid-map 0:100000:65536 --gid-map 0:100000:65536\n\n"
        "  rootfs convert app.tar -o base --layers 2            # only the first two layers\n\n"
        "  rootfs convert app.tar --flatten l3.tar --only-layer 3   # one layer's raw diff\n\n"
        "  rootfs convert httpd.tar -o out --path /usr/local/apache2/bin/httpd --with-deps\n\n"
        "  rootfs convert app.tar --bundle bundle/ && runc run -b bundle/ app\n\n"
        "  rootfs convert app.tar --bundle fuzz/ --cmd '/out/target -runs=100' --user 65534"
    )
)
def convert(
    ctx: typer.Context,
    source: str = typer.Argument(..., metavar="SOURCE", help="Image: PATH, -, docker-archive:PATH[:REF], oci:DIR[:REF], oci-archive:PATH[:REF], docker://REF."),
    output: Optional[str] = typer.Option(None, "-o", "--output", metavar="DIR", help="Write the root filesystem into this directory."),
    flatten: Optional[str] = typer.Option(None, "--flatten", metavar="FILE", help="Write one tar instead (- for stdout; .gz/.zst/.xz compress)."),
    ref: Optional[str] = typer.Option(None, "--ref", envvar="ROOTFS_REF", metavar="REF", help="Which image of a multi-image archive: tag or ref name, #N, or a digest (prefix)."),
    platform: Optional[str] = typer.Option(None, "--platform", envvar="ROOTFS_PLATFORM", metavar="OS/ARCH", help="os/arch\\[/variant] for multi-platform images (default: this host)."),
    force: bool = typer.Option(False, "--force", "-f", help="Replace an existing output: a directory there is deleted with everything in it (never one holding the source, . or ~)."),
    no_verify: bool = typer.Option(False, "--no-verify", help="Skip digest and diff_id checks (not recommended)."),
    uid_map: List[str] = typer.Option([], "--uid-map", metavar="C:H:N", help="CONTAINER:HOST:SIZE, repeatable (the /etc/subuid form)."),
    gid_map: List[str] = typer.Option([], "--gid-map", metavar="C:H:N", help="CONTAINER:HOST:SIZE, repeatable."),
    unmapped_id: Optional[int] = typer.Option(None, "--unmapped-id", metavar="ID", help="Owner for ids outside every map range (default: error)."),
    subuid: Optional[str] = typer.Option(None, "--subuid", metavar="USER", help="Map owners with USER's ranges from /etc/subuid and /etc/subgid."),
    owner: Optional[str] = typer.Option(None, "--owner", metavar="UID:GID", help="Give every entry this UID:GID (e.g. 0:0)."),
    reproducible: bool = typer.Option(False, "--reproducible", help="Accepted for build scripts: the tar is always byte-identical for the same image (SOURCE_DATE_EPOCH, when set, also clamps mtimes)."),
    max_entries: int = typer.Option(10_000_000, "--max-entries", envvar="ROOTFS_MAX_ENTRIES", metavar="N", help="Refuse images with more entries."),
    max_ratio: int = typer.Option(1000, "--max-ratio", envvar="ROOTFS_MAX_RATIO", metavar="N", help="Refuse layers inflating past 1 GiB and this ratio (0: off)."),
    max_size: Optional[str] = typer.Option(None, "--max-size", envvar="ROOTFS_MAX_SIZE", metavar="SIZE", help="Refuse to write more than this: file contents, or the whole tar with --flatten (e.g. 20G; default: free space)."),
    layers: Optional[str] = typer.Option(None, "--layers", metavar="N|A..B", help="Apply only the first N layers, or A..B (1-based, inclusive; A.. and ..B are open ranges)."),
    skip_layer: List[str] = typer.Option([], "--skip-layer", metavar="LAYER", help="Leave out a layer: 1-based index, digest or unique prefix; repeatable."),
    only_layer: Optional[str] = typer.Option(None, "--only-layer", metavar="LAYER", help="One layer alone (a tar keeps its .wh. whiteout entries: the raw diff)."),
    devices: str = typer.Option("skip", "--devices", metavar="skip|empty", help="Device nodes when not root: skip or empty (empty regular files)."),
    path: List[str] = typer.Option([], "--path", metavar="PATH", help="Only this path (glob allowed) and its parents; repeatable."),
    with_deps: bool = typer.Option(False, "--with-deps", help="With --path: add the shared libraries ELF files need (found as the dynamic loader would)."),
    bundle: Optional[str] = typer.Option(None, "--bundle", metavar="DIR", help="Write an OCI runtime bundle: DIR/rootfs + DIR/config.json (for runc/crun)."),
    cmd: Optional[str] = typer.Option(None, "--cmd", metavar="'PROGRAM [ARGS]'",
                                      help="With --bundle: run this instead of the image's Entrypoint + Cmd (shell-style words)."),
    user: Optional[str] = typer.Option(None, "--user", metavar="USER[:GROUP]",
                                       help="With --bundle: run as this user instead of the image's (names resolved in the image)."),
    report: Optional[str] = typer.Option(None, "--report", metavar="FILE", help="Write a JSON report of what was done (- for stdout)."),
    creds: Optional[str] = CREDS,
    authfile: Optional[str] = AUTHFILE,
    insecure: bool = INSECURE,
    cert_dir: Optional[str] = CERT_DIR,
    ca_file: Optional[str] = CA_FILE,
    keep_ids: str = typer.Option("none", "--keep-ids", metavar="none|xattr", help="Not root: 'xattr' records the image's owners in user.rootlesscontainers (and emptied devices in user.rootfs.device)."),
    keep_dirlinks: bool = KEEP_DIRLINKS,
    quiet: bool = typer.Option(False, "--quiet", "-q", envvar="ROOTFS_QUIET", help="Only errors."),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, metavar="", show_default=False,
                                 help="Per-entry decisions (whiteouts, skips) and every warning, not one a kind."),
    debug: bool = typer.Option(False, "--debug", envvar="ROOTFS_DEBUG", help="Tracebacks on errors."),
) -> None:
    """Convert an image to a directory (-o), one flattened tar (--flatten) or an OCI runtime bundle (--bundle)."""
    if quiet and verbose and _from_environment(ctx, "quiet"):
        quiet = False  # (an explicit -v wins over a ROOTFS_QUIET=1 set for every run)
    state.update(debug=debug, quiet=quiet, verbose=verbose)
    run_guarded(lambda: run_convert(ConvertArgs(
        source, output, flatten, ref, platform, force, no_verify, tuple(uid_map), tuple(gid_map), unmapped_id, subuid,
        owner, reproducible, max_entries, max_ratio, max_size, layers, tuple(skip_layer), only_layer, devices,
        tuple(path), with_deps, bundle, cmd, user, report, creds, authfile, insecure, cert_dir, ca_file, keep_ids,
        keep_dirlinks, quiet, verbose, debug)))


def main() -> None:
    """Entry point: the typer app, as the whole process (see
    :func:`converter.command.run_process`)."""
    run_process(_run_app)


def _run_app() -> Any:
    """Run the typer app with command-line mistakes (unknown option, bad value, missing
    argument) reported as every other error is: one line on stderr, exit 2, not click's
    framed box."""
    try:
        from typer._click import exceptions as click_errors  # typer >= 0.20 vendors click
    except ImportError:  # pragma: no cover - older typer
        from click import exceptions as click_errors  # type: ignore[no-redef]
    try:
        return app(standalone_mode=False)
    except click_errors.ClickException as exc:
        no_args = getattr(click_errors, "NoArgsIsHelpError", None)
        if no_args is not None and isinstance(exc, no_args):
            exc.show()  # (the help, as `rootfs` or `rootfs convert` alone asks for)
            return exc.exit_code
        message = " ".join(exc.format_message().split())
        ctx = getattr(exc, "ctx", None)
        where = f" (see '{ctx.command_path} -h')" if ctx is not None else ""
        print(f"rootfs: error: {message}{where}", file=sys.stderr)
        return exc.exit_code
    except typer.Abort:
        return 130


_TYPE_CHAR = {"f": "-", "d": "d", "l": "l", "c": "c", "b": "b", "p": "p", "s": "s"}


def _mode_string(kind: str, mode: int) -> str:
    chars = _TYPE_CHAR.get(kind, "?")
    for shift, special, sch in ((6, 0o4000, "sS"), (3, 0o2000, "sS"), (0, 0o1000, "tT")):
        bits = (mode >> shift) & 7
        r = "r" if bits & 4 else "-"
        w = "w" if bits & 2 else "-"
        x = bits & 1
        if mode & special:
            xc = sch[0] if x else sch[1]
        else:
            xc = "x" if x else "-"
        chars += r + w + xc
    return chars


@app.command(
    name="ls",
    epilog=(
        "[b]Examples[/b]\n\n"
        "  rootfs ls httpd.tar\n\n"
        "  rootfs ls httpd.tar /usr/local/apache2/bin\n\n"
        "  rootfs ls oci:layout:v1 --json | jq '.entries[].path'\n\n"
        "  rootfs ls app.tar --format tree > app.tree   # the canonical listing, with sha256"
    ),
)
def ls_command(
    source: str = typer.Argument(..., metavar="SOURCE", help="Image spec (as for convert)."),
    path: Optional[str] = typer.Argument(None, metavar="[PATH]", help="Only this path, what is below it and the directories "
                                         "holding it; globs and symlinks inside the image as for convert --path."),
    ref: Optional[str] = typer.Option(None, "--ref", envvar="ROOTFS_REF", metavar="REF", help="Which image of a multi-image archive: tag or ref name, #N, or a digest (prefix)."),
    platform: Optional[str] = typer.Option(None, "--platform", envvar="ROOTFS_PLATFORM", metavar="OS/ARCH", help="os/arch\\[/variant]."),
    as_json: bool = typer.Option(False, "--json", help="One JSON document: {\"entries\": [...]}."),
    fmt: str = typer.Option("long", "--format", metavar="long|tree|paths", help="long (like ls -l), tree (canonical listing with sha256), or paths."),
    keep_dirlinks: bool = KEEP_DIRLINKS,
    debug: bool = typer.Option(False, "--debug", envvar="ROOTFS_DEBUG", help="Tracebacks on errors."),
) -> None:
    """List the merged view of an image without writing anything."""
    state.update(debug=debug)

    def body() -> None:
        import json

        from .api import plan_image
        from .errors import NotFoundError, UsageError
        from .listing import escape, format_listing
        from .merge import Events
        from .pathselect import select_paths
        from .sources import open_image
        from .treeview import records_from_plan

        if fmt not in ("long", "tree", "paths"):
            raise UsageError(f"--format {fmt!r}: use long, tree or paths")
        with open_image(source, ref=ref, platform=platform) as image:
            plan = plan_image(image, keep_dirlinks=keep_dirlinks)
            try:
                plan.verify()
                if path:
                    # what `convert --path PATH` would write: symlinks on the way followed
                    # inside the image (/lib/x on a merged-/usr image), globs expanded
                    try:
                        select_paths(plan, [path], with_deps=False, events=Events())
                    except NotFoundError:
                        raise NotFoundError(f"{path}: not in the image") from None
                records = list(records_from_plan(plan, hash_files=(fmt == "tree" and not as_json)))
                records.sort(key=lambda r: r.path)
                heads: dict[int, bytes] = {}  # a hard-linked inode's first path (as a tar's link head)
                link_to = {}
                for r in records:
                    if r.inode is not None:
                        head = heads.setdefault(r.inode, r.path)
                        if head != r.path:
                            link_to[r.path] = head
                out = sys.stdout
                if as_json:
                    entries = []
                    for r in records:
                        # names are escaped as in the canonical listing (and diff --json):
                        # always valid UTF-8 JSON, and two different names never look alike
                        e: dict[str, Any] = {
                            "path": escape(r.path),
                            "type": r.type, "mode": f"{r.mode:o}", "uid": r.uid, "gid": r.gid,
                            "size": r.size, "target": None if r.target is None else escape(r.target),
                        }
                        if r.path in link_to:
                            e["link_to"] = escape(link_to[r.path])  # (the same inode: a hard link)
                        if r.rdev:
                            e["device"] = list(r.rdev)
                        if r.xattrs:
                            e["xattrs"] = sorted(r.xattrs)
                        entries.append(e)
                    json.dump({"entries": entries}, out, indent=1, ensure_ascii=False)
                    out.write("\n")
                elif fmt == "tree":
                    out.write(format_listing(records))
                elif fmt == "paths":
                    for r in records:
                        out.write(escape(r.path) + "\n")
                else:
                    for r in records:
                        size = str(r.size) if r.size is not None else (f"{r.rdev[0]},{r.rdev[1]}" if r.rdev else "-")
                        line = f"{_mode_string(r.type, r.mode)} {r.uid:>5}:{r.gid:<5} {size:>10} {escape(r.path)}"
                        if r.target is not None:
                            line += f" -> {escape(r.target)}"
                        elif r.path in link_to:
                            line += f" link to {escape(link_to[r.path])}"
                        out.write(line + "\n")
            finally:
                plan.close()

    run_guarded(body)



@app.command(
    name="inspect",
    epilog=(
        "[b]Examples[/b]\n\n"
        "  rootfs inspect httpd.tar\n\n"
        "  rootfs inspect oci:layout:v1 --platform linux/arm64 --json\n\n"
        "  rootfs inspect app.tar --entries      # also count entries per layer (reads every layer)"
    ),
)
def inspect_command(
    source: str = typer.Argument(..., metavar="SOURCE", help="Image spec (as for convert)."),
    ref: Optional[str] = typer.Option(None, "--ref", envvar="ROOTFS_REF", metavar="REF", help="Which image of a multi-image archive: tag or ref name, #N, or a digest (prefix)."),
    platform: Optional[str] = typer.Option(None, "--platform", envvar="ROOTFS_PLATFORM", metavar="OS/ARCH", help="os/arch\\[/variant]."),
    as_json: bool = typer.Option(False, "--json", help="One JSON document (shape documented in the README)."),
    entries: bool = typer.Option(False, "--entries", help="Count entries and uncompressed bytes per layer (reads and verifies every layer)."),
    debug: bool = typer.Option(False, "--debug", envvar="ROOTFS_DEBUG", help="Tracebacks on errors."),
) -> None:
    """Show an image's reference, digests, platform, config and layers."""
    state.update(debug=debug)

    def body() -> None:
        import json

        from .errors import ChoiceNeeded
        from .inspect import inspect

        try:
            info = inspect(source, ref=ref, platform=platform, count_entries=entries)
        except ChoiceNeeded as exc:
            # several images and no choice made: the choices are the answer
            choices = exc.choices
            if len(choices) < 2:
                raise
            if as_json:
                json.dump({"reference": None, "choices": choices}, sys.stdout, indent=2)
                sys.stdout.write("\n")
            else:
                print(f"{'standard input' if source == '-' else source} holds {len(choices)} images; "
                      f"choose one with --ref (and --platform):")
                for c in choices:
                    print(f"  {c['reference'] or '(untagged)'}  {c['platform'] or '-'}  {c['digest'] or ''}")
            raise typer.Exit(2)
        if as_json:
            json.dump(info.to_json(), sys.stdout, indent=2, ensure_ascii=False)
            sys.stdout.write("\n")
            return
        from rich.console import Console
        from rich.table import Table

        console = Console(no_color=bool(os.environ.get("NO_COLOR")) or None, highlight=False,
                          width=None if sys.stdout.isatty() else 200, soft_wrap=not sys.stdout.isatty())
        console.on_broken_pipe = _broken_pipe  # type: ignore[method-assign]  # (rich would exit 1: `| head` is no failure)
        c = info.config
        console.print(f"[b]{info.reference or '(untagged)'}[/b]  {info.format}  {info.platform or ''}")
        for label, value in (
            ("manifest", info.digest), ("config", info.config_digest), ("entrypoint", c["entrypoint"]),
            ("cmd", c["cmd"]), ("user", c["user"] or None), ("workdir", c["workdir"] or None),
            ("ports", ", ".join(c["exposed_ports"]) or None), ("created", c["created"]),
        ):
            if value:
                console.print(f"  {label:<11}{value}", markup=False)
        for e in c["env"]:
            console.print(f"  {'env':<11}{e}", markup=False)
        for k, v in sorted(c["labels"].items()):
            console.print(f"  {'label':<11}{k}={v}", markup=False)
        table = Table(show_edge=False, pad_edge=False)
        for col in ("#", "digest", "size", "compression") + (("uncompressed", "entries") if entries else ()) + ("created by",):
            table.add_column(col, overflow="fold")
        for layer in info.layers:
            row = [str(layer.index), (layer.digest or layer.diff_id or "-")[:19], human(layer.size or 0), layer.compression]
            if entries:
                row += [human(layer.uncompressed_size or 0), str(layer.entries)]
            made = layer.created_by or ""
            row.append(made[:79] + "…" if len(made) > 80 and sys.stdout.isatty() else made)
            table.add_row(*row)
        console.print(table)
        empties = sum(1 for h in info.history if h["empty_layer"])
        if empties:
            console.print(f"  ({empties} history steps made no layer)")
        if len(info.choices) > 1:
            console.print(f"  the source holds {len(info.choices)} images:")
            for c in info.choices:
                console.print(f"    {c['reference'] or '(untagged)'}  {c['platform'] or '-'}  {c['digest'] or ''}", markup=False)

    run_guarded(body)


def _show_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ":".join(str(v) for v in value) if all(isinstance(v, int) for v in value) else ",".join(map(str, value)) or "-"
    return "-" if value is None or value == "" else str(value)


@app.command(
    name="diff",
    epilog=(
        "[b]Examples[/b]\n\n"
        "  rootfs diff app-1.0.tar app-1.1.tar\n\n"
        "  rootfs diff oci:layout:v1 oci:layout:v2 --json\n\n"
        "  rootfs diff docker-archive:a.tar oci-archive:b.tar && echo same tree\n\n"
        "  rootfs diff multi.oci multi.oci --platform-a linux/amd64 --platform-b linux/arm64\n\n"
        "Exit status: 0 identical, 1 different, other codes: errors (as for convert)."
    ),
)
def diff_command(
    source_a: str = typer.Argument(..., metavar="SOURCE_A", help="First image spec."),
    source_b: str = typer.Argument(..., metavar="SOURCE_B", help="Second image spec."),
    platform: Optional[str] = typer.Option(None, "--platform", envvar="ROOTFS_PLATFORM", metavar="OS/ARCH", help="os/arch\\[/variant] for both."),
    ref_a: Optional[str] = typer.Option(None, "--ref-a", metavar="REF", help="Which image of SOURCE_A, if it holds several (as convert's --ref)."),
    ref_b: Optional[str] = typer.Option(None, "--ref-b", metavar="REF", help="Which image of SOURCE_B, if it holds several."),
    platform_a: Optional[str] = typer.Option(None, "--platform-a", metavar="OS/ARCH", help="SOURCE_A's platform (e.g. to compare amd64 with arm64)."),
    platform_b: Optional[str] = typer.Option(None, "--platform-b", metavar="OS/ARCH", help="SOURCE_B's platform."),
    as_json: bool = typer.Option(False, "--json", help="{identical, added, removed, changed: [{path, changes}]}."),
    keep_dirlinks: bool = KEEP_DIRLINKS,
    debug: bool = typer.Option(False, "--debug", envvar="ROOTFS_DEBUG", help="Tracebacks on errors."),
) -> None:
    """Show what differs between two images' merged views (like diff -r, without extracting)."""
    state.update(debug=debug)

    def body() -> int:
        import json

        from .api import plan_image
        from .listing import escape
        from .sources import open_image
        from .treediff import diff_plans

        with open_image(source_a, ref=ref_a, platform=platform_a or platform) as ia, \
                open_image(source_b, ref=ref_b, platform=platform_b or platform) as ib:
            pa = plan_image(ia, keep_dirlinks=keep_dirlinks)
            pb = plan_image(ib, keep_dirlinks=keep_dirlinks)
            try:
                pa.verify()
                pb.verify()
                d = diff_plans(pa, pb)
            finally:
                pa.close()
                pb.close()
        if as_json:
            json.dump(d.to_json(), sys.stdout, indent=1, ensure_ascii=False)
            sys.stdout.write("\n")
        else:
            for p in d.removed:
                print(f"- {escape(p)}")
            for p in d.added:
                print(f"+ {escape(p)}")
            for p, changes in d.changed:
                detail = ", ".join(f"{k} {_show_value(v[0])} -> {_show_value(v[1])}" if k != "content" else "content"
                                   for k, v in changes.items())
                print(f"~ {escape(p)}  ({detail})")
        return 0 if d.identical else 1

    code = run_guarded(body)
    raise typer.Exit(code)


@app.command(
    name="pull",
    epilog=(
        "[b]Examples[/b]\n\n"
        "  rootfs pull alpine:3.20 --to oci:images:alpine     # then, offline: rootfs convert oci:images:alpine -o root\n\n"
        "  rootfs pull docker://ghcr.io/org/app@sha256:... --to docker-archive:app.tar\n\n"
        "  rootfs pull localhost:5000/app:1 --to oci:layout --all-platforms --insecure"
    ),
)
def pull_command(
    ref: str = typer.Argument(..., metavar="REF", help="[docker://][REGISTRY/]NAME[:TAG][@DIGEST] (Docker Hub defaults)."),
    to: str = typer.Option(..., "--to", metavar="DEST", help="oci:DIR[:TAG] (an OCI layout, blobs shared between images) or docker-archive:FILE."),
    platform: Optional[str] = typer.Option(None, "--platform", envvar="ROOTFS_PLATFORM", metavar="OS/ARCH", help="os/arch\\[/variant] (default: this host)."),
    all_platforms: bool = typer.Option(False, "--all-platforms", help="oci: only: keep the whole index, every platform."),
    force: bool = typer.Option(False, "--force", "-f", help="Replace an existing docker-archive file."),
    creds: Optional[str] = CREDS,
    authfile: Optional[str] = AUTHFILE,
    insecure: bool = INSECURE,
    cert_dir: Optional[str] = CERT_DIR,
    ca_file: Optional[str] = CA_FILE,
    quiet: bool = typer.Option(False, "--quiet", "-q", envvar="ROOTFS_QUIET", help="Only errors."),
    debug: bool = typer.Option(False, "--debug", envvar="ROOTFS_DEBUG", help="Tracebacks on errors."),
) -> None:
    """Copy an image from a registry into an OCI layout or a docker save archive, for offline use."""
    state.update(debug=debug, quiet=quiet)

    def body() -> None:
        from .image import Platform
        from .registry import pull

        progress = Progress(enabled=not quiet)
        try:
            result = pull(
                ref.removeprefix("docker://"), to, platform=Platform.parse(platform) if platform else None,
                all_platforms=all_platforms, force=force,
                options=registry_options(creds, authfile, insecure, cert_dir, ca_file, progress.event),
            )
        finally:
            progress.stop()
        if not quiet:
            print(
                f"pulled {result.reference} ({result.manifest_digest[:19]}…) to {result.destination}: "
                f"{result.blobs_fetched} blobs fetched ({human(result.bytes_fetched)}), {result.blobs_skipped} already present",
                file=sys.stderr,
            )

    run_guarded(body)
