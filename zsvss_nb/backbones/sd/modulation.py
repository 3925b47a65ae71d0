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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch.utils._pytree import tree_map_only

from ...config import SegmentConfig
from ...errors import ConfigError
from ...kernels.attention import AttentionController, frame_groups
from ...kernels.ops import difference_maps
from ..base import ModulationMaps
from ..denoise import StepValues
from ..memory import AUTO, BatchPlanner
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


def _check_features(feats, cfg: SegmentConfig) -> None:
    """A one-line :class:`ConfigError` when ``feats`` cannot be modulated with ``cfg``."""
    if not isinstance(feats, SdFeatureResult):
        raise ConfigError(
            f"features of type {type(feats).__name__} do not come from a Stable Diffusion pass"
        )
    if feats.z_start is None or (cfg.upsample.inject and not feats.cache):
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


@dataclass
class ModulationPlan:
    """Everything the UNet and decode loops of one window share (built by :func:`plan`).

    triples [T, 3] (class index, sign, frame), +1 before -1 per (class, frame) pair;
    ``batch``: triples per UNet call from the config (1: one pass per class and sign, the
    reference's structure; 0: all; "auto": :class:`~zsvss_nb.backbones.memory.BatchPlanner`);
    ``emb`` [halves, 77, D] the modulated passes' prompt embeddings; ``replay`` whether the
    feature pass's UNet prefix is replayed at the first modulation step.
    """

    backbone: StableDiffusion
    feats: SdFeatureResult
    masks: torch.Tensor
    cfg: SegmentConfig
    triples: torch.Tensor
    candidates: torch.Tensor | None
    batch: int | str
    emb: torch.Tensor
    replay: bool
    inject: dict
    runner: StableDiffusion
    reference: bool
    at: StepValues

    @property
    def halves(self) -> int:
        return self.emb.shape[0]


def plan(
    backbone: StableDiffusion,
    feats: SdFeatureResult,
    masks: torch.Tensor,
    cfg: SegmentConfig,
) -> ModulationPlan:
    """The (class, sign, frame) triples to modulate and how (METHOD 1.7, the module docstring)."""
    ucfg = cfg.upsample
    reference = ucfg.execution == "reference"
    batch = 1 if reference else ucfg.modulation_batch
    needed, candidates = needed_pairs(masks > 0, ucfg.neighbourhood_classes and not reference)
    triples = plan_triples(needed, (ucfg.skip_empty or candidates is not None) and batch != 1)
    if not ucfg.modulation_cfg and not reference:
        emb = backbone.prompt_embedding(cfg.features.prompt)
    else:
        emb = cfg_embeddings(backbone, cfg.features.prompt, cfg.features.guidance_scale)
    halves, feat_halves = emb.shape[0], feats.halves
    # replay the feature pass's UNet prefix at the first modulation step (identical inputs)
    replay = (
        not reference
        and bool(feats.prefix)
        and feats.prefix_key == prefix_plan(cfg)
        and (halves == feat_halves or halves == 1)
    )
    inject = feats.cache if ucfg.inject else {}
    if inject and halves != feat_halves:  # cond-only passes replay the cond half
        inject = {key: value[-1:] for key, value in inject.items()}
    runner = backbone
    if ucfg.torch_compile and not reference:
        runner = dataclasses.replace(backbone, unet=compiled_unet(backbone))
    return ModulationPlan(
        backbone,
        feats,
        masks,
        cfg,
        triples,
        candidates,
        batch,
        emb,
        replay,
        inject,
        runner,
        reference,
        StepValues.of(feats.schedule),
    )


def _mask_at(p: ModulationPlan, stride: int, k: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """The masks of classes ``k`` in frames ``f`` at 1/``stride`` of the image size."""
    H, W = p.feats.images.shape[-2:]
    m = p.masks[k, f][:, None]
    return F.interpolate(m, size=(H // stride, W // stride), mode="nearest")[:, 0]


def _chunk_inputs(
    p: ModulationPlan, ctl: AttentionController, state: _ReplayState | None, idx: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Set the controller up for triples ``idx`` (replayed frames, modulation masks); returns
    their frames [n] and blending masks [n, 1, h, w] on the device and the replayed prefix
    rows (None without replay)."""
    ucfg, feats, device = p.cfg.upsample, p.feats, p.backbone.device
    k, s, f = p.triples[idx].unbind(1)
    ctl.plan.frame_groups = frame_groups(f, device)
    k, f = k.to(p.masks.device), f.to(p.masks.device)
    sign = s.to(device, torch.float32)[:, None]
    ctl.plan.inject_frames = f
    ctl.plan.modulation = {
        b: ucfg.lam * sign * _mask_at(p, block_stride(b), k, f).flatten(1)
        for b in ucfg.modulated_blocks
    }
    blend = _mask_at(p, 8, k, f)[:, None]
    rows = None
    if state is not None:
        B, feat_halves = feats.z_start.shape[0], feats.halves
        half_rows = torch.arange(feat_halves - p.halves, feat_halves, device=device)
        rows = (half_rows[:, None] * B + f.to(device)[None]).flatten()
    return f, blend, rows


def _first_modulated(cfg: SegmentConfig) -> int:
    ucfg = cfg.upsample
    return min(ucfg.modulation_steps) if ucfg.modulation_steps else cfg.features.num_inference_steps


def denoise_steps(
    p: ModulationPlan,
    ctl: AttentionController,
    state: _ReplayState | None,
    f: torch.Tensor,
    blend: torch.Tensor,
    rows: torch.Tensor | None,
    runner: StableDiffusion,
) -> torch.Tensor:
    """The step loop of the modulated passes of frames ``f`` [n]: final latents [n, 4, h, w]
    (``runner``: the backbone, or its copy with the compiled UNet).

    Nothing here reads a tensor back to the host: the schedule is Python floats, and the
    masks, frames and replayed rows were set up once per call (:func:`_chunk_inputs`).
    """
    ucfg, feats = p.cfg.upsample, p.feats
    first_mod = _first_modulated(p.cfg)
    z = feats.z_start[f]
    for i in range(p.cfg.features.start_step, p.cfg.features.num_inference_steps):
        if p.replay and i < first_mod:  # nothing modulated yet: the stored pass itself
            z = feats.latents[i][f]
            continue
        ctl.plan.step = i
        if state is not None:
            state.rows = rows if i == feats.prefix_key[0] else None
        eps = unet_eps(
            runner, z, p.at.sigmas[i], p.at.timesteps[i], p.emb, p.cfg.features.guidance_scale
        )
        z = z + p.at.deltas[i] * eps
        if i in ucfg.blend_steps:
            z = blend * z + (1 - blend) * feats.latents[i][f]
    return z


def _unet_steps(p: ModulationPlan) -> int:
    """UNet calls per modulated pass (steps before the first modulation are replayed)."""
    fcfg, first_mod = p.cfg.features, _first_modulated(p.cfg)
    steps = range(fcfg.start_step, fcfg.num_inference_steps)
    return sum(not (p.replay and i < first_mod) for i in steps)


def _pairs_per_call(batch: int | str) -> int | None:
    """(class, frame) pairs per call for a batch of ``batch`` triples (None: "auto", 0: all)."""
    if batch == AUTO:
        return None
    return 0 if batch == 0 else max(1, int(batch) // 2)


def unet_loop(p: ModulationPlan) -> tuple[torch.Tensor, int]:
    """All modulated passes: final latents [T, 4, h, w] per triple, UNet sample-evaluations."""
    ucfg, feats, backbone = p.cfg.upsample, p.feats, p.backbone
    finals = torch.empty(p.triples.shape[0], *feats.z_start.shape[1:], device=backbone.device)
    if not p.triples.shape[0]:
        return finals, 0
    evals = 0
    with contextlib.ExitStack() as stack:
        share = (
            [(b, layer) for b in ucfg.injected_blocks for layer in ("attn1", "attn2")]
            if p.inject and ucfg.reuse_attention and not p.reference
            else []
        )
        ctl = stack.enter_context(AttentionController(backbone.unet, share_probabilities=share))
        state = stack.enter_context(replay_prefix(backbone.unet, feats)) if p.replay else None
        stack.enter_context(autocast(backbone.device, modulation_dtype(p.cfg, backbone.device)))
        ctl.plan.inject = p.inject
        ctl.plan.halves = p.halves
        ctl.plan.context_per_half = True  # unet_eps repeats one embedding per CFG half
        ctl.plan.modulation_layer = "attn2" if ucfg.tensor == "attn2_out" else "attn1"
        ctl.plan.modulation_steps = frozenset(ucfg.modulation_steps)
        steps = _unet_steps(p)
        key = ("modulation", *feats.z_start.shape[1:], p.halves, str(p.runner.dtype))
        fixed = 1 if p.batch == 1 else _pairs_per_call(p.batch)
        planner = BatchPlanner(backbone.device, key, backbone.footprints, fixed)

        def call(idx: torch.Tensor) -> None:
            nonlocal evals
            # the footprint is measured through the eager UNet, not through compiled code
            runner = backbone if planner.measuring else p.runner
            inputs = _chunk_inputs(p, ctl, state, idx)
            finals[idx] = denoise_steps(p, ctl, state, *inputs, runner=runner)
            evals += idx.numel() * p.halves * steps

        if p.batch == 1:  # the reference's structure: one pass per class and sign
            for idx in _chunks(p.triples, 1, 0):
                call(idx)
        else:
            planner.run(p.triples.shape[0] // 2, lambda lo, hi: call(torch.arange(2 * lo, 2 * hi)))
    return finals, evals


def decode_loop(
    p: ModulationPlan, finals: torch.Tensor, seconds: dict[str, float]
) -> tuple[torch.Tensor, int]:
    """Decode + and - of each (class, frame) pair together and keep only D [K, B, H', W'];
    returns D and the VAE decodes (``seconds`` gains the decode and difference times)."""
    ucfg, backbone, feats = p.cfg.upsample, p.backbone, p.feats
    K, B = p.masks.shape[:2]
    H, W = feats.images.shape[-2:]
    diff = torch.zeros(K, B, H, W, device=backbone.device)
    dtype = decode_dtype(p.cfg)
    tile = p.cfg.features.vae_tile
    vae_decodes = 0
    if p.reference:  # the reference decodes the unmodulated pass too, though nothing uses it
        tic = time.perf_counter()
        last = feats.latents[p.cfg.features.num_inference_steps - 1]
        backbone.decode(last, dtype=dtype, tile=tile)
        vae_decodes += B
        seconds["decode"] += time.perf_counter() - tic
    rows = p.triples[0::2]  # one (class, +1, frame) row per pair; its -1 row follows it
    hl, wl = finals.shape[-2:]
    scale = H // hl  # image pixels per latent cell
    boxes = pair_boxes(p.masks, rows, None if p.reference else ucfg.decode_margin, (hl, wl))
    pair_ids = torch.arange(rows.shape[0])
    if boxes is None:
        whole = torch.ones_like(pair_ids, dtype=torch.bool)
    else:
        whole = (boxes == torch.tensor([0, hl, 0, wl])).all(1)

    def decode_pairs(pairs: torch.Tensor) -> None:
        nonlocal vae_decodes
        y0, y1, x0, x1 = (0, hl, 0, wl) if boxes is None else boxes[pairs[0]].tolist()
        tic = time.perf_counter()
        both = finals[torch.stack([2 * pairs, 2 * pairs + 1], 1).flatten()]
        images = backbone.decode(both[..., y0:y1, x0:x1], dtype=dtype, tile=tile)
        vae_decodes += images.shape[0]
        seconds["decode"] += time.perf_counter() - tic
        tic = time.perf_counter()
        d = difference_maps(images[0::2], images[1::2], ucfg)
        at = rows[pairs].to(diff.device)
        diff[at[:, 0], at[:, 2], scale * y0 : scale * y1, scale * x0 : scale * x1] = d
        seconds["difference"] += time.perf_counter() - tic

    # whole-frame pairs decode a planned number at a time; a cropped pair alone, on its box
    whole_ids = pair_ids[whole]
    if p.reference:  # the reference decodes a pass's B frames per call
        fixed = max(1, B // 2)
    else:
        fixed = _pairs_per_call(ucfg.decode_batch)
    key = ("decode", hl, wl, str(dtype), tile)
    planner = BatchPlanner(backbone.device, key, backbone.footprints, fixed)
    planner.run(whole_ids.numel(), lambda lo, hi: decode_pairs(whole_ids[lo:hi]))
    for j in pair_ids[~whole].tolist():
        decode_pairs(pair_ids[j : j + 1])
    return diff, vae_decodes


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
    _check_features(feats, cfg)
    p = plan(backbone, feats, masks, cfg)
    seconds = {"modulation_unet": 0.0, "decode": 0.0, "difference": 0.0}
    tic = time.perf_counter()
    finals, unet_evals = unet_loop(p)
    seconds["modulation_unet"] = time.perf_counter() - tic
    diff, vae_decodes = decode_loop(p, finals, seconds)
    return ModulationMaps(
        diff=diff,
        candidates=p.candidates,
        unet_evals=unet_evals,
        vae_decodes=vae_decodes,
        seconds=seconds,
    )
