"""Stage 3 with Stable Video Diffusion: one modulated video per (class, sign), then decodes.

METHOD.md 1.7 for SVD: modulation at step 17 adds +-lambda * mask to the block-8 spatial and
temporal self-attention outputs, the temporal self-attention q/k of the unmodulated pass are
replayed at every step (the reference's spatial keys miss its lookup, so only temporal layers
are injected; temporal cross-attention attends to one token, so its q/k do not matter), and
the latent is blended with the unmodulated one after every step 17..24. Decoding is frame by
frame (the reference's decoding_t = 1) or in chunks (``svd.decode_frames``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ...config import SegmentConfig
from ...errors import ConfigError
from ...kernels.attention import AttentionController
from ...kernels.ops import difference_maps
from ..base import ModulationMaps
from ..denoise import StepValues
from ..memory import AUTO, BatchPlanner
from ..precision import autocast, decode_dtype, modulation_dtype
from ..schedule import block_stride, check_modulation_steps
from .passes import SvdFeatureResult, euler_step, guided_denoised

if TYPE_CHECKING:
    from .model import StableVideoDiffusion


@dataclass
class SvdModulationPlan:
    """What the UNet and decode loops of one window share (built by :func:`plan`).

    ``run_k`` [R]: the classes modulated; videos 2j and 2j+1 are class run_k[j] with sign +1
    and -1 (``video_k``, ``video_s`` [2R]); ``videos_per_call``: from the config (None:
    "auto", :class:`~zsvss_nb.backbones.memory.BatchPlanner`; 0: all).
    """

    backbone: StableVideoDiffusion
    feats: SvdFeatureResult
    masks: torch.Tensor
    cfg: SegmentConfig
    present: torch.Tensor
    run_k: torch.Tensor
    video_k: torch.Tensor
    video_s: torch.Tensor
    videos_per_call: int | None
    mod_layers: tuple[str, ...]
    reference: bool
    at: StepValues

    @property
    def num_frames(self) -> int:
        return self.masks.shape[1]


def _check_features(feats: SvdFeatureResult, cfg: SegmentConfig) -> None:
    """A one-line :class:`ConfigError` when ``feats`` lack what the modulated passes replay."""
    cond = getattr(feats, "conditioning", None)
    if cond is None or feats.z_start is None or (cfg.upsample.inject and not feats.cache):
        raise ConfigError(
            "features were extracted without caches: call svd.extract(keep_cache=True)"
        )
    check_modulation_steps(cfg)


def plan(
    backbone: StableVideoDiffusion,
    feats: SvdFeatureResult,
    masks: torch.Tensor,
    cfg: SegmentConfig,
) -> SvdModulationPlan:
    """The (class, sign) videos to run: every class present in some frame (all classes for
    the "reference" execution or without ``skip_empty``), and how many per UNet call."""
    ucfg = cfg.upsample
    device = backbone.device
    num_frames = masks.shape[1]
    present = masks.flatten(2).any(-1)  # [K, F]
    reference = ucfg.execution == "reference"
    run = present.any(1) if ucfg.skip_empty and not reference else torch.ones_like(present[:, 0])
    run_k = run.nonzero()[:, 0]
    if reference:
        per_call = 1
    elif ucfg.modulation_batch == AUTO:
        per_call = None
    elif ucfg.modulation_batch == 0:
        per_call = 0
    else:
        per_call = max(1, ucfg.modulation_batch // num_frames)
    spatial = "attn2" if ucfg.tensor == "attn2_out" else "attn1"
    mod_layers = (spatial, "t" + spatial) if cfg.svd.modulate_temporal else (spatial,)
    return SvdModulationPlan(
        backbone,
        feats,
        masks,
        cfg,
        present,
        run_k,
        run_k.repeat_interleave(2),  # (class, +1), (class, -1), ...
        torch.tensor([1.0, -1.0], device=device).repeat(run_k.numel()),
        per_call,
        mod_layers,
        reference,
        StepValues.of(feats.schedule),
    )


def _chunk_inputs(
    p: SvdModulationPlan, ctl: AttentionController, idx: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Set the controller's modulation up for videos ``idx``; returns their start latents
    [n, F, 4, h, w] and blending masks [n, F, 1, h, w]."""
    ucfg, feats = p.cfg.upsample, p.feats
    H, W = feats.images.shape[-2:]
    k, s = p.video_k[idx], p.video_s[idx]
    n, num_frames = idx.numel(), p.num_frames

    def mask_at(stride: int) -> torch.Tensor:
        m = p.masks[k].flatten(0, 1)[:, None]  # [n * F, 1, h, w]
        return F.interpolate(m, size=(H // stride, W // stride), mode="nearest")[:, 0]

    sign = s.repeat_interleave(num_frames)[:, None]
    ctl.plan.modulation = {
        b: ucfg.lam * sign * mask_at(block_stride(b)).flatten(1) for b in ucfg.modulated_blocks
    }
    blend = mask_at(8).unflatten(0, (n, num_frames))[:, :, None]
    return feats.z_start.expand(n, *feats.z_start.shape).clone(), blend


def denoise_steps(
    p: SvdModulationPlan, ctl: AttentionController, z: torch.Tensor, blend: torch.Tensor
) -> torch.Tensor:
    """The step loop of modulated videos from ``z`` [n, F, 4, h, w]: their final latents.

    Nothing here reads a tensor back to the host: the schedule is Python floats, masks and
    signs were set up once per call (:func:`_chunk_inputs`)."""
    ucfg, feats, cond = p.cfg.upsample, p.feats, p.feats.conditioning
    for i in range(p.cfg.features.start_step, p.cfg.features.num_inference_steps):
        ctl.plan.step = i
        sg, sg_next = p.at.sigmas[i], p.at.sigmas[i + 1]
        den = guided_denoised(p.backbone, z, sg, p.at.timesteps[i], cond)
        z = euler_step(z, den, sg, sg_next)
        if i in ucfg.blend_steps:
            z = blend * z + (1 - blend) * feats.latents[i][None]
    return z


def unet_loop(p: SvdModulationPlan) -> tuple[torch.Tensor, int]:
    """All modulated videos: final latents [2R, F, 4, h, w], UNet sample-evaluations."""
    ucfg, feats, backbone = p.cfg.upsample, p.feats, p.backbone
    cond = feats.conditioning
    n_videos = p.video_k.numel()
    finals = torch.empty(n_videos, *feats.z_start.shape, device=backbone.device)
    layers = tuple(dict.fromkeys((*p.mod_layers, "tattn1")))
    blocks = sorted({*ucfg.modulated_blocks, *(ucfg.injected_blocks if ucfg.inject else ())})
    steps = p.cfg.features.num_inference_steps - p.cfg.features.start_step
    evals = 0
    precision = autocast(backbone.device, modulation_dtype(p.cfg, backbone.device))
    with AttentionController(backbone.unet, blocks, layers) as ctl, precision:
        ctl.plan.inject = feats.cache if ucfg.inject else {}
        ctl.plan.halves = cond.halves
        ctl.plan.modulation_layer = p.mod_layers
        ctl.plan.modulation_steps = frozenset(ucfg.modulation_steps)

        def call(lo: int, hi: int) -> None:
            nonlocal evals
            idx = torch.arange(lo, hi, device=backbone.device)
            finals[lo:hi] = denoise_steps(p, ctl, *_chunk_inputs(p, ctl, idx))
            evals += (hi - lo) * p.num_frames * cond.halves * steps

        key = ("svd-modulation", *feats.z_start.shape, cond.halves, str(backbone.dtype))
        planner = BatchPlanner(backbone.device, key, backbone.footprints, p.videos_per_call)
        planner.run(n_videos, call)
    return finals, evals


def _decode_frames(
    backbone: StableVideoDiffusion,
    latents: torch.Tensor,
    dtype: torch.dtype,
    tile: int,
    planner: BatchPlanner,
) -> torch.Tensor:
    """Frames [N, 4, h, w] decoded one by one (decoding_t = 1), ``planner``'s number per call."""
    parts: list[torch.Tensor] = []

    def call(lo: int, hi: int) -> None:
        parts.append(backbone.decode(latents[lo:hi], dtype, 1, batch=hi - lo, tile=tile))

    planner.run(latents.shape[0], call)
    return torch.cat(parts)


def decode_loop(
    p: SvdModulationPlan, finals: torch.Tensor, seconds: dict[str, float]
) -> tuple[torch.Tensor, int]:
    """Decode each class's + and - videos and keep D [K, F, H', W']; returns D and the VAE
    decodes (``seconds`` gains the decode and difference times)."""
    ucfg, scfg, backbone = p.cfg.upsample, p.cfg.svd, p.backbone
    K, num_frames = p.masks.shape[:2]
    H, W = p.feats.images.shape[-2:]
    end = p.cfg.features.num_inference_steps
    diff = torch.zeros(K, num_frames, H, W, device=backbone.device)
    dtype = decode_dtype(p.cfg)
    per_frame = scfg.decode_frames == 1
    # with frame-by-frame decoding and blending after the last step, a frame whose mask is
    # empty decodes the unmodulated latent in both passes: its D is exactly 0
    exact_skip = per_frame and ucfg.skip_empty and not p.reference and (end - 1) in ucfg.blend_steps
    vae_decodes = 0
    tile = p.cfg.features.vae_tile
    if p.reference:  # the reference decodes the unmodulated pass too, though nothing uses it
        tic = time.perf_counter()
        backbone.decode(p.feats.latents[end - 1], dtype, scfg.decode_frames, tile=tile)
        vae_decodes += num_frames
        seconds["decode"] += time.perf_counter() - tic
    fixed = None if ucfg.decode_batch == AUTO else (ucfg.decode_batch or 2 * num_frames)
    key = ("svd-decode", *finals.shape[-2:], str(dtype), tile)
    planner = BatchPlanner(backbone.device, key, backbone.footprints, fixed)
    for j, k in enumerate(p.run_k.tolist()):
        plus, minus = finals[2 * j], finals[2 * j + 1]
        sel = (
            p.present[k].nonzero()[:, 0]
            if exact_skip
            else torch.arange(num_frames, device=backbone.device)
        )
        if sel.numel() == 0:
            continue
        tic = time.perf_counter()
        if per_frame:  # frames decode alone, so any number of them per VAE call
            both = torch.cat([plus[sel], minus[sel]])
            img_plus, img_minus = _decode_frames(backbone, both, dtype, tile, planner).chunk(2)
        else:
            img_plus = backbone.decode(plus, dtype, scfg.decode_frames, tile=tile)[sel]
            img_minus = backbone.decode(minus, dtype, scfg.decode_frames, tile=tile)[sel]
        vae_decodes += 2 * (sel.numel() if per_frame else num_frames)
        seconds["decode"] += time.perf_counter() - tic
        tic = time.perf_counter()
        diff[k, sel] = difference_maps(img_plus, img_minus, ucfg)
        seconds["difference"] += time.perf_counter() - tic
    return diff, vae_decodes


@torch.inference_mode()
def svd_modulation_maps(
    backbone: StableVideoDiffusion,
    feats: SvdFeatureResult,
    masks: torch.Tensor,
    classes: torch.Tensor,
    coarse: torch.Tensor,
    cfg: SegmentConfig,
) -> ModulationMaps:
    """Masked modulation with SVD: difference maps [K, F, H', W'] for masks [K, F, h, w].

    One modulated pass per (class, sign) over the whole window (the video UNet couples the
    frames), ``upsample.modulation_batch`` frames' worth of such videos per UNet call ("auto":
    planned from free memory; 0: all at once; the "reference" execution: one per call).
    """
    _check_features(feats, cfg)
    p = plan(backbone, feats, masks, cfg)
    seconds = {"modulation_unet": 0.0, "decode": 0.0, "difference": 0.0}
    tic = time.perf_counter()
    finals, unet_evals = unet_loop(p)
    seconds["modulation_unet"] = time.perf_counter() - tic
    diff, vae_decodes = decode_loop(p, finals, seconds)
    return ModulationMaps(
        diff=diff, unet_evals=unet_evals, vae_decodes=vae_decodes, seconds=seconds
    )
