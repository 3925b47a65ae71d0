"""Self-attention probability maps of Stable Diffusion's UNet (what DiffSeg reads).

DiffSeg (Tian et al., CVPR 2024) takes the self-attention maps of all 16 spatial transformer
layers of SD's UNet (encoder, middle and decoder: 64, 32, 16 and 8 cells a side at 512 px) from
one UNet evaluation at timestep 300 on the image's VAE latent with the unconditional prompt,
averaged over heads and over the layers of each resolution (google/diffseg: keras-cv
``diffusion_model.py`` sums each resolution's maps, ``segmentor.py`` averages heads). The
official code passes the *clean* latent with the t = 300 embedding; ``diffseg.add_noise``
noises it to t = 300 first (DDPM forward process) instead.

The q/k projections are captured with forward hooks on ``to_q``/``to_k`` of every ``attn1``
module, whatever attention processor computes the softmax; the probabilities are recomputed
from them (:func:`zsvss_nb.kernels.ops.attention_probs`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from torch import nn

from ...config import SegmentConfig
from ...errors import ConfigError
from ...kernels.frames import Geometry
from ...kernels.ops import attention_probs
from ..base import AttentionMaps

if TYPE_CHECKING:
    from .model import StableDiffusion


def self_attention_layers(unet: nn.Module) -> dict[str, nn.Module]:
    """The UNet's spatial self-attention modules (``...transformer_blocks.i.attn1``), in order."""
    return {
        name: module
        for name, module in unet.named_modules()
        if name.endswith(".attn1") and "temporal" not in name
    }


@contextmanager
def captured_qk(layers: dict[str, nn.Module]) -> Iterator[dict[str, dict[str, torch.Tensor]]]:
    """``with captured_qk(layers) as store:`` store[name] = {"q": [B, N, C], "k": [B, N, C]}."""
    store: dict[str, dict[str, torch.Tensor]] = {name: {} for name in layers}
    handles = []

    def hook(name: str, kind: str):
        def save(_module, _inputs, output):
            store[name][kind] = output.detach()

        return save

    try:
        for name, attn in layers.items():
            handles.append(attn.to_q.register_forward_hook(hook(name, "q")))
            handles.append(attn.to_k.register_forward_hook(hook(name, "k")))
        yield store
    finally:
        for handle in handles:
            handle.remove()


def latent_at(backbone: StableDiffusion, z0: torch.Tensor, cfg: SegmentConfig) -> torch.Tensor:
    """The UNet input: the clean latent (DiffSeg's code) or z0 DDPM-noised to the timestep."""
    dcfg = cfg.diffseg
    if not dcfg.add_noise:
        return z0
    from diffusers import EulerDiscreteScheduler

    alphas = EulerDiscreteScheduler.from_config(backbone.scheduler_config).alphas_cumprod
    abar = float(alphas[dcfg.timestep])
    gen = torch.Generator(device=z0.device).manual_seed(cfg.features.seed)
    eps = torch.randn(z0.shape, generator=gen, device=z0.device, dtype=z0.dtype)
    return abar**0.5 * z0 + (1 - abar) ** 0.5 * eps


@torch.inference_mode()
def sd_attention_maps(
    backbone: StableDiffusion, images: torch.Tensor, geometry: Geometry, cfg: SegmentConfig
) -> AttentionMaps:
    """Per-resolution self-attention probabilities of frames [B, 3, H', W'] in [0, 1].

    Returns :class:`AttentionMaps` with one [B, h, w, h, w] tensor per resolution, finest
    (H'/8) first. The latent is the posterior mean (KerasCV's ImageEncoder, which DiffSeg uses,
    keeps the mean), so no noise draw is involved unless ``diffseg.add_noise``.
    """
    tic = time.perf_counter()
    z0 = backbone.encode(images, None, sample=False).float()
    z = latent_at(backbone, z0, cfg)
    seconds = {"encode": time.perf_counter() - tic}
    tic = time.perf_counter()
    emb = backbone.prompt_embedding(cfg.features.prompt)
    batch = z.shape[0]
    t = torch.full((batch,), float(cfg.diffseg.timestep), device=z.device)
    layers = self_attention_layers(backbone.unet)
    if not layers:
        raise ConfigError(f"{backbone.name}: the UNet has no spatial self-attention layers")
    with captured_qk(layers) as store:
        backbone.unet(
            z.to(backbone.dtype), t, encoder_hidden_states=emb.repeat_interleave(batch, dim=0)
        )
    h8, w8 = z.shape[-2:]
    grids = {}  # tokens -> (h, w): the latent grid, halved by each down block
    h, w = h8, w8
    for _ in backbone.unet.down_blocks:
        grids.setdefault(h * w, (h, w))
        h, w = (h + 1) // 2, (w + 1) // 2
    sums: dict[int, torch.Tensor] = {}
    counts: dict[int, int] = {}
    for name, attn in layers.items():
        q, k = store[name]["q"], store[name]["k"]
        n = q.shape[1]
        if n not in grids:
            raise ConfigError(f"{name}: {n} tokens do not fit the {h8}x{w8} latent's grids")
        probs = attention_probs(q, k, attn.heads)
        sums[n] = probs if n not in sums else sums[n] + probs
        counts[n] = counts.get(n, 0) + 1
    maps = tuple(
        (sums[n] / counts[n]).view(batch, *grids[n], *grids[n]) for n in sorted(sums, reverse=True)
    )
    seconds["attention_pass"] = time.perf_counter() - tic
    return AttentionMaps(maps=maps, seconds=seconds, unet_evals=batch)
