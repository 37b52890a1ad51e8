"""What counts as an image file, and reading one, for every reader of images.

Every image dnnlab reads is decoded whole by `open_rgb`, so a truncated or corrupt file is
found as `UnreadableImage` (an InputError naming the file and the reason), never as PIL's
OSError from the middle of a run. Readers of many images (detect build and eval, detect run,
the probe's image folders) count such a file as an input problem and go on without it.
"""

from __future__ import annotations

import io

from PIL import Image

from dnnlab.errors import InputError
from dnnlab.utils.steady import special_reason

IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


class UnreadableImage(InputError):
    """An image file that cannot be decoded whole (truncated, corrupt, not an image);
    `reason` is the why without the file's name."""

    def __init__(self, name, reason: str):
        super().__init__(f"{name}: unreadable image ({reason})")
        self.reason = reason


def open_rgb(source, name=None) -> Image.Image:
    """The image at `source` (a path, or the file's bytes) decoded whole, as RGB; a file that
    cannot be is an UnreadableImage naming `name` (default: the path)."""
    src = io.BytesIO(source) if isinstance(source, bytes) else source
    special = None if isinstance(source, bytes) else special_reason(source)
    if special is not None:  # a named pipe would make the decoder wait forever
        raise UnreadableImage(name or source, f"{special}, not a regular file")
    try:
        with Image.open(src) as im:
            return im.convert("RGB")  # convert decodes every pixel: truncation is found here
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ...
        raise UnreadableImage(name or source, f"{type(e).__name__}: {e}") from None
