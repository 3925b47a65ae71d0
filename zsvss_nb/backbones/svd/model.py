"""Stable Video Diffusion (img2vid) as a backbone: spatio-temporal UNet, temporal-decoder VAE,
CLIP image encoder. Stage 1 lives in :mod:`.passes`, stage 3's passes in :mod:`.modulation`,
loading in :mod:`.weights`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any, ClassVar

import torch
from torch import nn

from ...config import SegmentConfig
from ..base import Backbone
from ..vae import is_tiled, tiled_apply, vae_encode, vae_factor, vae_size_advice
from .modulation import svd_modulation_maps
from .passes import extract_svd

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


SVD_LATENT_SCALE = 0.18215  # the SVD VAE's scaling_factor (same as SD's)


SVD_COMPONENTS = ("unet", "vae", "image_encoder")


SVD_PIPELINE = "StableVideoDiffusionPipeline"


SVD_UNET_CLASS = "UNetSpatioTemporalConditionModel"


@dataclass(eq=False)
class StableVideoDiffusion(Backbone):
    """SVD img2vid: UNet (spatio-temporal), VAE with a temporal decoder, CLIP vision tower.

    ``feature_extractor`` is the optional CLIPImageProcessor (its normalisation constants).
    """

    unet: nn.Module | None = None
    vae: nn.Module | None = None
    image_encoder: nn.Module | None = None
    feature_extractor: Any = None
    scheduler_config: dict[str, Any] = field(default_factory=lambda: dict(SVD_SCHEDULER_CONFIG))

    can_modulate: ClassVar[bool] = True

    def modules(self) -> list[nn.Module]:
        return [m for m in (self.unet, self.vae, self.image_encoder) if m is not None]

    @classmethod
    def default_config(cls) -> SegmentConfig:
        return SegmentConfig.paper_svd()

    def encode(
        self,
        images: torch.Tensor,
        generator: torch.Generator | None,
        sample: bool = True,
        batch: int = 4,
        tile: int = 0,
    ) -> torch.Tensor:
        """VAE-encode images [B, 3, H, W] in [0, 1] to scaled latents [B, 4, H/8, W/8]
        (in tiles above ``tile`` x ``tile`` latent tokens; 0 = never)."""
        return vae_encode(self.vae, images, generator, SVD_LATENT_SCALE, sample, batch, tile)

    def size_advice(self, image_hw: tuple[int, int], cfg: SegmentConfig) -> str | None:
        return vae_size_advice(self.vae, image_hw, cfg.features.vae_tile)

    @torch.inference_mode()
    def decode(
        self,
        latents: torch.Tensor,
        dtype: torch.dtype = torch.float32,
        frames_per_decode: int = 1,
        batch: int = 16,
        tile: int = 0,
    ) -> torch.Tensor:
        """Decode scaled latents [N, 4, h, w] (consecutive frames) to images [N, 3, 8h, 8w].

        ``frames_per_decode``: how many consecutive frames the temporal decoder sees together;
        1 is the reference (decoding_t = 1: every frame alone; computed ``batch`` frames per call,
        which gives the same result), 0 the whole sequence at once. The VAE stays float32; a
        lower ``dtype`` runs it under autocast. Images are in [0, 1]. Latents of more than
        ``tile`` x ``tile`` tokens are decoded in overlapping tiles (:func:`tiled_apply`: the
        temporal decoder has no tiling of its own; it mixes frames per pixel, so spatial tiles
        keep its temporal behaviour).
        """
        scale = float(getattr(self.vae.config, "scaling_factor", SVD_LATENT_SCALE))
        z = (latents / scale).to(self.device, torch.float32)
        n = z.shape[0]
        k = n if frames_per_decode == 0 else frames_per_decode
        if k == 1:
            groups = [(c, 1) for c in z.split(max(1, batch))]
        else:
            groups = [(c, c.shape[0]) for c in z.split(k)]
        f = vae_factor(self.vae)
        out = []
        for chunk, frames in groups:

            def run(part: torch.Tensor, frames: int = frames) -> torch.Tensor:
                return self.vae.decode(part, num_frames=frames).sample

            call = (
                partial(tiled_apply, run, tile=tile, scale=f)
                if is_tiled(z.shape[-2:], tile)
                else run
            )
            if dtype == torch.float32:
                image = call(chunk)
            else:
                with torch.autocast(self.device.type, dtype=dtype):
                    image = call(chunk)
            out.append(image.float())
        return ((torch.cat(out) + 1) / 2).clamp(0, 1)

    extract_features = extract_svd  # stage 1 (the contract's entry point)
    modulation_maps = svd_modulation_maps  # stage 3's model-specific part
