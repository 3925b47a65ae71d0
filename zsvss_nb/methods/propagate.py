"""``propagate-first-frame``: label propagation from the first frame's GT, a semi-supervised row.

The video label-propagation protocol of self-supervised features (Jabri et al., "Space-Time
Correspondence as a Contrastive Random Walk", NeurIPS 2020; DINO, Caron et al., ICCV 2021,
``eval_video_segmentation.py``; DIFT, Tang et al., NeurIPS 2023, reuses it on diffusion
features): each frame's L2-normalised feature cells attend to the cells of a context of
frames, the first frame (its GT, one-hot at the feature grid) and the ``n_last_frames`` previous
frames (their propagated soft labels), restricted to a square of ``radius`` cells around the
cell; the ``topk`` most similar context cells vote with weights exp(cos / temperature),
normalised. The soft labels are upsampled bilinearly, each class min-max normalised, and the
argmax is the frame's label (class ids of the GT). Defaults are DINO's (7 frames, 12 cells,
top 5, temperature 0.1; :class:`zsvss_nb.config.PropagateConfig`), on the backbone's clustering
features (METHOD 1.3). As in DINO the first frame's GT is never replaced; unlike DINO, which
writes the GT itself as frame 0's output, frame 0 is labelled by the same propagation (from its
own GT at the feature grid), as VidSeg re-predicts its first frame. Exactly ``topk`` neighbours
vote (DINO keeps ties with the k-th value too).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..config import PropagateConfig
from ..errors import ConfigError, LabelError
from ..io.video import Window
from ..kernels.frames import to_grid
from ..kernels.ops import restore_argmax
from ..pipeline import RunStats, Segmenter, WindowLabels
from .common import Method, timed


def neighbourhood(grid_hw: tuple[int, int], radius: int, device=None) -> torch.Tensor | None:
    """bool [N, N]: target cell i may take labels from context cell j (|dy|, |dx| <= radius).

    None for radius 0 (no restriction, as DINO's ``size_mask_neighborhood = 0``).
    """
    if radius == 0:
        return None
    h, w = grid_hw
    y = torch.arange(h, device=device).repeat_interleave(w)
    x = torch.arange(w, device=device).repeat(h)
    return ((y[:, None] - y[None, :]).abs() <= radius) & ((x[:, None] - x[None, :]).abs() <= radius)


def propagate_step(
    target: torch.Tensor,
    sources: torch.Tensor,
    segs: torch.Tensor,
    near: torch.Tensor | None,
    cfg: PropagateConfig,
) -> torch.Tensor:
    """Soft labels of one frame from its context.

    target [N, C] and sources [S, N, C] L2-normalised cells, segs [S, N, K] the sources' soft
    labels, near [N, N] or None. Returns [N, K]: the top-k context cells' labels weighted by
    softmax(cos / temperature) over those k (= DINO's exp(cos / T) renormalised).
    """
    PropagateConfig.check_range("temperature", cfg.temperature)  # it divides below
    s, m, _ = sources.shape
    sim = torch.einsum("nc,smc->nsm", target, sources) / cfg.temperature  # [N, S, M]
    if near is not None:
        sim = sim.masked_fill(~near[:, None, :], float("-inf"))
    val, idx = sim.reshape(target.shape[0], s * m).topk(min(cfg.topk, s * m), dim=1)
    weight = torch.softmax(val, dim=1)  # masked cells (-inf) get weight 0
    return (weight[..., None] * segs.reshape(s * m, -1)[idx]).sum(1)


def normalise_classes(scores: torch.Tensor) -> torch.Tensor:
    """DINO's ``norm_mask``: each class map [K, ...] min-max normalised over its pixels where
    it is not constant, left as it is where it is."""
    flat = scores.flatten(1)
    low, high = flat.amin(1), flat.amax(1)
    span = high - low
    ok = (high > 0) & (span > 0)
    out = (flat - low[:, None]) / torch.where(ok, span, 1.0)[:, None]
    return torch.where(ok[:, None], out, flat).view_as(scores)


@dataclass
class Memory:
    """One video's context: the first frame (cells [N, C], one-hot GT [N, K]), the queue of
    previous frames' (cells, soft labels), the GT class ids [K] and the neighbourhood mask."""

    first: tuple[torch.Tensor, torch.Tensor]
    classes: torch.Tensor
    near: torch.Tensor | None
    queue: deque = field(default_factory=deque)


class LabelPropagation(Segmenter):
    """First-frame GT propagated frame by frame through a queue of previous predictions."""

    memory: Memory | None = None

    def segment(self, video, first_frame_gt=None, **options):
        """As :meth:`Segmenter.segment`; ``first_frame_gt`` is required."""
        if first_frame_gt is None:
            raise ConfigError("propagate-first-frame needs the first frame's GT (first_frame_gt)")
        self.memory = None  # a fresh context per video
        yield from super().segment(video, first_frame_gt, **options)

    def start(self, tokens: torch.Tensor, gt: torch.Tensor, feats) -> Memory:
        """The first frame's context entry from its GT [H, W] (void negative or ignore id)."""
        grid_hw = feats.grid_hw
        grid_gt = to_grid(gt.to(tokens.device), feats.geometry, grid_hw).reshape(-1)
        valid = (grid_gt >= 0) & (grid_gt != self.cfg.context.ignore_index)
        classes = torch.unique(grid_gt[valid])
        if classes.numel() == 0:
            raise LabelError("first-frame GT has no valid (non-void) cell at the feature grid")
        seg = (grid_gt[:, None] == classes[None, :]).float()  # void cells vote for nothing
        near = neighbourhood(grid_hw, self.cfg.propagate.radius, tokens.device)
        return Memory(
            (tokens[0], seg), classes, near, deque(maxlen=self.cfg.propagate.n_last_frames)
        )

    def label_window(
        self, window: Window, context: Any, gt: torch.Tensor | None, stats: RunStats
    ) -> WindowLabels:
        """The window's labels and, for debugging, its coarse maps (no scene context kept)."""
        feats = self.window_features(window, stats)
        tic = time.perf_counter()
        b, h, w, c = feats.features.shape
        tokens = F.normalize(feats.features.float(), dim=-1).reshape(b, h * w, c)
        if self.memory is None:
            self.memory = self.start(tokens, gt, feats)
        mem = self.memory
        soft = torch.zeros(b, h * w, mem.classes.numel(), device=tokens.device)
        for j in range(b):
            if not bool(window.is_new[j]):
                continue
            context = [mem.first, *mem.queue]
            sources = torch.stack([f for f, _ in context])
            segs = torch.stack([s for _, s in context])
            soft[j] = propagate_step(tokens[j], sources, segs, mem.near, self.cfg.propagate)
            if window.indices[j] > 0:  # the queue holds frames after the first (DINO)
                mem.queue.append((tokens[j], soft[j]))
        coarse = mem.classes[soft.argmax(-1)].view(b, h, w)
        tic = timed(stats, "context", tic)
        scores = soft.permute(2, 0, 1).reshape(-1, b, h, w)  # [K, B, h, w]
        up = F.interpolate(
            scores, size=feats.geometry.processed, mode="bilinear", align_corners=False
        )
        up = torch.stack([normalise_classes(up[:, j]) for j in range(b)], dim=1)
        labels = restore_argmax(up, mem.classes, feats.geometry)
        timed(stats, "upsample", tic)
        stats.upsampler = "bilinear"
        return WindowLabels(labels, coarse)


METHOD = Method(
    "propagate-first-frame",
    "label propagation from first-frame GT (semi-supervised)",
    LabelPropagation,
    labels="classes",
    sections=("propagate",),
    paper="Caron et al., DINO, ICCV 2021 (video label propagation protocol); DIFT, NeurIPS 2023",
)

__all__ = [
    "METHOD",
    "LabelPropagation",
    "Memory",
    "neighbourhood",
    "normalise_classes",
    "propagate_step",
]
