"""``vidseg`` and its ablations: the paper's method and the variants its ablation table needs.

VidSeg (Wang et al., "Zero-Shot Video Semantic Segmentation based on Pre-Trained Diffusion
Models", CVPR 2025) is :class:`~zsvss_nb.pipeline.Segmenter` with the config as given
(defaults: METHOD.md section 1.8). Each variant removes one component and keeps the rest:

- ``vidseg-no-refine``: no correspondence-based refinement (METHOD 1.6), the KNN maps go to
  stage 3 as they are;
- ``vidseg-no-context-update``: the scene context model is fit on frame 1 and never refit
  (no autoregressive update, METHOD 1.5), so every window is labelled by frame 1's tokens;
- ``vidseg-bilinear``: bilinear upsampling of the refined maps instead of masked modulation
  (METHOD 1.7); only differs from ``vidseg`` on a backbone that can modulate.
"""

from __future__ import annotations

from .. import pipeline
from ..backbones.base import Backbone
from ..config import SegmentConfig
from ..context import SceneContext
from ..io.video import Window
from ..pipeline import Segmenter
from .common import Method

PAPER = "Wang et al., VidSeg, CVPR 2025 (arXiv 2405.16947)"


class FrozenContext:
    """A scene context whose autoregressive update does nothing: Omega stays fit on frame 1."""

    def __init__(self, context: SceneContext, window: Window | None = None) -> None:
        self.context = context

    @property
    def initialised(self) -> bool:
        return self.context.initialised

    def initialise(self, feats, gt=None):
        return self.context.initialise(feats, gt)

    def predict(self, feats):
        return self.context.predict(feats)

    def update(self, feats, labels) -> None:
        """No refit (the ablation of METHOD 1.5's update)."""


def no_refine(cfg: SegmentConfig) -> SegmentConfig:
    return cfg.replace(refine=cfg.refine.replace(enabled=False))


def bilinear(cfg: SegmentConfig) -> SegmentConfig:
    return cfg.replace(upsample=cfg.upsample.replace(method="bilinear"))


def vidseg_segmenter(backbone: Backbone, cfg: SegmentConfig) -> Segmenter:
    """The Segmenter (looked up when called, so a patched ``pipeline.Segmenter`` is used)."""
    return pipeline.Segmenter(backbone, cfg)


def frozen_segmenter(backbone: Backbone, cfg: SegmentConfig) -> Segmenter:
    return pipeline.Segmenter(backbone, cfg, window_context=FrozenContext)


VIDSEG = Method(
    "vidseg", "VidSeg (scene context, refinement, stage 3)", vidseg_segmenter, paper=PAPER
)
NO_REFINE = Method(
    "vidseg-no-refine", "VidSeg without refinement", vidseg_segmenter, no_refine, paper=PAPER
)
NO_CONTEXT_UPDATE = Method(
    "vidseg-no-context-update",
    "VidSeg without the autoregressive context update",
    frozen_segmenter,
    paper=PAPER,
)
BILINEAR = Method(
    "vidseg-bilinear",
    "VidSeg with bilinear upsampling instead of masked modulation",
    vidseg_segmenter,
    bilinear,
    needs=("modulation",),
    paper=PAPER,
)
