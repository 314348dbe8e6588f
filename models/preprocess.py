"""Image bytes -> the model's input tensor, and the transform that maps boxes back to the image.

Decoding is Pillow (JPEG/PNG), with EXIF orientation applied and a pixel budget checked from the header
before any pixel is decoded. `prepare(image, spec)` is everything after decoding: the resize mode
(stretch, letterbox centred or top-left, resize-then-pad or pad-then-resize, shorter side + centre crop,
height-fit + pad right), the filter (`models.resample`: Pillow's antialiased filters or OpenCV's
arithmetic), padding in pixel or normalised space, then vectorised numpy with one fused multiply-add per
pixel and one contiguous copy. The `Transform` it returns maps boxes back through whichever resize ran.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps, UnidentifiedImageError

from models.descriptor import Anchor, ChannelOrder, InputSpec, Layout, PadSpace, ResizeMode
from models.errors import ImageTooLarge, InvalidImage
from models.resample import Canvas, resize_pixels

DEFAULT_MAX_PIXELS = 40_000_000
"""Default pixel budget per image (about 8K x 5K); larger headers are refused before decoding."""

MAX_CANVAS_PIXELS = DEFAULT_MAX_PIXELS
"""Largest padded canvas a pad_first letterbox builds for Pillow's filters (the OpenCV forms build none)."""

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


@dataclass(frozen=True, slots=True)
class Prepared:
    """Pixels at the model's input size, the transform back, and where the image lies (x0, y0, x1, y1)."""

    pixels: npt.NDArray[np.uint8]
    transform: Transform
    content: tuple[int, int, int, int]


def draft_side(spec: InputSpec) -> int | None:
    """The smallest side a JPEG may be decoded at (DCT scaling) for this spec; None: decode at full size.

    Only the antialiased filters tolerate a reduced decode; OpenCV-trained models and pad_first letterboxes
    get the full-resolution pixels their reference pipeline resizes.
    """
    if not spec.antialias or spec.pad_first:
        return None
    if spec.resize == ResizeMode.CENTER_CROP:
        return spec.shorter_side or max(spec.height, spec.width)
    return max(spec.height, spec.width)


def layout(img: Image.Image, spec: InputSpec, original_size: tuple[int, int] | None = None) -> Prepared:
    """Resize an upright RGB image to the spec's height x width by its resize mode and filter.

    `original_size` is the (width, height) the transform maps back to (the image may have been decoded at
    a reduced JPEG scale); default: the image's own size. Every size is computed from the original size.
    """
    tw, th = spec.width, spec.height
    ow, oh = original_size or img.size
    mode = spec.resize

    def fit(size: tuple[int, int]) -> npt.NDArray[np.uint8]:
        return resize_pixels(img, size, spec.interpolation, spec.antialias)

    if mode == ResizeMode.STRETCH:
        return Prepared(fit((tw, th)), Transform(ow, oh, tw / ow, th / oh, 0.0, 0.0), (0, 0, tw, th))
    if mode == ResizeMode.LETTERBOX and spec.pad_first:
        return _pad_then_resize(img, spec, ow, oh)
    if mode == ResizeMode.LETTERBOX:
        r = min(tw / ow, th / oh)
        nw, nh = max(1, round(ow * r)), max(1, round(oh * r))
        px, py = ((tw - nw) // 2, (th - nh) // 2) if spec.anchor == Anchor.CENTER else (0, 0)
    elif mode == ResizeMode.PAD_RIGHT:
        nw, nh = max(1, min(tw, math.ceil(th * (ow / oh)))), th  # PaddleOCR's arithmetic, float ratio first
        px, py = 0, 0
    else:  # CENTER_CROP: px/py are negative when the resized image is larger than the crop
        ratio = float(spec.shorter_side or max(tw, th)) / min(ow, oh)
        nw, nh = max(1, round(ow * ratio)), max(1, round(oh * ratio))
        px, py = -((nw - tw) // 2), -((nh - th) // 2)
    resized = fit((nw, nh))
    canvas = np.full((th, tw, 3), _pixel_pad(spec), dtype=np.uint8)
    x0, y0, x1, y1 = max(px, 0), max(py, 0), min(px + nw, tw), min(py + nh, th)
    canvas[y0:y1, x0:x1] = resized[y0 - py : y1 - py, x0 - px : x1 - px]
    return Prepared(canvas, Transform(ow, oh, nw / ow, nh / oh, float(px), float(py)), (x0, y0, x1, y1))


def _pixel_pad(spec: InputSpec) -> int:
    return int(spec.pad_value) if spec.pad_space == PadSpace.PIXEL else 0


def _pad_then_resize(img: Image.Image, spec: InputSpec, ow: int, oh: int) -> Prepared:
    """Pad to the input's aspect ratio (right/bottom, or both sides when centred), then resize it all.

    The OpenCV forms sample the padded canvas without building it; Pillow's filters need it whole, so for
    them a canvas over MAX_CANVAS_PIXELS (an extreme panorama padded to a square) is refused.
    """
    tw, th = spec.width, spec.height
    if ow * th >= oh * tw:  # wider than the input: pad the height
        pw, ph = ow, max(oh, round(ow * th / tw))
    else:
        pw, ph = max(ow, round(oh * tw / th)), oh
    ox, oy = ((pw - ow) // 2, (ph - oh) // 2) if spec.anchor == Anchor.CENTER else (0, 0)
    canvas = Canvas(pw, ph, ox, oy, _pixel_pad(spec))
    if spec.antialias and canvas.pixels > MAX_CANVAS_PIXELS:
        raise ImageTooLarge(
            f"a {ow}x{oh} image padded to the input's aspect ratio is {pw}x{ph} pixels, over the "
            f"{MAX_CANVAS_PIXELS} a pad_first letterbox with antialias: true may build: crop or downscale it"
        )
    sx, sy = tw / pw, th / ph
    out = resize_pixels(np.asarray(img, dtype=np.uint8), (tw, th), spec.interpolation, spec.antialias, canvas)
    return Prepared(out, Transform(ow, oh, sx, sy, ox * sx, oy * sy), (0, 0, tw, th))


def resize(
    img: Image.Image, spec: InputSpec, original_size: tuple[int, int] | None = None
) -> tuple[npt.NDArray[np.uint8], Transform]:
    """Resize an RGB image to the spec's height x width; returns HWC uint8 pixels and the transform.

    The padding is the pixel pad value (or 0 where the spec pads in the normalised space: `prepare` fills
    that in after normalising).
    """
    p = layout(img, spec, original_size)
    return p.pixels, p.transform


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


def _fill_pad(tensor: npt.NDArray[np.generic], spec: InputSpec, contents: list[tuple[int, int, int, int]]) -> None:
    """Set every element outside each image's content box to the normalised-space pad value, in place."""
    if spec.pad_space != PadSpace.NORMALIZED:
        return
    for i, (x0, y0, x1, y1) in enumerate(contents):
        if (x0, y0, x1, y1) == (0, 0, spec.width, spec.height):
            continue
        mask = np.ones((spec.height, spec.width), dtype=bool)
        mask[y0:y1, x0:x1] = False
        view = tensor[i]  # [C, H, W] or [H, W, C]
        if spec.layout == Layout.NCHW:
            view[:, mask] = spec.pad_value
        else:
            view[mask, :] = spec.pad_value


def prepare(
    img: Image.Image, spec: InputSpec, original_size: tuple[int, int] | None = None
) -> tuple[npt.NDArray[np.generic], Transform]:
    """A decoded image and a model's input description -> ([1, ...] input tensor, transform back).

    This is the whole preprocessing after decoding: resize mode and filter, padding (in pixel or normalised
    space), channel order, normalisation, dtype and layout. Decode once (`decode_image`) and call this per
    model version to feed several versions their own preprocessing.

    Args:
        img: upright RGB image, possibly decoded at a reduced JPEG scale.
        spec: the model's input description.
        original_size: (width, height) boxes map back to; default: the image's own size.
    """
    p = layout(img, spec, original_size)
    tensor = to_tensor(p.pixels, spec)
    _fill_pad(tensor, spec, [p.content])
    return tensor, p.transform


def _target(spec: InputSpec) -> tuple[int, int] | None:
    side = draft_side(spec)
    return None if side is None else (side, side)


def preprocess(
    data: bytes, spec: InputSpec, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[npt.NDArray[np.generic], Transform]:
    """Image bytes -> ([1, ...] input tensor, transform back to original pixels).

    Raises:
        InvalidImage: the bytes do not decode.
        ImageTooLarge: the header claims more than `max_pixels` pixels.
    """
    img, original = decode_image(data, max_pixels=max_pixels, target=_target(spec))
    return prepare(img, spec, original)


def preprocess_batch(
    images: list[bytes], spec: InputSpec, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[npt.NDArray[np.generic], list[Transform]]:
    """Several images -> one [N, ...] tensor and one transform per image."""
    if not images:
        raise InvalidImage("no images given")
    prepared = []
    for d in images:
        img, original = decode_image(d, max_pixels=max_pixels, target=_target(spec))
        prepared.append(layout(img, spec, original))
    tensor = to_tensor(np.stack([p.pixels for p in prepared]), spec)
    _fill_pad(tensor, spec, [p.content for p in prepared])
    return tensor, [p.transform for p in prepared]
