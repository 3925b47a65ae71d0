"""``kmeans-frame``: k-means on each frame's features alone, the image-method baseline.

The simplest training-free image segmenter applied frame by frame: the backbone's clustering
features (the same ones VidSeg clusters, METHOD 1.3), k-means with VidSeg's K, restarts and
seed on each frame's tokens (:func:`zsvss_nb.context.per_frame_kmeans`, the
``context.propagation="per-frame-kmeans"`` option), no scene context, no refinement, and the
config's cheap upsampler (bilinear when the config asks for masked modulation: that variant is
``emerdiff-frame``). Ids are numbered by first appearance in each frame, not aligned over time:
score it per frame (``hungarian-frame``, ``majority``). It is variant (a) of the README's DINOv2
table, without that variant's unused k-means of the first window.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from ..config import SegmentConfig
from ..context import per_frame_kmeans
from ..io.video import Window
from ..pipeline import RunStats, Segmenter, WindowLabels
from ..upsample import upsample
from .common import Method, timed


class PerFrameKMeans(Segmenter):
    """Features -> k-means per frame -> ``cfg.upsample.method`` (bilinear or modulation)."""

    def label_window(
        self, window: Window, context: Any, gt: torch.Tensor | None, stats: RunStats
    ) -> WindowLabels:
        """The window's labels and, for debugging, its coarse maps (no scene context kept)."""
        feats = self.window_features(window, stats)
        tic = time.perf_counter()
        coarse = per_frame_kmeans(feats.features, self.cfg.context)
        timed(stats, "context", tic)
        up = upsample(self.backbone, feats, coarse, self.cfg)
        stats.upsampler = up.method
        stats.add(up.seconds)
        stats.unet_evals += up.unet_evals
        stats.vae_decodes += up.vae_decodes
        return WindowLabels(up.labels, coarse)


def configure(cfg: SegmentConfig) -> SegmentConfig:
    """Per-frame k-means, no refinement, a cheap upsampler (bilinear instead of modulation)."""
    method = "bilinear" if cfg.upsample.method == "modulation" else cfg.upsample.method
    return cfg.replace(
        context=cfg.context.replace(propagation="per-frame-kmeans"),
        refine=cfg.refine.replace(enabled=False),
        upsample=cfg.upsample.replace(method=method),
    )


METHOD = Method(
    "kmeans-frame",
    "k-means on each frame's features",
    PerFrameKMeans,
    configure,
    labels="clusters",
    per_frame=True,
    paper="Lloyd's k-means on the backbone's features (README DINOv2 table, variant a)",
)
