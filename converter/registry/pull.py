"""``rootfs pull``: copy an image from a registry to disk, for later offline conversion.

Two destinations:

``oci:DIR[:TAG]``
    An OCI image layout holding exactly the registry's bytes (manifests, configs and layer
    blobs, content-addressed under ``blobs/<alg>/<hex>``).  Several images may share one
    layout: blobs already present are verified (re-hashed) and skipped, new blobs are
    written to a temporary file, verified and renamed into place (an interrupted pull
    never leaves a corrupt blob), and ``index.json`` is rewritten atomically under a lock,
    replacing the entry with the same ``org.opencontainers.image.ref.name`` and keeping the
    others.  ``TAG`` defaults to the reference's tag.
``docker-archive:FILE[:NAME:TAG]``
    A legacy ``docker save`` tar (``manifest.json`` with Config/RepoTags/Layers, the config
    as ``<hex>.json``, each layer as ``<diff_id hex>.tar``).  Layers are stored
    decompressed, as docker-archive layers are plain tars; the compressed bytes are checked
    against the blob digest and the decompressed ones against the config's diff_ids while
    they stream.  The file is written next to FILE and renamed into place.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import tarfile
import tempfile
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Optional

from ..compression import SNIFF_BYTES, DecompressingReader, detect
from ..digest import Expectation, parse_digest
from ..errors import ConverterError, InputError, IntegrityError, OutputError, UsageError
from ..image import Platform
from ..manifests import OCI_INDEX, REF_NAME, Descriptor, descriptor, index_entries
from .client import RegistryClient
from .reference import Reference, parse_reference
from .source import FetchedManifest, RegistryOptions, fetch_manifest, resolve

log = logging.getLogger(__name__)

CHUNK = 1 << 20


@dataclass
class PullResult:
    reference: str  # the normalised reference pulled
    destination: str  # as given
    format: str  # "oci" or "docker-archive"
    manifest_digest: str  # what the destination points at (the index with all_platforms)
    media_type: str
    ref_name: Optional[str]  # the OCI ref name or docker RepoTag written
    platforms: list[str] = field(default_factory=list)
    blobs_fetched: int = 0
    blobs_skipped: int = 0
    bytes_fetched: int = 0


def parse_destination(dest: str) -> tuple[str, str, Optional[str]]:
    """``(kind, path, name)`` from ``oci:DIR[:TAG]`` or ``docker-archive:FILE[:REF]``.
    As in skopeo, the path ends at its first ``:`` (unless the whole remainder exists)."""
    for kind in ("oci", "docker-archive"):
        prefix = kind + ":"
        if dest.startswith(prefix):
            rest = dest[len(prefix) :]
            if os.path.exists(rest):  # an existing path with a ':' in it is taken whole
                return kind, rest, None
            path, sep, name = rest.partition(":")
            if not path:
                raise UsageError(f"bad destination {dest!r}: no path")
            if sep and not name:
                raise UsageError(f"bad destination {dest!r}: empty name after ':'")
            return kind, path, name or None
    raise UsageError(f"bad destination {dest!r}: expected oci:DIR[:TAG] or docker-archive:FILE[:NAME:TAG]")


def pull(
    ref: str,
    dest: str,
    *,
    platform: Optional[Platform] = None,
    all_platforms: bool = False,
    options: RegistryOptions = RegistryOptions(),
    force: bool = False,
) -> PullResult:
    """Copy ``ref`` from its registry to ``dest`` (see the module docstring).  An existing
    docker-archive file is replaced only with ``force`` (an OCI layout takes more images)."""
    kind, path, name = parse_destination(dest)
    reference = parse_reference(ref)
    if kind == "docker-archive" and all_platforms:
        raise UsageError("docker-archive holds one image per name: --all-platforms needs an oci: destination")
    if kind == "docker-archive":
        if path == "-":
            raise UsageError("docker-archive:- : pull writes a file (convert streams to standard output)")
        if os.path.lexists(path) and not os.path.isdir(path) and not force:
            raise OutputError(f"{path}: exists (use --force to replace it)")
    client = RegistryClient(reference, options)
    try:
        if kind == "oci":
            return _pull_oci(client, reference, dest, path, name, platform, all_platforms)
        return _pull_docker_archive(client, reference, dest, path, name, platform)
    finally:
        client.close()


# --------------------------------------------------------------------------------------
# OCI layout


class OciLayout:
    """A writable OCI image layout directory."""

    def __init__(self, root: str) -> None:
        self.root = root
        try:
            os.makedirs(root, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create {root}: {exc.strerror}") from None
        layout_file = os.path.join(root, "oci-layout")
        if not os.path.exists(layout_file):
            if any(n not in ("blobs", "index.json") for n in os.listdir(root)):
                raise OutputError(f"{root} exists and is not an OCI layout (no oci-layout file); choose an empty or new directory")
            self._atomic_write(layout_file, b'{"imageLayoutVersion":"1.0.0"}')
        else:
            try:
                with open(layout_file, "rb") as f:
                    version = json.loads(f.read(4096)).get("imageLayoutVersion")
            except (OSError, ValueError, AttributeError):
                raise OutputError(f"{root}: oci-layout file is unreadable or malformed") from None
            if not isinstance(version, str) or not version.startswith("1."):
                raise OutputError(f"{root}: unsupported OCI layout version {version!r}")

    def blob_path(self, digest: str) -> str:
        alg, hexpart = parse_digest(digest, what=f"{self.root}: blob")
        return os.path.join(self.root, "blobs", alg, hexpart)

    def has_valid(self, digest: str, size: Optional[int]) -> bool:
        """Is the blob present with the right size and content?  A corrupt one is removed."""
        path = self.blob_path(digest)
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                if size is not None and st.st_size != size:
                    raise IntegrityError("size")
                check = Expectation(digest, size, what=path)
                while True:
                    chunk = f.read(CHUNK)
                    if not chunk:
                        break
                    check.update(chunk)
                check.check()
            return True
        except FileNotFoundError:
            return False
        except (OSError, IntegrityError):
            log.warning("%s: existing blob is corrupt; downloading it again", path)
            try:
                os.unlink(path)
            except OSError:
                pass
            return False

    def put_stream(self, digest: str, size: Optional[int], stream: BinaryIO, *, what: str) -> int:
        """Write a blob from ``stream``, verified against digest and size, atomically."""
        path = self.blob_path(digest)
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        check = Expectation(digest, size, what=what)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as out:
                buf = bytearray(CHUNK)
                view = memoryview(buf)
                while True:
                    n = stream.readinto(view)  # type: ignore[attr-defined]
                    if not n:
                        break
                    check.update(view[:n])
                    out.write(view[:n])
                check.check()
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            _unlink(tmp)
            raise
        return check.count

    def put_bytes(self, digest: str, data: bytes, *, what: str) -> None:
        alg, hexpart = parse_digest(digest, what=what)
        if hashlib.new(alg, data).hexdigest() != hexpart:
            raise IntegrityError(f"{what}: content does not match {digest}")
        path = self.blob_path(digest)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self._atomic_write(path, data)

    def set_ref(self, entry: dict[str, Any], name: Optional[str]) -> None:
        """Point ``name`` at ``entry`` in index.json, keeping every other entry."""
        index_path = os.path.join(self.root, "index.json")
        dfd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(dfd, fcntl.LOCK_EX)
            index: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
            try:
                with open(index_path, "rb") as f:
                    loaded = json.loads(f.read())
                if not isinstance(loaded, dict) or not isinstance(loaded.get("manifests", []), list):
                    raise ValueError("not an image index")
                index = loaded
                index.setdefault("manifests", [])
            except FileNotFoundError:
                pass
            except (OSError, ValueError) as exc:
                raise OutputError(f"{index_path}: cannot update a malformed index.json ({exc})") from None
            kept = []
            for old in index["manifests"]:
                ann = old.get("annotations") if isinstance(old, dict) and isinstance(old.get("annotations"), dict) else {}
                old_name = ann.get(REF_NAME)
                if name is not None and old_name == name:
                    continue
                if name is None and old_name is None and isinstance(old, dict) and old.get("digest") == entry["digest"]:
                    continue
                kept.append(old)
            new = dict(entry)
            if name is not None:
                new["annotations"] = {**new.get("annotations", {}), REF_NAME: name}
            kept.append(new)
            index["manifests"] = kept
            self._atomic_write(index_path, json.dumps(index, indent=2).encode() + b"\n")
        finally:
            os.close(dfd)

    @staticmethod
    def _atomic_write(path: str, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            _unlink(tmp)
            raise


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class _Copier:
    def __init__(self, client: RegistryClient, layout: OciLayout, result: PullResult) -> None:
        self.client = client
        self.layout = layout
        self.result = result
        self._done: set[str] = set()

    def blob(self, d: Descriptor, *, what: str) -> None:
        if d.digest in self._done:
            return
        if self.layout.has_valid(d.digest, d.size):
            self.result.blobs_skipped += 1
            progress = self.client.options.progress
            if progress is not None:
                progress("blob-exists", digest=d.digest, size=d.size)
        else:
            stream = self.client.open_blob(d.digest, d.size, urls=d.urls, what=what)
            try:
                n = self.layout.put_stream(d.digest, d.size, stream, what=f"{what} {d.digest}")
            finally:
                stream.close()
            self.result.blobs_fetched += 1
            self.result.bytes_fetched += n
        self._done.add(d.digest)

    def manifest_bytes(self, m: FetchedManifest) -> None:
        if m.digest in self._done:
            return
        if not self.layout.has_valid(m.digest, len(m.data)):
            self.layout.put_bytes(m.digest, m.data, what=f"manifest {m.digest}")
        self._done.add(m.digest)

    def image(self, m: FetchedManifest, *, what: str) -> None:
        """Config and layers of an image manifest (or any artifact manifest), as opaque blobs."""
        doc = m.doc
        if "config" in doc:
            self.blob(descriptor(doc["config"], what=f"{what}: config"), what=f"{what}: config")
        layers = doc.get("layers")
        if not isinstance(layers, list):
            raise InputError(f"{what}: manifest {m.digest} has no 'layers' list")
        for i, obj in enumerate(layers):
            self.blob(descriptor(obj, what=f"{what}: layer {i + 1}"), what=f"{what}: layer {i + 1}")
        self.manifest_bytes(m)

    def tree(self, index: FetchedManifest, platforms: list[str], depth: int = 0) -> None:
        if depth > 8:
            raise InputError(f"{self.client.ref}: indexes nested too deep")
        for entry in index_entries(index.doc, what=f"{self.client.ref}: index {index.digest}"):
            child = fetch_manifest(self.client, entry.digest, expect=entry)
            if child.kind == "index":
                self.tree(child, platforms, depth + 1)
            else:
                self.image(child, what=f"{self.client.ref} ({entry.platform or entry.digest[:19]})")
                if entry.platform is not None and not entry.is_attestation:
                    platforms.append(str(entry.platform))
        self.manifest_bytes(index)


def _descriptor_of(m: FetchedManifest) -> dict[str, Any]:
    d: dict[str, Any] = {"mediaType": m.media_type, "digest": m.digest, "size": len(m.data)}
    if m.platform is not None:
        p: dict[str, Any] = {"architecture": m.platform.architecture, "os": m.platform.os}
        if m.platform.variant:
            p["variant"] = m.platform.variant
        if m.platform.os_version:
            p["os.version"] = m.platform.os_version
        d["platform"] = p
    return d


def _pull_oci(
    client: RegistryClient,
    ref: Reference,
    dest: str,
    path: str,
    name: Optional[str],
    platform: Optional[Platform],
    all_platforms: bool,
) -> PullResult:
    ref_name = name or ref.tag
    result = PullResult(str(ref), dest, "oci", "", "", ref_name)
    top = fetch_manifest(client, ref.manifest_ref)  # a missing image leaves no directory behind
    if all_platforms and top.kind == "index":
        copier = _Copier(client, OciLayout(path), result)
        copier.tree(top, result.platforms)
        target = top
    else:
        r = resolve(client, platform, top=top)
        copier = _Copier(client, OciLayout(path), result)
        what = str(ref)
        copier.blob(r.config_desc, what=f"{what}: config")
        for i, d in enumerate(r.layers):
            copier.blob(d, what=f"{what}: layer {i + 1}")
        copier.manifest_bytes(r.manifest)
        target = r.manifest
        if r.platform is not None:
            result.platforms.append(str(r.platform))
    copier.layout.set_ref(_descriptor_of(target), ref_name)
    result.manifest_digest = target.digest
    result.media_type = target.media_type
    return result


# --------------------------------------------------------------------------------------
# docker-archive


def _tar_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = 0
    info.type = tarfile.REGTYPE
    buf = info.tobuf(format=tarfile.GNU_FORMAT, encoding="utf-8", errors="strict")
    if len(buf) != tarfile.BLOCKSIZE:  # pragma: no cover - names here are short and ASCII
        raise AssertionError(f"tar header for {name} is not one block")
    return buf


def _pad(out: BinaryIO, size: int) -> None:
    rem = size % tarfile.BLOCKSIZE
    if rem:
        out.write(b"\0" * (tarfile.BLOCKSIZE - rem))


def _add_bytes(out: BinaryIO, name: str, data: bytes) -> None:
    out.write(_tar_header(name, len(data)))
    out.write(data)
    _pad(out, len(data))


def _add_layer(out: BinaryIO, name: str, client: RegistryClient, d: Descriptor, diff_id: str, *, what: str) -> int:
    """Stream one layer blob into the tar, decompressed; verify blob digest and diff_id.
    The header is written last (seeking back), once the decompressed size is known."""
    blob_check = Expectation(d.digest, d.size, what=f"{what} {d.digest}")
    diff_check = Expectation(diff_id, None, what=f"{what}: uncompressed content (diff_id {diff_id})")
    stream = client.open_blob(d.digest, d.size, urls=d.urls, what=what)
    try:
        head = b""
        while len(head) < SNIFF_BYTES:
            chunk = stream.read(SNIFF_BYTES - len(head))
            if not chunk:
                break
            head += chunk
        blob_check.update(head)
        kind = detect(head, what=f"{what} {d.digest}")
        pending = [head] if head else []

        def raw_read(n: int) -> bytes:
            if pending:
                return pending.pop()
            chunk = stream.read(n)
            if chunk:
                blob_check.update(chunk)
            return chunk

        header_pos = out.tell()
        out.write(b"\0" * tarfile.BLOCKSIZE)
        reader = DecompressingReader(kind, raw_read, what=f"{what} {d.digest}", on_output=diff_check.update)
        total = 0
        try:
            buf = bytearray(CHUNK)
            view = memoryview(buf)
            while True:
                n = reader.readinto(view)
                if not n:
                    break
                out.write(view[:n])
                total += n
        finally:
            reader.close()
        blob_check.check()
        diff_check.check()
    finally:
        stream.close()
    end = out.tell()
    out.seek(header_pos)
    out.write(_tar_header(name, total))
    out.seek(end)
    _pad(out, total)
    return blob_check.count


def _repo_tag(ref: Reference, name: Optional[str]) -> Optional[tuple[str, str]]:
    """``(repository, tag)`` for RepoTags, in docker's familiar form."""
    if name is not None:
        r = parse_reference(name)
        if r.digest:
            raise UsageError(f"docker-archive name {name!r} must be NAME[:TAG], without a digest")
        return r.familiar_name, r.tag or "latest"
    if ref.tag is None:
        return None
    return ref.familiar_name, ref.tag


def _pull_docker_archive(
    client: RegistryClient, ref: Reference, dest: str, path: str, name: Optional[str], platform: Optional[Platform]
) -> PullResult:
    repo_tag = _repo_tag(ref, name)
    r = resolve(client, platform)
    what = str(ref)
    result = PullResult(
        str(ref), dest, "docker-archive", r.manifest.digest, r.manifest.media_type,
        f"{repo_tag[0]}:{repo_tag[1]}" if repo_tag else None,
        [str(r.platform)] if r.platform else [],
    )
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise OutputError(f"{path} is a directory; docker-archive needs a file name")
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + ".partial-")
    except OSError as exc:
        raise OutputError(f"cannot create a file in {directory}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w+b") as out:
            _, config_hex = parse_digest(r.config_desc.digest, what=what)
            config_name = f"{config_hex}.json"
            _add_bytes(out, config_name, r.config_data)
            layer_names: list[str] = []
            written: set[str] = set()
            for i, (d, diff_id) in enumerate(zip(r.layers, r.diff_ids)):
                _, diff_hex = parse_digest(diff_id, what=f"{what}: diff_id")
                member = f"{diff_hex}.tar"
                layer_names.append(member)
                if member in written:
                    continue
                n = _add_layer(out, member, client, d, diff_id, what=f"{what}: layer {i + 1}")
                written.add(member)
                result.blobs_fetched += 1
                result.bytes_fetched += n
            manifest = [
                {
                    "Config": config_name,
                    "RepoTags": [f"{repo_tag[0]}:{repo_tag[1]}"] if repo_tag else [],
                    "Layers": layer_names,
                }
            ]
            _add_bytes(out, "manifest.json", json.dumps(manifest).encode())
            if repo_tag and layer_names:
                repositories = {repo_tag[0]: {repo_tag[1]: layer_names[-1][: -len(".tar")]}}
                _add_bytes(out, "repositories", json.dumps(repositories).encode())
            out.write(b"\0" * (2 * tarfile.BLOCKSIZE))
            size = out.tell()
            rem = size % tarfile.RECORDSIZE
            if rem:
                out.write(b"\0" * (tarfile.RECORDSIZE - rem))
            out.flush()
            os.fsync(out.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException as exc:
        _unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, ConverterError):
            if exc.errno == errno.ENOSPC:
                raise OutputError(f"{path}: no space left on device") from None
            raise OutputError(f"{path}: {exc.strerror or exc}") from None
        raise
    return result
