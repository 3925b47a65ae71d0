"""Tensor kernels shared by the stages and the backbones, each written once.

Token normalisation and block aggregation (METHOD 1.3), the Gaussian blur and Lanczos mask of
the difference maps (METHOD 1.7 steps 3 and 5), one-hot class masks, the difference map itself
with the reference's uint8 variant, and the per-frame argmax that restores labels to the
original size. Plain PyTorch, on whatever device the inputs are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import UpsampleConfig
from ..errors import ConfigError
from .frames import Geometry, restore
from .resample import jpeg_roundtrip, resize_float, resize_uint8


def normalise_tokens(x: torch.Tensor, mode: str) -> torch.Tensor:
    """Per-token normalisation of [..., C]: "linf" (METHOD 1.3: f / max|f|), "l2" or "none"."""
    if mode == "linf":
        return x / x.abs().amax(dim=-1, keepdim=True).clamp_min(1e-12)
    if mode == "l2":
        return torch.nn.functional.normalize(x, dim=-1)
    if mode == "none":
        return x
    raise ConfigError(f"normalisation={mode!r}: use 'linf', 'l2' or 'none'")


def aggregate(blocks: list[torch.Tensor], mode: str) -> torch.Tensor:
    """Combine per-block [B, h, w, C] queries: element-wise "mean" (METHOD 1.3) or "concat"."""
    if mode == "mean":
        return torch.stack(blocks).mean(0)
    if mode == "concat":
        return torch.cat(blocks, dim=-1)
    raise ConfigError(f"aggregation={mode!r}: use 'mean' or 'concat'")


# -- small kernels --------------------------------------------------------------------------
def gaussian_kernel1d(
    size: int, sigma: float, device=None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Normalised 1-D Gaussian taps, as cv2.getGaussianKernel(size, sigma) (float64 inside)."""
    x = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    k = torch.exp(-(x**2) / (2 * sigma**2))
    k = k / k.sum()
    if not (sigma > 0 and bool(torch.isfinite(k).all())):  # sigma ~ 0 makes 0 / 0 taps
        raise ConfigError(f"Gaussian blur: sigma={sigma} gives no finite taps; use sigma >= 0.01")
    return k.to(dtype)


def _reflect101_index(n: int, r: int, device=None) -> torch.Tensor:
    """Source index of positions -r .. n-1+r with cv2's BORDER_REFLECT_101, folded repeatedly."""
    j = torch.arange(-r, n + r, device=device)
    if n == 1:
        return torch.zeros_like(j)
    period = 2 * (n - 1)
    j = j.remainder(period)
    return torch.where(j >= n, period - j, j)


def gaussian_blur(x: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of [N, H, W] with reflect-101 borders (cv2.GaussianBlur's)."""
    k = gaussian_kernel1d(size, sigma, x.device, x.dtype)
    r = size // 2
    rows = _reflect101_index(x.shape[-2], r, x.device)
    cols = _reflect101_index(x.shape[-1], r, x.device)
    y = x.index_select(-2, rows).index_select(-1, cols).unsqueeze(1)
    y = F.conv2d(y, k.view(1, 1, 1, -1))
    y = F.conv2d(y, k.view(1, 1, -1, 1))
    return y.squeeze(1)


def lanczos_upsample(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize [..., h, w] to [..., H, W] with separable Lanczos-3 (PIL LANCZOS), METHOD 1.7.5."""
    return resize_float(masks.float(), size, "lanczos")


def filter_weights(masks: torch.Tensor, size: tuple[int, int], paper_compat: bool) -> torch.Tensor:
    """The coarse masks [K, B, h, w] upsampled to [K, B, H, W] in [0, 1] for the filtered output.

    METHOD 1.7.5: the reference resizes each binary mask PNG with PIL's LANCZOS, which clips
    and rounds to 8 bits between its horizontal and vertical pass; ``paper_compat`` does the
    same, the default keeps the float resize (clamped to [0, 1]).
    """
    if paper_compat:
        binary = (masks > 0.5).to(torch.uint8) * 255
        return resize_uint8(binary, size, "lanczos").float() / 255.0
    return lanczos_upsample(masks, size).clamp(0, 1)


def attention_probs(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    """Head-averaged attention probabilities softmax(q k^T / sqrt(d)) from projections.

    q: [B, N, C], k: [B, M, C] (after ``to_q``/``to_k``, before the head split; C = heads * d)
    -> [B, N, M] in float32, each row summing to 1. One head at a time, so only one [B, N, M]
    block is alive besides the result.
    """
    if q.ndim != 3 or k.ndim != 3 or q.shape[-1] != k.shape[-1] or q.shape[-1] % heads:
        raise ConfigError(
            f"q {tuple(q.shape)} / k {tuple(k.shape)} do not split into {heads} heads"
        )
    d = q.shape[-1] // heads
    qh = q.float().unflatten(-1, (heads, d))
    kh = k.float().unflatten(-1, (heads, d))
    out = torch.zeros(q.shape[0], q.shape[1], k.shape[1], device=q.device)
    for h in range(heads):
        out += torch.softmax(qh[..., h, :] @ kh[..., h, :].transpose(1, 2) * d**-0.5, dim=-1)
    return out / heads


def one_hot_maps(coarse: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """[B, h, w] label ids -> [K, B, h, w] float masks, one per id in ``classes``."""
    return (coarse.unsqueeze(0) == classes.view(-1, 1, 1, 1)).float()


def restore_argmax(
    scores: torch.Tensor,
    classes: torch.Tensor,
    geometry: Geometry,
    fallback: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per frame: scores [K, B, H', W'] -> restored to the original size -> class ids [B, H, W].

    Where every score is zero (no evidence at all) the ``fallback`` ids [B, H', W'] are used.
    """
    out = []
    for f in range(scores.shape[1]):
        s = scores[:, f]
        ids = classes[restore(s, geometry, mode="bilinear").argmax(0)]
        if fallback is not None:
            empty = restore((s.amax(0) <= 0).float()[None], geometry, mode="nearest")[0] > 0.5
            fb = restore(fallback[f][None].float(), geometry, mode="nearest")[0].long()
            ids = torch.where(empty, fb, ids)
        out.append(ids)
    return torch.stack(out)


def difference_maps(plus: torch.Tensor, minus: torch.Tensor, cfg: UpsampleConfig) -> torch.Tensor:
    """D = blur(||I+ - I-||_2 over RGB) for decodes [n, 3, H, W] in [0, 1] -> [n, H, W].

    ``paper_compat`` reproduces the reference's process_output.py: the decodes become uint8
    (truncated), the difference and its square wrap modulo 256 (numpy uint8 arithmetic),
    channels are summed without wrap, the float64 blur is cast to 8 bits as PIL's
    ``convert("L")`` does (truncation) and the map goes through an 8-bit JPEG file at PIL's
    default quality, whose decoded values are what the reference normalises.
    """
    if cfg.paper_compat:
        a = (plus * 255).to(torch.uint8).long()
        b = (minus * 255).to(torch.uint8).long()
        diff = (a - b) % 256
        sq = (diff * diff) % 256
        dist = sq.sum(1).double().sqrt()
        blurred = gaussian_blur(dist, cfg.blur_kernel, cfg.blur_sigma)
        return jpeg_roundtrip(blurred.clamp(0, 255).floor().to(torch.uint8)).float()
    dist = (plus.float() - minus.float()).pow(2).sum(1).sqrt()
    return gaussian_blur(dist, cfg.blur_kernel, cfg.blur_sigma)
