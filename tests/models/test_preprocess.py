"""Image bytes -> tensors: formats, EXIF, colour order, resize/letterbox, normalisation, bad images."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from models.descriptor import InputSpec
from models.errors import ImageTooLarge, InvalidImage
from models.preprocess import Transform, decode_image, preprocess, preprocess_batch, resize, to_tensor
from tests.models.conftest import encode, scene
from tests.support.fuzz import examples

SPEC = InputSpec(name="x", height=64, width=64, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))


def test_stretch_normalisation_matches_formula() -> None:
    pixels = scene(64, 64)
    x, t = preprocess(encode(pixels), SPEC)
    assert x.shape == (1, 3, 64, 64)
    assert x.dtype == np.float32
    assert x.flags.c_contiguous
    expected = ((pixels / 255.0 - np.array(SPEC.mean)) / np.array(SPEC.std)).transpose(2, 0, 1)[None]
    assert np.allclose(x, expected, atol=1e-5)
    assert t == Transform(64, 64, 1.0, 1.0, 0.0, 0.0)


def test_bgr_nhwc_float16_uint8() -> None:
    pixels = scene(32, 48)
    bgr = SPEC.model_copy(update={"channel_order": "BGR", "layout": "NHWC", "height": 32, "width": 48})
    x, _ = preprocess(encode(pixels), bgr)
    assert x.shape == (1, 32, 48, 3)
    assert np.allclose(x[0, ..., 0], (pixels[..., 2] / 255.0 - 0.5) / 0.2, atol=1e-5)
    half = bgr.model_copy(update={"dtype": "float16"})
    assert preprocess(encode(pixels), half)[0].dtype == np.float16
    raw = InputSpec(name="x", height=32, width=48, dtype="uint8", scale=1.0)
    y, _ = preprocess(encode(pixels), raw)
    assert y.dtype == np.uint8
    assert np.array_equal(y[0].transpose(1, 2, 0), pixels)


def test_letterbox_pads_and_maps_back() -> None:
    spec = SPEC.model_copy(update={"resize": "letterbox", "pad_value": 114})
    x, t = preprocess(encode(scene(50, 100)), spec)  # 100 wide, 50 high -> 64 x 32, padded 16 top/bottom
    assert (t.scale_x, t.scale_y, t.pad_x, t.pad_y) == (0.64, 0.64, 0.0, 16.0)
    pad = (114 / 255.0 - 0.5) / 0.2
    assert np.allclose(x[0, 0, :16], pad, atol=1e-5)
    assert np.allclose(x[0, 0, 48:], pad, atol=1e-5)
    box = t.to_original(np.array([[0.0, 16.0, 64.0, 48.0]]))
    assert np.allclose(box, [[0, 0, 100, 50]])


@settings(max_examples=examples(50), deadline=None)
@given(
    st.integers(1, 4000),
    st.integers(1, 4000),
    st.integers(32, 640),
    st.integers(32, 640),
    st.sampled_from(["letterbox", "stretch"]),
)
def test_box_mapping_round_trip(ow: int, oh: int, tw: int, th: int, mode: str) -> None:
    spec = InputSpec(name="x", height=th, width=tw, resize=mode)
    _, t = resize(Image.new("RGB", (1, 1)), spec, (ow, oh))
    orig = np.array([[0.1 * ow, 0.2 * oh, 0.9 * ow, 0.7 * oh]], dtype=np.float32)
    model = orig * [t.scale_x, t.scale_y, t.scale_x, t.scale_y] + [t.pad_x, t.pad_y, t.pad_x, t.pad_y]
    assert np.allclose(t.to_original(model), orig, rtol=1e-4, atol=1e-2)
    assert (t.to_original(np.array([[-50, -50, 1e6, 1e6]])) == [[0, 0, ow, oh]]).all()


def test_exif_orientation_applied() -> None:
    pixels = scene(20, 40)  # landscape as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = encode(pixels, "JPEG", exif=exif.tobytes(), quality=95)
    img, original = decode_image(data)
    assert img.size == (20, 40)
    assert original == (20, 40)


def test_jpeg_draft_keeps_original_size() -> None:
    data = encode(scene(1024, 2048), "JPEG", quality=90)
    img, original = decode_image(data, target=(64, 64))
    assert original == (2048, 1024)
    assert img.size[0] < 2048  # decoded at a reduced DCT scale
    _, t = preprocess(data, SPEC.model_copy(update={"resize": "letterbox"}))
    assert t.original_width == 2048


def test_rgba_grey_and_palette_become_rgb() -> None:
    for mode in ("RGBA", "L", "P", "I;16"):
        img = Image.new(mode, (8, 8))
        buf = io.BytesIO()
        img.save(buf, "PNG")
        x, _ = preprocess(buf.getvalue(), SPEC)
        assert x.shape == (1, 3, 64, 64)


def test_batch() -> None:
    x, ts = preprocess_batch([encode(scene(10, 20)), encode(scene(30, 15), "JPEG")], SPEC)
    assert x.shape == (2, 3, 64, 64)
    assert [t.original_width for t in ts] == [20, 15]
    with pytest.raises(InvalidImage):
        preprocess_batch([], SPEC)


def _png_header(width: int, height: int) -> bytes:
    real = encode(np.zeros((1, 1, 3), np.uint8))
    ihdr = b"IHDR" + struct.pack(">II", width, height) + real[24:29]
    return real[:8] + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + real[33:]


@pytest.mark.parametrize("side", [20000, 10000])
def test_decompression_bomb_header(side: int) -> None:
    with pytest.raises(ImageTooLarge) as e:
        preprocess(_png_header(side, side), SPEC)
    assert e.value.permanent


def test_pixel_budget_is_configurable() -> None:
    with pytest.raises(ImageTooLarge, match="3000x3000"):
        preprocess(_png_header(3000, 3000), SPEC, max_pixels=1_000_000)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "empty"),
        (b"not an image at all", "not a JPEG or PNG"),
        (encode(scene(8, 8), "GIF"), "not a JPEG or PNG"),
        (encode(scene(64, 64), "JPEG")[:300], "corrupt or truncated|does not decode"),
        (encode(scene(64, 64))[:60], "corrupt or truncated|does not decode"),
    ],
)
def test_images_that_do_not_decode(data: bytes, match: str) -> None:
    with pytest.raises(InvalidImage, match=match):
        preprocess(data, SPEC)


def test_to_tensor_rejects_non_rgb() -> None:
    with pytest.raises(InvalidImage):
        to_tensor(np.zeros((4, 4, 4), np.uint8), SPEC)
