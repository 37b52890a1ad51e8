"""What counts as an image file, and reading one, for every reader of images.

Every image dnnlab reads (the detector's photos, the probe's image folders, a CIFAR-10
image-folder tree) is decoded by `open_rgb`, the one decoder, so all of them see the same
pixels for the same file:

- decoded whole, so a truncated or corrupt file is found as `UnreadableImage` (an InputError
  naming the file and the reason), never as PIL's OSError from the middle of a run;
- turned as it is displayed: an EXIF Orientation tag (a phone's portrait photo is stored
  sideways with a tag saying so) is applied (`PIL.ImageOps.exif_transpose`), so pixels, sizes
  and VOC boxes are in the frame a viewer and an annotation tool show;
- made 8-bit RGB by each mode's real range (`to_rgb8`): 16-bit samples (0..65535) scaled to
  0..255, not clipped to white as PIL's convert does.

Readers of many images (detect build and eval, detect run, the probe's image folders) count
an unreadable file as an input problem and go on without it.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps

from dnnlab.errors import InputError
from dnnlab.utils.steady import special_reason

IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")

# What a transparent pixel shows: the colour stored under it is arbitrary (often black, or
# whatever the editor left), so it is composited over white, as a viewer on a page shows it.
BACKGROUND = (255, 255, 255)
# Modes whose samples are 16-bit integers (PIL reads 16-bit greyscale PNG, TIFF and PGM so).
SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
# Modes with an alpha band (premultiplied ones first made plain by PIL).
WITH_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")


class UnreadableImage(InputError):
    """An image file that cannot be decoded whole (truncated, corrupt, not an image);
    `reason` is the why without the file's name."""

    def __init__(self, name, reason: str):
        super().__init__(f"{name}: unreadable image ({reason})")
        self.reason = reason


class _BadPixels(ValueError):
    """Pixels that have no colour (a float image with NaN or infinite samples)."""


def open_rgb(source, name=None) -> Image.Image:
    """The image at `source` (a path, or the file's bytes) decoded whole, turned as displayed
    (EXIF orientation) and made 8-bit RGB (`to_rgb8`); a file that cannot be is an
    UnreadableImage naming `name` (default: the path)."""
    src = io.BytesIO(source) if isinstance(source, bytes) else source
    special = None if isinstance(source, bytes) else special_reason(source)
    if special is not None:  # a named pipe would make the decoder wait forever
        raise UnreadableImage(name or source, f"{special}, not a regular file")
    try:
        with Image.open(src) as im:
            im.load()  # decodes every pixel: truncation is found here
            return to_rgb8(_as_displayed(im))
    except _BadPixels as e:
        raise UnreadableImage(name or source, str(e)) from None
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ...
        raise UnreadableImage(name or source, f"{type(e).__name__}: {e}") from None


def _as_displayed(im: Image.Image) -> Image.Image:
    """`im` turned by its EXIF Orientation tag (1 to 8; none, or any other value: as stored).
    EXIF that cannot be parsed carries no orientation: a viewer shows such a file as stored,
    and the pixels themselves were read whole."""
    try:
        with warnings.catch_warnings():  # PIL's "Corrupt EXIF data", which names no file
            warnings.simplefilter("ignore")
            return ImageOps.exif_transpose(im)
    except Exception:  # a mangled EXIF block: PIL raises SyntaxError, struct.error, ...
        return im


def to_rgb8(im: Image.Image) -> Image.Image:
    """`im` as 8-bit RGB, each mode read by its real range:

    - 16-bit integer samples (I;16 and its byte orders): 0..65535 scaled to 0..255;
    - 32-bit integers (I): PIL's mode for 16-bit PGM/PPM and some TIFFs, so 0..65535 when
      every sample lies in it; otherwise (negative or wider samples, which have no
      conventional range) the image's own minimum..maximum;
    - floats (F): 0..1 when every sample lies in it (the convention of float images);
      otherwise the image's own minimum..maximum; NaN or infinite samples are refused;
    - an alpha band (RGBA, LA, PA) or a transparent palette or colour key (P, L, RGB with
      `transparency`): composited over BACKGROUND;
    - 1, L, P, CMYK, YCbCr, RGBX: PIL's conversion (1 is 0 or 255; CMYK without a colour
      profile).
    A constant image of a range read from the data is mid-grey when that one value is not 0."""
    if im.mode in SIXTEEN_BIT or im.mode in ("I", "F"):
        return Image.fromarray(_scaled(im)).convert("RGB")  # uint8 2-D: mode L
    if im.mode in ("RGBa", "La") or (im.mode in ("P", "L", "RGB") and "transparency" in im.info):
        im = im.convert("RGBA")  # transparency made an alpha band, premultiplying undone
    if im.mode in WITH_ALPHA:
        rgba = im.convert("RGBA")
        out = Image.new("RGB", rgba.size, BACKGROUND)
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return im.convert("RGB") if im.mode != "RGB" else im.copy()


def _scaled(im: Image.Image) -> np.ndarray:
    """A single-band image of wide samples as uint8 (see to_rgb8)."""
    a = np.asarray(im)
    if im.mode in SIXTEEN_BIT:
        lo, hi = 0.0, 65535.0
    elif im.mode == "I" and (a.size == 0 or (a.min() >= 0 and a.max() <= 65535)):
        lo, hi = 0.0, 65535.0
    elif im.mode == "F" and not np.isfinite(a).all():
        raise _BadPixels("float pixels that are NaN or infinite, which have no colour")
    elif im.mode == "F" and (a.size == 0 or (a.min() >= 0 and a.max() <= 1)):
        lo, hi = 0.0, 1.0
    else:  # no range of its own: the data's
        lo, hi = float(a.min()), float(a.max())
    if hi == lo:  # one value: black for 0, else mid-grey (no contrast to show)
        return np.full(a.shape, 0 if hi == 0 else 128, dtype=np.uint8)
    scaled = (a.astype(np.float64) - lo) * (255.0 / (hi - lo))
    return np.rint(scaled).clip(0, 255).astype(np.uint8)
