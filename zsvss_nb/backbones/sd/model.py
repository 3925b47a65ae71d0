"""Stable Diffusion (a latent-diffusion UNet with a VAE and a text encoder) as a backbone.

The paper's backbone is SD 2.1-base (METHOD 1.2, 1.8). Stage 1 lives in :mod:`.passes` and
the model-specific part of stage 3 in :mod:`.modulation`; loading in :mod:`.weights`.
"""

from __future__ import annotations

import gc
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ...config import SegmentConfig
from ...errors import ConfigError
from ..base import Backbone
from ..vae import diffusers_tiling, is_tiled, vae_encode, vae_size_advice
from .attention_maps import sd_attention_maps
from .modulation import sd_modulation_maps
from .passes import extract_sd, unet_eps

LATENT_SCALE = 0.18215  # METHOD 1.1: SD latents are scaled by 0.18215
SD_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer")

# METHOD section 7: SD 2.1-base's scheduler (scaled_linear betas, epsilon prediction).
SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "timestep_spacing": "trailing",
}


@dataclass(eq=False)
class StableDiffusion(Backbone):
    """SD 1.x/2.x: UNet, VAE (float32, METHOD 1.8) and text encoder with its tokenizer.

    ``compiled_unet`` caches ``torch.compile(unet)`` for the modulated passes
    (``upsample.torch_compile``), built on first use.
    """

    unet: nn.Module | None = None
    vae: nn.Module | None = None
    text_encoder: nn.Module | None = None
    tokenizer: Any = None
    scheduler_config: dict[str, Any] = field(default_factory=lambda: dict(SCHEDULER_CONFIG))
    compiled_unet: nn.Module | None = field(default=None, repr=False)
    _prompt_cache: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    can_modulate: ClassVar[bool] = True
    has_attention_maps: ClassVar[bool] = True

    def modules(self) -> list[nn.Module]:
        return [m for m in (self.unet, self.vae, self.text_encoder) if m is not None]

    @classmethod
    def default_config(cls) -> SegmentConfig:
        return SegmentConfig.paper_sd()

    @torch.inference_mode()
    def prompt_embedding(self, prompt: str = "") -> torch.Tensor:
        """Text-encoder hidden states for ``prompt``: [1, 77, D], cached per prompt."""
        if prompt not in self._prompt_cache:
            if self.text_encoder is None:
                raise ConfigError(
                    f"prompt {prompt!r} was not embedded before the text encoder was released; "
                    "pass it to release_text_encoder() or reload the model"
                )
            ids = self.tokenizer(
                [prompt],
                padding="max_length",
                max_length=self.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(self.device)
            hidden = self.text_encoder(ids)[0]
            self._prompt_cache[prompt] = hidden.to(self.dtype)
        return self._prompt_cache[prompt]

    def release_text_encoder(self, prompts: tuple[str, ...] = ("",)) -> None:
        """Embed ``prompts`` once, then drop the text encoder to free its memory.

        The SD pipeline only ever conditions on one fixed prompt (METHOD 1.2: ""), so OpenCLIP-H
        (1.4 GB in fp32) is dead weight after its embedding is cached. The fingerprint is taken
        first, so the model's identity in outputs does not change.
        """
        if self.text_encoder is None:
            return
        self.fingerprint()
        for prompt in prompts:
            self.prompt_embedding(prompt)
        self.text_encoder = None
        gc.collect()

    def encode(
        self,
        images: torch.Tensor,
        generator: torch.Generator | None,
        sample: bool = True,
        batch: int = 4,
        tile: int = 0,
    ) -> torch.Tensor:
        """VAE-encode images [B, 3, H, W] in [0, 1] to scaled latents [B, 4, H/8, W/8]
        (in diffusers' tiles above ``tile`` x ``tile`` latent tokens; 0 = never)."""
        return vae_encode(self.vae, images, generator, LATENT_SCALE, sample, batch, tile)

    @torch.inference_mode()
    def decode(
        self, latents: torch.Tensor, dtype: torch.dtype = torch.float32, tile: int = 0
    ) -> torch.Tensor:
        """Decode scaled latents [B, 4, h, w] to float images [B, 3, 8h, 8w] in [0, 1].

        The VAE's weights stay float32 (METHOD 1.8); a lower ``dtype`` runs it under autocast.
        Latents of more than ``tile`` x ``tile`` tokens are decoded with diffusers' tiling.
        """
        z = (latents / LATENT_SCALE).to(self.device, torch.float32)
        tiling = diffusers_tiling(self.vae, tile) if is_tiled(z.shape[-2:], tile) else nullcontext()
        with tiling:
            if dtype == torch.float32:
                image = self.vae.decode(z).sample
            else:
                with torch.autocast(self.device.type, dtype=dtype):
                    image = self.vae.decode(z).sample
        return ((image.float() + 1) / 2).clamp(0, 1)

    def size_advice(self, image_hw: tuple[int, int], cfg: SegmentConfig) -> str | None:
        return vae_size_advice(self.vae, image_hw, cfg.features.vae_tile)

    extract_features = extract_sd  # stage 1 (the contract's entry point)
    modulation_maps = sd_modulation_maps  # stage 3's model-specific part
    attention_maps = sd_attention_maps  # self-attention probabilities (diffseg-frame)

    def warm_up(self, size: int) -> None:
        """One small UNet call and decode at the workload's shapes (one-time kernel set-up)."""
        z = torch.zeros(1, 4, size // 8, size // 8, device=self.device)
        with torch.inference_mode():
            emb = self.prompt_embedding("")
            unet_eps(self, z, 1.0, 500.0, emb, 1.0)
            self.decode(z)
        self.fingerprint()  # hashed once here, not inside the first timed run
