"""OCI image layouts (directory or archive): ``oci-layout`` + ``index.json`` + ``blobs/``.

The entry point is :func:`image_from_layout`; the index may name several images (chosen by
``org.opencontainers.image.ref.name`` or containerd's full name) and nest indexes that list
platforms (chosen with ``--platform``, attestations skipped).
"""

from __future__ import annotations

from typing import Any, Optional

from ..errors import InputError, LimitError, NotFoundError
from ..image import Image, Layer, Platform
from ..manifests import (
    CONTAINERD_NAME,
    INDEX_TYPES,
    REF_NAME,
    Descriptor,
    choose_platform,
    config_diff_ids,
    config_platform,
    descriptor,
    index_entries,
    kind_of,
    ref_matches,
    select_by_ref,
)
from .blobstore import BlobStore

MAX_INDEX_DEPTH = 8


def check_layout(store: BlobStore) -> None:
    if not store.has_file("oci-layout"):
        raise InputError(f"{store.label}: not an OCI layout (no oci-layout file)")
    layout = store.read_json_file("oci-layout", what="oci-layout")
    if not isinstance(layout, dict) or not isinstance(layout.get("imageLayoutVersion"), str):
        raise InputError(f"{store.label}: oci-layout has no imageLayoutVersion")


def image_from_layout(
    store: BlobStore, *, ref: Optional[str], platform: Optional[Platform], source: str, fmt: str
) -> Image:
    check_layout(store)
    index = store.read_json_file("index.json", what="index.json")
    if kind_of(index, what=f"{store.label}: index.json") != "index":
        raise InputError(f"{store.label}: index.json is not an image index")
    entries = index_entries(index, what=f"{store.label}: index.json")
    top = [e for e in entries if not e.is_attestation]
    candidates = [(_names(e), e) for e in top]
    matching = [e for names, e in candidates if ref is None or any(ref_matches(ref, n) for n in names)]
    if len(matching) > 1 and _platform_variants(matching):
        # one image stored as several platform manifests side by side (e.g. buildx oci output)
        names = _names(matching[0])
        desc = choose_platform(matching, platform, what=f"{store.label}: index.json")
        return resolve_descriptor(store, desc, ref=ref or (names[0] if names else None), platform=platform,
                                  source=source, fmt=fmt)
    chosen_ref, desc = select_by_ref(candidates, ref, what=store.label, digests=[e.digest for e in top])
    return resolve_descriptor(store, desc, ref=chosen_ref, platform=platform, source=source, fmt=fmt)


def _platform_variants(entries: list[Descriptor]) -> bool:
    """Several index entries are one image's platforms only when each declares a platform,
    the platforms differ, and they share one name (or none): otherwise they are different
    images, and choosing among them without a reference is ambiguous (EDGE-CASES 5)."""
    platforms = [e.platform for e in entries]
    if any(p is None for p in platforms) or len(set(platforms)) != len(platforms):
        return False
    return len({tuple(_names(e)) for e in entries}) == 1


def _names(d: Descriptor) -> list[str]:
    out = []
    for key in (REF_NAME, CONTAINERD_NAME):
        v = d.annotations.get(key)
        if v and v not in out:
            out.append(v)
    return out


def resolve_descriptor(
    store: BlobStore,
    desc: Descriptor,
    *,
    ref: Optional[str],
    platform: Optional[Platform],
    source: str,
    fmt: str,
) -> Image:
    doc = store.read_json_blob(desc.digest, desc.size, what="manifest")
    kind = kind_of(doc, desc.media_type, what=f"{store.label}: manifest {desc.digest}")
    if kind == "manifest":
        image = image_from_manifest(store, doc, desc.digest, ref=ref, source=source, fmt=fmt)
        if platform is not None and image.platform is not None and not image.platform.matches(platform):
            raise NotFoundError(f"{store.label}: the image is {image.platform}, not {platform}")
        return image
    what = f"{store.label}: index {desc.digest}"
    manifests = _flatten_index(store, doc, what=what, depth=0)
    chosen = choose_platform(manifests, platform, what=what)
    doc = store.read_json_blob(chosen.digest, chosen.size, what="manifest")
    if kind_of(doc, chosen.media_type, what=f"{store.label}: manifest {chosen.digest}") != "manifest":
        raise InputError(f"{store.label}: {chosen.digest} is listed as an image but is an index")
    return image_from_manifest(store, doc, chosen.digest, ref=ref, source=source, fmt=fmt)


#: image entries an index may expand to, nested indexes included
MAX_INDEX_ENTRIES = 100_000


def _flatten_index(store: BlobStore, doc: dict[str, Any], *, what: str, depth: int,
                   seen: Optional[set[str]] = None, out: Optional[list[Descriptor]] = None) -> list[Descriptor]:
    """The image manifests an index lists, nested indexes expanded (EDGE-CASES 8): a
    nested index's entries carry the platforms, the entry pointing at it usually none.
    Each nested index is expanded once, however often it is listed (eight levels of an
    index listing its child eight times were 16 million entries and 3 GB), and the
    expansion is bounded."""
    if depth >= MAX_INDEX_DEPTH:
        raise InputError(f"{what}: indexes nested more than {MAX_INDEX_DEPTH} deep")
    seen = set() if seen is None else seen
    out = [] if out is None else out
    for entry in index_entries(doc, what=what):
        if entry.is_attestation:
            continue
        if entry.media_type in INDEX_TYPES:
            if entry.digest in seen:
                continue
            seen.add(entry.digest)
            nested = store.read_json_blob(entry.digest, entry.size, what="index")
            if kind_of(nested, entry.media_type, what=f"{store.label}: index {entry.digest}") == "index":
                _flatten_index(store, nested, what=f"{store.label}: index {entry.digest}", depth=depth + 1,
                               seen=seen, out=out)
                continue
        out.append(entry)
        if len(out) > MAX_INDEX_ENTRIES:
            raise LimitError(f"{what}: the index lists more than {MAX_INDEX_ENTRIES} images")
    return out


def image_from_manifest(
    store: BlobStore, doc: dict[str, Any], digest: Optional[str], *, ref: Optional[str], source: str, fmt: str
) -> Image:
    what = f"{store.label}: manifest {digest or ''}".rstrip()
    cfg_desc = descriptor(doc.get("config"), what=f"{what} config")
    layers_raw = doc.get("layers")
    if not isinstance(layers_raw, list):
        raise InputError(f"{what}: 'layers' is missing or not a list")
    config = store.read_json_blob(cfg_desc.digest, cfg_desc.size, what="config")
    diff_ids = config_diff_ids(config, what=f"{store.label}: config {cfg_desc.digest}")
    descs = [descriptor(l, what=f"{what} layer {i + 1}") for i, l in enumerate(layers_raw)]
    if len(diff_ids) != len(descs):
        raise InputError(
            f"{what}: {len(descs)} layers but the config lists {len(diff_ids)} diff_ids"
        )
    layers = []
    for i, d in enumerate(descs):
        if d.urls and not _present(store, d):
            raise NotFoundError(
                f"{what}: layer {i + 1} {d.digest} is a foreign layer (urls: {', '.join(d.urls)}) not stored in the layout"
            )
        blob = store.blob(d.digest, d.size, what=f"layer {i + 1}")
        layers.append(
            Layer(index=i, blob=blob, digest=d.digest, size=d.size, media_type=d.media_type,
                  diff_id=diff_ids[i], urls=d.urls, annotations=d.annotations)
        )
    return Image(
        source=source, layers=layers, config=config, manifest=doc, manifest_digest=digest,
        config_digest=cfg_desc.digest, reference=ref, platform=config_platform(config), format=fmt,
    )


def _present(store: BlobStore, d: Descriptor) -> bool:
    try:
        store.blob(d.digest, d.size, what="layer")
        return True
    except NotFoundError:
        return False


def layout_choices(store: BlobStore) -> list[dict[str, Any]]:
    """Every image a layout offers: one entry per (reference, platform), for listings."""
    check_layout(store)
    index = store.read_json_file("index.json", what="index.json")
    out: list[dict[str, Any]] = []
    for entry in index_entries(index, what=f"{store.label}: index.json"):
        if entry.is_attestation:
            continue
        names = _names(entry)
        ref = names[0] if names else None
        if entry.media_type in INDEX_TYPES:
            doc = store.read_json_blob(entry.digest, entry.size, what="index")
            for m in _flatten_index(store, doc, what=f"{store.label}: index {entry.digest}", depth=0):
                out.append({"reference": ref, "platform": str(m.platform) if m.platform else None, "digest": m.digest})
        else:
            out.append({"reference": ref, "platform": str(entry.platform) if entry.platform else None,
                        "digest": entry.digest})
    return out
