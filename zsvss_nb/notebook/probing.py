"""Several backbones' features of the same frames, side by side (notebook 01's comparison).

:func:`compare_features` runs stage 1 of each backbone on one window and returns, per model,
what the notebook plots: PCA colours, the cross-frame similarity matrix and one query's
similarity map (:class:`FeatureView`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from ..backbones.base import Backbone
from ..config import SegmentConfig
from ..features import extract
from .viz.features import cosine_similarity_map, cross_frame_similarity, feature_pca_rgb


# -- notebook 01: SD and SVD features side by side --------------------------------------------
@dataclass
class FeatureView:
    """One backbone's view of a window, for side-by-side figures.

    features: [B, h, w, C] clustering features; pca: [B, h, w, 3] joint-PCA colours in [0, 1];
    similarity: [B, B] mean best-match cosine similarity between frames (row frame's tokens to
    their nearest token of the column frame); query: [B, h, w] cosine similarity to one token
    of frame 0; seconds: stage-1 timings.
    """

    name: str
    kind: str
    features: torch.Tensor
    pca: torch.Tensor
    similarity: torch.Tensor
    query: torch.Tensor
    query_yx: tuple[int, int]
    seconds: dict[str, float] = field(default_factory=dict)


def compare_features(
    backbones: Mapping[str, Backbone],
    frames: torch.Tensor,
    configs: Mapping[str, SegmentConfig] | None = None,
    max_side: int | None = None,
    query: tuple[float, float] = (0.5, 0.5),
) -> dict[str, FeatureView]:
    """Stage-1 features of the same frames [B, 3, H, W] from several backbones (notebook 01).

    ``configs`` per name default to each backbone's paper settings (``default_config``);
    ``max_side`` downsizes for speed. ``query`` (y, x) in [0, 1] picks the token of
    frame 0 whose similarity map is returned. Runs without the stage-3 caches.
    """
    out: dict[str, FeatureView] = {}
    for name, backbone in backbones.items():
        cfg = (configs or {}).get(name) or backbone.default_config()
        if max_side is not None:
            cfg = cfg.replace(max_side=max_side)
        res = extract(backbone, frames, cfg, keep_cache=False)
        feats = res.features
        h, w = feats.shape[1:3]
        y, x = min(int(query[0] * h), h - 1), min(int(query[1] * w), w - 1)
        out[name] = FeatureView(
            name=name,
            kind=backbone.kind,
            features=feats.cpu(),
            pca=feature_pca_rgb(feats).cpu(),
            similarity=cross_frame_similarity(feats).cpu(),
            query=cosine_similarity_map(feats, 0, y, x).cpu(),
            query_yx=(y, x),
            seconds=dict(res.seconds),
        )
    return out
