"""Stage 3: full-resolution labels from coarse maps, by masked modulation or a cheap baseline.

Masked modulation (METHOD.md 1.7, EmerDiff-style): for every class c of the refined coarse map
and sign s in {+1, -1}, re-run the denoising from the window's z_{t*} while adding s*lambda*m_c
to an attention output at t*, replaying the unmodulated pass's q/k at every step and resetting
the latent outside the mask after the blending steps; decode I+ and I-, and take
D_c = blur(||I+ - I-||_2). Labels are the argmax over classes of the per-frame-normalised D_c.

Unlike the reference code (one pass per class and sign over all frames, q/k re-read from disk),
all (class, sign, frame) triples go through the UNet as one batch, chunked by
``modulation_batch``; a triple whose mask is empty in its frame is skipped because its D is
exactly zero (the modulation and the blending mask are both zero there, so I+ equals I-).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils._pytree import tree_map_only

from .backbone import Backbone, native_bf16
from .config import SegmentConfig, UpsampleConfig
from .errors import ConfigError
from .features import (
    FeatureResult,
    block_stride,
    cfg_embeddings,
    modulation_point,
    prefix_modules,
    prefix_plan,
    unet_eps,
)
from .resample import jpeg_roundtrip, resize_float, resize_uint8

log = logging.getLogger(__name__)


@dataclass
class UpsampleResult:
    """labels: [B, H, W] class ids at the original size; raw_labels: the unfiltered variant.

    diff: per-class normalised difference maps [K, B, H', W'] at the processed size (modulation
    only); classes: [K] the ids the maps stand for.
    """

    labels: torch.Tensor
    classes: torch.Tensor
    raw_labels: torch.Tensor | None = None
    diff: torch.Tensor | None = None
    unet_evals: int = 0
    vae_decodes: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


# -- small kernels --------------------------------------------------------------------------
def gaussian_kernel1d(
    size: int, sigma: float, device=None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Normalised 1-D Gaussian taps, as cv2.getGaussianKernel(size, sigma) (float64 inside)."""
    x = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    k = torch.exp(-(x**2) / (2 * sigma**2))
    return (k / k.sum()).to(dtype)


def _reflect101_index(n: int, r: int, device=None) -> torch.Tensor:
    """Source index of positions -r .. n-1+r with cv2's BORDER_REFLECT_101, folded repeatedly."""
    j = torch.arange(-r, n + r, device=device)
    if n == 1:
        return torch.zeros_like(j)
    period = 2 * (n - 1)
    j = j.remainder(period)
    return torch.where(j >= n, period - j, j)


def gaussian_blur(x: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of [N, H, W] with reflect-101 borders (cv2.GaussianBlur's)."""
    k = gaussian_kernel1d(size, sigma, x.device, x.dtype)
    r = size // 2
    rows = _reflect101_index(x.shape[-2], r, x.device)
    cols = _reflect101_index(x.shape[-1], r, x.device)
    y = x.index_select(-2, rows).index_select(-1, cols).unsqueeze(1)
    y = F.conv2d(y, k.view(1, 1, 1, -1))
    y = F.conv2d(y, k.view(1, 1, -1, 1))
    return y.squeeze(1)


def lanczos_upsample(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize [..., h, w] to [..., H, W] with separable Lanczos-3 (PIL LANCZOS), METHOD 1.7.5."""
    return resize_float(masks.float(), size, "lanczos")


def filter_weights(masks: torch.Tensor, size: tuple[int, int], paper_compat: bool) -> torch.Tensor:
    """The coarse masks [K, B, h, w] upsampled to [K, B, H, W] in [0, 1] for the filtered output.

    METHOD 1.7.5: the reference resizes each binary mask PNG with PIL's LANCZOS, which clips
    and rounds to 8 bits between its horizontal and vertical pass; ``paper_compat`` does the
    same, the default keeps the float resize (clamped to [0, 1]).
    """
    if paper_compat:
        binary = (masks > 0.5).to(torch.uint8) * 255
        return resize_uint8(binary, size, "lanczos").float() / 255.0
    return lanczos_upsample(masks, size).clamp(0, 1)


def one_hot_maps(coarse: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """[B, h, w] label ids -> [K, B, h, w] float masks, one per id in ``classes``."""
    return (coarse.unsqueeze(0) == classes.view(-1, 1, 1, 1)).float()


def _restore_argmax(
    scores: torch.Tensor, classes: torch.Tensor, geometry, fallback: torch.Tensor | None = None
) -> torch.Tensor:
    """Per frame: scores [K, B, H', W'] -> restored to the original size -> class ids [B, H, W].

    Where every score is zero (no evidence at all) the ``fallback`` ids [B, H', W'] are used.
    """
    from .video import restore

    out = []
    for f in range(scores.shape[1]):
        s = scores[:, f]
        ids = classes[restore(s, geometry, mode="bilinear").argmax(0)]
        if fallback is not None:
            empty = restore((s.amax(0) <= 0).float()[None], geometry, mode="nearest")[0] > 0.5
            fb = restore(fallback[f][None].float(), geometry, mode="nearest")[0].long()
            ids = torch.where(empty, fb, ids)
        out.append(ids)
    return torch.stack(out)


def nearest_labels(coarse: torch.Tensor, geometry, size: tuple[int, int]) -> torch.Tensor:
    """Coarse ids [B, h, w] -> processed size ``size`` (H', W') -> original size, nearest."""
    from .video import restore

    up = F.interpolate(coarse[:, None].float(), size=size, mode="nearest")[:, 0]
    return restore(up, geometry, mode="nearest").round().long()


def bilinear_labels(
    coarse: torch.Tensor, classes: torch.Tensor, geometry, size: tuple[int, int]
) -> torch.Tensor:
    """Bilinear upsampling of per-class one-hot scores, then argmax: [B, H, W] ids."""
    scores = torch.stack(
        [
            F.interpolate(
                one_hot_maps(coarse[f : f + 1], classes)[:, 0][None],
                size=size,
                mode="bilinear",
                align_corners=False,
            )[0]
            for f in range(coarse.shape[0])
        ],
        dim=1,
    )
    return _restore_argmax(scores, classes, geometry)


def joint_bilateral_scores(
    scores: torch.Tensor,
    guide: torch.Tensor,
    sigma_space: float,
    sigma_color: float,
    radius: int = 2,
) -> torch.Tensor:
    """Joint-bilateral upsampling (Kopf et al. 2007) of coarse scores [K, h, w] to the guide's size.

    ``guide``: the frame [3, H, W] in [0, 1]. Each output pixel averages the coarse cells within
    ``radius`` cells, weighted by spatial distance (``sigma_space`` in cells) and by colour
    distance between the pixel and the cell's mean colour (``sigma_color``). Loops run over
    the (2r+1)^2 offsets only.
    """
    K, h, w = scores.shape
    H, W = guide.shape[-2:]
    cell_rgb = F.adaptive_avg_pool2d(guide[None], (h, w))[0]  # [3, h, w]
    uy = (torch.arange(H, device=guide.device) + 0.5) * h / H - 0.5
    ux = (torch.arange(W, device=guide.device) + 0.5) * w / W - 0.5
    cy, cx = uy.round().long(), ux.round().long()
    offsets = [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)]

    def log_weight(dy: int, dx: int):
        qy, qx = (cy + dy).clamp(0, h - 1), (cx + dx).clamp(0, w - 1)
        space = ((uy - qy) ** 2)[:, None] + ((ux - qx) ** 2)[None, :]
        rgb = cell_rgb[:, qy][:, :, qx]
        colour = ((guide - rgb) ** 2).sum(0)
        return -space / (2 * sigma_space**2) - colour / (2 * sigma_color**2), qy, qx

    # weights in log space, shifted by their per-pixel max: far-off colours cannot underflow
    peak = torch.stack([log_weight(dy, dx)[0] for dy, dx in offsets]).amax(0)
    num = torch.zeros(K, H, W, device=guide.device)
    den = torch.zeros(1, H, W, device=guide.device)
    for dy, dx in offsets:
        logw, qy, qx = log_weight(dy, dx)
        weight = torch.exp(logw - peak)[None]
        num += weight * scores[:, qy][:, :, qx]
        den += weight
    return num / den


def bilateral_labels(
    coarse: torch.Tensor,
    classes: torch.Tensor,
    images: torch.Tensor,
    geometry,
    cfg: UpsampleConfig,
) -> torch.Tensor:
    """Image-guided upsampling of one-hot coarse scores [B, h, w] with the frames [B, 3, H', W']."""
    scores = torch.stack(
        [
            joint_bilateral_scores(
                one_hot_maps(coarse[f : f + 1], classes)[:, 0],
                images[f],
                cfg.bilateral_sigma_space,
                cfg.bilateral_sigma_color,
            )
            for f in range(coarse.shape[0])
        ],
        dim=1,
    )
    return _restore_argmax(scores, classes, geometry)


# -- masked modulation -----------------------------------------------------------------------
def plan_triples(masks: torch.Tensor, skip_empty: bool) -> torch.Tensor:
    """(class index, sign, frame) rows [T, 3] for masks [K, B, h, w]; +1 before -1 per pair."""
    K, B = masks.shape[:2]
    k, f = torch.meshgrid(torch.arange(K), torch.arange(B), indexing="ij")
    k, f = k.flatten(), f.flatten()
    if skip_empty:
        keep = masks.flatten(2).any(-1).flatten().cpu()
        k, f = k[keep], f[keep]
    pairs = torch.stack([k, f], 1)
    plus = torch.cat([pairs[:, :1], torch.ones_like(pairs[:, :1]), pairs[:, 1:]], 1)
    minus = plus.clone()
    minus[:, 1] = -1
    return torch.stack([plus, minus], 1).flatten(0, 1)


def _chunks(triples: torch.Tensor, batch: int, num_frames: int) -> list[torch.Tensor]:
    """Indices of ``triples`` per UNet call; batch 1 = one pass per class and sign (reference)."""
    if not len(triples):
        return []
    if batch == 1:
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (k, s, _f) in enumerate(triples.tolist()):
            groups.setdefault((k, s), []).append(i)
        return [torch.tensor(v) for v in groups.values()]
    size = triples.shape[0] if batch == 0 else 2 * max(1, batch // 2)
    return list(torch.arange(triples.shape[0]).split(size))


def _check_steps(cfg: SegmentConfig) -> None:
    start, end = cfg.features.start_step, cfg.features.num_inference_steps
    ucfg = cfg.upsample
    for name in ("modulation_steps", "blend_steps"):
        bad = [s for s in getattr(ucfg, name) if not start <= s < end]
        if bad:
            raise ConfigError(
                f"upsample.{name} {bad} lie outside the denoising steps [{start}, {end})"
            )
    if ucfg.inject:
        missing = [b for b in (*ucfg.modulated_blocks,) if not 3 <= b <= 11]
        if missing:
            raise ConfigError(f"modulated_blocks {missing} have no attention")


class _ReplayState:
    """Which rows of the cached prefix outputs the current UNet call replays (None: compute)."""

    rows: torch.Tensor | None = None


@contextlib.contextmanager
def _replay_prefix(unet: torch.nn.Module, feats: FeatureResult) -> Iterator[_ReplayState]:
    """While ``state.rows`` is set, the prefix modules return their cached outputs' rows.

    The modules' ``forward`` is shadowed by an instance attribute for the duration of the
    block; inner hooks (capture, injection) do not run for a replayed module, which is what
    we want: its output is already the injected pass's output.
    """
    state = _ReplayState()
    step, block, layer = feats.prefix_key
    modules = prefix_modules(unet, block, layer)
    saved: dict[str, Any] = {}

    def make(name: str, original):
        cached = feats.prefix[name]

        def forward(*args, **kwargs):
            if state.rows is None:
                return original(*args, **kwargs)
            return tree_map_only(torch.Tensor, lambda t: t.index_select(0, state.rows), cached)

        return forward

    try:
        for name, module in modules.items():
            saved[name] = module.__dict__.get("forward")
            module.forward = make(name, module.forward)
        yield state
    finally:
        for name, module in modules.items():
            if name not in saved:
                continue
            if saved[name] is None:
                del module.forward
            else:
                module.forward = saved[name]


def _compiled_unet(backbone: Backbone) -> torch.nn.Module:
    """``torch.compile`` of the backbone's UNet, built once per backbone and reused."""
    compiled = getattr(backbone, "_compiled_unet", None)
    if compiled is None:
        compiled = torch.compile(backbone.unet, dynamic=True)
        backbone._compiled_unet = compiled
    return compiled


def needed_pairs(
    masks: torch.Tensor, neighbourhood: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Which (class, frame) pairs to modulate, as [K, B, h, w] masks, and candidate maps.

    masks: [K, B, h, w] bool. Without ``neighbourhood`` every present pair is modulated and
    the candidates are None (every class competes everywhere). With it, a class is a
    candidate at a cell when it occurs in the cell's 3x3 neighbourhood; a pair is modulated
    only where its class is a candidate at some cell that has at least two candidates.
    """
    if not neighbourhood:
        return masks, None
    K, B, h, w = masks.shape
    cand = F.max_pool2d(masks.flatten(0, 1)[:, None].float(), 3, 1, 1)[:, 0] > 0
    cand = cand.view(K, B, h, w)
    contested = cand.sum(0) >= 2
    return cand & contested, cand


def difference_maps(plus: torch.Tensor, minus: torch.Tensor, cfg: UpsampleConfig) -> torch.Tensor:
    """D = blur(||I+ - I-||_2 over RGB) for decodes [n, 3, H, W] in [0, 1] -> [n, H, W].

    ``paper_compat`` reproduces the reference's process_output.py: the decodes become uint8
    (truncated), the difference and its square wrap modulo 256 (numpy uint8 arithmetic),
    channels are summed without wrap, the float64 blur is cast to 8 bits as PIL's
    ``convert("L")`` does (truncation) and the map goes through an 8-bit JPEG file at PIL's
    default quality, whose decoded values are what the reference normalises.
    """
    if cfg.paper_compat:
        a = (plus * 255).to(torch.uint8).long()
        b = (minus * 255).to(torch.uint8).long()
        diff = (a - b) % 256
        sq = (diff * diff) % 256
        dist = sq.sum(1).double().sqrt()
        blurred = gaussian_blur(dist, cfg.blur_kernel, cfg.blur_sigma)
        return jpeg_roundtrip(blurred.clamp(0, 255).floor().to(torch.uint8)).float()
    dist = (plus.float() - minus.float()).pow(2).sum(1).sqrt()
    return gaussian_blur(dist, cfg.blur_kernel, cfg.blur_sigma)


@torch.inference_mode()
def modulate(
    backbone: Backbone,
    feats: FeatureResult,
    coarse: torch.Tensor,
    cfg: SegmentConfig | None = None,
    classes: torch.Tensor | None = None,
) -> UpsampleResult:
    """Masked-modulation upsampling of refined coarse labels [B, h, w] for one window.

    ``feats`` is the window's :class:`FeatureResult` (with caches). ``classes`` fixes the label
    ids to consider (default: those present in ``coarse``). Returns labels at the original size.
    """
    from .attention import AttentionController

    if backbone.kind == "svd":  # Stable Video Diffusion: one modulated video per class and sign
        from . import svd

        return svd.modulate(backbone, feats, coarse, cfg, classes)
    cfg = cfg or SegmentConfig.paper_sd()
    ucfg = cfg.upsample
    if backbone.kind != "sd":
        raise ConfigError(f"masked modulation needs a diffusion backbone, not {backbone.kind!r}")
    if feats.z_start is None or (ucfg.inject and not feats.cache):
        raise ConfigError("features were extracted without caches: call extract(keep_cache=True)")
    _check_steps(cfg)
    if feats.prefix_key is not None:
        # the cache lacks what precedes the modulated layer at the replayed step (identical
        # in every pass); a config that modulates earlier would need it
        step, block, layer = feats.prefix_key
        point = modulation_point(cfg)
        if point is not None and point < (step, block, int(layer == "attn2")):
            raise ConfigError(
                f"features were extracted for modulation from step {step}, block {block} "
                f"{layer}; extract again with this config (it modulates earlier)"
            )
    seconds = {"modulation_unet": 0.0, "decode": 0.0, "difference": 0.0}
    coarse = coarse.to(backbone.device)
    classes = torch.unique(coarse) if classes is None else classes.to(coarse.device)
    masks = one_hot_maps(coarse, classes)  # [K, B, h, w] at the feature grid
    K, B = masks.shape[:2]
    H, W = feats.images.shape[-2:]
    reference = ucfg.execution == "reference"
    batch = 1 if reference else ucfg.modulation_batch
    needed, candidates = needed_pairs(masks > 0, ucfg.neighbourhood_classes and not reference)
    triples = plan_triples(needed, (ucfg.skip_empty or candidates is not None) and batch != 1)
    cond_only = not ucfg.modulation_cfg and not reference
    if cond_only:
        emb = backbone.prompt_embedding(cfg.features.prompt)
    else:
        emb = cfg_embeddings(backbone, cfg.features.prompt, cfg.features.guidance_scale)
    halves = emb.shape[0]
    feat_halves = feats.halves
    # replay the feature pass's UNet prefix at the first modulation step (identical inputs)
    replay = (
        not reference
        and bool(feats.prefix)
        and feats.prefix_key == prefix_plan(cfg)
        and (halves == feat_halves or halves == 1)
    )
    sched = feats.schedule
    start, end = cfg.features.start_step, cfg.features.num_inference_steps
    first_mod = min(ucfg.modulation_steps) if ucfg.modulation_steps else end
    inject = feats.cache if ucfg.inject else {}
    if inject and halves != feat_halves:  # cond-only passes replay the cond half
        inject = {key: value[-1:] for key, value in inject.items()}
    if not reference and ucfg.uses_bfloat16 and not native_bf16(backbone.device):
        log.warning(
            "bfloat16 requested (unet_autocast=%s, decode_dtype=%s) but %s has no native bf16: "
            "it is emulated and far slower than float32",
            ucfg.unet_autocast,
            ucfg.decode_dtype,
            backbone.device,
        )
    runner = backbone
    if ucfg.torch_compile and not reference:
        runner = dataclasses.replace(backbone, unet=_compiled_unet(backbone))
    autocast = (
        torch.autocast(backbone.device.type, dtype=getattr(torch, ucfg.unet_autocast))
        if ucfg.unet_autocast != "none" and not reference
        else contextlib.nullcontext()
    )
    half_rows = torch.arange(feat_halves - halves, feat_halves, device=backbone.device)

    def mask_at(stride: int, k: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        m = masks[k, f][:, None]
        return F.interpolate(m, size=(H // stride, W // stride), mode="nearest")[:, 0]

    finals = torch.empty(triples.shape[0], *feats.z_start.shape[1:], device=backbone.device)
    unet_evals = 0
    tic = time.perf_counter()
    with contextlib.ExitStack() as stack:
        ctl = stack.enter_context(AttentionController(backbone.unet))
        state = stack.enter_context(_replay_prefix(backbone.unet, feats)) if replay else None
        stack.enter_context(autocast)
        ctl.plan.inject = inject
        ctl.plan.halves = halves
        ctl.plan.modulation_layer = "attn2" if ucfg.tensor == "attn2_out" else "attn1"
        ctl.plan.modulation_steps = frozenset(ucfg.modulation_steps)
        for idx in _chunks(triples, batch, B) if triples.shape[0] else []:
            k, s, f = triples[idx].unbind(1)
            k, f = k.to(coarse.device), f.to(coarse.device)
            sign = s.to(backbone.device, torch.float32)[:, None]
            ctl.plan.inject_frames = f
            ctl.plan.modulation = {
                b: ucfg.lam * sign * mask_at(block_stride(b), k, f).flatten(1)
                for b in ucfg.modulated_blocks
            }
            blend = mask_at(8, k, f)[:, None]
            z = feats.z_start[f]
            for i in range(start, end):
                if replay and i < first_mod:  # nothing modulated yet: the stored pass itself
                    z = feats.latents[i][f]
                    continue
                ctl.plan.step = i
                if state is not None:
                    state.rows = (
                        (half_rows[:, None] * B + f.to(half_rows.device)[None]).flatten()
                        if i == feats.prefix_key[0]
                        else None
                    )
                eps = unet_eps(
                    runner,
                    z,
                    float(sched.sigmas[i]),
                    float(sched.timesteps[i]),
                    emb,
                    cfg.features.guidance_scale,
                )
                z = z + (sched.sigmas[i + 1] - sched.sigmas[i]).item() * eps
                if i in ucfg.blend_steps:
                    z = blend * z + (1 - blend) * feats.latents[i][f]
                unet_evals += z.shape[0] * halves
            finals[idx] = z
    seconds["modulation_unet"] = time.perf_counter() - tic

    # decode + and - of each (class, frame) pair together and keep only D
    diff = torch.zeros(K, B, H, W, device=backbone.device)
    dtype = torch.float32 if reference else getattr(torch, ucfg.decode_dtype)
    per_call = B if reference else (ucfg.decode_batch or triples.shape[0])
    pair_batch = max(1, per_call // 2)  # the reference decodes a pass's B frames per call
    vae_decodes = 0
    if reference:  # the reference decodes the unmodulated pass too, though nothing uses it
        tic = time.perf_counter()
        backbone.decode(feats.latents[end - 1], dtype=dtype)
        vae_decodes += B
        seconds["decode"] += time.perf_counter() - tic
    pair_ids = torch.arange(triples.shape[0] // 2)
    for pairs in pair_ids.split(pair_batch) if pair_ids.numel() else []:
        tic = time.perf_counter()
        plus_minus = backbone.decode(
            finals[torch.stack([2 * pairs, 2 * pairs + 1], 1).flatten()], dtype=dtype
        )
        vae_decodes += plus_minus.shape[0]
        seconds["decode"] += time.perf_counter() - tic
        tic = time.perf_counter()
        d = difference_maps(plus_minus[0::2], plus_minus[1::2], ucfg)
        rows = triples[2 * pairs]
        diff[rows[:, 0].to(diff.device), rows[:, 2].to(diff.device)] = d
        seconds["difference"] += time.perf_counter() - tic
    tic = time.perf_counter()
    diff = diff / (diff.amax(dim=(-2, -1), keepdim=True) + 1e-5)  # METHOD 1.7.4
    up = filter_weights(masks, (H, W), ucfg.paper_compat)
    filtered = diff * (up + ucfg.outside_weight * (1 - up))  # METHOD 1.7.5
    raw_scores = diff
    if candidates is not None:  # only neighbourhood classes compete at a pixel
        cand_px = (
            F.interpolate(candidates.flatten(0, 1)[:, None].float(), size=(H, W), mode="nearest")[
                :, 0
            ].view(K, B, H, W)
            > 0.5
        )
        raw_scores = torch.where(cand_px, diff, -1.0)
        filtered = torch.where(cand_px, filtered, -1.0)
    fallback = (
        None
        if ucfg.paper_compat
        else F.interpolate(coarse[:, None].float(), size=(H, W), mode="nearest")[:, 0].long()
    )
    raw_labels = _restore_argmax(raw_scores, classes, feats.geometry, fallback)
    filt_labels = _restore_argmax(filtered, classes, feats.geometry, fallback)
    seconds["difference"] += time.perf_counter() - tic
    labels = filt_labels if ucfg.output == "filtered" else raw_labels
    return UpsampleResult(
        labels=labels,
        classes=classes,
        raw_labels=raw_labels,
        diff=diff,
        unet_evals=unet_evals,
        vae_decodes=vae_decodes,
        seconds=seconds,
    )


def upsample(
    backbone: Backbone,
    feats: FeatureResult,
    coarse: torch.Tensor,
    cfg: SegmentConfig,
    classes: torch.Tensor | None = None,
) -> UpsampleResult:
    """Stage 3 by ``cfg.upsample.method``: modulation, bilinear, nearest or bilateral."""
    method = cfg.upsample.method
    if method == "modulation" and backbone.kind == "svd":
        from . import svd

        return svd.modulate(backbone, feats, coarse, cfg, classes)
    if method == "modulation" and backbone.kind == "sd":
        return modulate(backbone, feats, coarse, cfg, classes)
    tic = time.perf_counter()
    coarse = coarse.to(feats.images.device)
    classes = torch.unique(coarse) if classes is None else classes.to(coarse.device)
    size = tuple(feats.images.shape[-2:])
    if method == "nearest":
        labels = nearest_labels(coarse, feats.geometry, size)
    elif method == "bilateral":
        labels = bilateral_labels(coarse, classes, feats.images, feats.geometry, cfg.upsample)
    else:  # bilinear, and the fallback for backbones that cannot modulate
        labels = bilinear_labels(coarse, classes, feats.geometry, size)
    return UpsampleResult(
        labels=labels, classes=classes, seconds={"upsample": time.perf_counter() - tic}
    )


__all__ = [
    "UpsampleResult",
    "modulate",
    "upsample",
    "difference_maps",
    "gaussian_blur",
    "lanczos_upsample",
    "joint_bilateral_scores",
    "plan_triples",
]
