"""Stage 3 (METHOD 1.7): masked modulation on the tiny model, difference maps and baselines.

One feature pass over 3 random 128x128 frames is shared by the module; every modulation run is
memoised by its config so several tests read the same run. Planted coarse maps on the 8x8 grid
use the class ids 3, 7, 9 with two empty (class, frame) pairs.
"""

import dataclasses
import math

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import zsvss_nb.backbones.sd.modulation as sd_mod
from zsvss_nb.backbones.base import Backbone
from zsvss_nb.backbones.sd.modulation import plan_triples
from zsvss_nb.config import SegmentConfig, UpsampleConfig
from zsvss_nb.errors import ConfigError
from zsvss_nb.features import extract
from zsvss_nb.kernels import ops
from zsvss_nb.kernels.frames import Geometry
from zsvss_nb.kernels.ops import difference_maps, gaussian_blur, lanczos_upsample
from zsvss_nb.kernels.resample import jpeg_roundtrip
from zsvss_nb.upsample import (
    bilateral_labels,
    bilinear_labels,
    joint_bilateral_scores,
    modulate,
    nearest_labels,
    upsample,
)

CLASSES = (3, 7, 9)
EMPTY = {(7, 1), (9, 2)}  # (class id, frame) pairs with an empty mask
B, S = 3, 128  # frames, side in pixels (grid 8x8, latent 16x16)


def _coarse() -> torch.Tensor:
    c = torch.full((B, 8, 8), 3, dtype=torch.long)
    c[0, :, 4:] = 7
    c[0, 5:, 5:] = 9
    c[1, 0:3, 0:3] = 9  # frame 1: classes 3 and 9
    c[2, :, 5:] = 7  # frame 2: classes 3 and 7
    return c


def _pairs(present: bool = True) -> list[tuple[int, int, int]]:
    """(class index, class id, frame) of the pairs whose mask is (non-)empty."""
    return [
        (k, c, f)
        for k, c in enumerate(CLASSES)
        for f in range(B)
        if ((c, f) not in EMPTY) == present
    ]


def _mask_px(c: int, f: int, side: int = S) -> torch.Tensor:
    """Class ``c``'s mask of frame ``f`` nearest-upsampled to ``side`` x ``side``."""
    m = (_coarse()[f] == c).float()[None, None]
    return F.interpolate(m, size=(side, side), mode="nearest")[0, 0] > 0.5


@pytest.fixture(scope="module")
def feats(tiny):
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (B, 3, S, S), generator=g, dtype=torch.uint8)
    return extract(tiny, frames, SegmentConfig.tiny())


@pytest.fixture(scope="module")
def run(tiny, feats):
    """Memoised ``modulate`` runs with upsample-config ``changes``; each records the UNet's input
    latents and the latents sent to the decoder."""
    cache: dict = {}

    def go(classes: tuple[int, ...] | None = None, **changes):
        # a fixed batch, so the tests below can count UNet calls; "auto" is compared below
        changes.setdefault("modulation_batch", 8)
        key = (classes, tuple(sorted(changes.items())))
        if key in cache:
            return cache[key]
        eps_inputs, decoded = [], []
        orig_eps, orig_decode = sd_mod.unet_eps, tiny.decode

        def eps_spy(backbone, z, *args, **kwargs):
            eps_inputs.append(z.clone())
            return orig_eps(backbone, z, *args, **kwargs)

        def decode_spy(latents, dtype=torch.float32, **kwargs):
            decoded.append(latents.clone())
            return orig_decode(latents, dtype=dtype, **kwargs)

        sd_mod.unet_eps, tiny.decode = eps_spy, decode_spy
        try:
            cls = None if classes is None else torch.tensor(classes)
            cfg = SegmentConfig.tiny()
            cfg = cfg.replace(upsample=cfg.upsample.replace(**changes))
            result = modulate(tiny, feats, _coarse(), cfg, cls)
        finally:
            sd_mod.unet_eps = orig_eps
            del tiny.decode  # back to the class's method
        cache[key] = (result, eps_inputs, torch.cat(decoded) if decoded else None)
        return cache[key]

    return go


# -- masked modulation -----------------------------------------------------------------------
# Modulation runs use the classes 7 and 9 (4 present pairs, 2 empty ones) to keep them cheap.
SUB = (7, 9)


def _triples(classes=SUB, skip_empty: bool = True) -> torch.Tensor:
    return plan_triples(ops.one_hot_maps(_coarse(), torch.tensor(classes)) > 0, skip_empty)


def _latent_masks(triples: torch.Tensor, classes=SUB) -> torch.Tensor:
    """Each triple's mask at latent resolution (16x16), broadcast to [T, 4, 16, 16]."""
    m = torch.stack([_mask_px(classes[int(k)], int(f), 16) for k, _s, f in triples])
    return m[:, None].expand(-1, 4, -1, -1)


def test_batched_equals_sequential_and_chunked(run):
    base, _, _ = run(SUB)
    seq, _, _ = run(SUB, modulation_batch=1)
    chunk, _, _ = run(SUB, modulation_batch=4)
    auto, _, _ = run(SUB, modulation_batch="auto")
    assert base.labels.shape == (B, S, S) and base.diff.shape == (2, B, S, S)
    assert torch.equal(base.classes, torch.tensor(SUB))
    for other in (seq, chunk, auto):
        assert torch.equal(other.classes, base.classes)
        assert torch.equal(other.labels, base.labels)
        assert torch.equal(other.raw_labels, base.raw_labels)
        # batch size changes the float summation order (1.5e-5 seen on AMD EPYC)
        assert torch.allclose(other.diff, base.diff, atol=1e-4, rtol=0)
    # 3 steps x 2 CFG halves per (class, sign, frame) triple; batch 1 runs the empty pairs too
    assert base.unet_evals == chunk.unet_evals == 2 * 4 * 2 * 3
    assert seq.unet_evals == 2 * 2 * B * 2 * 3
    assert base.vae_decodes == chunk.vae_decodes == 2 * 4


def test_empty_mask_skip_is_exact(run):
    skipped, _, _ = run(SUB)
    full, _, latents = run(SUB, skip_empty=False, output="raw")
    triples = _triples(skip_empty=False)
    assert len(triples) == 2 * 2 * B
    for i, (k, s, f) in enumerate(triples.tolist()):
        assert s == (1 if i % 2 == 0 else -1)
        j = i - i % 2
        # + and - passes of an empty pair end in bitwise identical latents, hence D == 0 exactly
        assert torch.equal(latents[j], latents[j + 1]) == ((SUB[k], f) in EMPTY)
    for c, f in EMPTY:
        k = SUB.index(c)
        assert torch.count_nonzero(full.diff[k, f]) == 0
        assert torch.count_nonzero(skipped.diff[k, f]) == 0
    assert torch.equal(full.labels, skipped.raw_labels)
    assert torch.equal(full.raw_labels, skipped.raw_labels)
    assert torch.allclose(full.diff, skipped.diff, atol=1e-4, rtol=0)
    assert full.unet_evals == 2 * 2 * B * 2 * 3 > skipped.unet_evals
    assert full.vae_decodes == 2 * 2 * B > skipped.vae_decodes


def test_modulation_response_is_concentrated_in_the_mask(run):
    base, _, _ = run(SUB)
    wins = []
    for k, c in enumerate(SUB):
        for f in range(B):
            if (c, f) in EMPTY:
                continue
            d, m = base.diff[k, f], _mask_px(c, f)
            assert torch.count_nonzero(d) > 0
            assert float(d.max()) == pytest.approx(1.0, abs=1e-4)  # per-map normalisation
            wins.append(float(d[m].mean()) > float(d[~m].mean()))
    # lam = 50: the tiny random model gives inside > outside for every pair; allow one miss
    assert len(wins) == 4 and sum(wins) >= 3


def test_lambda_zero_is_refused_and_no_evidence_falls_back_to_coarse(tiny, feats, monkeypatch):
    with pytest.raises(ConfigError, match="lam=0"):  # it would modulate nothing (issue #16)
        UpsampleConfig(lam=0.0)
    real = type(tiny).modulation_maps

    def silent(self, *args, **kwargs):  # what lambda = 0 gave: every difference map 0
        maps = real(self, *args, **kwargs)
        return dataclasses.replace(maps, diff=torch.zeros_like(maps.diff))

    monkeypatch.setattr(type(tiny), "modulation_maps", silent)
    res = modulate(tiny, feats, _coarse(), SegmentConfig.tiny(), torch.tensor(SUB))
    assert torch.count_nonzero(res.diff) == 0
    # no evidence anywhere: every pixel falls back to the nearest-upsampled coarse label
    coarse_px = F.interpolate(_coarse()[:, None].float(), size=(S, S), mode="nearest")[:, 0]
    assert torch.equal(res.labels, coarse_px.long())
    assert torch.equal(res.raw_labels, coarse_px.long())


def test_latent_blending_resets_outside_the_mask(run, feats):
    _, eps_inputs, finals = run(SUB)
    triples = _triples()
    f = triples[:, 2]
    inside = _latent_masks(triples)
    assert len(eps_inputs) == 3  # one batched UNet call per step 22, 23, 24
    assert torch.equal(eps_inputs[0], feats.z_start[f])
    for step, z in ((22, eps_inputs[1]), (23, eps_inputs[2])):
        stored = feats.latents[step][f]
        assert torch.equal(z[~inside], stored[~inside])  # blended after steps 22 and 23
        assert not torch.allclose(z[inside], stored[inside], atol=1e-4)
    # by default the last step is not blended (METHOD 1.2): outside the mask it drifts
    assert not torch.equal(finals[~inside], feats.latents[24][f][~inside])
    # blending after step 24 too leaves the unmodulated final latent outside the mask
    _, _, finals24 = run(SUB, blend_steps=(22, 23, 24), paper_compat=True)
    stored = feats.latents[24][f]
    assert torch.equal(finals24[~inside], stored[~inside])
    assert not torch.allclose(finals24[inside], stored[inside], atol=1e-4)


def test_paper_compat_runs_and_quantises(run):
    res, _, _ = run(SUB, blend_steps=(22, 23, 24), paper_compat=True)
    assert res.labels.shape == (B, S, S) and res.labels.dtype == torch.long
    assert set(res.labels.unique().tolist()) <= set(SUB)  # no coarse fallback in paper mode
    for k in range(2):
        for f in range(B):
            # 8-bit maps bounded by round(sqrt(3 * 255)) = 28: at most 29 distinct levels
            assert res.diff[k, f].unique().numel() <= 29


def test_output_raw_and_filtered(run):
    base, _, _ = run(SUB)
    raw, _, _ = run(SUB, skip_empty=False, output="raw")
    assert base.raw_labels is not None and raw.raw_labels is not None
    assert torch.equal(raw.labels, raw.raw_labels)
    # recompute both outputs from the normalised maps (the geometry is the identity here)
    classes = torch.tensor(SUB)
    upm = lanczos_upsample(ops.one_hot_maps(_coarse(), classes), (S, S)).clamp(0, 1)
    filt = base.diff * (upm + 0.7 * (1 - upm))
    evidence = base.diff.amax(0) > 0
    assert torch.equal(base.labels[evidence], classes[filt.argmax(0)][evidence])
    assert torch.equal(base.raw_labels[evidence], classes[base.diff.argmax(0)][evidence])
    assert not torch.equal(base.labels, base.raw_labels)  # the 0.7 weighting changes labels


def test_reference_execution_matches_batched_and_decodes_more(run):
    base, _, _ = run(SUB)
    ref, _, _ = run(SUB, execution="reference")
    assert torch.equal(ref.labels, base.labels)
    assert torch.allclose(ref.diff, base.diff, atol=1e-4, rtol=0)
    # every (class, sign, frame) is decoded, plus the unmodulated pass's B frames
    assert ref.vae_decodes == B + 2 * 2 * B > base.vae_decodes
    assert ref.unet_evals == 2 * 2 * B * 2 * 3


def test_classes_absent_from_the_map_fall_back_to_coarse(tiny, feats):
    # no (class, frame) pair has a mask: nothing to modulate, every pixel keeps its coarse id
    res = modulate(tiny, feats, _coarse(), SegmentConfig.tiny(), torch.tensor([42]))
    coarse_px = F.interpolate(_coarse()[:, None].float(), size=(S, S), mode="nearest")[:, 0]
    assert torch.equal(res.labels, coarse_px.long())
    assert res.unet_evals == 0 and res.vae_decodes == 0


def test_steps_outside_the_denoising_range_raise(tiny, feats):
    cfg = SegmentConfig.tiny()
    for bad in (
        {"modulation_steps": (21,)},
        {"blend_steps": (22, 25)},
        {"modulation_steps": (25,)},
    ):
        with pytest.raises(ConfigError, match="outside the denoising steps"):
            modulate(tiny, feats, _coarse(), cfg.replace(**bad))
    no_cache = dataclasses.replace(feats, z_start=None)
    with pytest.raises(ConfigError, match="keep_cache"):
        modulate(tiny, no_cache, _coarse(), cfg)


def test_modulation_needs_a_diffusion_backbone(feats):
    fake = Backbone("dinov2", torch.device("cpu"), torch.float32, {"kind": "dinov2"})
    with pytest.raises(ConfigError, match="dinov2"):
        modulate(fake, feats, _coarse(), SegmentConfig.tiny())
    # the dispatcher documents a bilinear fallback for backbones that cannot modulate
    res = upsample(fake, feats, _coarse(), SegmentConfig.tiny())
    expected = bilinear_labels(_coarse(), torch.tensor(CLASSES), feats.geometry, (S, S))
    assert torch.equal(res.labels, expected)


# -- difference maps -------------------------------------------------------------------------
def _blur_ref(maps: np.ndarray, size: int = 5, sigma: float = 3.0) -> np.ndarray:
    return np.stack(
        [cv2.GaussianBlur(m, (size, size), sigma, borderType=cv2.BORDER_REFLECT_101) for m in maps]
    )


def _pair(n=2, h=12, w=17, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, h, w, generator=g), torch.rand(n, 3, h, w, generator=g)


def test_difference_maps_float_matches_loop():
    plus, minus = _pair()
    p, m = plus.numpy().astype(np.float64), minus.numpy().astype(np.float64)
    dist = np.zeros((p.shape[0], p.shape[2], p.shape[3]))
    for n in range(p.shape[0]):
        for y in range(p.shape[2]):
            for x in range(p.shape[3]):
                dist[n, y, x] = math.sqrt(
                    sum((p[n, c, y, x] - m[n, c, y, x]) ** 2 for c in range(3))
                )
    expected = _blur_ref(dist.astype(np.float32))
    got = difference_maps(plus, minus, UpsampleConfig())
    assert got.shape == (2, 12, 17)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5, rtol=0)


def _paper_ref(plus: torch.Tensor, minus: torch.Tensor, folder) -> np.ndarray:
    """The reference's process_output.py in numpy, cv2 and PIL: uint8 images, wrapping subtract
    and square, float64 blur, ``Image.fromarray(d).convert("L")`` saved as a .jpg file and read
    back (what the normalisation then sees)."""
    out = []
    for i, (p, m) in enumerate(zip(plus.numpy(), minus.numpy(), strict=True)):
        a = (p.transpose(1, 2, 0) * 255).astype(np.uint8)
        b = (m.transpose(1, 2, 0) * 255).astype(np.uint8)
        dist = np.sqrt(np.sum((a - b) ** 2, axis=2))  # uint8 wraps; the sum does not
        blurred = cv2.GaussianBlur(dist, (5, 5), 3)
        path = folder / f"{i}.jpg"
        Image.fromarray(blurred).convert("L").save(path)
        out.append(np.array(Image.open(path)).astype(np.float64))
    return np.stack(out)


def test_difference_maps_paper_compat_matches_uint8_reference(tmp_path):
    plus, minus = _pair(n=3, h=20, w=23, seed=1)
    got = difference_maps(plus, minus, UpsampleConfig(paper_compat=True)).numpy()
    expected = _paper_ref(plus, minus, tmp_path)
    assert got.shape == expected.shape
    assert np.array_equal(got, expected)
    assert got.max() <= 40  # the wrapped distance never exceeds 27.7 (JPEG may ring above it)


def test_paper_compat_truncates_the_blurred_map():
    """PIL's float -> "L" conversion truncates: sqrt(3) = 1.73 becomes 1, not 2."""
    x = torch.zeros(1, 3, 16, 16)
    y = torch.full((1, 3, 16, 16), 1.5 / 255)  # uint8 1 in every channel: distance sqrt(3)
    got = difference_maps(y, x, UpsampleConfig(paper_compat=True))
    ones = torch.ones(1, 16, 16, dtype=torch.uint8)
    assert torch.equal(got, jpeg_roundtrip(ones).float())
    assert not torch.equal(got, jpeg_roundtrip(2 * ones).float())


def test_filter_weights_paper_compat_is_pils_lanczos_of_the_mask_png():
    g = torch.Generator().manual_seed(4)
    masks = (torch.rand(3, 2, 7, 13, generator=g) > 0.5).float()
    got = ops.filter_weights(masks, (112, 208), paper_compat=True)
    for k in range(3):
        for f in range(2):
            png = Image.fromarray((masks[k, f].numpy() * 255).astype(np.uint8))
            want = np.array(png.resize((208, 112), Image.LANCZOS))
            np.testing.assert_array_equal((got[k, f] * 255).round().byte().numpy(), want)
    default = ops.filter_weights(masks, (112, 208), paper_compat=False)
    assert default.min() >= 0 and default.max() <= 1
    assert not torch.equal((default * 255).round(), (got * 255).round())  # no inter-pass clip


def test_paper_compat_wraparound_shrinks_large_differences():
    # METHOD 1.7 step 3: channel differences (100, 10, 0) are a true distance of 100.5;
    # with uint8 wrap 100^2 = 10000 = 16 (mod 256), so sqrt(16 + 100) = 10.8
    a = torch.tensor([200.5, 60.5, 0.5]) / 255
    b = torch.tensor([100.5, 50.5, 0.5]) / 255
    plus = a.view(1, 3, 1, 1).expand(1, 3, 9, 9).contiguous()
    minus = b.view(1, 3, 1, 1).expand(1, 3, 9, 9).contiguous()
    true = difference_maps(plus, minus, UpsampleConfig()) * 255
    assert torch.allclose(true, torch.full_like(true, math.sqrt(100**2 + 10**2)), atol=1e-3)
    assert math.sqrt(10_000 % 256 + 100) == pytest.approx(10.77, abs=0.01)
    paper = difference_maps(plus, minus, UpsampleConfig(paper_compat=True))
    ten = jpeg_roundtrip(torch.full((1, 9, 9), 10, dtype=torch.uint8)).float()
    assert torch.equal(paper, ten)  # 10.77 truncated to 10 (PIL's "L"), then the JPEG
    # wrap is symmetric in sign: 156 = -100 (mod 256) gives the same 16 after squaring
    assert torch.equal(difference_maps(minus, plus, UpsampleConfig(paper_compat=True)), paper)


# -- small kernels ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "size,sigma,hw",
    [
        (size, sigma, hw)
        for size, sigma in [(5, 3.0), (3, 1.0), (7, 2.0)]
        for hw in [(3, 3), (4, 5), (17, 23), (64, 48)]
        if min(hw) > size // 2  # shorter sides: test_gaussian_blur_tiny_sides
    ],
)
def test_gaussian_blur_matches_cv2(size, sigma, hw):
    g = torch.Generator().manual_seed(hw[0] * 100 + hw[1])
    x = torch.rand(3, *hw, generator=g) * 30
    got = gaussian_blur(x, size, sigma).numpy()
    np.testing.assert_allclose(got, _blur_ref(x.numpy(), size, sigma), atol=1e-5 * 30, rtol=0)


@pytest.mark.parametrize("hw", [(1, 1), (2, 2), (2, 7), (7, 1)])
def test_gaussian_blur_tiny_sides(hw):
    # cv2's reflect-101 border folds repeatedly on sides shorter than the radius (1 px: the
    # value itself); the blur must stay a weighted average with weights summing to 1
    x = torch.rand(2, *hw, generator=torch.Generator().manual_seed(3))
    got = gaussian_blur(x, 5, 3.0).numpy()
    np.testing.assert_allclose(got, _blur_ref(x.numpy()), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "src,dst", [((8, 8), (128, 128)), ((2, 3), (8, 12)), ((4, 8), (64, 128)), ((5, 7), (33, 50))]
)
def test_lanczos_upsample_matches_pil(src, dst):
    g = torch.Generator().manual_seed(src[0] * 10 + src[1])
    m = torch.rand(*src, generator=g)
    got = lanczos_upsample(m[None], dst)[0].numpy()
    pil = Image.fromarray(m.numpy(), mode="F").resize((dst[1], dst[0]), Image.LANCZOS)
    # observed max error 3e-7, borders included
    np.testing.assert_allclose(got, np.array(pil), atol=1e-5, rtol=0)
    # rows of weights sum to 1: a constant map stays constant (also where the support is cut)
    ones = lanczos_upsample(torch.ones(2, 1, *src), dst)
    assert ones.shape == (2, 1, *dst)
    assert torch.allclose(ones, torch.ones_like(ones), atol=1e-6)


def _bilateral_loop(scores, guide, ss, sc, radius):
    K, h, w = scores.shape
    _, H, W = guide.shape
    cell = guide.reshape(3, h, H // h, w, W // w).mean(dim=(2, 4))  # [3, h, w]
    out = torch.zeros(K, H, W, dtype=torch.float64)
    for Y in range(H):
        for X in range(W):
            uy, ux = (Y + 0.5) * h / H - 0.5, (X + 0.5) * w / W - 0.5
            num, den = torch.zeros(K, dtype=torch.float64), 0.0
            for dy in range(-radius, radius + 1):
                for dx in range(-radius, radius + 1):
                    qy = min(max(round(uy) + dy, 0), h - 1)
                    qx = min(max(round(ux) + dx, 0), w - 1)
                    ws = math.exp(-((uy - qy) ** 2 + (ux - qx) ** 2) / (2 * ss**2))
                    col = float(((guide[:, Y, X] - cell[:, qy, qx]) ** 2).sum())
                    wgt = ws * math.exp(-col / (2 * sc**2))
                    num += wgt * scores[:, qy, qx].double()
                    den += wgt
            out[:, Y, X] = num / den
    return out


@pytest.mark.parametrize("radius,ss,sc", [(2, 0.5, 0.1), (1, 1.0, 0.5), (2, 0.5, 0.3)])
def test_joint_bilateral_matches_loop(radius, ss, sc):
    g = torch.Generator().manual_seed(7)
    scores = torch.rand(2, 2, 3, generator=g)
    guide = 0.3 + 0.4 * torch.rand(3, 8, 12, generator=g)  # colours close to the cell means
    got = joint_bilateral_scores(scores, guide, ss, sc, radius=radius)
    assert got.shape == (2, 8, 12)
    expected = _bilateral_loop(scores, guide, ss, sc, radius)
    assert torch.allclose(got.double(), expected, atol=1e-5)


def test_joint_bilateral_pixel_far_from_every_cell_colour():
    # with the default sigma_color 0.1 a pixel ~0.75 (RGB distance) away from all nearby cell
    # means has total weight < 1e-12; the result must still be a normalised average
    g = torch.Generator().manual_seed(7)
    scores = torch.rand(2, 2, 3, generator=g)
    guide = torch.rand(3, 8, 12, generator=g)
    got = joint_bilateral_scores(scores, guide, 0.5, 0.1, radius=2)
    expected = _bilateral_loop(scores, guide, 0.5, 0.1, 2)
    assert torch.allclose(got.double(), expected, atol=1e-4)


def test_nearest_and_bilinear_shapes_and_constants():
    geo = Geometry((100, 130), (64, 128), "resize64")
    const = torch.full((2, 4, 8), 5, dtype=torch.long)
    for labels in (
        nearest_labels(const, geo, (64, 128)),
        bilinear_labels(const, torch.tensor([2, 5]), geo, (64, 128)),
    ):
        assert labels.shape == (2, 100, 130) and labels.dtype == torch.long
        assert bool((labels == 5).all())
    # nearest at the identity geometry samples the cell under each pixel centre
    ident = Geometry((64, 128), (64, 128), "resize64")
    coarse = torch.randint(0, 4, (1, 4, 8), generator=torch.Generator().manual_seed(2))
    got = nearest_labels(coarse, ident, (64, 128))[0]
    for y in range(64):
        for x in range(128):
            assert got[y, x] == coarse[0, y // 16, x // 16]


def test_bilateral_follows_colour_edge_better_than_bilinear():
    # colour edge at column 37, inside cell 2 (pixels 32-47); the coarse boundary sits at 32
    H, W, edge = 64, 128, 37
    coarse = torch.ones(1, 4, 8, dtype=torch.long)
    coarse[:, :, :2] = 0
    guide = torch.zeros(1, 3, H, W)
    guide[0, :, :, :edge] = torch.tensor([0.9, 0.1, 0.1])[:, None, None]
    guide[0, :, :, edge:] = torch.tensor([0.1, 0.1, 0.9])[:, None, None]
    truth = (torch.arange(W) >= edge).long().expand(H, W)
    geo = Geometry((H, W), (H, W), "resize64")
    classes = torch.tensor([0, 1])
    bil = bilateral_labels(coarse, classes, guide, geo, UpsampleConfig())[0]
    lin = bilinear_labels(coarse, classes, geo, (H, W))[0]
    acc_bil = float((bil == truth).float().mean())
    acc_lin = float((lin == truth).float().mean())
    assert acc_bil == 1.0
    assert acc_lin == pytest.approx(1 - 5 / 128)  # wrong on columns 32..36
