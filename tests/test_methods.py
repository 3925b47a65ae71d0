"""Tests of zsvss_nb.methods: the registry, what each method needs, its config hash, that the
VidSeg variants wire the right stages, and kmeans-frame / emerdiff-frame on planted videos and
the tiny model. (DiffSeg and propagation have their own files.)"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zsvss_nb import SegmentConfig, pipeline
from zsvss_nb.backbones.base import Backbone, FeatureResult, ModulationMaps
from zsvss_nb.context import SceneContext, per_frame_kmeans
from zsvss_nb.datasets import open_dataset
from zsvss_nb.errors import ConfigError
from zsvss_nb.features import extract
from zsvss_nb.io.outputs import DONE_FILE
from zsvss_nb.io.video import open_video
from zsvss_nb.methods import (
    METHODS,
    SECTIONS,
    available,
    get_method,
    hashed_config,
    resolve,
    segmenter,
)
from zsvss_nb.run.runner import config_hash, run_dataset
from zsvss_nb.upsample import modulate


@dataclass(eq=False)
class CellColours(Backbone):
    """Features: the mean RGB of each 8x8 cell; the "modulation" difference map is the mask."""

    size_multiple: ClassVar[int] = 8
    feature_stride: ClassVar[int] = 8
    can_modulate: ClassVar[bool] = True

    def extract_features(self, images, geometry, cfg, **options) -> FeatureResult:
        cells = F.avg_pool2d(images, 8).permute(0, 2, 3, 1)
        return FeatureResult(cells, cells, {0: cells}, images, geometry, {"feature_pass": 0.0})

    def modulation_maps(self, feats, masks, classes, coarse, cfg) -> ModulationMaps:
        size = tuple(feats.images.shape[-2:])
        return ModulationMaps(diff=F.interpolate(masks, size=size, mode="nearest"))


@dataclass(eq=False)
class FeaturesOnly(CellColours):
    can_modulate: ClassVar[bool] = False


def cells(cls=CellColours):
    return cls("cells", torch.device("cpu"), torch.float32, {"name": "cells"})


def planted_video(frames: int = 6) -> np.ndarray:
    """Left half red, right half blue; a green square drifts right by one cell per frame."""
    video = np.zeros((frames, 48, 64, 3), dtype=np.uint8)
    video[:, :, :32, 0] = 220
    video[:, :, 32:, 2] = 220
    for t in range(frames):
        video[t, 16:32, 8 + 8 * t : 24 + 8 * t] = (0, 230, 0)
    return video


CFG = SegmentConfig.fast().replace(k=3, n_init=3, window=4)


def labels_of(seg, video, gt=None):
    return np.stack([r.labels.numpy() for r in seg.segment(video, gt, progress=False)])


# ------------------------------------------------------------------ registry


def test_the_registry_names_every_method_and_refuses_unknown_ones():
    assert list(METHODS) == [
        "vidseg",
        "vidseg-no-refine",
        "vidseg-no-context-update",
        "vidseg-bilinear",
        "kmeans-frame",
        "diffseg-frame",
        "emerdiff-frame",
        "propagate-first-frame",
    ]
    for m in METHODS.values():
        assert m.paper and m.summary  # every method cites its source
        for cfg in (CFG, SegmentConfig.paper_sd()):
            assert m.resolve(m.resolve(cfg)) == m.resolve(cfg)  # idempotent
    with pytest.raises(ConfigError, match="not known; choose from vidseg"):
        get_method("diffseg")


def test_available_follows_the_backbones_capabilities(tiny):
    assert available(tiny) == list(METHODS)  # SD: features, modulation, attention maps
    assert available(cells(FeaturesOnly)) == [
        "vidseg",
        "vidseg-no-refine",
        "vidseg-no-context-update",
        "kmeans-frame",
        "propagate-first-frame",
    ]
    with pytest.raises(ConfigError, match="emerdiff-frame needs masked modulation"):
        segmenter(cells(FeaturesOnly), CFG, "emerdiff-frame")


def test_gt_use_is_checked():
    with pytest.raises(ConfigError, match="takes no first-frame GT"):
        get_method("kmeans-frame").check(cells(), use_first_frame_gt=True)
    get_method("vidseg").check(cells(), use_first_frame_gt=True)
    get_method("vidseg").check(cells(), use_first_frame_gt=False)


def test_a_methods_hash_covers_its_own_sections_only(tiny):
    assert SECTIONS == ("diffseg", "propagate")
    base = SegmentConfig.tiny()
    legacy = {k: v for k, v in base.to_dict().items() if k not in SECTIONS}
    assert hashed_config(base) == legacy  # VidSeg hashes what it hashed before methods existed
    assert "diffseg" in hashed_config(base, "diffseg-frame")
    assert "propagate" not in hashed_config(base, "diffseg-frame")
    other = base.replace(kl_threshold=0.9)
    assert config_hash(other, tiny, False) == config_hash(base, tiny, False)
    assert config_hash(other, tiny, False, "diffseg-frame") != config_hash(
        base, tiny, False, "diffseg-frame"
    )
    keys = {config_hash(base, tiny, False, m) for m in ("vidseg", "kmeans-frame", "diffseg-frame")}
    assert len(keys) == 3
    forced = resolve(base, "kmeans-frame")
    assert forced.context.propagation == "per-frame-kmeans" and not forced.refine.enabled


# ------------------------------------------------------------------ vidseg variants


def test_no_refine_skips_refinement(monkeypatch):
    seen = []
    real = pipeline.refine

    def spy(coarse, feats, cfg):
        seen.append(cfg.enabled)
        return real(coarse, feats, cfg)

    monkeypatch.setattr(pipeline, "refine", spy)
    video = planted_video()
    labels_of(segmenter(cells(), CFG, "vidseg"), video)
    assert seen and all(seen)
    seen.clear()
    labels_of(segmenter(cells(), CFG, "vidseg-no-refine"), video)
    assert seen and not any(seen)


def test_no_context_update_never_refits_the_scene_context(monkeypatch):
    calls = []
    real = SceneContext.update
    monkeypatch.setattr(
        SceneContext, "update", lambda self, f, y: calls.append(1) or real(self, f, y)
    )
    video = planted_video()
    labels_of(segmenter(cells(), CFG, "vidseg"), video)
    assert len(calls) == 2  # one refit per window (6 frames, window 4)
    calls.clear()
    seg = segmenter(cells(), CFG, "vidseg-no-context-update")
    labels = labels_of(seg, video)
    assert calls == [] and labels.shape == (6, 48, 64)


def test_bilinear_replaces_modulation_and_vidseg_modulates():
    video = planted_video()
    cfg = CFG.replace(method="modulation")
    seg = segmenter(cells(), cfg, "vidseg")
    labels_of(seg, video)
    assert seg.stats.upsampler == "modulation"
    seg = segmenter(cells(), cfg, "vidseg-bilinear")
    labels_of(seg, video)
    assert seg.stats.upsampler == "bilinear" and seg.cfg.upsample.method == "bilinear"


# ------------------------------------------------------------------ per-frame methods


def test_kmeans_frame_clusters_each_frame_alone_as_readme_variant_a():
    video = planted_video()
    seg = segmenter(cells(), CFG, "kmeans-frame")
    results = list(seg.segment(video, return_debug=True, progress=False))
    labels = np.stack([r.labels.numpy() for r in results])
    for r in results:  # three planted regions, ids by first appearance in raster order
        assert set(np.unique(r.coarse.numpy())) == {0, 1, 2}
        assert r.coarse[0, 0] == 0
    # the same labels as the Segmenter's per-frame-kmeans option (README DINOv2 row a)
    option = CFG.replace(propagation="per-frame-kmeans", refine=CFG.refine.replace(enabled=False))
    assert np.array_equal(labels, labels_of(pipeline.Segmenter(cells(), option), video))
    assert np.array_equal(labels, labels_of(segmenter(cells(), CFG, "kmeans-frame"), video))


def test_emerdiff_frame_modulates_per_frame_kmeans_on_the_tiny_model(tiny):
    video = torch.from_numpy(planted_video(3)).permute(0, 3, 1, 2).contiguous()
    video = F.interpolate(video.float(), size=(64, 128), mode="nearest").to(torch.uint8)
    cfg = SegmentConfig.tiny().replace(k=3, n_init=2, window=3, modulation_batch=0)
    seg = segmenter(tiny, cfg, "emerdiff-frame")
    results = list(seg.segment(video, return_debug=True, progress=False))
    assert seg.stats.upsampler == "modulation" and seg.stats.vae_decodes > 0
    # the stages by hand: features -> k-means per frame -> masked modulation
    window = next(open_video(video).windows(3))
    feats = extract(tiny, window, seg.cfg)
    coarse = per_frame_kmeans(feats.features, seg.cfg.context)
    expected = modulate(tiny, feats, coarse, seg.cfg).labels
    for j, r in enumerate(results):
        assert torch.equal(r.coarse, coarse[j])
        assert torch.equal(r.labels, expected[j])
    kmeans = segmenter(tiny, cfg, "kmeans-frame")
    plain = list(kmeans.segment(video, return_debug=True, progress=False))
    assert all(torch.equal(a.coarse, b.coarse) for a, b in zip(plain, results, strict=True))
    assert kmeans.stats.upsampler == "bilinear" and kmeans.stats.unet_evals < seg.stats.unet_evals


# ------------------------------------------------------------------ through the runner


@pytest.fixture(scope="module")
def folder_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    from PIL import Image

    video = planted_video(5)
    for name in ("a", "b"):
        (root / name).mkdir()
        (root / "labels" / name).mkdir(parents=True)
        for t, frame in enumerate(video):
            Image.fromarray(frame).save(root / name / f"{t:03d}.png")
            lab = (frame[..., 2] > 100).astype(np.uint8) + 2 * (frame[..., 1] > 100).astype(
                np.uint8
            )
            Image.fromarray(lab).save(root / "labels" / name / f"{t:03d}.png")
    return open_dataset("folder", root, num_classes=3)


def test_the_runner_runs_a_method_and_resumes_by_its_hash(folder_dataset, tmp_path):
    backbone = cells()
    manifest = run_dataset(
        folder_dataset, tmp_path, backbone, CFG, shard=(0, 1), progress=False, method="kmeans-frame"
    )
    assert manifest["method"] == "kmeans-frame"
    assert manifest["config"]["context"]["propagation"] == "per-frame-kmeans"  # resolved
    done = json.loads((tmp_path / "a" / DONE_FILE).read_text())
    assert done["method"] == "kmeans-frame"
    assert done["config_hash"] == config_hash(CFG, backbone, False, "kmeans-frame")
    again = run_dataset(
        folder_dataset, tmp_path, backbone, CFG, shard=(0, 1), resume=True, progress=False,
        method="kmeans-frame",
    )  # fmt: skip
    assert again["videos_skipped"] == ["a", "b"]
    other = run_dataset(
        folder_dataset, tmp_path, backbone, CFG, shard=(0, 1), resume=True, progress=False
    )
    assert other["videos_skipped"] == []  # vidseg is another method: recomputed


def test_the_runner_refuses_a_method_before_writing(folder_dataset, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="needs masked modulation"):
        run_dataset(folder_dataset, out, cells(FeaturesOnly), CFG, method="emerdiff-frame")
    with pytest.raises(ConfigError, match="takes no first-frame GT"):
        run_dataset(
            folder_dataset, out, cells(), CFG, use_first_frame_gt=True, method="kmeans-frame"
        )
    assert not out.exists()
