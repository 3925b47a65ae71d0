"""Stage 1 with Stable Video Diffusion (img2vid): EDM schedule, conditioning, the v-sampler.

The paper's second variant (METHOD.md 1.2, 1.3, 1.8). Per window of F frames:

- noise: z_{t*} = z0 + sigma_17 * eps (EDM sigmas 0.002-700, rho 7, 25 steps; sigma_17 = 1.2732),
  one draw per window with the seed reset per window;
- conditioning on the window's first frame: its CLIP image embedding (cross-attention) and the
  unscaled VAE latent of the frame plus ``cond_aug`` noise (concatenated to the UNet input),
  added time ids (fps_id 14, motion bucket 127, cond_aug 0.02); uncond = zero embedding and
  zero latent; guidance per frame, linspace(1.0, 2.5) over the window;
- sampler: Euler on the EDM sigmas with v-prediction (c_skip = 1/(s^2+1),
  c_out = -s/sqrt(s^2+1), c_in = 1/sqrt(s^2+1), c_noise = ln(s)/4), the UNet sees all frames of
  the window at once (temporal layers), so a sample of the batch is a whole video;
- features: spatial self-attention q of decoder blocks 6-8 at the last step (cond half).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ...config import SegmentConfig
from ...errors import ConfigError
from ...kernels.frames import Geometry
from ...kernels.ops import gaussian_kernel1d
from ..base import DiffusionFeatureResult
from ..denoise import StepValues, feature_capture, feature_pass
from ..schedule import Schedule, query_features
from ..vae import vae_moments

if TYPE_CHECKING:
    from .model import StableVideoDiffusion

log = logging.getLogger(__name__)

# OpenAI CLIP normalisation, used when a model has no feature_extractor/ folder
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)


CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


EDM_SIGMA_MIN = 0.002  # METHOD 1.2: EDM discretisation of the reference (sgm svd.yaml)


EDM_SIGMA_MAX = 700.0


EDM_RHO = 7.0


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


def svd_schedule(backbone: StableVideoDiffusion, num_steps: int) -> Schedule:
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
        taps = gaussian_kernel1d(k, sigma, x.device, x.dtype)
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


def clip_image_embedding(backbone: StableVideoDiffusion, image: torch.Tensor) -> torch.Tensor:
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
    backbone: StableVideoDiffusion,
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
    # the posterior's mode is its mean: the first half of the moments
    latent = vae_moments(backbone.vae, noisy, cfg.features.vae_tile).chunk(2, dim=1)[0].float()
    guidance = guidance_scales(num_frames, scfg.min_guidance_scale, cfg.features.guidance_scale).to(
        backbone.device
    )
    halves = 1 if bool((guidance == 1.0).all()) else 2
    ids = added_time_ids(scfg.fps_id, scfg.motion_bucket_id, scfg.cond_aug).to(backbone.device)
    return SvdConditioning(embeds, latent, ids, guidance, halves)


# -- sampler --------------------------------------------------------------------------------
def guided_denoised(
    backbone: StableVideoDiffusion,
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
    t = torch.full((), float(timestep), device=x.device)  # a fill, no host-to-device copy
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
class SvdFeatureResult(DiffusionFeatureResult):
    """:class:`FeatureResult` plus the window's conditioning, which stage 3 reuses."""

    conditioning: SvdConditioning | None = None


@torch.inference_mode()
def extract_svd(
    backbone: StableVideoDiffusion,
    images: torch.Tensor,
    geometry: Geometry,
    cfg: SegmentConfig,
    extra_blocks: Iterable[int] = (),
    keep_cache: bool | None = None,
    started: float | None = None,
) -> SvdFeatureResult:
    """Stage 1 with the SVD backbone on prepared frames [F, 3, H', W'] in [0, 1].

    The F frames are one video for the UNet. Features: mean of the spatial self-attention q of
    ``cfg.features.blocks`` at the feature step, cond half, normalised per token. With
    ``keep_cache`` (default: when stage 3 is modulation) the temporal self-attention q/k of the
    injected blocks and the latent after every step are kept for the modulated passes.
    """
    if cfg.preset in ("paper-sd", "paper-compat"):
        log.warning(
            "preset %s holds SD 2.1 settings; the SVD paper settings are paper-svd", cfg.preset
        )
    fcfg = cfg.features
    seconds: dict[str, float] = {}
    tic = time.perf_counter() if started is None else started
    num_frames = images.shape[0]
    schedule = svd_schedule(backbone, fcfg.num_inference_steps)
    gen = torch.Generator(device=backbone.device).manual_seed(fcfg.seed)
    # one generator per window (METHOD 1.2), drawn in the reference's order: posterior
    # sample, the conditioning frame's noise, then the noise of the forward process
    z0 = backbone.encode(images, gen, sample=fcfg.sample_posterior, tile=fcfg.vae_tile).float()
    cond = condition(backbone, images[:1], num_frames, cfg, gen)
    eps = torch.randn(z0.shape, generator=gen, device=z0.device, dtype=z0.dtype)
    sigma = float(schedule.sigmas[fcfg.start_step])
    z_start = z0 + sigma * eps
    seconds["encode"] = time.perf_counter() - tic

    keep = cfg.upsample.method == "modulation" if keep_cache is None else keep_cache
    feature_blocks, capture = feature_capture(fcfg, extra_blocks)
    steps = set(range(fcfg.start_step, fcfg.num_inference_steps))
    inject = keep and cfg.upsample.inject
    if inject:
        for b in cfg.upsample.injected_blocks:
            for kind in ("q", "k"):
                capture.setdefault((b, "tattn1", kind), set()).update(steps)
    at = StepValues.of(schedule)

    def step(i: int, z: torch.Tensor) -> torch.Tensor:
        den = guided_denoised(backbone, z, at.sigmas[i], at.timesteps[i], cond)
        return euler_step(z, den, at.sigmas[i], at.sigmas[i + 1])

    tic = time.perf_counter()
    done = feature_pass(
        backbone.unet,
        backbone.device,
        cfg,
        z_start[None],
        step,
        capture,
        cond.halves,
        keep,
        layers=("attn1", "tattn1") if inject else ("attn1",),
        latent=lambda z: z[0],
    )
    seconds["feature_pass"] = time.perf_counter() - tic
    stored, last_step = done.stored, done.last_step

    cache = {}
    if inject:
        cache = {k: v for k, v in stored.items() if k[2] == "tattn1"}
    return SvdFeatureResult(
        **query_features(stored, fcfg, feature_blocks, tuple(images.shape[-2:])),
        images=images,
        geometry=geometry,
        z_start=z_start,
        latents=done.latents,
        cache=cache,
        schedule=schedule,
        sigma_start=sigma,
        unet_evals=(last_step + 1 - fcfg.start_step) * cond.halves * num_frames,
        seconds=seconds,
        conditioning=cond,
    )
