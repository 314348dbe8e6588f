"""Resampling against OpenCV itself, and every resize mode's geometry (boxes map back through it)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from models.descriptor import InputSpec, Interpolation, ModelDescriptor
from models.errors import DescriptorError, ImageTooLarge
from models.preprocess import decode_image, layout, prepare, preprocess
from models.resample import Canvas, resize_pixels
from tests.models.conftest import encode, scene

CV2 = {
    Interpolation.NEAREST: cv2.INTER_NEAREST,
    Interpolation.BILINEAR: cv2.INTER_LINEAR,
    Interpolation.BICUBIC: cv2.INTER_CUBIC,
    Interpolation.LANCZOS: cv2.INTER_LANCZOS4,
}
# Share of pixels allowed one grey level off OpenCV (its SIMD paths round cubic/Lanczos sums in float);
# nearest and bilinear must be bit-exact.
OFF_BY_ONE = {
    Interpolation.NEAREST: 0.0,
    Interpolation.BILINEAR: 0.0,
    Interpolation.BICUBIC: 0.01,
    Interpolation.LANCZOS: 0.001,
}


@pytest.mark.parametrize("kind", list(CV2), ids=lambda k: k.value)
def test_antialias_off_is_opencv(kind: Interpolation) -> None:
    rng = np.random.default_rng(7)
    off = total = 0
    for trial in range(25):
        sh, sw = (int(v) for v in rng.integers(4, 260, 2))
        h, w = (max(1, sh // 2), max(1, sw // 2)) if trial % 5 == 0 else (int(v) for v in rng.integers(1, 260, 2))
        noise = rng.integers(0, 256, (sh, sw, 3), dtype=np.uint8)
        src = scene(sh, sw, seed=trial) if trial % 2 and min(sh, sw) >= 8 else noise
        ours = resize_pixels(src, (w, h), kind, antialias=False).astype(int)
        ref = cv2.resize(src, (w, h), interpolation=CV2[kind]).astype(int)
        assert ours.shape == ref.shape
        diff = np.abs(ours - ref)
        assert diff.max() <= 1, (kind, (sh, sw), (h, w))
        off += int((diff > 0).sum())
        total += diff.size
    assert off <= OFF_BY_ONE[kind] * total, f"{off} of {total} pixels off by one"


def test_antialias_on_is_pillow() -> None:
    img = Image.fromarray(scene(300, 451))
    for kind, flt in ((Interpolation.BILINEAR, Image.Resampling.BILINEAR), (Interpolation.AREA, Image.Resampling.BOX)):
        ours = resize_pixels(img, (97, 61), kind, antialias=True)
        assert np.array_equal(ours, np.asarray(img.resize((97, 61), flt)))


def _spec(**fields: object) -> InputSpec:
    return InputSpec.model_validate({"name": "x", "height": 64, "width": 64, **fields})


def _box_of_square(pixels: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(pixels[..., 0] > 128)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"resize": "letterbox"},
        {"resize": "letterbox", "anchor": "top_left"},
        {"resize": "letterbox", "anchor": "top_left", "pad_first": True, "antialias": False},
        {"resize": "letterbox", "pad_first": True},
        {"resize": "center_crop", "shorter_side": 80},
        {"resize": "center_crop"},
        {"resize": "pad_right", "antialias": False},
    ],
    ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()) or "default",
)
@pytest.mark.parametrize("size", [(200, 120), (90, 160)])
def test_boxes_map_back_through_every_resize(fields: dict[str, object], size: tuple[int, int]) -> None:
    """A white square drawn in the image lands where the transform says, in both directions."""
    w, h = size
    img = np.zeros((h, w, 3), dtype=np.uint8)
    square = (w // 2 - 20, h // 2 - 20, w // 2 + 20, h // 2 + 20)  # central, so no crop cuts it
    img[square[1] : square[3], square[0] : square[2]] = 255
    spec = _spec(**fields)
    p = layout(Image.fromarray(img), spec)
    assert p.pixels.shape == (64, 64, 3)
    found = np.asarray(_box_of_square(p.pixels), dtype=np.float32)
    back = p.transform.to_original(found[None])[0]
    scale = max(1 / p.transform.scale_x, 1 / p.transform.scale_y)
    np.testing.assert_allclose(back, square, atol=scale * 1.5 + 0.5)  # a resampled edge blurs by a pixel


def test_normalised_pad_and_pixel_pad() -> None:
    image = encode(scene(60, 60))  # square: pad_right pads 192 - 48 columns
    spec = _spec(height=48, width=192, resize="pad_right", pad_space="normalized", pad_value=0, mean=[0.5] * 3)
    tensor, _ = preprocess(image, spec)
    assert tensor.shape == (1, 3, 48, 192)
    assert np.all(tensor[..., 48:] == 0) and tensor[..., :48].min() < -0.4  # pixels normalised, pad exact 0
    nhwc = spec.model_copy(update={"layout": "NHWC", "pad_value": -7.5})
    tensor, _ = preprocess(image, nhwc)
    assert np.all(tensor[:, :, 48:, :] == -7.5)
    pixel = _spec(height=48, width=192, resize="pad_right", pad_value=114, scale=1.0)
    tensor, _ = preprocess(image, pixel)
    assert np.all(tensor[..., 48:] == 114)


def test_prepare_is_preprocess_after_decoding() -> None:
    data = encode(scene(120, 200), "JPEG", quality=90)
    for spec in (_spec(), _spec(resize="center_crop", interpolation="lanczos", antialias=False)):
        img, original = decode_image(data)
        a, ta = prepare(img, spec, original)
        b, tb = preprocess(data, spec)
        assert np.array_equal(a, b) and ta == tb


def test_old_descriptions_keep_their_meaning() -> None:
    spec = _spec()
    assert (spec.resize, spec.interpolation, spec.antialias, spec.pad_space) == ("stretch", "bilinear", True, "pixel")
    assert spec.model_dump(mode="json")["pad_value"] == 114  # an int stays an int in the signed JSON
    img = Image.fromarray(scene(100, 150))
    assert np.array_equal(layout(img, spec).pixels, np.asarray(img.resize((64, 64), Image.Resampling.BILINEAR)))


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"anchor": "top_left"}, "letterbox"),
        ({"pad_first": True}, "letterbox"),
        ({"shorter_side": 256}, "center_crop"),
        ({"interpolation": "area", "antialias": False}, "area"),
        ({"pad_value": 300}, "grey level"),
        ({"pad_value": 1.5}, "grey level"),
        ({"pad_value": float("nan"), "pad_space": "normalized"}, "finite"),
        ({"resize": "letterbox", "pad_first": True, "pad_space": "normalized", "pad_value": 0}, "pad_first"),
        ({"interpolation": "sinc"}, "interpolation"),
        ({"dtype": "uint8", "scale": 1.0, "pad_space": "normalized", "pad_value": -1}, "uint8"),
        ({"resize": "crop"}, "resize"),
    ],
)
def test_inconsistent_preprocessing_is_refused(fields: dict[str, object], needle: str) -> None:
    raw: dict[str, object] = {"name": "m", "version": "1.0.0", "task": "classification"}
    raw |= {"input": {"name": "x", "height": 8, "width": 8, **fields}}
    raw |= {"output": {"kind": "classification", "output": "y"}}
    with pytest.raises(DescriptorError, match=needle):
        ModelDescriptor.from_json(raw)


@pytest.mark.parametrize("kind", list(CV2), ids=lambda k: k.value)
def test_a_padded_canvas_is_sampled_without_being_built(kind: Interpolation) -> None:
    """Resizing a virtual canvas equals OpenCV resizing the same canvas built in memory."""
    src = scene(90, 140, seed=3)
    for canvas in (Canvas(140, 140, 0, 0, 0), Canvas(200, 170, 30, 40, 114), Canvas(140, 500, 0, 205, 7)):
        whole = np.full((canvas.height, canvas.width, 3), canvas.pad, dtype=np.uint8)
        whole[canvas.y : canvas.y + 90, canvas.x : canvas.x + 140] = src
        ours = resize_pixels(src, (64, 48), kind, antialias=False, canvas=canvas).astype(int)
        ref = cv2.resize(whole, (64, 48), interpolation=CV2[kind]).astype(int)
        assert np.abs(ours - ref).max() <= (0 if kind in (Interpolation.NEAREST, Interpolation.BILINEAR) else 1)
        pil = resize_pixels(src, (64, 48), kind, antialias=True, canvas=canvas)
        assert np.array_equal(pil, resize_pixels(whole, (64, 48), kind, antialias=True))


def test_a_panorama_padded_to_a_square_costs_no_canvas() -> None:
    """A 12000x300 strip is 144 M pixels once padded: the OpenCV form samples it; Pillow's is refused."""
    strip = encode(scene(300, 12000))
    spec = _spec(resize="letterbox", anchor="top_left", pad_first=True, pad_value=0, antialias=False)
    tensor, transform = preprocess(strip, spec, max_pixels=5_000_000)
    assert tensor.shape == (1, 3, 64, 64) and transform.scale_x == pytest.approx(64 / 12000)
    assert np.all(tensor[0, :, 2:, :] == 0)  # everything below the strip's two rows is pad
    with pytest.raises(ImageTooLarge, match="pad_first"):
        preprocess(strip, spec.model_copy(update={"antialias": True}), max_pixels=5_000_000)
