"""The registry source: ``docker://REF`` resolved to an :class:`~converter.image.Image`.

Manifests and the config are fetched and verified here (the manifest bytes must hash to the
pinned ``@digest`` or to the digest in the parent index; the config must match its
descriptor).  Layers are not downloaded: each :class:`~converter.image.Layer` opens a
streaming, resuming HTTP reader when the merge asks for it, and the merge verifies digest,
size and diff_id while it reads.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Any, Callable, Optional

from ..digest import parse_digest
from ..errors import InputError, IntegrityError, NotFoundError
from ..image import Blob, Image, Layer, Platform
from ..manifests import (
    DOCKER_CONFIG,
    INDEX_TYPES,
    OCI_CONFIG,
    Descriptor,
    choose_platform,
    config_diff_ids,
    config_platform,
    descriptor,
    index_entries,
    kind_of,
)
from ..sources.archive import MAX_JSON, parse_json
from .client import RegistryClient
from .reference import parse_reference

MAX_INDEX_DEPTH = 8


@dataclass
class RegistryOptions:
    """How to reach the registry.  ``progress(event, **info)`` is called with
    ``"blob-start"`` (digest, size), ``"blob-bytes"`` (digest, n), ``"blob-resume"``
    (digest, offset, error) and ``"blob-done"`` (digest), and by ``pull`` with
    ``"blob-exists"`` (digest, size) for a blob already in the layout; possibly from a
    worker thread.  Unknown events should be ignored."""

    creds: Optional[str] = None  # "USER:PASS"
    auth_file: Optional[str] = None
    insecure: bool = False
    ca_file: Optional[str] = None
    cert_dir: Optional[str] = None
    timeout: float = 30.0
    retries: int = 5
    progress: Optional[Callable[..., None]] = None


@dataclass
class FetchedManifest:
    data: bytes
    digest: str
    media_type: str
    doc: dict[str, Any]
    kind: str  # "index" or "manifest"
    platform: Optional[Platform] = None  # from the index entry that led here


def _is_digest(s: str) -> bool:
    return s.startswith(("sha256:", "sha512:"))


def fetch_manifest(client: RegistryClient, reference: str, *, expect: Optional[Descriptor] = None) -> FetchedManifest:
    """GET a manifest by tag or digest and verify it: against the digest when fetched by
    digest (and the descriptor's size when one led here), and against the registry's
    ``Docker-Content-Digest`` when fetched by tag."""
    ref = client.ref
    what = client._image_name(reference)
    data, ctype, header_digest = client.get_manifest(reference)
    if _is_digest(reference):
        alg, hexpart = parse_digest(reference, what=what)
        got = hashlib.new(alg, data).hexdigest()
        if got != hexpart:
            raise IntegrityError(f"{what}: the manifest the registry sent hashes to {alg}:{got}, not to the requested digest")
        digest = reference
    else:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if header_digest and _is_digest(header_digest):
            try:
                alg, hexpart = parse_digest(header_digest, what=what)
            except InputError:
                alg = ""
            if alg and hashlib.new(alg, data).hexdigest() != hexpart:
                raise IntegrityError(f"{what}: manifest bytes do not match the registry's Docker-Content-Digest {header_digest}")
    if expect is not None and expect.size != len(data):
        raise IntegrityError(f"{what}: manifest is {len(data)} bytes, its index entry says {expect.size}")
    doc = parse_json(data, what=f"{what}: manifest")
    kind = kind_of(doc, ctype, what=f"{ref.name}: manifest {digest}")
    media_type = doc.get("mediaType") if isinstance(doc, dict) and isinstance(doc.get("mediaType"), str) else ctype
    return FetchedManifest(data, digest, media_type, doc, kind, expect.platform if expect else None)


def expand_index(client: RegistryClient, index: FetchedManifest, *, depth: int = 0,
                 fetched: Optional[dict[str, FetchedManifest]] = None) -> list[tuple[Descriptor, list[FetchedManifest]]]:
    """The image entries of an index, nested indexes flattened (an entry without a platform
    takes its nested index's).  Each entry comes with the chain of nested indexes above it.

    Each nested index is fetched once however often it is listed, and all of them together
    may take no more than MAX_JSON bytes: they are held parsed while a platform is chosen,
    and a 2 KB index naming the same crafted 8 MiB one a dozen times took 2.4 GB."""
    if depth > MAX_INDEX_DEPTH:
        raise InputError(f"{client.ref.name}: indexes nested more than {MAX_INDEX_DEPTH} deep")
    if fetched is None:
        fetched = {}
    out: list[tuple[Descriptor, list[FetchedManifest]]] = []
    for entry in index_entries(index.doc, what=f"{client.ref.name}: index {index.digest}"):
        if entry.media_type in INDEX_TYPES and not entry.is_attestation:
            nested = fetched.get(entry.digest)
            if nested is None:
                nested = fetch_manifest(client, entry.digest, expect=entry)
                fetched[entry.digest] = nested
                if sum(len(m.data) for m in fetched.values()) > MAX_JSON:
                    raise InputError(f"{client.ref.name}: its nested indexes take more than {MAX_JSON >> 20} MiB in all")
            else:
                nested = dataclasses.replace(nested)  # (its own platform, below)
            if nested.kind != "index":
                raise InputError(f"{client.ref.name}: {entry.digest} is listed as an index but is a {nested.kind}")
            if entry.platform is not None and nested.platform is None:
                nested.platform = entry.platform
            for child, chain in expand_index(client, nested, depth=depth + 1, fetched=fetched):
                if child.platform is None and entry.platform is not None:
                    child = child.with_platform(entry.platform)
                out.append((child, [nested, *chain]))
        else:
            out.append((entry, []))
    return out


@dataclass
class Resolved:
    """What a pull needs: the top manifest, the chosen image manifest and its config."""

    top: FetchedManifest
    manifest: FetchedManifest
    config_data: bytes
    config: dict[str, Any]
    config_desc: Descriptor
    layers: list[Descriptor]
    diff_ids: list[str]
    platform: Optional[Platform]
    #: nested indexes between ``top`` and ``manifest``
    chain: list[FetchedManifest] = dataclasses.field(default_factory=list)


def choose_manifest(client: RegistryClient, top: FetchedManifest, platform: Optional[Platform]) -> tuple[FetchedManifest, list[FetchedManifest]]:
    if top.kind == "manifest":
        return top, []
    entries = expand_index(client, top)
    chains = {id(d): chain for d, chain in entries}
    chosen = choose_platform([d for d, _ in entries], platform, what=f"{client.ref}")
    manifest = fetch_manifest(client, chosen.digest, expect=chosen)
    if manifest.kind != "manifest":
        raise InputError(f"{client.ref}: index entry {chosen.digest} is not an image manifest")
    return manifest, chains.get(id(chosen), [])


def load_image_manifest(client: RegistryClient, manifest: FetchedManifest, *, what: str) -> tuple[Descriptor, bytes, dict[str, Any], list[Descriptor], list[str]]:
    """Config descriptor, config bytes and JSON, layer descriptors and diff_ids of an image
    manifest; refuses artifacts that are not container images."""
    doc = manifest.doc
    cdesc = descriptor(doc.get("config"), what=f"{what}: config")
    if cdesc.media_type and cdesc.media_type not in (OCI_CONFIG, DOCKER_CONFIG):
        raise InputError(f"{what}: not a container image (config media type {cdesc.media_type})")
    raw_layers = doc.get("layers")
    if not isinstance(raw_layers, list):
        raise InputError(f"{what}: manifest has no 'layers' list")
    layers = [descriptor(obj, what=f"{what}: layer {i + 1}") for i, obj in enumerate(raw_layers)]
    config_data = client.get_blob_bytes(cdesc.digest, cdesc.size, what=f"{what}: config")
    config = parse_json(config_data, what=f"{what}: config {cdesc.digest}")
    diff_ids = config_diff_ids(config, what=what)
    if len(diff_ids) != len(layers):
        raise InputError(f"{what}: the manifest lists {len(layers)} layers but the config has {len(diff_ids)} diff_ids")
    return cdesc, config_data, config, layers, diff_ids


def resolve(client: RegistryClient, platform: Optional[Platform], *, top: Optional[FetchedManifest] = None) -> Resolved:
    """The image for ``platform`` (default: the host's) behind the client's reference.  An
    explicit platform must also match a single-manifest image's config."""
    ref = client.ref
    if top is None:
        top = fetch_manifest(client, ref.manifest_ref)
    manifest, chain = choose_manifest(client, top, platform)
    cdesc, config_data, config, layers, diff_ids = load_image_manifest(client, manifest, what=str(ref))
    image_platform = manifest.platform or config_platform(config)
    if top.kind == "manifest" and platform is not None:
        offered = config_platform(config)
        if offered is None or not offered.matches(platform):
            raise NotFoundError(f"{ref}: no image for platform {platform} (available: {offered or 'none declared'})")
    return Resolved(top, manifest, config_data, config, cdesc, layers, diff_ids, image_platform, chain)


def open_registry_image(ref: str, *, platform: Optional[Platform] = None, options: RegistryOptions = RegistryOptions()) -> Image:
    """Resolve ``ref`` (``[docker://]REGISTRY/NAME[:TAG][@DIGEST]``) to an :class:`Image`
    whose layers stream from the registry.  Close the image to release connections."""
    reference = parse_reference(ref)
    client = RegistryClient(reference, options)
    try:
        r = resolve(client, platform)
        layers = []
        for i, (d, diff_id) in enumerate(zip(r.layers, r.diff_ids)):
            layers.append(
                Layer(
                    index=i,
                    blob=_blob(client, d, what=f"{reference}: layer {i + 1}"),
                    digest=d.digest,
                    size=d.size,
                    media_type=d.media_type or None,
                    diff_id=diff_id,
                    urls=d.urls,
                    annotations=dict(d.annotations),
                )
            )
        return Image(
            source=f"docker://{reference}",
            layers=layers,
            config=r.config,
            manifest=r.manifest.doc,
            manifest_digest=r.manifest.digest,
            config_digest=r.config_desc.digest,
            reference=str(reference),
            platform=r.platform,
            format="registry",
            _closers=[client.close],
        )
    except BaseException:
        client.close()
        raise


def _blob(client: RegistryClient, d: Descriptor, *, what: str) -> Blob:
    def _open() -> Any:
        return client.open_blob(d.digest, d.size, urls=d.urls, what=what)

    where = d.urls[0] if d.urls else client.blob_url(d.digest)
    return Blob(open=_open, region=None, where=where)
