"""The backbone contract: a minimal backbone runs through the pipeline, and every registered one
keeps the contract.

The first part is the worked example of adding a model: subclass ``Backbone``, say what it can
do (``size_multiple``, ``feature_stride``, ``can_modulate``), implement ``extract_features``
(and, to modulate, ``modulation_maps``). Nothing else in the package changes. The features here
are colour means of 8x8 cells, so planted colour regions must come out as separate labels.

The second part is the contract suite, parametrised over every family in
:data:`zsvss_nb.backbones.REGISTRY` (its first built-in name, by convention its smallest model:
"tiny", "tiny-svd", "dinov2-s") and the fakes here, so a new family is covered by registering
it: shapes and dtypes of :class:`FeatureResult`, determinism, ``default_config()`` accepted by
the Segmenter, ``modulation_maps`` / ``attention_maps`` exactly when the class says it can,
and a fingerprint that names the weights.
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
from zsvss_nb.backbones import REGISTRY, default_config_for, family_of, load_backbone
from zsvss_nb.backbones.base import Backbone, FeatureResult, ModulationMaps
from zsvss_nb.errors import ConfigError, MissingDependencyError, ModelNotFoundError
from zsvss_nb.kernels.frames import Geometry, prepare_window


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


# ---------------------------------------------------------------- the contract suite

FAKES = {"cell-colours": CellColours, "cell-colours-modulating": CellColoursModulating}
CONTRACT = [f.builtin[0] for f in REGISTRY if f.builtin] + list(FAKES)


def build(name: str) -> Backbone:
    """A fresh instance of backbone ``name`` on the CPU (skipped when its weights are absent)."""
    if name in FAKES:
        return FAKES[name](name, torch.device("cpu"), torch.float32, {"name": name})
    try:
        return load_backbone(name, device="cpu")
    except (MissingDependencyError, ModelNotFoundError) as err:
        pytest.skip(f"{name}: {err}")


@pytest.fixture(scope="module", params=CONTRACT)
def spec(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def backbone(spec) -> Backbone:
    return build(spec)


def frames(backbone: Backbone, cfg: SegmentConfig) -> tuple[torch.Tensor, Geometry]:
    """2 planted frames of 64 x 64 px (the smallest size every family takes) as model input."""
    video = torch.from_numpy(planted_video(2, (64, 64))).permute(0, 3, 1, 2)
    return prepare_window(video, cfg.features, backbone.size_multiple, backbone.device)


def features(backbone: Backbone, cfg: SegmentConfig, keep_cache: bool = False) -> FeatureResult:
    images, geometry = frames(backbone, cfg)
    return backbone.extract_features(images, geometry, cfg, keep_cache=keep_cache)


def test_the_suite_covers_every_registered_family():
    assert {family_of(n).name for n in CONTRACT if n not in FAKES} == {f.name for f in REGISTRY}


def test_feature_result_shapes_and_dtypes(backbone):
    cfg = backbone.default_config()
    images, geometry = frames(backbone, cfg)
    feats = backbone.extract_features(images, geometry, cfg)
    b, _, h_img, w_img = images.shape
    grid = (h_img // backbone.feature_stride, w_img // backbone.feature_stride)
    assert h_img % backbone.size_multiple == 0 and w_img % backbone.size_multiple == 0
    assert feats.features.dtype == torch.float32 and feats.features.dim() == 4
    assert tuple(feats.features.shape[:3]) == (b, *grid) == (b, *feats.grid_hw)
    assert torch.isfinite(feats.features).all()
    assert feats.refine_features.dim() == 4 and tuple(feats.refine_features.shape[:3]) == (b, *grid)
    assert feats.refine_features.is_floating_point()
    assert feats.block_features and all(
        f.dim() == 4 and f.shape[0] == b for f in feats.block_features.values()
    )
    assert feats.images.shape == images.shape and feats.geometry == geometry
    assert 0.0 <= float(feats.images.min()) and float(feats.images.max()) <= 1.0
    assert all(isinstance(v, float) and v >= 0 for v in feats.seconds.values())
    assert isinstance(feats.unet_evals, int) and feats.unet_evals >= 0


def test_features_are_deterministic(backbone):
    cfg = backbone.default_config()
    first, second = features(backbone, cfg), features(backbone, cfg)
    assert torch.equal(first.features, second.features)
    assert torch.equal(first.refine_features, second.refine_features)
    assert first.block_features.keys() == second.block_features.keys()
    assert all(torch.equal(v, second.block_features[k]) for k, v in first.block_features.items())


def test_the_default_config_runs_in_the_segmenter(spec, backbone):
    cfg = type(backbone).default_config()
    assert isinstance(cfg, SegmentConfig)
    if spec not in FAKES:  # the registry knows it before loading
        assert default_config_for(spec) == cfg
    seg = Segmenter(backbone, cfg.replace(k=2, window=2))
    video = planted_video(2, (64, 64))
    results = list(seg.segment(video, progress=False))
    assert [r.index for r in results] == [0, 1]
    assert all(r.labels.shape == (64, 64) and r.labels.dtype == torch.int64 for r in results)
    falls_back = cfg.upsample.method == "modulation" and not backbone.can_modulate
    assert seg.stats.upsampler == ("bilinear" if falls_back else cfg.upsample.method)


def test_modulation_maps_exactly_when_the_backbone_can_modulate(backbone):
    cfg = backbone.default_config().replace(method="modulation")
    feats = features(backbone, cfg, keep_cache=True)
    b, h, w = (feats.features.shape[0], *feats.grid_hw)
    coarse = torch.zeros(b, h, w, dtype=torch.int64)
    coarse[:, :, w // 2 :] = 1
    classes = torch.tensor([0, 1])
    masks = (coarse[None] == classes[:, None, None, None]).float()  # [K, B, h, w]
    if not backbone.can_modulate:
        with pytest.raises(ConfigError, match="masked modulation"):
            backbone.modulation_maps(feats, masks, classes, coarse, cfg)
        return
    maps = backbone.modulation_maps(feats, masks, classes, coarse, cfg)
    assert tuple(maps.diff.shape) == (2, b, *feats.images.shape[-2:])
    assert maps.diff.is_floating_point() and torch.isfinite(maps.diff).all()
    assert maps.candidates is None or (
        maps.candidates.dtype == torch.bool and tuple(maps.candidates.shape) == (2, b, h, w)
    )
    assert maps.unet_evals >= 0 and maps.vae_decodes >= 0


def test_attention_maps_exactly_when_the_backbone_has_them(backbone):
    cfg = backbone.default_config()
    images, geometry = frames(backbone, cfg)
    if not backbone.has_attention_maps:
        with pytest.raises(ConfigError, match="self-attention"):
            backbone.attention_maps(images, geometry, cfg)
        return
    attention = backbone.attention_maps(images, geometry, cfg)
    for grid in attention.maps:
        b, h, w, h2, w2 = grid.shape
        assert (b, h, w) == (2, h2, w2)
        rows = grid.reshape(b, h * w, h * w).sum(-1)
        torch.testing.assert_close(rows, torch.ones_like(rows), atol=1e-4, rtol=0)


def test_the_fingerprint_names_the_weights(spec, backbone):
    fingerprint = backbone.fingerprint()
    assert len(fingerprint) == 64 and int(fingerprint, 16) >= 0
    features(backbone, backbone.default_config())  # running the model changes no weight
    assert backbone.fingerprint() == fingerprint
    again = build(spec)
    assert again is not backbone and again.fingerprint() == fingerprint
