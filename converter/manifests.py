"""OCI / Docker manifest and index rules shared by every source (local layouts, registry).

Validation is strict where a mistake would be dangerous or silent (digests, sizes, layer
counts) and lenient where real tools differ harmlessly (missing media types).
"""

from __future__ import annotations

from typing import Any, Optional

from .digest import parse_digest
from .errors import ChoiceNeeded, InputError, NotFoundError, UsageError
from .image import ByValue, Platform

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
SCHEMA1 = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"
ATTESTATION_KEY = "vnd.docker.reference.type"


class Descriptor(ByValue):
    """An OCI descriptor as a manifest or index gives it (``raw``: the whole object)."""

    def __init__(self, media_type: str, digest: str, size: int, platform: Optional[Platform],
                 annotations: dict[str, str], urls: tuple[str, ...], raw: dict[str, Any]) -> None:
        self.media_type = media_type
        self.digest = digest
        self.size = size
        self.platform = platform
        self.annotations = annotations
        self.urls = urls
        self.raw = raw

    def __repr__(self) -> str:
        return f"Descriptor(media_type={self.media_type!r}, digest={self.digest!r}, size={self.size})"

    def with_platform(self, platform: Optional[Platform]) -> "Descriptor":
        """The same descriptor with ``platform`` (an index entry taking its nested index's)."""
        return Descriptor(self.media_type, self.digest, self.size, platform, self.annotations, self.urls, self.raw)

    @property
    def is_attestation(self) -> bool:
        p = self.platform
        if p is not None and p.os == "unknown" and p.architecture == "unknown":
            return True
        return ATTESTATION_KEY in self.annotations


def descriptor(obj: Any, *, what: str) -> Descriptor:
    if not isinstance(obj, dict):
        raise InputError(f"{what}: descriptor is not an object")
    digest = obj.get("digest")
    parse_digest(digest, what=what)
    size = obj.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InputError(f"{what}: descriptor {digest} has no valid size")
    media_type = obj.get("mediaType") if isinstance(obj.get("mediaType"), str) else ""
    annotations = obj.get("annotations") if isinstance(obj.get("annotations"), dict) else {}
    urls = obj.get("urls") if isinstance(obj.get("urls"), list) else []
    return Descriptor(
        media_type=media_type,
        digest=digest,
        size=size,
        platform=Platform.from_json(obj.get("platform")),
        annotations={str(k): str(v) for k, v in annotations.items()},
        urls=tuple(u for u in urls if isinstance(u, str)),
        raw=obj,
    )


def kind_of(doc: Any, media_type: str = "", *, what: str) -> str:
    """"index" or "manifest"; schema 1 and unknown documents are refused."""
    if not isinstance(doc, dict):
        raise InputError(f"{what}: not a JSON object")
    mt = doc.get("mediaType") if isinstance(doc.get("mediaType"), str) else media_type
    if doc.get("schemaVersion") == 1 or mt in SCHEMA1:
        raise InputError(f"{what}: Docker schema 1 manifests are not supported (re-push the image with a current tool)")
    if mt in INDEX_TYPES or ("manifests" in doc and "layers" not in doc):
        return "index"
    if mt in MANIFEST_TYPES or "layers" in doc:
        return "manifest"
    raise InputError(f"{what}: neither an image manifest nor an index (mediaType {mt or 'missing'})")


def index_entries(doc: dict[str, Any], *, what: str) -> list[Descriptor]:
    entries = doc.get("manifests")
    if not isinstance(entries, list):
        raise InputError(f"{what}: 'manifests' is missing or not a list")
    return [descriptor(e, what=f"{what} entry {i + 1}") for i, e in enumerate(entries)]


def choose_platform(entries: list[Descriptor], want: Optional[Platform], *, what: str) -> Descriptor:
    """Pick the entry for ``want`` (default: the host).  Attestations never count.  An index
    of a single image with no platform information is taken as it is."""
    images = [e for e in entries if not e.is_attestation]
    if not images:
        raise NotFoundError(f"{what}: the index lists no image (only attestations or nothing)")
    target = want or Platform.host()
    matching = [e for e in images if e.platform is not None and e.platform.matches(target)]
    if matching:
        # prefer an exact variant match, then the first listed (registries list the preferred first)
        exact = [e for e in matching if e.platform and e.platform.variant == target.variant]
        return (exact or matching)[0]
    if want is None and len(images) == 1 and images[0].platform is None:
        return images[0]
    platforms = sorted({str(e.platform) for e in images if e.platform})
    offered = ", ".join(platforms[:_LISTED]) or "none declared"
    if len(platforms) > _LISTED:
        offered += f" and {len(platforms) - _LISTED} more"
    advice = "choose one of them with --platform" if want is None else "choose one of them"
    raise NotFoundError(f"{what}: no image for platform {target}{'' if want else ' (this host)'} "
                        f"(available: {offered}); {advice}")


def config_diff_ids(config: Any, *, what: str) -> list[str]:
    if not isinstance(config, dict):
        raise InputError(f"{what}: image config is not a JSON object")
    rootfs = config.get("rootfs")
    if not isinstance(rootfs, dict) or not isinstance(rootfs.get("diff_ids"), list):
        raise InputError(f"{what}: image config has no rootfs.diff_ids")
    ids = rootfs["diff_ids"]
    for d in ids:
        parse_digest(d, what=f"{what}: rootfs.diff_ids")
    return ids


def config_platform(config: dict[str, Any]) -> Optional[Platform]:
    return Platform.from_json(config)


def canonical_ref(ref: str) -> str:
    """Docker's normalisation for comparing names: ``busybox`` ->
    ``docker.io/library/busybox:latest``.  Only for matching stored names, not for pulls."""
    name, digest = (ref.split("@", 1) + [""])[:2]
    last = name.rsplit("/", 1)[-1]
    if ":" not in last:
        name += ":latest"
    first = name.split("/", 1)[0]
    if "/" not in name or not ("." in first or ":" in first or first == "localhost"):
        if "/" not in name:
            name = "library/" + name
        name = "docker.io/" + name
    return name + ("@" + digest if digest else "")


def ref_matches(wanted: str, stored: str) -> bool:
    """Whether ``wanted`` names ``stored``: as given, after Docker's normalisation
    (``busybox`` is ``docker.io/library/busybox:latest``), or as podman names local images
    (``app:1`` is ``localhost/app:1``)."""
    if wanted == stored:
        return True
    try:
        if canonical_ref(wanted) == canonical_ref(stored):
            return True
    except Exception:  # pragma: no cover - defensive: odd strings simply do not match
        return False
    if stored.startswith("localhost/") and not wanted.startswith("localhost/"):
        return ref_matches("localhost/" + wanted, stored)
    return False


def select_by_ref(candidates: list[tuple[list[str], Any]], ref: Optional[str], *, what: str,
                  digests: Optional[list[Optional[str]]] = None) -> tuple[Optional[str], Any]:
    """Pick the candidate stored under ``ref``.  Without a ref, a single candidate (or
    candidates sharing one name) is chosen; several different ones are an error that lists
    them (EDGE-CASES 5: two images both tagged ``latest`` are ambiguous).

    Names come first; a ref no name matches may also be ``#N`` (the N-th image, as the
    errors list them) or a digest or unique digest prefix (``digests[i]``: the image's
    config digest in a docker save, its manifest digest in an OCI index, as `rootfs
    inspect` shows them): untagged images, or two under one tag, are reachable too."""
    if not candidates:
        raise InputError(f"{what}: holds no image")
    if ref is None:
        if len(candidates) == 1:
            names = candidates[0][0]
            return (names[0] if names else None), candidates[0][1]
        listed = _list_names(candidates, digests)
        raise ChoiceNeeded(f"{what}: holds {len(candidates)} images; choose one with a reference (--ref NAME, "
                           f"#N or a digest; or SOURCE:NAME; diff: --ref-a/--ref-b): {listed}")
    hits = [(names, obj) for names, obj in candidates if any(ref_matches(ref, n) for n in names)]
    if len(hits) == 1:
        return ref, hits[0][1]
    if not hits:
        hits = _by_position_or_digest(candidates, ref, digests)
        if len(hits) == 1:
            names = hits[0][0]
            return (names[0] if names else None), hits[0][1]
    if not hits:
        raise NotFoundError(f"{what}: no image named {ref!r} (available: {_list_names(candidates, digests)})")
    raise UsageError(f"{what}: {len(hits)} images match {ref!r}; use #N or a longer digest "
                     f"({_list_names(candidates, digests)})")


def _by_position_or_digest(candidates: list[tuple[list[str], Any]], ref: str,
                           digests: Optional[list[Optional[str]]]) -> list[tuple[list[str], Any]]:
    if ref.startswith("#") and ref[1:].isascii() and ref[1:].isdigit():  # ("#²" passes isdigit, not int)
        n = int(ref[1:])
        return [candidates[n - 1]] if 1 <= n <= len(candidates) else []
    want = ref.lower().removeprefix("sha256:").removeprefix("@sha256:")
    if digests is None or len(want) < 6 or any(c not in "0123456789abcdef" for c in want):
        return []
    return [c for c, d in zip(candidates, digests) if d and d.lower().removeprefix("sha256:").startswith(want)]


#: images named in a one-line error (`rootfs inspect` lists them all)
_LISTED = 20


def _list_names(candidates: list[tuple[list[str], Any]], digests: Optional[list[Optional[str]]] = None) -> str:
    names = []
    for i, (ns, _) in enumerate(candidates[:_LISTED]):
        shown = ns[:_LISTED]
        text = ", ".join(shown) + (f" (+{len(ns) - len(shown)} more names)" if len(ns) > len(shown) else "")
        digest = digests[i] if digests is not None and i < len(digests) else None
        short = f", {digest[:19]}" if digest else ""
        names.append(f"#{i + 1} {text}" if ns else f"#{i + 1} (untagged{short})")
    if len(candidates) > _LISTED:
        names.append(f"and {len(candidates) - _LISTED} more (see rootfs inspect)")
    return "; ".join(names)
