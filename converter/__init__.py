"""rootfs converter: turn a container image into a plain root filesystem.

The pipeline is ``source -> Image -> merge -> sink``; see README.md and the modules
``converter.sources``, ``converter.merge`` and ``converter.sinks``.
"""

__version__ = "0.1.0"

from typing import Any

__all__ = [
    "convert", "plan_image", "open_image", "inspect", "ConvertResult", "ImageInfo", "ConverterError",
    "Image", "Layer", "Platform",
]

_LAZY = {
    "convert": "api", "plan_image": "api", "ConvertResult": "api",
    "open_image": "sources", "ConverterError": "errors", "inspect": "inspect", "ImageInfo": "inspect",
    "Image": "image", "Layer": "image", "Platform": "image",
}


def __getattr__(name: str) -> Any:
    """Import the API on first use, so ``rootfs --version`` and ``--help`` start fast."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'converter' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
