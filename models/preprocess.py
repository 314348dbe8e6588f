"""Image bytes -> the model's input tensor, and the transform that maps boxes back to the image.

Decoding is Pillow (JPEG/PNG), with EXIF orientation applied and a pixel budget checked from the header
before any pixel is decoded. Resize is Pillow (bilinear; JPEG DCT-domain downscale via `draft` first);
everything after is vectorised numpy with one fused multiply-add per pixel and one contiguous copy.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps, UnidentifiedImageError

from models.descriptor import ChannelOrder, InputSpec, Layout, ResizeMode
from models.errors import ImageTooLarge, InvalidImage

DEFAULT_MAX_PIXELS = 40_000_000
"""Default pixel budget per image (about 8K x 5K); larger headers are refused before decoding."""

ALLOWED_FORMATS = ("JPEG", "PNG")

_DTYPES: dict[str, npt.DTypeLike] = {"float32": np.float32, "float16": np.float16, "uint8": np.uint8}


@dataclass(frozen=True, slots=True)
class Transform:
    """How an original image became the model input: model pixel = original * scale + pad."""

    original_width: int
    original_height: int
    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float

    def to_original(self, boxes_xyxy: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        """Map [N, 4] x1,y1,x2,y2 boxes in model-input pixels to original pixels, clipped to the image."""
        b = np.asarray(boxes_xyxy, dtype=np.float32).reshape(-1, 4)
        off = np.array([self.pad_x, self.pad_y, self.pad_x, self.pad_y], dtype=np.float32)
        scale = np.array([self.scale_x, self.scale_y, self.scale_x, self.scale_y], dtype=np.float32)
        out = (b - off) / scale
        lim = np.array(
            [self.original_width, self.original_height, self.original_width, self.original_height],
            dtype=np.float32,
        )
        return np.asarray(np.clip(out, 0.0, lim), dtype=np.float32)


def decode_image(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, target: tuple[int, int] | None = None
) -> tuple[Image.Image, tuple[int, int]]:
    """Decode JPEG/PNG bytes into an upright RGB image and its full-resolution upright (width, height).

    With `target`, a JPEG may decode at 1/2, 1/4 or 1/8 scale (never below the target size); the returned
    size is still the original one, so boxes map back to the pixels the user sent.

    Args:
        data: the encoded image.
        max_pixels: refuse images whose header claims more pixels (raises ImageTooLarge).
        target: (width, height) the image will be resized to; lets JPEG decode at a reduced scale.

    Raises:
        InvalidImage: empty, not JPEG/PNG, or corrupt data.
        ImageTooLarge: the header claims more than `max_pixels` pixels.
    """
    if not data:
        raise InvalidImage("image is empty (0 bytes): send JPEG or PNG bytes")
    try:
        img: Image.Image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageTooLarge(f"image header claims too many pixels ({e}); limit is {max_pixels}") from e
    except UnidentifiedImageError as e:
        raise InvalidImage("image is not a JPEG or PNG (unrecognised header)") from e
    except Exception as e:  # Pillow plugins raise OSError, SyntaxError, struct.error, IndexError...
        raise InvalidImage(f"image header does not decode: {e}") from e
    w, h = img.size
    if w <= 0 or h <= 0:
        raise InvalidImage(f"image has no pixels ({w}x{h})")
    if w * h > max_pixels:
        raise ImageTooLarge(f"image is {w}x{h} = {w * h} pixels; the limit is {max_pixels}: downscale it")
    try:
        if target is not None and img.format == "JPEG":
            side = max(target)
            img.draft("RGB", (side, side))
        orientation = img.getexif().get(0x0112, 1)  # PNG: this loads the image
        original = (h, w) if orientation in (5, 6, 7, 8) else (w, h)
        img.load()
        img = ImageOps.exif_transpose(img)
        if img.mode != "RGB":
            img = img.convert("RGB")
    except Exception as e:  # as above: any decoder failure means corrupt data
        raise InvalidImage(f"image data is corrupt or truncated: {e}") from e
    return img, original


def resize(
    img: Image.Image, spec: InputSpec, original_size: tuple[int, int] | None = None
) -> tuple[npt.NDArray[np.uint8], Transform]:
    """Resize an RGB image to the spec's height x width; returns HWC uint8 pixels and the transform.

    `original_size` is the (width, height) the transform maps back to; default: the image's own size.
    """
    tw, th = spec.width, spec.height
    ow, oh = original_size or img.size
    if spec.resize == ResizeMode.STRETCH:
        out = img if img.size == (tw, th) else img.resize((tw, th), Image.Resampling.BILINEAR)
        pixels = np.asarray(out, dtype=np.uint8)
        return pixels, Transform(ow, oh, tw / ow, th / oh, 0.0, 0.0)
    r = min(tw / ow, th / oh)
    nw, nh = max(1, round(ow * r)), max(1, round(oh * r))
    px, py = (tw - nw) // 2, (th - nh) // 2
    resized = img if img.size == (nw, nh) else img.resize((nw, nh), Image.Resampling.BILINEAR)
    canvas = np.full((th, tw, 3), spec.pad_value, dtype=np.uint8)
    canvas[py : py + nh, px : px + nw] = np.asarray(resized, dtype=np.uint8)
    return canvas, Transform(ow, oh, nw / ow, nh / oh, float(px), float(py))


def to_tensor(pixels: npt.NDArray[np.uint8], spec: InputSpec) -> npt.NDArray[np.generic]:
    """RGB uint8 pixels [H, W, 3] or [N, H, W, 3] -> the model's [N, ...] tensor (contiguous).

    Applies channel order, (pixel * scale - mean) / std as one fused multiply-add, dtype and layout.
    """
    x: npt.NDArray[np.generic] = pixels if pixels.ndim == 4 else pixels[np.newaxis]
    if x.shape[-1] != 3:
        raise InvalidImage(f"pixels must have 3 channels in the last axis, got shape {x.shape}")
    if spec.channel_order == ChannelOrder.BGR:
        x = x[..., ::-1]
    dtype = _DTYPES[spec.dtype]
    if spec.dtype != "uint8":
        std = np.asarray(spec.std, dtype=np.float32)
        gain = np.float32(spec.scale) / std
        bias = -np.asarray(spec.mean, dtype=np.float32) / std
        y = x.astype(np.float32)
        y *= gain
        y += bias
        x = y if dtype == np.float32 else y.astype(dtype)
    if spec.layout == Layout.NCHW:
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x, dtype=dtype)


def preprocess(
    data: bytes, spec: InputSpec, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[npt.NDArray[np.generic], Transform]:
    """Image bytes -> ([1, ...] input tensor, transform back to original pixels).

    Raises:
        InvalidImage: the bytes do not decode.
        ImageTooLarge: the header claims more than `max_pixels` pixels.
    """
    img, original = decode_image(data, max_pixels=max_pixels, target=(spec.width, spec.height))
    pixels, transform = resize(img, spec, original)
    return to_tensor(pixels, spec), transform


def preprocess_batch(
    images: list[bytes], spec: InputSpec, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[npt.NDArray[np.generic], list[Transform]]:
    """Several images -> one [N, ...] tensor and one transform per image."""
    if not images:
        raise InvalidImage("no images given")
    decoded = []
    for d in images:
        img, original = decode_image(d, max_pixels=max_pixels, target=(spec.width, spec.height))
        decoded.append(resize(img, spec, original))
    stacked = np.stack([p for p, _ in decoded])
    return to_tensor(stacked, spec), [t for _, t in decoded]
