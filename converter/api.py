"""The Python API: ``convert(source, output, ...)`` and friends, over sources -> merge -> sinks.

The CLI is a thin layer over these functions; test suites call them directly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from .errors import UsageError
from .ids import IdMap, IdMapper, IdRange, check_id, read_subid_file
from .image import Image, Layer, Platform
from .layerstream import Limits
from .merge import Events, LayerStats, MergeOptions, Plan, build_plan, gc_paused
from .opening import Opening
from .prestart import opening_key, take as take_early
from .select import select_layers
from .sinks.directory import DirectoryOptions, write_directory
from .sinks.tar import TarOptions, write_tar
from .sources import open_image


@dataclass
class ConvertResult:
    """What a conversion produced (also the basis of the CLI summary and ``--report``)."""

    output: str
    kind: str  # "dir" or "tar"
    entries: int
    bytes: int
    layers_applied: list[int]
    reference: Optional[str]
    manifest_digest: Optional[str]
    config_digest: Optional[str]
    source_format: str
    warnings: dict[str, int] = field(default_factory=dict)
    events: Optional[Events] = None
    platform: Optional[str] = None
    source: str = ""
    layers: list[LayerStats] = field(default_factory=list)
    verified: bool = True  # False with verify=False (--no-verify): no digest was checked


def make_id_mapper(
    uid_map: Sequence[str] = (),
    gid_map: Sequence[str] = (),
    *,
    unmapped_id: Optional[int] = None,
    owner: Optional[str] = None,
    subuid: Optional[str] = None,
    subid_files: tuple[str, str] = ("/etc/subuid", "/etc/subgid"),
) -> IdMapper:
    """Build the owner mapping from ``--uid-map``/``--gid-map`` ranges, or from the ranges
    ``/etc/subuid`` and ``/etc/subgid`` give ``subuid`` (a user name)."""
    fixed = None
    if unmapped_id is not None and not (uid_map or gid_map or subuid is not None):
        raise UsageError("--unmapped-id only applies with --uid-map, --gid-map or --subuid")
    if owner is not None:
        try:
            u, g = owner.split(":")
            fixed = (int(u), int(g))
        except ValueError:
            raise UsageError(f"--owner {owner!r}: expected UID:GID, e.g. 0:0") from None
        check_id(fixed[0], what="--owner uid")
        check_id(fixed[1], what="--owner gid")
    if unmapped_id is not None:
        check_id(unmapped_id, what="--unmapped-id")
    uranges = [IdRange.parse(r, what="--uid-map") for r in uid_map]
    granges = [IdRange.parse(r, what="--gid-map") for r in gid_map]
    if subuid is not None:
        if uranges or granges:
            raise UsageError("--subuid cannot be combined with --uid-map/--gid-map")
        uranges = read_subid_file(subid_files[0], subuid)
        granges = read_subid_file(subid_files[1], subuid)
    return IdMapper(
        uids=IdMap(uranges, unmapped_id, "uid"),
        gids=IdMap(granges, unmapped_id, "gid"),
        owner=fixed,
    )


def _require_cwd(source: str, out: str) -> None:
    """Relative paths need a current directory: one deleted under a shell is a one-line
    error, not an internal one from deep inside."""
    paths = [out] if out != "-" else []
    if not source.startswith("docker://"):
        where = source.split(":", 1)[1] if source.startswith(("oci:", "oci-archive:", "docker-archive:")) else source
        paths += [where] if where != "-" else []
    if all(os.path.isabs(p) for p in paths):
        return
    try:
        os.getcwd()
    except FileNotFoundError:
        raise UsageError("the current directory no longer exists: give absolute paths, or cd to a directory "
                         "that exists") from None


def _refuse_losing_what_matters(out: str, source: str, *, force: bool) -> None:
    """``--force`` deletes what is at the destination: never the source image, the
    current directory, the home directory or ``/`` (``-o . -f`` beside the image had
    deleted the image and everything else in the directory).  Nor is the source its own
    output.  A symbolic link at the destination is what --force replaces, not where it
    leads (see check_destination)."""
    from .sources import parse_spec

    path = os.path.abspath(out)
    if not os.path.lexists(path) or os.path.islink(path):
        return
    try:
        spec = parse_spec(source)
    except Exception:  # (a bad spec is reported when the source is opened)
        spec = None
    real = os.path.realpath(path)
    src = os.path.realpath(spec.path) if spec is not None and spec.transport != "docker" and spec.path != "-" else None
    if src is not None and real == src:
        raise UsageError(f"{out}: is the source image itself; write the output elsewhere")
    if not force or not os.path.isdir(path):
        return
    home = os.path.expanduser("~")
    for what, inner in (("the source image", src), ("the current directory", os.getcwd()),
                        ("your home directory", home if home != "~" else None)):
        if inner is not None and (os.path.realpath(inner) + os.sep).startswith(real.rstrip(os.sep) + os.sep):
            raise UsageError(f"{out}: --force would delete it with everything in it, {what} included; "
                             f"write to a new directory instead")


def plan_image(
    image: Image,
    *,
    layers: Optional[list[Layer]] = None,
    verify: bool = True,
    limits: Optional[Limits] = None,
    events: Optional[Events] = None,
    spool_dir: Optional[str] = None,
    progress: Optional[Callable[[str, dict], None]] = None,
    keep_whiteouts: bool = False,
    stage_beside: Optional[str] = None,
    keep_dirlinks: bool = False,
    opening: Optional[Opening] = None,
) -> Plan:
    """Merge ``layers`` (default: all) of an open image into a :class:`Plan`.
    ``stage_beside``: the destination of a directory output (see :mod:`converter.staging`).
    ``opening``: those layers already opened with these options (the plan takes it over)."""
    options = MergeOptions(
        verify=verify, limits=limits or Limits(), spool_dir=spool_dir, progress=progress,
        keep_whiteouts=keep_whiteouts, stage_beside=stage_beside, keep_dirlinks=keep_dirlinks,
    )
    return build_plan(image, layers, options=options, events=events or Events(), opening=opening)


def convert(
    source: str,
    output: str | os.PathLike[str],
    *,
    flatten: bool = False,
    ref: Optional[str] = None,
    platform: Optional[str | Platform] = None,
    force: bool = False,
    verify: bool = True,
    uid_map: Sequence[str] = (),
    gid_map: Sequence[str] = (),
    unmapped_id: Optional[int] = None,
    owner: Optional[str] = None,
    subuid: Optional[str] = None,
    subid_files: tuple[str, str] = ("/etc/subuid", "/etc/subgid"),
    reproducible: bool = False,
    source_date_epoch: Optional[int] = None,
    max_entries: int = 10_000_000,
    max_ratio: int = 1000,
    max_size: Optional[int] = None,
    privileged: Optional[bool] = None,
    devices: str = "skip",
    keep_ids: str = "none",
    progress: Optional[Callable[[str, dict], None]] = None,
    events: Optional[Events] = None,
    registry_options: Any = None,
    layers: Optional[str | int] = None,
    skip_layers: Sequence[str] = (),
    only_layer: Optional[str] = None,
    paths: Sequence[str] = (),
    with_deps: bool = False,
    bundle: bool = False,
    bundle_args: Optional[Sequence[str]] = None,
    bundle_user: Optional[str] = None,
    keep_dirlinks: bool = False,
    keep_tree: Optional[list[object]] = None,
) -> ConvertResult:
    """Convert ``source`` (a path or skopeo-style spec) to a directory, or with
    ``flatten=True`` to one tar (``-`` for stdout; ``.gz``/``.zst``/``.xz`` compress).

    ``paths`` (globs, repeatable) keeps only those paths of the merged view (and their
    parents; symlinks on the way are followed inside the image); ``with_deps`` adds the
    shared libraries ELF files among them need.  ``bundle=True`` makes ``output`` an OCI
    runtime bundle (``output/rootfs`` + ``output/config.json``) instead of a bare rootfs;
    ``bundle_args`` and ``bundle_user`` replace the image's Entrypoint + Cmd and User there.

    ``layers`` (``N`` or ``"A..B"``, 1-based), ``skip_layers`` and ``only_layer`` choose
    layers (see :mod:`converter.select`); ``only_layer`` with ``flatten`` keeps the layer's
    whiteout markers as ``.wh.`` entries (the raw diff).

    ``keep_dirlinks``: a directory entry over a symlink to a directory keeps the symlink
    and applies to that directory (umoci's keep-dirlinks; default: Docker's replace).

    ``keep_tree``: a list the merged view is appended to instead of being freed on return
    (a process about to exit skips freeing it node by node: about 20 ms per 30k entries).

    Raises :class:`~converter.errors.ConverterError` subclasses for bad input; the
    destination is then left exactly as it was."""
    out = os.fspath(output)
    events = events or Events()
    mapper = make_id_mapper(uid_map, gid_map, unmapped_id=unmapped_id, owner=owner, subuid=subuid, subid_files=subid_files)
    mapper.on_fallback = lambda kind, value, where: events.warn(
        "unmapped-id", f"{where}: {kind} {value} is outside every map range; written as {unmapped_id}",
        path=where.removeprefix("output ").strip("'"),
    )
    if not bundle and (bundle_args is not None or bundle_user is not None):
        raise UsageError("--cmd and --user set the bundle's process: they need --bundle")
    if max_entries < 1 or max_ratio < 0 or (max_size is not None and max_size < 0):
        raise UsageError("--max-entries must be at least 1, --max-ratio and --max-size not negative")
    limits = Limits(max_entries=max_entries, max_ratio=max_ratio, max_size=max_size)
    if source_date_epoch is None:
        # (reproducible-builds.org convention; the tar is deterministic with or without it:
        # ``reproducible`` is accepted and changes nothing)
        env = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
        if env:
            if not env.isdigit():
                raise UsageError(f"SOURCE_DATE_EPOCH={env!r}: expected a number of seconds")
            source_date_epoch = int(env)
    if flatten and out != "-":
        from .sinks.tar import compression_for

        compression_for(out)  # (an unsupported suffix is refused before any work)
    _require_cwd(source, out)
    if out != "-":
        _refuse_losing_what_matters(out, source, force=force)
    key = opening_key(source, out, flatten=flatten, ref=ref, platform=platform, layers=layers, skip=skip_layers,
                      only=only_layer, verify=verify, limits=limits)
    spool_dir, stage_beside = key.spool_dir, key.stage_beside
    # the image may be open and its layers inflating already (see converter.prestart)
    early = None if registry_options is not None else take_early(key)
    image = early[0] if early is not None else open_image(source, ref=ref, platform=platform,
                                                          registry_options=registry_options)
    with image:
        opening = early[2] if early is not None else None
        with gc_paused():  # (the merge and the sinks walk the whole view: see gc_paused)
            try:
                chosen = early[1] if early is not None else select_layers(image, layers=layers, skip=skip_layers,
                                                                          only=only_layer)
                plan = plan_image(
                    image, layers=chosen, verify=verify, limits=limits, events=events, spool_dir=spool_dir,
                    progress=progress, keep_whiteouts=only_layer is not None and flatten,
                    stage_beside=stage_beside, keep_dirlinks=keep_dirlinks, opening=opening,
                )
            except BaseException:
                if opening is not None:
                    opening.close(failed=True)  # (a plan that took it has closed it)
                raise
            dir_options = DirectoryOptions(force=force, ids=mapper, privileged=privileged, devices=devices,
                                           max_size=max_size, keep_ids=keep_ids, progress=progress)
            if keep_tree is not None:
                keep_tree.append(plan)
            try:
                bundle_cfg = None
                if bundle:
                    from .bundle import bundle_config

                    if flatten:
                        raise UsageError("--bundle writes a directory; it cannot be combined with --flatten")
                    # resolved before --path prunes the tree: the user lives in /etc/passwd
                    bundle_cfg = bundle_config(image.config, plan=plan, ids=mapper, args=bundle_args, user=bundle_user)
                if paths or with_deps:
                    from .pathselect import select_paths

                    select_paths(plan, list(paths), with_deps=with_deps, events=events)
                if bundle:
                    from .bundle import missing_program, write_bundle

                    why = missing_program(plan, bundle_cfg)
                    if why is not None:
                        events.warn("bundle-program-missing", f"{why}: runc will fail to start it (see --cmd, --path)")

                    dres = write_bundle(plan, image, out, dir_options, config=bundle_cfg)
                    entries, nbytes, kind = dres.entries, dres.bytes, "bundle"
                elif flatten:
                    res = write_tar(plan, out, TarOptions(force=force, ids=mapper, clamp_mtime=source_date_epoch,
                                                          max_size=max_size, max_ratio=max_ratio, progress=progress))
                    entries, nbytes, kind = res.entries, res.bytes, "tar"
                else:
                    dres = write_directory(plan, out, dir_options)
                    entries, nbytes, kind = dres.entries, dres.bytes, "dir"
            except BaseException:
                plan.close(failed=True)
                raise
            plan.close()
        return ConvertResult(
            output=out, kind=kind, entries=entries, bytes=nbytes,
            layers_applied=[layer.index for layer in chosen],
            reference=image.reference, manifest_digest=image.manifest_digest, config_digest=image.config_digest,
            source_format=image.format, warnings=dict(events.counts), events=events,
            platform=str(image.platform) if image.platform else None, source=image.source, layers=plan.layers,
            verified=verify,
        )


