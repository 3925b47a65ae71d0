"""Stage 1: the feature pass over one window (METHOD.md 1.1-1.3), for any backbone.

Frames are brought to the backbone's input size (:func:`zsvss_nb.kernels.frames.prepare_window`),
then the backbone runs its own pass (:meth:`~zsvss_nb.backbones.base.Backbone.extract_features`):
for Stable Diffusion, noise to t*, denoise with guidance and read the decoder's self-attention
queries of blocks 6-8 (:mod:`zsvss_nb.backbones.sd.passes`); for SVD the video model's
(:mod:`zsvss_nb.backbones.svd.passes`); for the ViT, its patch tokens.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import torch

from .backbones.base import Backbone, FeatureResult
from .config import SegmentConfig
from .errors import ConfigError
from .kernels.frames import prepare_window


@torch.inference_mode()
def extract(
    backbone: Backbone,
    window,
    cfg: SegmentConfig | None = None,
    extra_blocks: Iterable[int] = (),
    keep_cache: bool | None = None,
) -> FeatureResult:
    """Run stage 1 on one window and return :class:`FeatureResult`.

    ``window``: a :class:`zsvss_nb.io.video.Window` or frames [B, 3, H, W] (uint8, or float in
    [0, 1]). ``cfg`` defaults to the backbone's paper settings. ``extra_blocks`` adds more
    blocks' features to ``block_features`` (for probing). ``keep_cache`` stores what stage 3
    replays (default: when stage 3 is masked modulation).
    """
    cfg = cfg or backbone.default_config()
    started = time.perf_counter()
    images, geometry = prepare_window(window, cfg.features, backbone.size_multiple, backbone.device)
    result = backbone.extract_features(
        images, geometry, cfg, extra_blocks=extra_blocks, keep_cache=keep_cache, started=started
    )
    if not bool(torch.isfinite(result.features).all()):  # k-means would fail or fit nothing
        raise ConfigError(
            "stage 1 gave non-finite features (overflow in the backbone's dtype): lower "
            f"features.guidance_scale={cfg.features.guidance_scale} or use --precision fp32"
        )
    return result


__all__ = [
    "extract",
]
