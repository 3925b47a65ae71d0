"""``diffseg-frame``: DiffSeg applied to each frame on its own.

DiffSeg (Tian, Aggarwal, Colaco, Kira, Gonzalez-Franco, "Diffuse, Attend, and Segment:
Unsupervised Zero-Shot Segmentation using Stable Diffusion", CVPR 2024) segments an image from
the self-attention maps of Stable Diffusion's UNet alone:

1. **Aggregation.** Each resolution's maps [h, w, h, w] (heads and layers averaged) are brought
   to the finest grid: the key grid is upsampled bilinearly and renormalised to sum to 1, the
   query grid tiled; the resolutions are summed with weights proportional to the map side
   (8 : 4 : 2 : 1 for 64, 32, 16, 8 cells at 512 px).
2. **Iterative merging.** An M x M grid of anchors (M = 16) takes the mean of all maps within
   symmetric KL divergence tau of it; then, twice more, proposals are merged greedily in order
   (each unmerged proposal absorbs every proposal within tau).
3. **Non-maximum suppression.** The proposals are upsampled bilinearly to the image and each
   pixel takes the index of the largest one.

Defaults (:class:`zsvss_nb.config.DiffSegConfig`) are those of the official code,
github.com/google/diffseg: its ``benchmarks.ipynb`` (timestep 300, one UNet call on the VAE
latent with the unconditional prompt, ``KL_THRESHOLD = [1.1] * 3`` for COCO-Stuff and 0.9 for
Cityscapes, ``NUM_POINTS = 16``, ``REFINEMENT = False``) and ``diffseg/segmentor.py`` (the
weights, the anchor grid, KL(x, y) = (sum x log(x/y) + sum y log(y/x)) / 2, the merging). The
optional K-means refinement of the demo notebook is not implemented (the benchmark has it off).
Frames are not resized to 512 x 512: they keep the config's size policy. On a ViT (DINOv2-S)
the maps are its last layer's attention, one resolution. Ids are proposal indices per frame.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..config import DiffSegConfig
from ..errors import InputError
from ..io.video import Window
from ..kernels.frames import Geometry, prepare_window
from ..kernels.ops import restore_argmax
from ..pipeline import RunStats, Segmenter, WindowLabels
from .common import Method, timed

EPS = 1e-12  # probabilities are clamped here before the log (softmax can underflow to 0)


def anchor_axis(size: int, count: int) -> torch.Tensor:
    """Anchor positions along one axis of ``size`` cells: DiffSeg's ``generate_sampling_grid``
    (equal steps of (size - 1) // (count - 1), centred), all cells when size < count."""
    count = min(count, size)
    if count == 1:
        return torch.tensor([(size - 1) // 2])
    step = (size - 1) // (count - 1)
    start = (size - 1 - step * (count - 1)) // 2
    return start + step * torch.arange(count)


def anchor_grid(grid_hw: tuple[int, int], count: int) -> torch.Tensor:
    """Flat indices of the count x count anchors on an h x w grid, raster order: [A]."""
    rows, cols = anchor_axis(grid_hw[0], count), anchor_axis(grid_hw[1], count)
    return (rows[:, None] * grid_hw[1] + cols[None, :]).reshape(-1)


def aggregate_attention(
    maps: Sequence[torch.Tensor], weighting: str = "resolution"
) -> torch.Tensor:
    """DiffSeg's attention aggregation onto the finest grid.

    maps: [B, h, w, h, w] per resolution, finest first, rows summing to 1. Returns [B, N, N]
    (N = H * W of the finest grid), each row a distribution over the finest key grid.
    """
    if not maps:
        raise InputError("attention aggregation needs at least one map")
    b, H, W = maps[0].shape[:3]
    sides = torch.tensor([float(m.shape[1] * m.shape[2]) ** 0.5 for m in maps])
    weights = sides if weighting == "resolution" else torch.ones_like(sides)
    weights = weights / weights.sum()
    out = torch.zeros(b, H, W, H * W, device=maps[0].device)
    for m, weight in zip(maps, weights.tolist(), strict=True):
        _, h, w = m.shape[:3]
        if m.ndim != 5 or tuple(m.shape[3:]) != (h, w):
            raise InputError(f"attention map {tuple(m.shape)} is not [B, h, w, h, w]")
        keys = m.float().reshape(b * h * w, 1, h, w)
        if (h, w) != (H, W):
            keys = F.interpolate(keys, size=(H, W), mode="bilinear", align_corners=False)
        keys = keys.reshape(b, h, w, H * W)
        keys = keys / keys.sum(-1, keepdim=True).clamp_min(EPS)
        rows = torch.arange(H, device=m.device) * h // H  # tile the query grid
        cols = torch.arange(W, device=m.device) * w // W
        out += weight * keys.index_select(1, rows).index_select(2, cols)
    return out.reshape(b, H * W, H * W)


def symmetric_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """(KL(p || q) + KL(q || p)) / 2 of every pair of rows: p [P, N], q [Q, N] -> [P, Q]."""
    lp, lq = p.clamp_min(EPS).log(), q.clamp_min(EPS).log()
    self_p, self_q = (p * lp).sum(1), (q * lq).sum(1)
    return 0.5 * (self_p[:, None] + self_q[None, :] - p @ lq.T - lp @ q.T)


def greedy_merge(close: torch.Tensor, proposals: torch.Tensor) -> torch.Tensor:
    """One later merging iteration: in order, each proposal not yet merged absorbs every
    proposal it is close to (close: bool [P, P]); returns the means [P', N]."""
    taken = torch.zeros(close.shape[0], dtype=torch.bool)
    rows = []
    close_cpu = close.cpu()
    for i in range(close.shape[0]):
        if bool(taken[i]):
            continue
        row = close_cpu[i].clone()
        row[i] = True
        taken |= row
        rows.append(row)
    select = torch.stack(rows).to(proposals)
    return (select @ proposals) / select.sum(1, keepdim=True)


def merge_attention(
    attn: torch.Tensor, grid_hw: tuple[int, int], cfg: DiffSegConfig
) -> torch.Tensor:
    """Iterative attention merging of one frame's aggregated maps attn [N, N] -> [P, N]."""
    anchors = attn[anchor_grid(grid_hw, cfg.anchors).to(attn.device)]
    close = (symmetric_kl(anchors, attn) < cfg.kl_threshold).to(attn.dtype)  # [A, N]
    proposals = (close @ attn) / close.sum(1, keepdim=True).clamp_min(1.0)
    for _ in range(cfg.merge_iters - 1):
        proposals = greedy_merge(symmetric_kl(proposals, proposals) < cfg.kl_threshold, proposals)
    return proposals


def proposal_labels(
    proposals: torch.Tensor, grid_hw: tuple[int, int], geometry: Geometry
) -> torch.Tensor:
    """Non-maximum suppression: proposals [P, N] -> bilinear to the processed size -> restored
    to the original size -> index of the largest proposal, [H, W]."""
    maps = proposals.reshape(1, -1, *grid_hw)
    up = F.interpolate(maps, size=geometry.processed, mode="bilinear", align_corners=False)
    ids = torch.arange(proposals.shape[0], device=proposals.device)
    return restore_argmax(up[0][:, None], ids, geometry)[0]


class DiffSegFrame(Segmenter):
    """Attention maps of ``frames_per_pass`` frames at a time -> aggregate, merge, NMS."""

    def label_window(
        self, window: Window, context: Any, gt: torch.Tensor | None, stats: RunStats
    ) -> WindowLabels:
        """The window's labels, from its attention maps alone (no scene context kept)."""
        cfg = self.cfg
        tic = time.perf_counter()
        images, geometry = prepare_window(
            window, cfg.features, self.backbone.size_multiple, self.backbone.device
        )
        timed(stats, "encode", tic)
        labels = []
        for chunk in images.split(cfg.diffseg.frames_per_pass):
            attention = self.backbone.attention_maps(chunk, geometry, cfg)
            stats.add(attention.seconds)
            stats.unet_evals += attention.unet_evals
            tic = time.perf_counter()
            grid = tuple(attention.maps[0].shape[1:3])
            for attn in aggregate_attention(attention.maps, cfg.diffseg.weighting):
                proposals = merge_attention(attn, grid, cfg.diffseg)
                labels.append(proposal_labels(proposals, grid, geometry))
            timed(stats, "merge", tic)
        stats.upsampler = "bilinear"
        return WindowLabels(torch.stack(labels))


METHOD = Method(
    "diffseg-frame",
    "DiffSeg on each frame (attention merging)",
    DiffSegFrame,
    labels="clusters",
    per_frame=True,
    needs=("attention",),
    sections=("diffseg",),
    paper="Tian et al., Diffuse, Attend, and Segment (DiffSeg), CVPR 2024",
)
