"""A minimal backbone written against the contract runs through the whole pipeline.

This is the worked example of adding a model: subclass ``Backbone``, say what it can do
(``size_multiple``, ``feature_stride``, ``can_modulate``), implement ``extract_features`` (and,
to modulate, ``modulation_maps``). Nothing else in the package changes. The features here are
colour means of 8x8 cells, so planted colour regions must come out as separate labels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zsvss_nb import SegmentConfig, Segmenter
from zsvss_nb.backbones.base import Backbone, FeatureResult, ModulationMaps
from zsvss_nb.errors import ConfigError
from zsvss_nb.kernels.frames import Geometry


@dataclass(eq=False)
class CellColours(Backbone):
    """Features: the mean RGB of each 8x8 cell; no modulation (stage 3 falls back to bilinear)."""

    size_multiple: ClassVar[int] = 8
    feature_stride: ClassVar[int] = 8

    def extract_features(
        self,
        images: torch.Tensor,
        geometry: Geometry,
        cfg: SegmentConfig,
        *,
        extra_blocks=(),
        keep_cache=None,
        started=None,
    ) -> FeatureResult:
        cells = F.avg_pool2d(images, self.feature_stride).permute(0, 2, 3, 1)  # [B, h, w, 3]
        return FeatureResult(
            features=cells,
            refine_features=cells,
            block_features={0: cells},
            images=images,
            geometry=geometry,
            seconds={"feature_pass": 0.0},
        )


@dataclass(eq=False)
class CellColoursModulating(CellColours):
    """The same features, and a "modulation" whose difference map is the class mask itself."""

    can_modulate: ClassVar[bool] = True

    def modulation_maps(self, feats, masks, classes, coarse, cfg) -> ModulationMaps:
        size = tuple(feats.images.shape[-2:])
        diff = F.interpolate(masks, size=size, mode="nearest")  # [K, B, H', W']
        return ModulationMaps(diff=diff, unet_evals=0, vae_decodes=int(masks.shape[1]))


def planted_video(frames: int = 6, size: tuple[int, int] = (48, 64)) -> np.ndarray:
    """Left half red, right half blue; a green square drifts right by one cell per frame."""
    h, w = size
    video = np.zeros((frames, h, w, 3), dtype=np.uint8)
    video[:, :, : w // 2, 0] = 220
    video[:, :, w // 2 :, 2] = 220
    for t in range(frames):
        video[t, 16:32, 8 + 8 * t : 24 + 8 * t] = (0, 230, 0)
    return video


CFG = SegmentConfig.fast().replace(k=3, n_init=3, window=4)


@pytest.mark.parametrize("cls", [CellColours, CellColoursModulating])
def test_a_new_backbone_runs_through_the_segmenter(cls, tmp_path):
    backbone = cls("cell-colours", torch.device("cpu"), torch.float32, {"name": "cells"})
    video = planted_video()
    cfg = CFG.replace(method="modulation")
    manifest = Segmenter(backbone, cfg).run(video, tmp_path / "out", overlay=False)
    stats = manifest["stats"]
    expected = "modulation" if cls.can_modulate else "bilinear"
    assert stats["upsampler"] == expected  # the manifest says what actually ran
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["stats"]["upsampler"] == (
        expected
    )
    assert manifest["model"]["sha256"] == backbone.fingerprint()
    from PIL import Image

    labels = np.stack(
        [np.array(Image.open(p)) for p in sorted((tmp_path / "out" / "labels").glob("*.png"))]
    )
    assert labels.shape == video.shape[:3]
    # three planted regions, three labels, consistent over time (ids carried by the KNN)
    red, blue = labels[:, 40:, :8], labels[:, 40:, -8:]
    assert len(np.unique(red)) == 1 and len(np.unique(blue)) == 1
    assert red.flat[0] != blue.flat[0]
    centre = np.array([labels[t, 24, 16 + 8 * t] for t in range(len(labels))])  # the square's
    assert len(np.unique(centre)) == 1 and centre[0] not in (red.flat[0], blue.flat[0])


def test_the_base_class_refuses_what_it_cannot_do():
    bare = Backbone("bare", torch.device("cpu"), torch.float32, {})
    images = torch.zeros(1, 3, 64, 64)
    geometry = Geometry((64, 64), (64, 64), "resize64")
    with pytest.raises(ConfigError, match="bare"):
        bare.extract_features(images, geometry, CFG)
    with pytest.raises(ConfigError, match="masked modulation needs a diffusion backbone"):
        bare.modulation_maps(None, torch.zeros(1, 1, 4, 4), torch.tensor([0]), None, CFG)
    assert not bare.can_modulate and bare.default_config() == SegmentConfig.paper_sd()
