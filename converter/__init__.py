"""rootfs converter: turn a container image into a plain root filesystem.

The pipeline is ``source -> Image -> merge -> sink``; see README.md and the modules
``converter.sources``, ``converter.merge`` and ``converter.sinks``.
"""

__version__ = "0.1.0"

from .api import ConvertResult, convert, plan_image  # noqa: E402
from .errors import ConverterError  # noqa: E402
from .image import Image, Layer, Platform  # noqa: E402
from .sources import open_image  # noqa: E402

__all__ = ["convert", "plan_image", "open_image", "ConvertResult", "ConverterError", "Image", "Layer", "Platform"]
