"""Stable Video Diffusion (img2vid) backbone: loading, conditioning, EDM sampler, stages 1 and 3.

The paper's second variant (METHOD.md 1.2, 1.3, 1.7, 1.8). Per window of F frames:

- noise: z_{t*} = z0 + sigma_17 * eps (EDM sigmas 0.002-700, rho 7, 25 steps; sigma_17 = 1.2732),
  one draw per window with the seed reset per window;
- conditioning on the window's first frame: its CLIP image embedding (cross-attention) and the
  unscaled VAE latent of the frame plus ``cond_aug`` noise (concatenated to the UNet input),
  added time ids (fps_id 14, motion bucket 127, cond_aug 0.02); uncond = zero embedding and
  zero latent; guidance per frame, linspace(1.0, 2.5) over the window;
- sampler: Euler on the EDM sigmas with v-prediction (c_skip = 1/(s^2+1),
  c_out = -s/sqrt(s^2+1), c_in = 1/sqrt(s^2+1), c_noise = ln(s)/4), the UNet sees all frames of
  the window at once (temporal layers), so a sample of the batch is a whole video;
- features: spatial self-attention q of decoder blocks 6-8 at the last step (cond half);
- modulation at step 17: +-lambda * mask on the block-8 spatial and temporal self-attention
  outputs, replaying the temporal self-attention q/k of the unmodulated pass at every step
  (METHOD 1.7b: the reference's spatial keys miss its lookup, so only temporal layers are
  injected; temporal cross-attention attends to one token, so its q/k do not matter), and
  blending the latent with the unmodulated one after every step 17..24;
- decoding frame by frame (the reference's decoding_t = 1) or in chunks (``svd.decode_frames``).

Loading: a diffusers folder (unet/, vae/, image_encoder/, optional feature_extractor/,
scheduler/), a zsvss single file written by :func:`save_svd_single_file`, a Hugging Face repo
id, or "tiny-svd" (seeded random weights, SVD's block structure with few channels).
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .attention import AttentionController
from .backbone import (
    Backbone,
    default_device,
    file_identity,
    folder_identity,
    missing_parts,
)
from .config import SegmentConfig
from .errors import ConfigError, IncompleteModelError, ModelNotFoundError
from .features import FeatureResult, Schedule, aggregate, block_stride, normalise_tokens

log = logging.getLogger(__name__)

# The scheduler_config.json of stabilityai/stable-video-diffusion-img2vid (diffusers). With
# use_karras_sigmas and sigma_min/max it gives the EDM discretisation of the reference's sgm
# config (sigma_min 0.002, sigma_max 700, rho 7) to float32 precision; timestep_type
# "continuous" makes the timesteps c_noise = ln(sigma) / 4 (VScalingWithEDMcNoise).
SVD_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "v_prediction",
    "interpolation_type": "linear",
    "use_karras_sigmas": True,
    "sigma_min": 0.002,
    "sigma_max": 700.0,
    "timestep_spacing": "leading",
    "timestep_type": "continuous",
    "steps_offset": 1,
}
EDM_SIGMA_MIN = 0.002  # METHOD 1.2: EDM discretisation of the reference (sgm svd.yaml)
EDM_SIGMA_MAX = 700.0
EDM_RHO = 7.0
SVD_LATENT_SCALE = 0.18215  # the SVD VAE's scaling_factor (same as SD's)
# OpenAI CLIP normalisation, used when a model has no feature_extractor/ folder
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SVD_COMPONENTS = ("unet", "vae", "image_encoder")
SVD_PIPELINE = "StableVideoDiffusionPipeline"
SVD_UNET_CLASS = "UNetSpatioTemporalConditionModel"

# "tiny-svd": SVD img2vid's block structure (4 down/up blocks, 3 spatio-temporal transformer
# layers in up_blocks 1-3, temporal VAE decoder, CLIP vision tower) with few channels. The
# SVD modules hard-code GroupNorm(32), so every width is a multiple of 32.
TINY_SVD_UNET: dict[str, Any] = {
    "sample_size": 16,
    "in_channels": 8,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlockSpatioTemporal"] * 3 + ["DownBlockSpatioTemporal"],
    "up_block_types": ["UpBlockSpatioTemporal"] + ["CrossAttnUpBlockSpatioTemporal"] * 3,
    "block_out_channels": [32, 32, 32, 32],
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 24,  # 3 added time ids x 8
    "layers_per_block": 2,
    "cross_attention_dim": 32,
    "transformer_layers_per_block": 1,
    "num_attention_heads": [2, 2, 2, 2],
    "num_frames": 14,
}
TINY_SVD_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "block_out_channels": [32, 32, 32, 32],
    "layers_per_block": 1,
    "latent_channels": 4,
    "sample_size": 128,
    "scaling_factor": SVD_LATENT_SCALE,
}
TINY_SVD_IMAGE: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 224,  # the real tower's input size (diffusers' pipeline resizes to 224)
    "patch_size": 32,
    "projection_dim": 32,
}
TINY_SVD_SEED = 0


# -- schedule -------------------------------------------------------------------------------
def edm_sigmas(
    num_steps: int,
    sigma_min: float = EDM_SIGMA_MIN,
    sigma_max: float = EDM_SIGMA_MAX,
    rho: float = EDM_RHO,
) -> torch.Tensor:
    """EDM (Karras) sigmas [num_steps + 1], sigma_max down to sigma_min then 0 (float64).

    sigma_i = (sigma_max^(1/rho) + i/(n-1) * (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, the
    reference's EDMDiscretization with a zero appended.
    """
    if num_steps < 2:
        raise ConfigError(f"num_steps={num_steps}: the EDM schedule needs at least 2 steps")
    ramp = torch.linspace(0, 1, num_steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def svd_schedule(backbone: Backbone, num_steps: int) -> Schedule:
    """The backbone's scheduler (diffusers EulerDiscreteScheduler) as a :class:`Schedule`.

    timesteps [n] are c_noise = ln(sigma)/4, sigmas [n + 1] end with 0.
    """
    cfg = backbone.scheduler_config
    if cfg.get("prediction_type") != "v_prediction":
        raise ConfigError(
            f"SVD scheduler prediction_type={cfg.get('prediction_type')!r}: the sampler assumes "
            "v-prediction with EDM scaling (METHOD 1.2)"
        )
    return Schedule.for_backbone(backbone, num_steps)


# -- conditioning ---------------------------------------------------------------------------
@dataclass
class SvdConditioning:
    """What conditions the video UNet on a window's first frame.

    image_embeds: [1, 1, D] CLIP image embedding (cross-attention context).
    latent: [1, 4, h, w] unscaled VAE latent (mode) of the noise-augmented first frame.
    time_ids: [1, 3] (fps_id, motion_bucket_id, cond_aug).
    guidance: [F] per-frame guidance scales; halves: 2 with guidance ([uncond; cond]), else 1.
    """

    image_embeds: torch.Tensor
    latent: torch.Tensor
    time_ids: torch.Tensor
    guidance: torch.Tensor
    halves: int = 2

    def batch(
        self, videos: int, num_frames: int, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """UNet inputs for ``videos`` samples per CFG half, uncond (zeros) first.

        Returns context [halves * videos, 1, D], concat latents
        [halves * videos, F, 4, h, w] and added time ids [halves * videos, 3].
        """
        emb = self.image_embeds.expand(videos, -1, -1)
        lat = self.latent[:, None].expand(videos, num_frames, -1, -1, -1)
        ids = self.time_ids.expand(videos, -1)
        if self.halves == 2:
            emb = torch.cat([torch.zeros_like(emb), emb])
            lat = torch.cat([torch.zeros_like(lat), lat])
            ids = torch.cat([ids, ids])
        return emb.to(dtype), lat.to(dtype), ids.to(dtype)


def added_time_ids(fps_id: int, motion_bucket_id: int, cond_aug: float) -> torch.Tensor:
    """[1, 3] micro-conditioning ids as the UNet receives them (METHOD 1.2: 14, 127, 0.02).

    diffusers' pipeline takes ``fps`` and passes fps - 1; the reference passes fps_id as is.
    """
    return torch.tensor([[float(fps_id), float(motion_bucket_id), float(cond_aug)]])


def guidance_scales(num_frames: int, first: float, last: float) -> torch.Tensor:
    """Per-frame guidance [F]: linspace(first, last) (METHOD 1.2: LinearPredictionGuider)."""
    return torch.linspace(first, last, num_frames)


def _gaussian_taps(size: int, sigma: float, device) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    k = torch.exp(-(x**2) / (2 * sigma**2))
    return (k / k.sum()).float()


def resize_antialiased(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize [N, C, H, W] to ``size`` as the reference's CLIP preprocessing does.

    A Gaussian blur with sigma = max((factor - 1)/2, 0.001) per axis (kernel int(4 sigma),
    at least 3, odd; reflect borders), then bicubic interpolation with align_corners=True.
    """
    h, w = x.shape[-2:]
    out = x
    for axis, factor in ((-2, h / size[0]), (-1, w / size[1])):
        sigma = max((factor - 1.0) / 2.0, 0.001)
        k = int(max(2.0 * 2 * sigma, 3))
        k += 1 - k % 2
        taps = _gaussian_taps(k, sigma, x.device).to(x.dtype)
        r = k // 2
        n, c = out.shape[:2]
        flat = out.reshape(n * c, 1, *out.shape[-2:])
        if axis == -2:
            flat = F.pad(flat, (0, 0, r, r), mode="reflect")
            flat = F.conv2d(flat, taps.view(1, 1, -1, 1))
        else:
            flat = F.pad(flat, (r, r, 0, 0), mode="reflect")
            flat = F.conv2d(flat, taps.view(1, 1, 1, -1))
        out = flat.reshape(n, c, *flat.shape[-2:])
    return F.interpolate(out, size=size, mode="bicubic", align_corners=True)


def clip_image_embedding(backbone: Backbone, image: torch.Tensor) -> torch.Tensor:
    """CLIP image embedding [1, 1, D] of ``image`` [1, 3, H, W] in [-1, 1] (not noise-augmented)."""
    encoder = backbone.image_encoder
    size = int(encoder.config.image_size)
    extractor = backbone.feature_extractor
    mean = torch.tensor(getattr(extractor, "image_mean", None) or CLIP_MEAN, device=image.device)
    std = torch.tensor(getattr(extractor, "image_std", None) or CLIP_STD, device=image.device)
    x = resize_antialiased(image.float(), (size, size))
    x = ((x + 1) / 2 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    dtype = next(encoder.parameters()).dtype
    return encoder(pixel_values=x.to(dtype)).image_embeds.float()[:, None]


def condition(
    backbone: Backbone,
    first_frame: torch.Tensor,
    num_frames: int,
    cfg: SegmentConfig,
    generator: torch.Generator | None,
) -> SvdConditioning:
    """Conditioning on ``first_frame`` [1, 3, H, W] in [0, 1] (METHOD 1.2, the window's frame 1)."""
    scfg = cfg.svd
    x = first_frame.to(backbone.device, torch.float32) * 2 - 1
    embeds = clip_image_embedding(backbone, x)
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    vae_dtype = next(backbone.vae.parameters()).dtype
    noisy = (x + scfg.cond_aug * noise).to(vae_dtype)
    latent = backbone.vae.encode(noisy).latent_dist.mode().float()
    guidance = guidance_scales(num_frames, scfg.min_guidance_scale, cfg.features.guidance_scale).to(
        backbone.device
    )
    halves = 1 if bool((guidance == 1.0).all()) else 2
    ids = added_time_ids(scfg.fps_id, scfg.motion_bucket_id, scfg.cond_aug).to(backbone.device)
    return SvdConditioning(embeds, latent, ids, guidance, halves)


# -- sampler --------------------------------------------------------------------------------
def guided_denoised(
    backbone: Backbone,
    z: torch.Tensor,
    sigma: float,
    timestep: float,
    cond: SvdConditioning,
) -> torch.Tensor:
    """Guided denoised estimate D(z) for latents z [n, F, 4, h, w] at ``sigma``: one UNet call.

    v-prediction with EDM scaling; the guidance mixes the two CFG halves per frame.
    """
    n, frames = z.shape[:2]
    c_in = 1.0 / math.sqrt(sigma**2 + 1)
    c_skip = 1.0 / (sigma**2 + 1)
    c_out = -sigma / math.sqrt(sigma**2 + 1)
    emb, concat, ids = cond.batch(n, frames, backbone.dtype)
    x = (z * c_in).to(backbone.dtype).repeat(cond.halves, 1, 1, 1, 1)
    x = torch.cat([x, concat], dim=2)
    t = torch.tensor(float(timestep), device=x.device)
    out = backbone.unet(x, t, encoder_hidden_states=emb, added_time_ids=ids).sample.float()
    if cond.halves == 2:
        out_u, out_c = out.chunk(2)
        scale = cond.guidance.view(1, -1, 1, 1, 1)
        out = out_u + scale * (out_c - out_u)
    return c_skip * z + c_out * out


def euler_step(z: torch.Tensor, denoised: torch.Tensor, sigma: float, sigma_next: float):
    """One Euler step of the EDM ODE (s_churn = 0): z + (sigma' - sigma) * (z - D) / sigma."""
    return z + (sigma_next - sigma) * (z - denoised) / sigma


# -- stage 1 --------------------------------------------------------------------------------
@dataclass
class SvdFeatureResult(FeatureResult):
    """:class:`FeatureResult` plus the window's conditioning, which stage 3 reuses."""

    conditioning: SvdConditioning | None = None


def _window_images(backbone: Backbone, window, cfg: SegmentConfig):
    from .video import prepare_frames

    frames = getattr(window, "frames", window)
    if not isinstance(frames, torch.Tensor) or frames.ndim != 4 or frames.shape[1] != 3:
        raise ConfigError("window must be a Window or a frame tensor [B, 3, H, W]")
    if frames.is_floating_point():
        frames = (frames.clamp(0, 1) * 255).round().to(torch.uint8)
    fcfg = cfg.features
    images, geometry = prepare_frames(
        frames, fcfg.size_policy, backbone.size_multiple, fcfg.max_side, fcfg.resize_filter
    )
    return images.to(backbone.device), geometry


def _check_backbone(backbone: Backbone) -> None:
    if backbone.kind != "svd":
        raise ConfigError(f"the SVD path needs an SVD backbone, not {backbone.kind!r}")


@torch.inference_mode()
def extract(
    backbone: Backbone,
    window,
    cfg: SegmentConfig | None = None,
    extra_blocks: Iterable[int] = (),
    keep_cache: bool | None = None,
) -> SvdFeatureResult:
    """Stage 1 with the SVD backbone on one window (see :func:`zsvss_nb.features.extract`).

    ``window``: a Window or frames [F, 3, H, W] (uint8, or float in [0, 1]); the F frames are
    one video for the UNet. Features: mean of the spatial self-attention q of ``cfg.features
    .blocks`` at the feature step, cond half, normalised per token. With ``keep_cache`` (default:
    when stage 3 is modulation) the temporal self-attention q/k of the injected blocks and the
    latent after every step are kept for :func:`modulate`.
    """
    _check_backbone(backbone)
    cfg = cfg or SegmentConfig.paper_svd()
    if cfg.preset in ("paper-sd", "paper-compat"):
        log.warning(
            "preset %s holds SD 2.1 settings; the SVD paper settings are paper-svd", cfg.preset
        )
    fcfg = cfg.features
    seconds: dict[str, float] = {}
    tic = time.perf_counter()
    images, geometry = _window_images(backbone, window, cfg)
    num_frames = images.shape[0]
    schedule = svd_schedule(backbone, fcfg.num_inference_steps)
    gen = torch.Generator(device=backbone.device).manual_seed(fcfg.seed)
    # one generator per window (METHOD 1.2), drawn in the reference's order: posterior
    # sample, the conditioning frame's noise, then the noise of the forward process
    z0 = backbone.encode(images, gen, sample=fcfg.sample_posterior).float()
    cond = condition(backbone, images[:1], num_frames, cfg, gen)
    eps = torch.randn(z0.shape, generator=gen, device=z0.device, dtype=z0.dtype)
    sigma = float(schedule.sigmas[fcfg.start_step])
    z_start = z0 + sigma * eps
    seconds["encode"] = time.perf_counter() - tic

    keep = cfg.upsample.method == "modulation" if keep_cache is None else keep_cache
    feature_blocks = sorted({*fcfg.blocks, fcfg.refine_block, *extra_blocks})
    capture: dict[tuple[int, str, str], set[int]] = {
        (b, "attn1", "q"): {fcfg.feature_step} for b in feature_blocks
    }
    steps = set(range(fcfg.start_step, fcfg.num_inference_steps))
    inject = keep and cfg.upsample.inject
    if inject:
        for b in cfg.upsample.injected_blocks:
            for kind in ("q", "k"):
                capture.setdefault((b, "tattn1", kind), set()).update(steps)
    layers = ("attn1", "tattn1") if inject else ("attn1",)

    tic = time.perf_counter()
    latents: dict[int, torch.Tensor] = {}
    z = z_start[None]
    with AttentionController(backbone.unet, sorted({k[0] for k in capture}), layers) as ctl:
        ctl.plan.capture = {k: frozenset(v) for k, v in capture.items()}
        ctl.plan.halves = cond.halves
        for i in range(fcfg.start_step, fcfg.num_inference_steps):
            ctl.plan.step = i
            s, s_next = float(schedule.sigmas[i]), float(schedule.sigmas[i + 1])
            den = guided_denoised(backbone, z, s, float(schedule.timesteps[i]), cond)
            z = euler_step(z, den, s, s_next)
            if keep:
                latents[i] = z[0]
        stored = ctl.stored
    seconds["feature_pass"] = time.perf_counter() - tic

    H, W = images.shape[-2:]
    block_features = {}
    for b in feature_blocks:
        q = stored[(fcfg.feature_step, b, "attn1", "q")][-1].float()  # cond half (METHOD 1.2)
        st = block_stride(b)
        block_features[b] = q.unflatten(1, (H // st, W // st))
    feats = aggregate([block_features[b] for b in fcfg.blocks], fcfg.aggregation)
    cache = {}
    if inject:
        cache = {k: v for k, v in stored.items() if k[2] == "tattn1"}
    return SvdFeatureResult(
        features=normalise_tokens(feats, fcfg.normalisation),
        refine_features=block_features[fcfg.refine_block],
        block_features=block_features,
        images=images,
        geometry=geometry,
        z_start=z_start,
        latents=latents,
        cache=cache,
        schedule=schedule,
        sigma_start=sigma,
        unet_evals=(fcfg.num_inference_steps - fcfg.start_step) * cond.halves * num_frames,
        seconds=seconds,
        conditioning=cond,
    )


# -- decoding -------------------------------------------------------------------------------
@torch.inference_mode()
def decode(
    backbone: Backbone,
    latents: torch.Tensor,
    frames_per_decode: int = 1,
    dtype: torch.dtype = torch.float32,
    batch: int = 16,
) -> torch.Tensor:
    """Decode scaled latents [N, 4, h, w] (consecutive frames) to images [N, 3, 8h, 8w] in [0, 1].

    ``frames_per_decode``: how many consecutive frames the temporal decoder sees together;
    1 is the reference (decoding_t = 1: every frame alone; computed ``batch`` frames per call,
    which gives the same result), 0 the whole sequence at once.
    """
    scale = float(getattr(backbone.vae.config, "scaling_factor", SVD_LATENT_SCALE))
    z = (latents / scale).to(backbone.device, torch.float32)
    n = z.shape[0]
    k = n if frames_per_decode == 0 else frames_per_decode
    if k == 1:
        groups = [(c, 1) for c in z.split(max(1, batch))]
    else:
        groups = [(c, c.shape[0]) for c in z.split(k)]
    out = []
    for chunk, frames in groups:
        if dtype == torch.float32:
            image = backbone.vae.decode(chunk, num_frames=frames).sample
        else:
            with torch.autocast(backbone.device.type, dtype=dtype):
                image = backbone.vae.decode(chunk, num_frames=frames).sample
        out.append(image.float())
    return ((torch.cat(out) + 1) / 2).clamp(0, 1)


# -- stage 3 --------------------------------------------------------------------------------
def _check_steps(cfg: SegmentConfig) -> None:
    start, end = cfg.features.start_step, cfg.features.num_inference_steps
    for name in ("modulation_steps", "blend_steps"):
        bad = [s for s in getattr(cfg.upsample, name) if not start <= s < end]
        if bad:
            raise ConfigError(
                f"upsample.{name} {bad} lie outside the denoising steps [{start}, {end})"
            )
    bad = [b for b in cfg.upsample.modulated_blocks if not 3 <= b <= 11]
    if bad:
        raise ConfigError(f"modulated_blocks {bad} have no attention")


@torch.inference_mode()
def modulate(
    backbone: Backbone,
    feats: SvdFeatureResult,
    coarse: torch.Tensor,
    cfg: SegmentConfig | None = None,
    classes: torch.Tensor | None = None,
):
    """Masked-modulation upsampling with the SVD backbone of coarse labels [F, h, w].

    One modulated pass per (class, sign) over the whole window (the video UNet couples the
    frames), ``upsample.modulation_batch`` frames' worth of such videos per UNet call (0: all at
    once; the "reference" execution: one per call). Returns
    :class:`zsvss_nb.upsample.UpsampleResult` with labels at the original size.
    """
    from .upsample import (
        UpsampleResult,
        _restore_argmax,
        difference_maps,
        filter_weights,
        one_hot_maps,
    )

    _check_backbone(backbone)
    cfg = cfg or SegmentConfig.paper_svd()
    ucfg, scfg = cfg.upsample, cfg.svd
    cond = getattr(feats, "conditioning", None)
    if cond is None or feats.z_start is None or (ucfg.inject and not feats.cache):
        raise ConfigError(
            "features were extracted without caches: call svd.extract(keep_cache=True)"
        )
    _check_steps(cfg)
    seconds = {"modulation_unet": 0.0, "decode": 0.0, "difference": 0.0}
    device = backbone.device
    coarse = coarse.to(device)
    classes = torch.unique(coarse) if classes is None else classes.to(device)
    masks = one_hot_maps(coarse, classes)  # [K, F, h, w]
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
    with AttentionController(backbone.unet, blocks, layers) as ctl:
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
    dtype = torch.float32 if reference else getattr(torch, ucfg.decode_dtype)
    per_frame = scfg.decode_frames == 1
    decode_batch = getattr(ucfg, "decode_batch", 0) or 2 * num_frames  # frames per VAE call
    # with frame-by-frame decoding and blending after the last step, a frame whose mask is
    # empty decodes the unmodulated latent in both passes: its D is exactly 0
    exact_skip = per_frame and ucfg.skip_empty and not reference and (end - 1) in ucfg.blend_steps
    vae_decodes = 0
    if reference:  # the reference decodes the unmodulated pass too, though nothing uses it
        tic = time.perf_counter()
        decode(backbone, feats.latents[end - 1], scfg.decode_frames, dtype)
        vae_decodes += num_frames
        seconds["decode"] += time.perf_counter() - tic
    for j, k in enumerate(run_k.tolist()):
        plus, minus = finals[2 * j], finals[2 * j + 1]
        sel = present[k].nonzero()[:, 0] if exact_skip else torch.arange(num_frames, device=device)
        if sel.numel() == 0:
            continue
        tic = time.perf_counter()
        if per_frame:
            images = decode(
                backbone, torch.cat([plus[sel], minus[sel]]), 1, dtype, batch=decode_batch
            )
            img_plus, img_minus = images.chunk(2)
        else:
            img_plus = decode(backbone, plus, scfg.decode_frames, dtype)[sel]
            img_minus = decode(backbone, minus, scfg.decode_frames, dtype)[sel]
        vae_decodes += 2 * (sel.numel() if per_frame else num_frames)
        seconds["decode"] += time.perf_counter() - tic
        tic = time.perf_counter()
        diff[k, sel] = difference_maps(img_plus, img_minus, ucfg)
        seconds["difference"] += time.perf_counter() - tic
    tic = time.perf_counter()
    diff = diff / (diff.amax(dim=(-2, -1), keepdim=True) + 1e-5)  # METHOD 1.7.4
    up = filter_weights(masks, (H, W), ucfg.paper_compat)
    filtered = diff * (up + ucfg.outside_weight * (1 - up))  # METHOD 1.7.5
    fallback = (
        None
        if ucfg.paper_compat
        else F.interpolate(coarse[:, None].float(), size=(H, W), mode="nearest")[:, 0].long()
    )
    raw_labels = _restore_argmax(diff, classes, feats.geometry, fallback)
    filt_labels = _restore_argmax(filtered, classes, feats.geometry, fallback)
    seconds["difference"] += time.perf_counter() - tic
    return UpsampleResult(
        labels=filt_labels if ucfg.output == "filtered" else raw_labels,
        classes=classes,
        raw_labels=raw_labels,
        diff=diff,
        unet_evals=unet_evals,
        vae_decodes=vae_decodes,
        seconds=seconds,
    )


# -- loading --------------------------------------------------------------------------------
def _freeze(*modules: nn.Module | None) -> None:
    for module in modules:
        if module is not None:
            module.eval()
            module.requires_grad_(False)


def _assemble(unet, vae, image_encoder, feature_extractor, device, dtype, identity, sched=None):
    _freeze(unet, vae, image_encoder)
    unet.to(device=device)
    if dtype != torch.float32:
        unet.to(dtype=dtype)
    vae.to(device=device)  # METHOD 1.8: the VAE stays float32
    image_encoder.to(device=device)
    return Backbone(
        "svd",
        torch.device(device),
        dtype,
        {"kind": "svd", **identity},
        unet=unet,
        vae=vae,
        image_encoder=image_encoder,
        feature_extractor=feature_extractor,
        scheduler_config=dict(sched or SVD_SCHEDULER_CONFIG),
    )


def build_svd(
    unet_config: Mapping[str, Any],
    vae_config: Mapping[str, Any],
    image_config: Mapping[str, Any],
    seed: int | None,
) -> tuple[nn.Module, nn.Module, nn.Module]:
    """SVD-architecture UNet, temporal-decoder VAE and CLIP vision tower with seeded weights."""
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        unet = UNetSpatioTemporalConditionModel(**unet_config)
        vae = AutoencoderKLTemporalDecoder(**vae_config)
        image = CLIPVisionModelWithProjection(CLIPVisionConfig(**image_config))
    return unet, vae, image


def tiny_svd_backbone(
    device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> Backbone:
    """ "tiny-svd": seeded random weights with SVD img2vid's block structure (module doc)."""
    device = torch.device(device) if device is not None else default_device()
    unet, vae, image = build_svd(TINY_SVD_UNET, TINY_SVD_VAE, TINY_SVD_IMAGE, TINY_SVD_SEED)
    return _assemble(
        unet, vae, image, None, device, dtype, {"name": "tiny-svd", "source": "built-in"}
    )


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _is_svd_folder(folder: Path) -> bool:
    index = _read_json(folder / "model_index.json") or {}
    if index.get("_class_name") == SVD_PIPELINE:
        return True
    unet = _read_json(folder / "unet" / "config.json") or {}
    return unet.get("_class_name") == SVD_UNET_CLASS


def _safetensors_header(path: Path) -> tuple[list[str], dict[str, str]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return list(fh.keys()), dict(fh.metadata() or {})


def _is_sgm_svd(keys: Iterable[str]) -> bool:
    keys = list(keys)
    return any(k.startswith("model.diffusion_model.") for k in keys) and any(
        ".time_stack." in k or k.startswith("conditioner.embedders.") for k in keys
    )


def is_svd_spec(name: str) -> bool:
    """Whether ``name`` names an SVD model, without network access: "tiny-svd", an SVD diffusers
    folder, an SVD ``.safetensors`` file (zsvss or original sgm layout), or a repo id whose
    cached model_index.json names the SVD pipeline or, if not cached, whose name contains
    "video-diffusion" or "svd" (e.g. stabilityai/stable-video-diffusion-img2vid)."""
    if name == "tiny-svd":
        return True
    path = Path(name).expanduser()
    if path.is_dir():
        return _is_svd_folder(path)
    if path.is_file():
        if path.suffix != ".safetensors" or path.stat().st_size == 0:
            return False
        try:
            keys, meta = _safetensors_header(path)
        except Exception:  # not a readable safetensors file: the SD loader reports it
            return False
        return meta.get("zsvss_kind") == "svd" or _is_sgm_svd(keys)
    if "/" in name and not name.startswith((".", "/", "~")) and name.count("/") == 1:
        from huggingface_hub import try_to_load_from_cache

        try:
            cached = try_to_load_from_cache(name, "model_index.json")
        except Exception:  # not a valid repo id: the SD loader reports it
            return False
        if isinstance(cached, str):
            return (_read_json(Path(cached)) or {}).get("_class_name") == SVD_PIPELINE
        repo = name.split("/")[1].lower()
        return "video-diffusion" in repo or "svd" in repo
    return False


def _from_pretrained(cls, folder: Path, sub: str):
    try:
        return cls.from_pretrained(folder, subfolder=sub)
    except OSError:
        return cls.from_pretrained(folder, subfolder=sub, variant="fp16")


def _scheduler_config(folder: Path) -> dict[str, Any]:
    cfg = dict(SVD_SCHEDULER_CONFIG)
    stored = _read_json(folder / "scheduler" / "scheduler_config.json") or {}
    cfg.update({k: v for k, v in stored.items() if k in SVD_SCHEDULER_CONFIG})
    if cfg["prediction_type"] != "v_prediction":
        raise ConfigError(
            f"{folder}: scheduler prediction_type {cfg['prediction_type']!r}; SVD img2vid is "
            "a v-prediction model (METHOD 1.2)"
        )
    return cfg


def _load_svd_folder(folder: Path, device, dtype) -> Backbone:
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    missing = missing_parts(folder, SVD_COMPONENTS)
    if missing:
        raise IncompleteModelError(
            f"model folder {folder} lacks {', '.join(missing)}: a diffusers Stable Video "
            f"Diffusion folder needs {', '.join(SVD_COMPONENTS)} (feature_extractor optional)"
        )
    try:
        unet = _from_pretrained(UNetSpatioTemporalConditionModel, folder, "unet")
        vae = _from_pretrained(AutoencoderKLTemporalDecoder, folder, "vae")
        image = _from_pretrained(CLIPVisionModelWithProjection, folder, "image_encoder")
        extractor = None
        if (folder / "feature_extractor").is_dir():
            extractor = CLIPImageProcessor.from_pretrained(folder, subfolder="feature_extractor")
    except (OSError, ValueError, KeyError) as err:
        raise IncompleteModelError(f"SVD model folder {folder} could not be loaded: {err}") from err
    return _assemble(
        unet,
        vae,
        image,
        extractor,
        device,
        dtype,
        folder_identity(folder),
        _scheduler_config(folder),
    )


def _load_svd_file(path: Path, device, dtype) -> Backbone:
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
    from safetensors.torch import load_file
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    keys, meta = _safetensors_header(path)
    if meta.get("zsvss_kind") != "svd":
        if _is_sgm_svd(keys):
            raise IncompleteModelError(
                f"checkpoint {path} is an original (sgm) Stable Video Diffusion file: diffusers "
                f"has no single-file loader for SVD and zsvss does not convert one offline; load "
                f"the diffusers folder of the same model (unet/, vae/, image_encoder/), e.g. a "
                f"local copy of stabilityai/stable-video-diffusion-img2vid"
            )
        raise IncompleteModelError(f"checkpoint {path} is not a zsvss SVD single file")
    tensors = load_file(str(path))
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for prefix in ("unet", "vae", "image_encoder"):
        if f"{prefix}_config" not in meta:
            raise IncompleteModelError(f"checkpoint {path} lacks the {prefix} component")
        parts[prefix] = {
            k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")
        }
    unet = UNetSpatioTemporalConditionModel.from_config(json.loads(meta["unet_config"]))
    vae = AutoencoderKLTemporalDecoder.from_config(json.loads(meta["vae_config"]))
    image = CLIPVisionModelWithProjection(
        CLIPVisionConfig(**json.loads(meta["image_encoder_config"]))
    )
    for module, prefix in ((unet, "unet"), (vae, "vae"), (image, "image_encoder")):
        result = module.load_state_dict(parts[prefix], strict=False)
        missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
        if missing:
            raise IncompleteModelError(
                f"checkpoint {path}: {prefix} lacks {len(missing)} tensors (e.g. {missing[0]})"
            )
    extractor = None
    if meta.get("feature_extractor"):
        extractor = CLIPImageProcessor(**json.loads(meta["feature_extractor"]))
    sched = dict(SVD_SCHEDULER_CONFIG)
    sched.update(json.loads(meta.get("scheduler_config", "{}")))
    identity = file_identity(path, meta.get("name", path.stem))
    return _assemble(unet, vae, image, extractor, device, dtype, identity, sched)


def _load_svd_repo(repo_id: str, device, dtype) -> Backbone:
    from huggingface_hub import snapshot_download

    try:
        folder = Path(
            snapshot_download(
                repo_id,
                allow_patterns=[
                    f"{p}/*" for p in (*SVD_COMPONENTS, "feature_extractor", "scheduler")
                ]
                + ["model_index.json"],
                ignore_patterns=["*.fp16.*", "*.bin", "*.ckpt"],
            )
        )
    except Exception as err:
        raise ModelNotFoundError(
            f"SVD model {repo_id!r} could not be fetched ({str(err).splitlines()[0]}); provide a "
            "local diffusers folder with --model PATH"
        ) from err
    backbone = _load_svd_folder(folder, device, dtype)
    backbone.identity.update({"name": repo_id, "repo_id": repo_id})
    return backbone


def load_svd(
    spec: str | os.PathLike,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Backbone:
    """Load an SVD img2vid backbone: "tiny-svd", a diffusers folder, a zsvss single file, a repo id.

    ``dtype`` is the UNet's compute dtype; the VAE and the CLIP image encoder stay float32.
    """
    device = torch.device(device) if device is not None else default_device()
    name = str(spec)
    if name == "tiny-svd":
        return tiny_svd_backbone(device, dtype)
    path = Path(name).expanduser()
    if path.is_dir():
        return _load_svd_folder(path, device, dtype)
    if path.is_file():
        return _load_svd_file(path, device, dtype)
    if "/" in name and name.count("/") == 1 and not name.startswith((".", "/", "~")):
        return _load_svd_repo(name, device, dtype)
    raise ModelNotFoundError(f"SVD model {name!r}: no such folder, file or repository id")


def save_svd_folder(backbone: Backbone, folder: str | Path) -> Path:
    """Write an SVD backbone as a diffusers folder (unet, vae, image_encoder, scheduler, index)."""
    _check_backbone(backbone)
    folder = Path(folder)
    backbone.unet.save_pretrained(folder / "unet")
    backbone.vae.save_pretrained(folder / "vae")
    backbone.image_encoder.save_pretrained(folder / "image_encoder")
    if backbone.feature_extractor is not None:
        backbone.feature_extractor.save_pretrained(folder / "feature_extractor")
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(
        json.dumps({"_class_name": "EulerDiscreteScheduler", **backbone.scheduler_config})
    )
    (folder / "model_index.json").write_text(json.dumps({"_class_name": SVD_PIPELINE}))
    return folder


def save_svd_single_file(backbone: Backbone, path: str | Path) -> Path:
    """Write an SVD backbone as one ``.safetensors`` file (components prefixed, configs in
    metadata); :func:`load_svd` and ``load_backbone`` read it back."""
    from safetensors.torch import save_file

    _check_backbone(backbone)
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    meta = {
        "zsvss_format": "1",
        "zsvss_kind": "svd",
        "name": backbone.name,
        "scheduler_config": json.dumps(backbone.scheduler_config),
    }
    for prefix, module in (
        ("unet", backbone.unet),
        ("vae", backbone.vae),
        ("image_encoder", backbone.image_encoder),
    ):
        for key, value in module.state_dict().items():
            tensors[f"{prefix}.{key}"] = value.detach().float().cpu().contiguous()
        config = (
            module.config.to_dict() if hasattr(module.config, "to_dict") else dict(module.config)
        )
        meta[f"{prefix}_config"] = json.dumps(config, default=str)
    if backbone.feature_extractor is not None:
        meta["feature_extractor"] = json.dumps(backbone.feature_extractor.to_dict(), default=str)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as tmp:
        tmp_path = Path(tmp.name)
    save_file(tensors, str(tmp_path), metadata=meta)
    os.replace(tmp_path, path)
    return path


# -- notebook 01: SD and SVD features side by side --------------------------------------------
@dataclass
class FeatureView:
    """One backbone's view of a window, for side-by-side figures.

    features: [B, h, w, C] clustering features; pca: [B, h, w, 3] joint-PCA colours in [0, 1];
    similarity: [B, B] mean best-match cosine similarity between frames (row frame's tokens to
    their nearest token of the column frame); query: [B, h, w] cosine similarity to one token
    of frame 0; seconds: stage-1 timings.
    """

    name: str
    kind: str
    features: torch.Tensor
    pca: torch.Tensor
    similarity: torch.Tensor
    query: torch.Tensor
    query_yx: tuple[int, int]
    seconds: dict[str, float] = field(default_factory=dict)


def cross_frame_similarity(feats: torch.Tensor) -> torch.Tensor:
    """[B, B]: for frames i, j the mean over tokens of frame i of the max cosine similarity to
    the tokens of frame j, for ``feats`` [B, h, w, C]. 1 on the diagonal; high off the diagonal
    means every token finds a close match in the other frame (what tracking relies on)."""
    if feats.ndim != 4:
        raise ConfigError(f"feats {list(feats.shape)}: expected [B, h, w, C]")
    unit = F.normalize(feats.float().flatten(1, 2), dim=-1)  # [B, N, C]
    rows = [
        torch.einsum("nc,bmc->bnm", unit[i], unit).amax(-1).mean(-1) for i in range(unit.shape[0])
    ]
    return torch.stack(rows)


def show_similarity_matrices(features: Mapping[str, torch.Tensor], vmin: float = 0.0):
    """Heat maps of :func:`cross_frame_similarity` [B, B], one per model, side by side.

    ``features`` maps a name to [B, h, w, C]; returns a pyplot-free matplotlib Figure (as
    :mod:`zsvss_nb.viz` does), which a notebook shows and ``viz.save_figure`` exports.
    """
    from matplotlib.figure import Figure

    if not features:
        raise ConfigError("features holds no model")
    fig = Figure(figsize=(3.0 * len(features) + 1.0, 3.0), layout="constrained")
    axes = fig.subplots(1, len(features), squeeze=False)[0]
    image = None
    for ax, (name, feats) in zip(axes, features.items(), strict=True):
        sim = cross_frame_similarity(feats).numpy()
        image = ax.imshow(sim, vmin=vmin, vmax=1.0, cmap="viridis")
        ax.set_title(
            f"{name}: {sim[~torch.eye(len(sim), dtype=torch.bool).numpy()].mean():.3f}"
            if len(sim) > 1
            else name,
            fontsize=9,
        )
        ax.set_xlabel("frame j")
        ax.set_ylabel("frame i")
        ax.set_xticks(range(len(sim)))
        ax.set_yticks(range(len(sim)))
    fig.colorbar(image, ax=list(axes), shrink=0.85, label="mean best-match cosine, i to j")
    return fig


def compare_features(
    backbones: Mapping[str, Backbone],
    frames: torch.Tensor,
    configs: Mapping[str, SegmentConfig] | None = None,
    max_side: int | None = None,
    query: tuple[float, float] = (0.5, 0.5),
) -> dict[str, FeatureView]:
    """Stage-1 features of the same frames [B, 3, H, W] from several backbones (notebook 01).

    ``configs`` per name default to the paper preset of each backbone kind (paper_sd,
    paper_svd); ``max_side`` downsizes for speed. ``query`` (y, x) in [0, 1] picks the token of
    frame 0 whose similarity map is returned. Runs without the stage-3 caches.
    """
    from .features import extract as extract_any
    from .viz import cosine_similarity_map, feature_pca_rgb

    out: dict[str, FeatureView] = {}
    for name, backbone in backbones.items():
        cfg = (configs or {}).get(name)
        if cfg is None:
            cfg = SegmentConfig.paper_svd() if backbone.kind == "svd" else SegmentConfig.paper_sd()
        if max_side is not None:
            cfg = cfg.replace(max_side=max_side)
        res = extract_any(backbone, frames, cfg, keep_cache=False)
        feats = res.features
        h, w = feats.shape[1:3]
        y, x = min(int(query[0] * h), h - 1), min(int(query[1] * w), w - 1)
        out[name] = FeatureView(
            name=name,
            kind=backbone.kind,
            features=feats.cpu(),
            pca=feature_pca_rgb(feats).cpu(),
            similarity=cross_frame_similarity(feats).cpu(),
            query=cosine_similarity_map(feats, 0, y, x).cpu(),
            query_yx=(y, x),
            seconds=dict(res.seconds),
        )
    return out


__all__ = [
    "SVD_SCHEDULER_CONFIG",
    "SvdConditioning",
    "SvdFeatureResult",
    "FeatureView",
    "added_time_ids",
    "build_svd",
    "clip_image_embedding",
    "compare_features",
    "condition",
    "cross_frame_similarity",
    "decode",
    "edm_sigmas",
    "euler_step",
    "extract",
    "guidance_scales",
    "guided_denoised",
    "is_svd_spec",
    "load_svd",
    "modulate",
    "resize_antialiased",
    "save_svd_folder",
    "save_svd_single_file",
    "show_similarity_matrices",
    "svd_schedule",
    "tiny_svd_backbone",
]
