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
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ...config import SegmentConfig
from ...errors import ConfigError
from ...kernels.attention import AttentionController
from ...kernels.ops import difference_maps
from ..base import ModulationMaps
from ..precision import autocast, decode_dtype, modulation_dtype
from ..schedule import block_stride, check_modulation_steps
from .passes import SvdFeatureResult, euler_step, guided_denoised

if TYPE_CHECKING:
    from .model import StableVideoDiffusion


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
    frames), ``upsample.modulation_batch`` frames' worth of such videos per UNet call (0: all at
    once; the "reference" execution: one per call).
    """
    ucfg, scfg = cfg.upsample, cfg.svd
    cond = getattr(feats, "conditioning", None)
    if cond is None or feats.z_start is None or (ucfg.inject and not feats.cache):
        raise ConfigError(
            "features were extracted without caches: call svd.extract(keep_cache=True)"
        )
    check_modulation_steps(cfg)
    seconds = {"modulation_unet": 0.0, "decode": 0.0, "difference": 0.0}
    device = backbone.device
    K, num_frames = masks.shape[:2]
    H, W = feats.images.shape[-2:]
    present = masks.flatten(2).any(-1)  # [K, F]
    reference = ucfg.execution == "reference"
    run = present.any(1) if ucfg.skip_empty and not reference else torch.ones_like(present[:, 0])
    run_k = run.nonzero()[:, 0]
    video_k = run_k.repeat_interleave(2)  # (class, +1), (class, -1), ...
    video_s = torch.tensor([1.0, -1.0], device=device).repeat(run_k.numel())
    n_videos = video_k.numel()
    if reference:
        per_call = 1
    elif ucfg.modulation_batch == 0:
        per_call = max(n_videos, 1)
    else:
        per_call = max(1, ucfg.modulation_batch // num_frames)
    spatial = "attn2" if ucfg.tensor == "attn2_out" else "attn1"
    mod_layers = (spatial, "t" + spatial) if scfg.modulate_temporal else (spatial,)
    layers = tuple(dict.fromkeys((*mod_layers, "tattn1")))
    blocks = sorted({*ucfg.modulated_blocks, *(ucfg.injected_blocks if ucfg.inject else ())})
    sched = feats.schedule
    start, end = cfg.features.start_step, cfg.features.num_inference_steps

    def mask_at(stride: int, k: torch.Tensor) -> torch.Tensor:
        m = masks[k].flatten(0, 1)[:, None]  # [n * F, 1, h, w]
        return F.interpolate(m, size=(H // stride, W // stride), mode="nearest")[:, 0]

    finals = torch.empty(n_videos, *feats.z_start.shape, device=device)
    unet_evals = 0
    tic = time.perf_counter()
    precision = autocast(device, modulation_dtype(cfg, device))
    with AttentionController(backbone.unet, blocks, layers) as ctl, precision:
        ctl.plan.inject = feats.cache if ucfg.inject else {}
        ctl.plan.halves = cond.halves
        ctl.plan.modulation_layer = mod_layers
        ctl.plan.modulation_steps = frozenset(ucfg.modulation_steps)
        for idx in torch.arange(n_videos, device=device).split(per_call):
            k, s = video_k[idx], video_s[idx]
            n = idx.numel()
            sign = s.repeat_interleave(num_frames)[:, None]
            ctl.plan.modulation = {
                b: ucfg.lam * sign * mask_at(block_stride(b), k).flatten(1)
                for b in ucfg.modulated_blocks
            }
            blend = mask_at(8, k).unflatten(0, (n, num_frames))[:, :, None]
            z = feats.z_start.expand(n, *feats.z_start.shape).clone()
            for i in range(start, end):
                ctl.plan.step = i
                sg, sg_next = float(sched.sigmas[i]), float(sched.sigmas[i + 1])
                den = guided_denoised(backbone, z, sg, float(sched.timesteps[i]), cond)
                z = euler_step(z, den, sg, sg_next)
                if i in ucfg.blend_steps:
                    z = blend * z + (1 - blend) * feats.latents[i][None]
                unet_evals += n * num_frames * cond.halves
            finals[idx] = z
    seconds["modulation_unet"] = time.perf_counter() - tic

    diff = torch.zeros(K, num_frames, H, W, device=device)
    dtype = decode_dtype(cfg)
    per_frame = scfg.decode_frames == 1
    decode_batch = getattr(ucfg, "decode_batch", 0) or 2 * num_frames  # frames per VAE call
    # with frame-by-frame decoding and blending after the last step, a frame whose mask is
    # empty decodes the unmodulated latent in both passes: its D is exactly 0
    exact_skip = per_frame and ucfg.skip_empty and not reference and (end - 1) in ucfg.blend_steps
    vae_decodes = 0
    tile = cfg.features.vae_tile
    if reference:  # the reference decodes the unmodulated pass too, though nothing uses it
        tic = time.perf_counter()
        backbone.decode(feats.latents[end - 1], dtype, scfg.decode_frames, tile=tile)
        vae_decodes += num_frames
        seconds["decode"] += time.perf_counter() - tic
    for j, k in enumerate(run_k.tolist()):
        plus, minus = finals[2 * j], finals[2 * j + 1]
        sel = present[k].nonzero()[:, 0] if exact_skip else torch.arange(num_frames, device=device)
        if sel.numel() == 0:
            continue
        tic = time.perf_counter()
        if per_frame:
            images = backbone.decode(
                torch.cat([plus[sel], minus[sel]]), dtype, 1, batch=decode_batch, tile=tile
            )
            img_plus, img_minus = images.chunk(2)
        else:
            img_plus = backbone.decode(plus, dtype, scfg.decode_frames, tile=tile)[sel]
            img_minus = backbone.decode(minus, dtype, scfg.decode_frames, tile=tile)[sel]
        vae_decodes += 2 * (sel.numel() if per_frame else num_frames)
        seconds["decode"] += time.perf_counter() - tic
        tic = time.perf_counter()
        diff[k, sel] = difference_maps(img_plus, img_minus, ucfg)
        seconds["difference"] += time.perf_counter() - tic
    return ModulationMaps(
        diff=diff, unet_evals=unet_evals, vae_decodes=vae_decodes, seconds=seconds
    )
