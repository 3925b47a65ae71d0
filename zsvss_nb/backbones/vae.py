"""The VAE on large frames: tiled encoding and decoding with blended seams."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn


# -- the VAE on large frames ------------------------------------------------------------------
def vae_factor(vae: nn.Module) -> int:
    """Pixels per latent token of ``vae`` (8 for SD's and SVD's VAEs)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def is_tiled(latent_hw: tuple[int, int], tile: int) -> bool:
    """Whether a latent of ``latent_hw`` tokens runs through the VAE in tiles: more than
    ``tile`` x ``tile`` tokens (``features.vae_tile``; 0 = never)."""
    return tile > 0 and latent_hw[0] * latent_hw[1] > tile * tile


def vae_size_advice(vae: nn.Module, image_hw: tuple[int, int], tile: int) -> str | None:
    """The one-line warning for processed frames ``image_hw`` whose latent is tiled, or None.

    The VAE's mid-block attends over every latent token at once: its score matrix alone is
    tokens^2 x 4 bytes (float32) and its time grows as tokens^2, which is what makes a
    4000x3000 frame (182k tokens) run for many minutes. Above the threshold the VAE runs in
    tiles, whose labels differ slightly from an untiled run; the UNet's attention at the
    latent's resolution is not tiled (that would change the method), hence the advice.
    """
    f = vae_factor(vae)
    h, w = image_hw[0] // f, image_hw[1] // f
    if not is_tiled((h, w), tile):
        return None
    scores = (h * w) ** 2 * 4 / 2**30
    side = tile * f
    return (
        f"frames processed at {image_hw[1]}x{image_hw[0]} give a {w}x{h} latent ({h * w:,} "
        f"tokens), above {tile}x{tile}: untiled, the VAE's mid-block attention would need "
        f"~{scores:,.1f} GiB for its scores per frame and time growing with tokens^2, so the "
        f"VAE runs in overlapping {tile}x{tile}-token tiles (labels differ slightly from an "
        f"untiled run), but the UNet's full-resolution attention still grows with tokens^2; "
        f"--max-side {side} keeps frames below this size and runs much faster"
    )


@contextlib.contextmanager
def diffusers_tiling(vae: nn.Module, tile: int) -> Iterator[None]:
    """diffusers' own VAE tiling (``enable_tiling``) with ``tile`` x ``tile``-token tiles for
    the ``with`` block; the VAE's settings are restored after it."""
    saved = (vae.use_tiling, vae.tile_sample_min_size, vae.tile_latent_min_size)
    vae.enable_tiling()
    vae.tile_sample_min_size, vae.tile_latent_min_size = tile * vae_factor(vae), tile
    try:
        yield
    finally:
        vae.use_tiling, vae.tile_sample_min_size, vae.tile_latent_min_size = saved


def _blend(before: torch.Tensor, tile: torch.Tensor, extent: int, dim: int) -> torch.Tensor:
    """Fade ``tile``'s first ``extent`` rows (dim 2) or columns (dim 3) in from ``before``'s
    last ones, linearly, as diffusers' ``blend_v`` / ``blend_h`` do."""
    n = min(before.shape[dim], tile.shape[dim], extent)
    if n == 0:
        return tile
    shape = [1, 1, 1, 1]
    shape[dim] = n
    weight = (torch.arange(n, device=tile.device, dtype=tile.dtype) / n).view(shape)
    tile = tile.clone()
    head = tile.narrow(dim, 0, n)
    head.copy_(before.narrow(dim, before.shape[dim] - n, n) * (1 - weight) + head * weight)
    return tile


def tiled_apply(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    tile: int,
    scale: float,
    overlap: float = 0.25,
) -> torch.Tensor:
    """``fn`` on overlapping ``tile`` x ``tile`` tiles of ``x`` [B, C, H, W], blended.

    ``fn`` maps [B, C, h, w] to [B, C', h * scale, w * scale] (a VAE encoder: scale 1/8; a
    decoder: 8). Tiles start every ``tile * (1 - overlap)`` pixels and each is faded into its
    upper and left neighbours, the scheme of diffusers' AutoencoderKL tiling, for VAEs that
    lack it (SVD's temporal decoder). Returns [B, C', H * scale, W * scale].
    """
    step = int(tile * (1 - overlap))
    out_tile = int(tile * scale)
    extent = int(out_tile * overlap)
    limit = out_tile - extent
    rows = [
        [fn(x[:, :, i : i + tile, j : j + tile]) for j in range(0, x.shape[3], step)]
        for i in range(0, x.shape[2], step)
    ]
    for i, row in enumerate(rows):
        for j in range(len(row)):
            if i > 0:
                row[j] = _blend(rows[i - 1][j], row[j], extent, 2)
            if j > 0:
                row[j] = _blend(row[j - 1], row[j], extent, 3)
    return torch.cat([torch.cat([t[:, :, :limit, :limit] for t in r], 3) for r in rows], 2)


def vae_moments(vae: nn.Module, x: torch.Tensor, tile: int) -> torch.Tensor:
    """The VAE posterior's parameters [B, 2C, H/f, W/f] of images ``x`` in [-1, 1], tiled
    above ``tile`` x ``tile`` latent tokens (diffusers' tiling where the VAE has it)."""
    f = vae_factor(vae)
    if not is_tiled((x.shape[2] // f, x.shape[3] // f), tile):
        return vae.encode(x).latent_dist.parameters
    if hasattr(vae, "tiled_decode"):
        with diffusers_tiling(vae, tile):
            return vae.encode(x).latent_dist.parameters
    return tiled_apply(lambda t: vae.encode(t).latent_dist.parameters, x, tile * f, 1 / f)


@torch.inference_mode()
def vae_encode(
    vae: nn.Module,
    images: torch.Tensor,
    generator: torch.Generator | None,
    scale: float,
    sample: bool = True,
    batch: int = 4,
    tile: int = 0,
) -> torch.Tensor:
    """VAE-encode images [B, 3, H, W] in [0, 1] to scaled latents [B, 4, H/8, W/8].

    METHOD 1.1: the posterior is *sampled* (seeded by ``generator``), then scaled. The
    encoder runs ``batch`` frames at a time (0 = all; bounds memory) and the posterior of
    the whole window is sampled at once, so the draw does not depend on ``batch``. Latents of
    more than ``tile`` x ``tile`` tokens are encoded in tiles (:func:`vae_moments`).
    """
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    param = next(vae.parameters())
    x = (images.to(param.device, param.dtype) * 2 - 1).contiguous()
    moments = torch.cat([vae_moments(vae, chunk, tile) for chunk in x.split(batch or len(x))])
    posterior = DiagonalGaussianDistribution(moments)
    z = posterior.sample(generator=generator) if sample else posterior.mode()
    return z * scale
