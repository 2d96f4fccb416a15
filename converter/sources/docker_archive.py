"""``docker save`` archives: legacy (Docker < 25, podman, skopeo) and Docker 25+.

Layer order is ``manifest.json[i].Layers`` (EDGE-CASES 1), never the v1 parent chain.
Layer paths may be ``<id>/layer.tar`` (possibly a symlink or hard-link member to another
layer's tar, EDGE-CASES 2), ``<diffid>.tar`` (containers/image), or ``blobs/sha256/<hex>``
(Docker 25+ uncompressed, or containerd-store saves pointing at compressed blobs,
EDGE-CASES 3-4).  Every path stays inside the archive.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Optional

from ..digest import parse_digest
from ..errors import InputError, IntegrityError, NotFoundError
from ..image import Image, Layer, Platform
from ..manifests import config_diff_ids, config_platform, select_by_ref
from .archive import TarArchive, parse_json

_BLOB_RE = re.compile(r"^(?:\./)?blobs/(sha256|sha512)/([0-9a-f]+)$")
_HEXJSON_RE = re.compile(r"^(?:\./)?([0-9a-f]{64})\.json$")


def image_from_docker_archive(
    archive: TarArchive, *, ref: Optional[str], platform: Optional[Platform], source: str
) -> Image:
    label = archive.label
    manifest = archive.read_json("manifest.json", what="manifest.json")
    if not isinstance(manifest, list) or not manifest:
        raise InputError(f"{label}: manifest.json is not a non-empty list of images")
    candidates = []
    for i, entry in enumerate(manifest):
        if not isinstance(entry, dict):
            raise InputError(f"{label}: manifest.json entry {i + 1} is not an object")
        tags = entry.get("RepoTags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise InputError(f"{label}: manifest.json entry {i + 1}: RepoTags is not a list of strings")
        candidates.append((tags, entry))
    digests = [_config_digest(e["Config"]) if isinstance(e.get("Config"), str) else None for _, e in candidates]
    chosen_ref, entry = select_by_ref(candidates, ref, what=label, digests=digests)

    cfg_path = entry.get("Config")
    if not isinstance(cfg_path, str) or not cfg_path:
        raise InputError(f"{label}: manifest.json: image has no Config")
    config_digest = _config_digest(cfg_path)
    config_bytes = archive.read_bytes(cfg_path, what=f"config {cfg_path}")
    if config_digest:
        alg, hexpart = parse_digest(config_digest, what=f"{label}: config")
        if hashlib.new(alg, config_bytes).hexdigest() != hexpart:
            raise IntegrityError(f"{label}: config {cfg_path} does not match its digest {config_digest}")
    config = parse_json(config_bytes, what=f"{label}: config {cfg_path}")
    diff_ids = config_diff_ids(config, what=f"{label}: config {cfg_path}")
    paths = entry.get("Layers")
    if not isinstance(paths, list) or not all(isinstance(p, str) and p for p in paths):
        raise InputError(f"{label}: manifest.json: Layers is missing or not a list of paths")
    if len(paths) != len(diff_ids):
        raise InputError(f"{label}: manifest.json lists {len(paths)} layers but the config has {len(diff_ids)} diff_ids")
    layers = []
    for i, path in enumerate(paths):
        blob = archive.blob(path, what=f"layer {i + 1} ({path})")
        digest, size = None, None
        m = _BLOB_RE.match(path)
        if m:  # content-addressed: the name is a digest we can hold the bytes to
            digest = f"{m.group(1)}:{m.group(2)}"
            parse_digest(digest, what=f"{label}: layer {i + 1} path")
            size = blob.region.size if blob.region else None
        layers.append(Layer(index=i, blob=blob, digest=digest, size=size, diff_id=diff_ids[i]))
    fmt = "docker-archive"
    manifest_digest = None
    if archive.has("oci-layout"):
        fmt = "docker-archive-v25"  # Docker 25+ layout: manifest.json over an OCI layout
    if archive.has("oci-layout") and archive.has("index.json") and config_digest:
        found = _oci_manifest_for(archive, config_digest)
        if found is not None:
            manifest_digest, oci_manifest = found
            oci_layers = oci_manifest.get("layers")
            if isinstance(oci_layers, list) and len(oci_layers) == len(layers):
                for layer, desc in zip(layers, oci_layers):
                    if isinstance(desc, dict) and isinstance(desc.get("mediaType"), str):
                        layer.media_type = desc["mediaType"]
    img = Image(
        source=source, layers=layers, config=config, manifest=entry, config_digest=config_digest,
        manifest_digest=manifest_digest, reference=chosen_ref, platform=config_platform(config), format=fmt,
    )
    if platform is not None and img.platform is not None and not img.platform.matches(platform):
        raise NotFoundError(f"{label}: the image is {img.platform}, not {platform}")
    return img


def _config_digest(path: str) -> Optional[str]:
    m = _BLOB_RE.match(path)
    if m:
        return f"{m.group(1)}:{m.group(2)}"
    m = _HEXJSON_RE.match(path)
    if m:
        return f"sha256:{m.group(1)}"
    return None



def docker_archive_choices(archive: TarArchive) -> list[dict[str, Any]]:
    """Every image of a docker save: its tags and platform (read from its config)."""
    manifest = archive.read_json("manifest.json", what="manifest.json")
    out: list[dict[str, Any]] = []
    if not isinstance(manifest, list):
        raise InputError(f"{archive.label}: manifest.json is not a list of images")
    for entry in manifest:
        if not isinstance(entry, dict):
            continue
        tags = entry.get("RepoTags") or [None]
        if not isinstance(tags, list) or not all(isinstance(t, str) or t is None for t in tags):
            raise InputError(f"{archive.label}: manifest.json: RepoTags is not a list of strings")
        platform = None
        cfg = entry.get("Config")
        if isinstance(cfg, str):
            try:
                platform = config_platform(archive.read_json(cfg, what=f"config {cfg}"))
            except InputError:
                platform = None
        for tag in tags:
            out.append({"reference": tag, "platform": str(platform) if platform else None,
                        "digest": _config_digest(cfg) if isinstance(cfg, str) else None})
    return out


def _oci_manifest_for(archive: TarArchive, config_digest: str) -> Optional[tuple[str, dict[str, Any]]]:
    """Docker 25+ saves also carry an OCI layout: find the manifest of this image there, so
    the image has a manifest digest like any OCI source (best effort: None if absent)."""
    from ..manifests import INDEX_TYPES, index_entries, kind_of
    from .blobstore import ArchiveStore

    store = ArchiveStore(archive)
    try:
        pending = list(index_entries(store.read_json_file("index.json", what="index.json"), what="index.json"))
        for _ in range(64):
            if not pending:
                return None
            desc = pending.pop(0)
            doc = store.read_json_blob(desc.digest, desc.size, what="manifest")
            if desc.media_type in INDEX_TYPES or kind_of(doc, desc.media_type, what="manifest") == "index":
                pending.extend(index_entries(doc, what=f"index {desc.digest}"))
                continue
            cfg = doc.get("config")
            if isinstance(cfg, dict) and cfg.get("digest") == config_digest:
                return desc.digest, doc
    except InputError:
        return None
    return None
