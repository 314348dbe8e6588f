"""Resampling of uint8 RGB pixels with the arithmetic of the library a model was trained with.

Two families, picked by `antialias` in the description:

- **Antialiased (Pillow).** `Image.resize` with NEAREST, BILINEAR, BICUBIC, BOX (area) or LANCZOS: on a
  downscale the filter widens with the scale factor, so every source pixel contributes (torchvision's PIL
  path and `antialias=True` behave so).
- **Sampling (OpenCV).** `cv2.resize` without OpenCV at run time: INTER_NEAREST, INTER_LINEAR,
  INTER_CUBIC and INTER_LANCZOS4 reproduced in numpy, including OpenCV's 11-bit fixed-point weights and
  its rounding for 8-bit images, so models trained through `cv2.resize` see the pixels they were trained
  on. Only the taps at each output position contribute (no antialiasing), which is what OpenCV,
  PaddlePaddle's and most YOLO pipelines do. tests/models/test_resample.py compares against OpenCV itself.

Sampling positions are pixel-centre aligned in both (`src = (dst + 0.5) * in / out - 0.5`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image

from models.descriptor import Interpolation

U8 = npt.NDArray[np.uint8]

COEF_BITS = 11
"""OpenCV's INTER_RESIZE_COEF_BITS: weights are integers in units of 1/2048."""
COEF_SCALE = 1 << COEF_BITS

_PILLOW = {
    Interpolation.NEAREST: Image.Resampling.NEAREST,
    Interpolation.BILINEAR: Image.Resampling.BILINEAR,
    Interpolation.BICUBIC: Image.Resampling.BICUBIC,
    Interpolation.AREA: Image.Resampling.BOX,
    Interpolation.LANCZOS: Image.Resampling.LANCZOS,
}
_TAPS = {Interpolation.BILINEAR: 2, Interpolation.BICUBIC: 4, Interpolation.LANCZOS: 8}


@dataclass(frozen=True, slots=True)
class Canvas:
    """A padded canvas the image sits on: `width` x `height`, image at (`x`, `y`), `pad` elsewhere."""

    width: int
    height: int
    x: int
    y: int
    pad: int

    @property
    def pixels(self) -> int:
        """Pixels of the whole canvas."""
        return self.width * self.height


def resize_pixels(
    pixels: U8 | Image.Image,
    size: tuple[int, int],
    interpolation: Interpolation,
    antialias: bool,
    canvas: Canvas | None = None,
) -> U8:
    """Resize HWC uint8 pixels (or an RGB image) to `size` = (width, height); returns HWC uint8.

    Args:
        pixels: [H, W, C] uint8 array or a Pillow RGB image.
        size: (width, height) of the result, each >= 1.
        interpolation: the filter.
        antialias: True for Pillow's antialiased filters, False for OpenCV's sampling arithmetic.
        canvas: resize this padded canvas around the image instead of the image alone. The OpenCV forms
            read only the canvas pixels their taps sample, so a canvas far larger than the image (an
            elongated panorama padded to a square) costs no memory; Pillow's filters need it whole.
    """
    w, h = size
    if canvas is not None and antialias:
        whole = np.full((canvas.height, canvas.width, 3), canvas.pad, dtype=np.uint8)
        src = np.asarray(pixels, dtype=np.uint8)
        whole[canvas.y : canvas.y + src.shape[0], canvas.x : canvas.x + src.shape[1]] = src
        pixels = whole
    if antialias:
        img = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
        if img.size != (w, h):
            img = img.resize((w, h), _PILLOW[interpolation])
        return np.asarray(img, dtype=np.uint8)
    src = np.asarray(pixels, dtype=np.uint8)
    if canvas is None:
        if src.shape[1] == w and src.shape[0] == h:
            return src
        canvas = Canvas(src.shape[1], src.shape[0], 0, 0, 0)
    if interpolation == Interpolation.NEAREST:
        return _nearest(src, canvas, w, h)
    if interpolation not in _TAPS:
        raise ValueError(f"{interpolation.value} has no sampling (antialias: false) form")
    return _separable(src, canvas, w, h, interpolation)


def _rows(src: U8, canvas: Canvas, rows: npt.NDArray[np.int64]) -> U8:
    """Canvas rows [len(rows), image width, C] at canvas row indices (pad rows outside the image)."""
    r = rows - canvas.y
    out = src[np.clip(r, 0, src.shape[0] - 1)]
    outside = (r < 0) | (r >= src.shape[0])
    if outside.any():
        out[outside] = canvas.pad
    return out


def _cols(rows: U8, canvas: Canvas, cols: npt.NDArray[np.int64]) -> U8:
    """Canvas pixels of `rows` (from `_rows`) at canvas column indices (pad outside the image)."""
    c = cols - canvas.x
    n, width, channels = rows.shape
    flat = (np.clip(c, 0, width - 1)[:, None] * channels + np.arange(channels)).reshape(-1)
    taken = np.take(rows.reshape(n, width * channels), flat, axis=1)
    out = np.asarray(taken, dtype=np.uint8).reshape(n, len(c), channels)
    outside = (c < 0) | (c >= width)
    if outside.any():
        out[:, outside] = canvas.pad
    return out


def _nearest(src: U8, canvas: Canvas, w: int, h: int) -> U8:
    """cv2.INTER_NEAREST: source index floor(dst * in / out), clamped."""
    cw, ch = canvas.width, canvas.height
    xs = np.minimum(np.floor(np.arange(w) * (1.0 / (w / cw))).astype(np.int64), cw - 1)
    ys = np.minimum(np.floor(np.arange(h) * (1.0 / (h / ch))).astype(np.int64), ch - 1)
    return np.ascontiguousarray(_cols(_rows(src, canvas, ys), canvas, xs))


def _coefficients(kind: Interpolation, f: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Per position the float32 weights of its taps (OpenCV's interpolate* functions)."""
    if kind == Interpolation.BILINEAR:
        return np.stack([np.float32(1) - f, f], axis=1)
    if kind == Interpolation.BICUBIC:
        a = np.float32(-0.75)
        x1 = f + np.float32(1)
        c0 = ((a * x1 - 5 * a) * x1 + 8 * a) * x1 - 4 * a
        c1 = ((a + 2) * f - (a + 3)) * f * f + 1
        g = np.float32(1) - f
        c2 = ((a + 2) * g - (a + 3)) * g * g + 1
        c3 = np.float32(1) - c0 - c1 - c2
        return np.stack([c0, c1, c2, c3], axis=1).astype(np.float32)
    # Lanczos-4: sin(pi y / 4) sin(pi y) / (pi^2 y^2 / 4) over 8 taps, normalised to sum 1 (in float32).
    s45 = 0.70710678118654752440084436210485
    cs = np.array([[1, 0], [-s45, -s45], [0, 1], [s45, -s45], [-1, 0], [s45, s45], [0, -1], [-s45, s45]])
    x = f.astype(np.float32)
    y0 = -(x.astype(np.float64) + 3) * math.pi * 0.25
    s0, c0 = np.sin(y0), np.cos(y0)
    out = np.empty((f.size, 8), dtype=np.float32)
    for i in range(8):
        yi = (x + np.float32(3 - i)).astype(np.float32)
        y = -yi.astype(np.float64) * math.pi * 0.25
        with np.errstate(divide="ignore", invalid="ignore"):
            v = ((cs[i, 0] * s0 + cs[i, 1] * c0) / (y * y)).astype(np.float32)
        out[:, i] = np.where(np.abs(yi) >= np.float32(1e-6), v, np.float32(1e30))
    total = np.float32(1) / out.sum(axis=1, dtype=np.float32)
    return np.asarray(out * total[:, None], dtype=np.float32)


def _positions(src_len: int, dst_len: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """First-tap source index and float32 fraction per output position, as OpenCV computes them."""
    scale = 1.0 / (dst_len / src_len)
    pos = ((np.arange(dst_len, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    start = np.floor(pos).astype(np.int64)
    return start, (pos - start.astype(np.float32)).astype(np.float32)


def _clamped(start: npt.NDArray[np.int64], taps: int, src_len: int) -> npt.NDArray[np.int64]:
    offsets = np.arange(taps, dtype=np.int64) - (taps // 2 - 1)
    return np.asarray(np.clip(start[:, None] + offsets[None, :], 0, src_len - 1), dtype=np.int64)


def _axis(src_len: int, dst_len: int, kind: Interpolation, horizontal: bool) -> tuple[npt.NDArray[np.int64], ...]:
    """Tap indices [dst, k] (clamped to the image) and fixed-point weights [dst, k] along one axis."""
    taps = _TAPS[kind]
    start, frac = _positions(src_len, dst_len)
    if kind == Interpolation.BILINEAR and horizontal:
        # OpenCV clamps the horizontal linear taps to the first/last pixel (the vertical pass does not).
        low = start < 0
        high = start >= src_len - 1
        frac = np.where(low | high, np.float32(0), frac).astype(np.float32)
        start = np.where(low, 0, np.where(high, src_len - 1, start))
    weights = np.rint(_coefficients(kind, frac) * np.float32(COEF_SCALE))
    weights = np.clip(weights, -32768, 32767).astype(np.int64)
    return _clamped(start, taps, src_len), weights


def _separable_float(src: U8, canvas: Canvas, w: int, h: int) -> U8:
    """INTER_CUBIC: OpenCV's weights, accumulated in float (within one grey level of OpenCV's own sums)."""
    xs, xf = _positions(canvas.width, w)
    ys, yf = _positions(canvas.height, h)
    xi, xc = _clamped(xs, 4, canvas.width), _coefficients(Interpolation.BICUBIC, xf).astype(np.float64)
    yi, yc = _clamped(ys, 4, canvas.height), _coefficients(Interpolation.BICUBIC, yf).astype(np.float64)
    needed, inverse = np.unique(yi, return_inverse=True)
    rows = _rows(src, canvas, needed)
    hbuf = np.zeros((len(needed), w, src.shape[2]), dtype=np.float64)
    for k in range(4):
        hbuf += _cols(rows, canvas, xi[:, k]) * xc[None, :, k, None]
    rid = inverse.reshape(yi.shape)
    out = hbuf[rid[:, 0]] * yc[:, 0, None, None]
    for k in range(1, 4):
        out += hbuf[rid[:, k]] * yc[:, k, None, None]
    return np.asarray(np.clip(np.rint(out), 0, 255), dtype=np.uint8)


def _separable(src: U8, canvas: Canvas, w: int, h: int, kind: Interpolation) -> U8:
    """OpenCV's resizeGeneric for 8-bit images: horizontal pass into int rows, then a vertical pass."""
    sw, sh = canvas.width, canvas.height
    whole = (sh, sw) == src.shape[:2]
    if whole and kind == Interpolation.BILINEAR and sw == 2 * w and sh == 2 * h:
        # OpenCV switches an exact 2x linear downscale to its fast area path: (a + b + c + d + 2) >> 2.
        s = src.astype(np.int32)
        q = s[0::2, 0::2] + s[0::2, 1::2] + s[1::2, 0::2] + s[1::2, 1::2]
        return ((q + 2) >> 2).astype(np.uint8)
    if kind == Interpolation.BICUBIC:
        return _separable_float(src, canvas, w, h)
    xi, xw = _axis(sw, w, kind, horizontal=True)
    yi, yw = _axis(sh, h, kind, horizontal=False)
    needed, inverse = np.unique(yi, return_inverse=True)
    # Horizontal pass over only the rows some output row uses, into int32 in units of 1/2048
    # (|sum| < 2^31 for 8 taps of 8-bit pixels).
    rows = _rows(src, canvas, needed)
    hbuf = np.zeros((len(needed), w, src.shape[2]), dtype=np.int32)
    for k in range(xi.shape[1]):
        hbuf += _cols(rows, canvas, xi[:, k]).astype(np.int32) * xw[None, :, k, None].astype(np.int32)
    rid = inverse.reshape(yi.shape)
    if kind == Interpolation.BILINEAR:
        # OpenCV's vectorised linear vertical pass: ((b0 * (S0 >> 4)) >> 16) + ((b1 * (S1 >> 4)) >> 16) + 2 >> 2
        b = yw.astype(np.int32)[:, :, None, None]
        out = ((b[:, 0] * (hbuf[rid[:, 0]] >> 4)) >> 16) + ((b[:, 1] * (hbuf[rid[:, 1]] >> 4)) >> 16)
        out = (out + 2) >> 2
    else:
        acc = hbuf[rid[:, 0]].astype(np.int64) * yw[:, 0, None, None]
        for k in range(1, yi.shape[1]):
            acc += hbuf[rid[:, k]].astype(np.int64) * yw[:, k, None, None]
        out = (acc + (1 << (2 * COEF_BITS - 1))) >> (2 * COEF_BITS)
    return np.asarray(np.clip(out, 0, 255), dtype=np.uint8)
