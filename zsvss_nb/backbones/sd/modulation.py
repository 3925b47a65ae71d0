"""Stage 3 with Stable Diffusion: the batched masked-modulation passes and their decodes.

METHOD.md 1.7 (EmerDiff-style): for every class c of the refined coarse map and sign s in
{+1, -1}, re-run the denoising from the window's z_{t*} while adding s*lambda*m_c to an
attention output at t*, replaying the unmodulated pass's q/k at every step and resetting the
latent outside the mask after the blending steps; decode I+ and I-, and take
D_c = blur(||I+ - I-||_2). The stage front (:mod:`zsvss_nb.upsample`) normalises D and takes
the argmax.

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
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch.utils._pytree import tree_map_only

from ...config import SegmentConfig
from ...errors import ConfigError
from ...kernels.attention import AttentionController
from ...kernels.ops import difference_maps
from ..base import ModulationMaps
from ..precision import autocast, decode_dtype, modulation_dtype
from ..schedule import block_stride, check_modulation_steps
from .passes import (
    SdFeatureResult,
    cfg_embeddings,
    modulation_point,
    prefix_modules,
    prefix_plan,
    unet_eps,
)

if TYPE_CHECKING:
    from .model import StableDiffusion

log = logging.getLogger(__name__)


# -- masked modulation -----------------------------------------------------------------------
def plan_triples(masks: torch.Tensor, skip_empty: bool) -> torch.Tensor:
    """(class index, sign, frame) rows [T, 3] for masks [K, B, h, w]; +1 before -1 per pair.

    Frame-major, so one UNet call holds few frames and the injected layers' attention
    probabilities, shared by a frame's samples, are computed for few frames per call.
    """
    K, B = masks.shape[:2]
    f, k = torch.meshgrid(torch.arange(B), torch.arange(K), indexing="ij")
    k, f = k.flatten(), f.flatten()
    if skip_empty:
        keep = masks.flatten(2).any(-1).t().flatten().cpu()
        k, f = k[keep], f[keep]
    pairs = torch.stack([k, f], 1)
    plus = torch.cat([pairs[:, :1], torch.ones_like(pairs[:, :1]), pairs[:, 1:]], 1)
    minus = plus.clone()
    minus[:, 1] = -1
    return torch.stack([plus, minus], 1).flatten(0, 1)


def pair_boxes(
    masks: torch.Tensor, pairs: torch.Tensor, margin: int | None, latent_hw: tuple[int, int]
) -> torch.Tensor | None:
    """Latent box [P, 4] = (y0, y1, x0, x1) per (class, sign, frame) row of ``pairs`` [P, 3]:
    its mask's bounding box, grown by ``margin`` latent cells and clipped to the frame.

    masks [K, B, h, w] at the feature grid; None when ``margin`` is None (whole frames).
    """
    if margin is None:
        return None
    hl, wl = latent_hw
    h, w = masks.shape[-2:]
    m = masks[pairs[:, 0].to(masks.device), pairs[:, 2].to(masks.device)] > 0  # [P, h, w]
    rows, cols = m.any(2), m.any(1)
    idx_h = torch.arange(h, device=m.device)
    idx_w = torch.arange(w, device=m.device)
    big = max(h, w)
    y0 = torch.where(rows, idx_h, big).amin(1) * hl // h - margin
    y1 = (torch.where(rows, idx_h, -1).amax(1) + 1) * hl // h + margin
    x0 = torch.where(cols, idx_w, big).amin(1) * wl // w - margin
    x1 = (torch.where(cols, idx_w, -1).amax(1) + 1) * wl // w + margin
    return torch.stack(
        [y0.clamp(0, hl), y1.clamp(0, hl), x0.clamp(0, wl), x1.clamp(0, wl)], 1
    ).cpu()


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


class _ReplayState:
    """Which rows of the cached prefix outputs the current UNet call replays (None: compute)."""

    rows: torch.Tensor | None = None


@contextlib.contextmanager
def replay_prefix(unet: torch.nn.Module, feats: SdFeatureResult) -> Iterator[_ReplayState]:
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


def compiled_unet(backbone: StableDiffusion) -> torch.nn.Module:
    """``torch.compile`` of the backbone's UNet, built once per backbone and reused."""
    if backbone.compiled_unet is None:
        backbone.compiled_unet = torch.compile(backbone.unet, dynamic=True)
    return backbone.compiled_unet


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


@torch.inference_mode()
def sd_modulation_maps(
    backbone: StableDiffusion,
    feats: SdFeatureResult,
    masks: torch.Tensor,
    classes: torch.Tensor,
    coarse: torch.Tensor,
    cfg: SegmentConfig,
) -> ModulationMaps:
    """The unnormalised difference maps [K, B, H', W'] for masks [K, B, h, w] of ``classes``.

    ``feats`` is the window's SD feature pass with its caches; ``coarse`` [B, h, w] the refined
    labels the masks come from.
    """
    ucfg = cfg.upsample
    if not isinstance(feats, SdFeatureResult):
        raise ConfigError(
            f"features of type {type(feats).__name__} do not come from a Stable Diffusion pass"
        )
    if feats.z_start is None or (ucfg.inject and not feats.cache):
        raise ConfigError("features were extracted without caches: call extract(keep_cache=True)")
    check_modulation_steps(cfg)
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
    runner = backbone
    if ucfg.torch_compile and not reference:
        runner = dataclasses.replace(backbone, unet=compiled_unet(backbone))
    precision = autocast(backbone.device, modulation_dtype(cfg, backbone.device))
    half_rows = torch.arange(feat_halves - halves, feat_halves, device=backbone.device)

    def mask_at(stride: int, k: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        m = masks[k, f][:, None]
        return F.interpolate(m, size=(H // stride, W // stride), mode="nearest")[:, 0]

    finals = torch.empty(triples.shape[0], *feats.z_start.shape[1:], device=backbone.device)
    unet_evals = 0
    tic = time.perf_counter()
    with contextlib.ExitStack() as stack:
        share = (
            [(b, layer) for b in ucfg.injected_blocks for layer in ("attn1", "attn2")]
            if inject and ucfg.reuse_attention and not reference
            else []
        )
        ctl = stack.enter_context(AttentionController(backbone.unet, share_probabilities=share))
        state = stack.enter_context(replay_prefix(backbone.unet, feats)) if replay else None
        stack.enter_context(precision)
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
    dtype = decode_dtype(cfg)
    per_call = B if reference else (ucfg.decode_batch or triples.shape[0])
    pair_batch = max(1, per_call // 2)  # the reference decodes a pass's B frames per call
    vae_decodes = 0
    if reference:  # the reference decodes the unmodulated pass too, though nothing uses it
        tic = time.perf_counter()
        backbone.decode(feats.latents[end - 1], dtype=dtype, tile=cfg.features.vae_tile)
        vae_decodes += B
        seconds["decode"] += time.perf_counter() - tic
    margin = None if reference else ucfg.decode_margin
    rows = triples[0::2]  # one (class, +1, frame) row per pair; its -1 row follows it
    hl, wl = finals.shape[-2:]
    scale = H // hl  # image pixels per latent cell
    boxes = pair_boxes(masks, rows, margin, (hl, wl))
    pair_ids = torch.arange(rows.shape[0])
    if boxes is None:
        whole = torch.ones_like(pair_ids, dtype=torch.bool)
    else:
        whole = (boxes == torch.tensor([0, hl, 0, wl])).all(1)
    # whole-frame pairs decode pair_batch at a time; a cropped pair alone, on its box
    groups = list(pair_ids[whole].split(pair_batch)) if bool(whole.any()) else []
    groups += [pair_ids[j : j + 1] for j in pair_ids[~whole].tolist()]
    for pairs in groups:
        y0, y1, x0, x1 = (0, hl, 0, wl) if boxes is None else boxes[pairs[0]].tolist()
        tic = time.perf_counter()
        both = finals[torch.stack([2 * pairs, 2 * pairs + 1], 1).flatten()]
        images = backbone.decode(both[..., y0:y1, x0:x1], dtype=dtype, tile=cfg.features.vae_tile)
        vae_decodes += images.shape[0]
        seconds["decode"] += time.perf_counter() - tic
        tic = time.perf_counter()
        d = difference_maps(images[0::2], images[1::2], ucfg)
        at = rows[pairs].to(diff.device)
        diff[at[:, 0], at[:, 2], scale * y0 : scale * y1, scale * x0 : scale * x1] = d
        seconds["difference"] += time.perf_counter() - tic
    return ModulationMaps(
        diff=diff,
        candidates=candidates,
        unet_evals=unet_evals,
        vae_decodes=vae_decodes,
        seconds=seconds,
    )
