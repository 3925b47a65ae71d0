"""Pillow-exact resampling (zsvss_nb.kernels.resample), checked against Pillow itself.

Random images and masks are resized by ``resize_uint8`` and by ``PIL.Image.resize`` and must
agree byte for byte, for upscaling, downscaling (antialiasing), mixed scalings, an unchanged
axis and odd sizes; real frames from data/ are resized to their multiple-of-64 size as the
reference code does. Binary masks upscaled with LANCZOS show why the 8-bit path is needed:
Pillow clips to 0..255 between its horizontal and vertical passes, a float resize does not.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zsvss_nb.errors import ConfigError, InputError
from zsvss_nb.kernels.resample import jpeg_roundtrip, pil_weights, resize_float, resize_uint8

DATA = Path(__file__).resolve().parents[1] / "data"
PIL_FILTERS = {
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
# (W, H) -> (W', H') in Pillow's order
SIZES = [
    pytest.param((7, 5), (52, 28), id="up-7x5-52x28"),
    pytest.param((854, 480), (832, 448), id="down-854x480-832x448"),
    pytest.param((97, 61), (64, 128), id="mixed-97x61-64x128"),
    pytest.param((40, 30), (40, 17), id="width-kept-40x30-40x17"),
    pytest.param((23, 31), (9, 31), id="height-kept-23x31-9x31"),
    pytest.param((200, 150), (13, 11), id="strong-down-200x150-13x11"),
    pytest.param((3, 2), (1, 1), id="to-1x1"),
    pytest.param((1, 1), (5, 4), id="from-1x1"),
]


def pil_resize(a: np.ndarray, size_wh: tuple[int, int], filter: str) -> np.ndarray:
    """Pillow's resize of an HxW ("L") or HxWx3 ("RGB") uint8 array."""
    return np.asarray(Image.fromarray(a).resize(size_wh, PIL_FILTERS[filter]))


def rgb_batch(b: int, wh: tuple[int, int], seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, (b, 3, wh[1], wh[0]), dtype=np.uint8))


def to_hwc(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.permute(1, 2, 0).numpy())


# -- resize_uint8 against Pillow ---------------------------------------------------------------
@pytest.mark.parametrize("filter", ["bicubic", "lanczos", "bilinear", "box"])
@pytest.mark.parametrize("src, dst", SIZES)
def test_resize_uint8_rgb_equals_pil(src, dst, filter):
    x = rgb_batch(2, src, seed=src[0] * 31 + dst[1])
    out = resize_uint8(x, (dst[1], dst[0]), filter)
    assert out.dtype == torch.uint8 and out.shape == (2, 3, dst[1], dst[0])
    for b in range(2):
        expected = pil_resize(to_hwc(x[b]), dst, filter)
        np.testing.assert_array_equal(to_hwc(out[b]), expected)


@pytest.mark.parametrize("filter", ["bicubic", "lanczos", "bilinear"])
@pytest.mark.parametrize("src, dst", SIZES)
def test_resize_uint8_masks_equal_pil(src, dst, filter):
    rng = np.random.default_rng(src[1] * 17 + dst[0])
    soft = rng.integers(0, 256, (src[1], src[0]), dtype=np.uint8)
    binary = (rng.random((src[1], src[0])) < 0.5).astype(np.uint8) * 255
    masks = torch.from_numpy(np.stack([soft, binary]))  # [K, h, w] as "L" images
    out = resize_uint8(masks, (dst[1], dst[0]), filter)
    for k, m in enumerate((soft, binary)):
        np.testing.assert_array_equal(out[k].numpy(), pil_resize(m, dst, filter))


def test_resize_uint8_same_size_is_a_copy():
    x = rgb_batch(1, (9, 7), seed=3)
    out = resize_uint8(x, (7, 9), "lanczos")
    assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()


def test_resize_uint8_any_leading_dims():
    x = rgb_batch(6, (11, 9), seed=4).view(2, 3, 3, 9, 11)
    out = resize_uint8(x, (20, 5), "bicubic")
    assert out.shape == (2, 3, 3, 20, 5)
    assert torch.equal(out[1, 2], resize_uint8(x[1, 2], (20, 5), "bicubic"))


def _pillow_major() -> int:
    import PIL

    return int(PIL.__version__.split(".")[0])


@pytest.mark.parametrize("src, dst", [((130, 100), (128, 64)), ((61, 97), (40, 20))])
def test_pass_order_when_the_height_shrinks_most(src, dst):
    """Pillow 13 runs the vertical pass first when the height loses > 2x the width's pixels;
    earlier releases (the reference's) always ran the horizontal pass first."""
    x = rgb_batch(1, src, seed=11)
    size = (dst[1], dst[0])
    old = resize_uint8(x, size, "bicubic")
    new = resize_uint8(x, size, "bicubic", pass_order="pillow13")
    assert not torch.equal(old, new)  # the two orders round differently
    horizontal = resize_uint8(resize_uint8(x, (src[1], dst[0]), "bicubic"), size, "bicubic")
    assert torch.equal(old, horizontal)
    expected = pil_resize(to_hwc(x[0]), dst, "bicubic")
    installed = new if _pillow_major() >= 13 else old
    np.testing.assert_array_equal(to_hwc(installed[0]), expected)
    with pytest.raises(ConfigError, match="pass_order"):
        resize_uint8(x, size, "bicubic", pass_order="vertical")


def real_frames() -> list[Path]:
    paths = [
        DATA / "davis2016" / "blackswan" / "JPEGImages" / "00000.jpg",  # 854x480 -> 832x448
        DATA / "unlabelled" / "bedroom" / "frames" / "00000.jpg",  # 960x540 -> 960x512
    ]
    return [p for p in paths if p.exists()]


@pytest.mark.parametrize("path", real_frames(), ids=lambda p: p.parent.parent.name)
def test_resize_uint8_real_frame_as_reference(path):
    # the reference: frame_img.resize((width, height)) to the multiple-of-64 size, whose
    # default filter for RGB is BICUBIC
    img = Image.open(path).convert("RGB")
    w, h = img.size
    width, height = w // 64 * 64, h // 64 * 64
    expected = np.asarray(img.resize((width, height))).astype(np.int16)
    x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)
    got = to_hwc(resize_uint8(x, (height, width), "bicubic")).astype(np.int16)
    diff = np.abs(got - expected)
    print(f"{path.name} {w}x{h} -> {width}x{height}: max diff {diff.max()}, mean {diff.mean()}")
    assert diff.max() == 0  # byte-exact (the requirement is only max <= 1, mean < 0.05)


def test_resize_uint8_davis_mask_lanczos():
    path = DATA / "davis2016" / "blackswan" / "Annotations" / "00000.png"
    if not path.exists():
        pytest.skip("DAVIS sample annotations not present")
    m = np.asarray(Image.open(path).convert("L"))
    small = pil_resize(m, (52, 28), "bicubic")
    got = resize_uint8(torch.from_numpy(small.copy()), (448, 832), "lanczos").numpy()
    np.testing.assert_array_equal(got, pil_resize(small, (832, 448), "lanczos"))


# -- binary masks with LANCZOS: Pillow clips between its passes ---------------------------------
@pytest.mark.parametrize(
    "hw, out_hw", [((28, 52), (448, 832)), ((5, 6), (40, 48)), ((7, 3), (9, 31))]
)
def test_binary_mask_lanczos_needs_the_8bit_path(hw, out_hw):
    rng = np.random.default_rng(hw[0] * hw[1])
    m = (rng.random(hw) < 0.4).astype(np.uint8) * 255
    expected = pil_resize(m, (out_hw[1], out_hw[0]), "lanczos")
    exact = resize_uint8(torch.from_numpy(m), out_hw, "lanczos").numpy()
    np.testing.assert_array_equal(exact, expected)
    # a float separable Lanczos, rounded and clipped only at the end, overshoots 0..255 after
    # the horizontal pass and so differs from Pillow, which clips the 8-bit intermediate
    approx = resize_float(torch.from_numpy(m).float(), out_hw, "lanczos")
    approx = approx.round().clamp(0, 255).to(torch.uint8).numpy()
    assert (approx != expected).any()


def test_pil_passes_horizontal_then_vertical():
    # resizing the transposed mask does the vertical pass first: that order disagrees with Pillow
    rng = np.random.default_rng(7)
    m = (rng.random((28, 52)) < 0.4).astype(np.uint8) * 255
    expected = pil_resize(m, (208, 112), "lanczos")
    t = torch.from_numpy(m)
    vertical_first = resize_uint8(t.T.contiguous(), (208, 112), "lanczos").T.numpy()
    assert (vertical_first != expected).any()
    np.testing.assert_array_equal(resize_uint8(t, (112, 208), "lanczos").numpy(), expected)


# -- pil_weights against a plain Python transcription of Pillow's precompute_coeffs ------------
def py_filter(name: str, x: float) -> float:
    if name == "box":
        return 1.0 if -0.5 < x <= 0.5 else 0.0
    if name == "bilinear":
        x = abs(x)
        return 1.0 - x if x < 1.0 else 0.0
    if name == "bicubic":
        a, x = -0.5, abs(x)
        if x < 1.0:
            return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
        if x < 2.0:
            return (((x - 5) * x + 8) * x - 4) * a
        return 0.0

    def sinc(v: float) -> float:
        return 1.0 if v == 0.0 else math.sin(v * math.pi) / (v * math.pi)

    return sinc(x) * sinc(x / 3) if -3.0 <= x < 3.0 else 0.0


def py_weights(n_in: int, n_out: int, name: str) -> list[list[float]]:
    support = {"box": 0.5, "bilinear": 1.0, "bicubic": 2.0, "lanczos": 3.0}[name]
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support *= filterscale
    rows = []
    for i in range(n_out):
        center = (i + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), n_in)
        ss = 1.0 / filterscale
        ks = [py_filter(name, (j - center + 0.5) * ss) for j in range(xmin, xmax)]
        total = 0.0
        for k in ks:  # in order: Python's sum() is compensated since 3.12, C's is not
            total += k
        row = [0.0] * n_in
        for j, k in zip(range(xmin, xmax), ks, strict=True):
            row[j] = k / total if total != 0.0 else k
        rows.append(row)
    return rows


@pytest.mark.parametrize("filter", ["box", "bilinear", "bicubic", "lanczos"])
@pytest.mark.parametrize("n_in, n_out", [(7, 52), (52, 7), (854, 832), (61, 128), (5, 5), (3, 1)])
def test_pil_weights_match_python_reference(n_in, n_out, filter):
    w = pil_weights(n_in, n_out, filter)
    assert w.shape == (n_out, n_in) and w.dtype == torch.float64
    torch.testing.assert_close(w.sum(1), torch.ones(n_out, dtype=torch.float64))
    ref = torch.tensor(py_weights(n_in, n_out, filter), dtype=torch.float64)
    # exact in practice; the tolerance only allows for torch's sin differing from libm's in
    # the last ulp on some platform
    torch.testing.assert_close(w, ref, rtol=0, atol=1e-13)


def test_pil_weights_upscale_bicubic_planted():
    # 2x upscale: output 6 is centred at 3.25 input pixels, so input pixels 1..4 (centres 1.5
    # .. 4.5) sit at distances -1.75, -0.75, 0.25, 1.25: Keys' a=-0.5 taps summing to 1
    w = pil_weights(8, 16, "bicubic")
    planted = torch.tensor([0, -0.0234375, 0.2265625, 0.8671875, -0.0703125, 0, 0, 0])
    torch.testing.assert_close(w[6], planted.double(), rtol=0, atol=0)


# -- resize_float --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "hw, out_hw", [((8, 8), (128, 128)), ((5, 7), (52, 28)), ((30, 20), (12, 9))]
)
def test_resize_float_lanczos_agrees_with_lanczos_upsample(hw, out_hw):
    from zsvss_nb.kernels.ops import lanczos_upsample

    g = torch.Generator().manual_seed(hw[0])
    masks = (torch.rand(3, 2, *hw, generator=g) < 0.5).float()
    soft = torch.rand(2, *hw, generator=g)
    for x in (masks, soft):
        got = resize_float(x, out_hw, "lanczos")
        assert got.dtype == torch.float32 and got.shape == (*x.shape[:-2], *out_hw)
        torch.testing.assert_close(got, lanczos_upsample(x, out_hw), rtol=0, atol=1e-5)


@pytest.mark.parametrize("filter", ["bicubic", "lanczos", "bilinear"])
def test_resize_float_close_to_pil_float_mode(filter):
    # Pillow's "F" mode resamples in double with float32 storage: no clipping, no rounding
    rng = np.random.default_rng(11)
    a = rng.random((13, 21)).astype(np.float32)
    expected = np.asarray(Image.fromarray(a).resize((40, 9), PIL_FILTERS[filter]))
    got = resize_float(torch.from_numpy(a), (9, 40), filter).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    assert got.min() < 0 or got.max() > 1 or filter == "bilinear"  # no clipping


# -- jpeg_roundtrip -----------------------------------------------------------------------------
def test_jpeg_roundtrip_equals_pil_file_roundtrip(tmp_path):
    rng = np.random.default_rng(5)
    smooth = np.add.outer(np.arange(45), np.arange(67)).astype(np.uint8) * 2
    noisy = rng.integers(0, 256, (45, 67), dtype=np.uint8)
    blocky = (rng.random((45, 67)) < 0.3).astype(np.uint8) * 255
    maps = torch.from_numpy(np.stack([smooth, noisy, blocky]))
    got = jpeg_roundtrip(maps)
    assert got.dtype == torch.uint8 and got.shape == maps.shape and got.device == maps.device
    for i, m in enumerate(maps.numpy()):
        path = tmp_path / "m.jpg"
        Image.fromarray(m).save(path)  # the reference's way: default quality
        with Image.open(path) as im:
            assert im.mode == "L"
            expected = np.asarray(im)
        np.testing.assert_array_equal(got[i].numpy(), expected)
    assert not torch.equal(got[1], maps[1])  # JPEG is lossy: the round trip is not a no-op


def test_jpeg_roundtrip_quality(tmp_path):
    m = np.random.default_rng(6).integers(0, 256, (16, 24), dtype=np.uint8)
    Image.fromarray(m).save(tmp_path / "q.jpg", quality=30)
    with Image.open(tmp_path / "q.jpg") as im:
        expected = np.asarray(im)
    got = jpeg_roundtrip(torch.from_numpy(m)[None], quality=30)[0].numpy()
    np.testing.assert_array_equal(got, expected)
    assert jpeg_roundtrip(torch.zeros(0, 4, 4, dtype=torch.uint8)).shape == (0, 4, 4)


# -- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "call, error",
    [
        (lambda: resize_uint8(torch.zeros(4, 4), (2, 2), "bicubic"), InputError),
        (lambda: resize_uint8(torch.zeros(4, dtype=torch.uint8), (2, 2), "bicubic"), InputError),
        (lambda: resize_uint8(torch.zeros(0, 4, dtype=torch.uint8), (2, 2), "box"), InputError),
        (lambda: resize_uint8(np.zeros((4, 4), np.uint8), (2, 2), "box"), InputError),
        (lambda: resize_uint8(torch.zeros(4, 4, dtype=torch.uint8), (2, 2), "cubic"), ConfigError),
        (lambda: resize_uint8(torch.zeros(4, 4, dtype=torch.uint8), (0, 2), "box"), ConfigError),
        (lambda: resize_uint8(torch.zeros(4, 4, dtype=torch.uint8), (2,), "box"), ConfigError),
        (lambda: resize_float(torch.zeros(4, 4, dtype=torch.uint8), (2, 2), "box"), InputError),
        (lambda: resize_float(torch.zeros(4), (2, 2), "lanczos"), InputError),
        (lambda: resize_float(torch.zeros(4, 4), (2, -1), "lanczos"), ConfigError),
        (lambda: resize_float(torch.zeros(4, 4), (2, 2), "nearest"), ConfigError),
        (lambda: pil_weights(0, 4, "bicubic"), ConfigError),
        (lambda: pil_weights(4, 2.5, "bicubic"), ConfigError),
        (lambda: pil_weights(4, 4, "hamming"), ConfigError),
        (lambda: jpeg_roundtrip(torch.zeros(1, 4, 4)), InputError),
        (lambda: jpeg_roundtrip(torch.zeros(4, 4, dtype=torch.uint8)), InputError),
        (lambda: jpeg_roundtrip(torch.zeros(1, 0, 4, dtype=torch.uint8)), InputError),
        (lambda: jpeg_roundtrip(torch.zeros(1, 4, 4, dtype=torch.uint8), quality=0), ConfigError),
    ],
)
def test_bad_input_raises_typed_error(call, error):
    with pytest.raises(error) as info:
        call()
    assert "\n" not in str(info.value)
