"""Image decoding: every mode Pillow reads becomes the 8-bit RGB picture a viewer shows. The one decoder that
training, evaluation, prediction and ``datasets verify --full`` share (:func:`open_rgb`, :func:`to_rgb`).

What "a viewer shows" means here, mode by mode (Pillow's plain ``convert("RGB")`` gets several of them wrong):

* the EXIF orientation is applied (a phone photo stored sideways is shown upright);
* an animated image (GIF, WebP, APNG, multi-page TIFF) is its first frame;
* 16-bit grayscale (``I;16``, ``I;16B``...) is scaled to 8 bits (``v / 257``), not clipped to white; 32-bit
  integer ``I`` is read as 16-bit when its values fit ``0..65535``, else stretched from its min to its max; float
  ``F`` is read as ``0..1`` when it fits, else stretched likewise;
* transparency (``RGBA``, ``LA``, ``PA``, a palette or ``L``/``RGB`` image with a transparent colour) is
  composited on white, as browsers and image viewers show it on a white page;
* ``CMYK`` with an embedded ICC profile goes through that profile to sRGB (littleCMS); without one, Pillow's
  conversion; ``LAB`` (CIELAB), ``YCbCr``, ``HSV``, ``1``, ``L``, ``P`` through Pillow's conversion.

Embedded ICC profiles of RGB images are not applied (most photos are sRGB already, and cached features must not
change under existing datasets).
"""
from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image, ImageOps

__all__ = ["open_rgb", "to_rgb", "BACKGROUND"]

BACKGROUND = (255, 255, 255)  # what transparent pixels are composited on
_ORIENTATION = 0x0112
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")


def open_rgb(path: str | os.PathLike) -> Image.Image:
    """The image at ``path`` decoded as a viewer shows it (8-bit RGB); a one-line error naming the file otherwise."""
    try:
        with Image.open(path) as im:
            return to_rgb(im)
    except FileNotFoundError:
        raise FileNotFoundError(f"Image {path} not found.") from None
    except Exception as e:  # noqa: BLE001 - PIL raises many types for bad files
        raise OSError(f"Image {path} could not be read ({type(e).__name__}: {e}).") from None


def to_rgb(im: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of ``im`` as a viewer shows it (see the module docstring); ``im`` itself is unchanged."""
    if getattr(im, "n_frames", 1) > 1:
        im.seek(0)
    if im.getexif().get(_ORIENTATION, 1) != 1:
        im = ImageOps.exif_transpose(im)
    mode = im.mode
    if mode in _SIXTEEN_BIT or mode in ("I", "F"):
        return _deep_gray(im).convert("RGB")
    if mode in _ALPHA or "transparency" in im.info:
        return _on_white(im)
    if mode == "CMYK" and im.info.get("icc_profile"):
        return _through_profile(im)
    return im.convert("RGB")


def _deep_gray(im: Image.Image) -> Image.Image:
    """16/32-bit integer or float grayscale -> 8-bit ``L`` (scaled, never clipped)."""
    a = np.asarray(im).astype(np.float64)
    if im.mode in _SIXTEEN_BIT or (im.mode == "I" and a.size and a.min() >= 0 and a.max() <= 65535):
        a = a / 257.0
    elif im.mode == "F" and a.size and a.min() >= 0 and a.max() <= 1:
        a = a * 255.0
    else:
        lo, hi = (float(np.nanmin(a)), float(np.nanmax(a))) if a.size else (0.0, 0.0)
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return Image.fromarray(np.clip(np.rint(np.nan_to_num(a)), 0, 255).astype(np.uint8), "L")


def _on_white(im: Image.Image) -> Image.Image:
    if im.mode == "La":  # premultiplied gray+alpha: Pillow converts it only to LA
        im = im.convert("LA")
    rgba = im.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
    canvas.alpha_composite(rgba)
    return canvas.convert("RGB")


def _through_profile(im: Image.Image) -> Image.Image:
    from PIL import ImageCms
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(im.info["icc_profile"]))
        return ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError):
        return im.convert("RGB")  # a broken embedded profile: fall back to the plain conversion
