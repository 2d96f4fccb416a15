"""Registry support (Docker Registry HTTP API v2 / OCI distribution spec, pull side).

``open_registry_image(ref)`` resolves ``[docker://]REGISTRY/NAME[:TAG][@DIGEST]`` to an
:class:`~converter.image.Image` whose layers stream from the registry; ``pull(ref, dest)``
copies an image into an OCI layout (``oci:DIR[:TAG]``) or a ``docker save`` archive
(``docker-archive:FILE``) for offline use.
"""

from .pull import PullResult, parse_destination, pull
from .reference import Reference, parse_reference
from .source import RegistryOptions, open_registry_image

__all__ = [
    "PullResult",
    "Reference",
    "RegistryOptions",
    "open_registry_image",
    "parse_destination",
    "parse_reference",
    "pull",
]
