"""Tests of zsvss_nb.methods.propagate: the propagation kernel against DINO's formulation, and
planted translating patterns that only a correct neighbourhood and queue can follow."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zsvss_nb import SegmentConfig
from zsvss_nb.backbones.base import Backbone, FeatureResult
from zsvss_nb.config import PropagateConfig
from zsvss_nb.errors import ConfigError
from zsvss_nb.methods import get_method, segmenter
from zsvss_nb.methods.propagate import neighbourhood, normalise_classes, propagate_step


def reference_step(target, sources, segs, radius, topk, temperature, grid_hw):
    """DINO's label_propagation written out: exp(cos / T), local mask, top-k, normalise."""
    h, w = grid_hw
    n = h * w
    mask = np.zeros((n, n))
    for i in range(h):
        for j in range(w):
            for p in range(max(0, i - radius), min(h, i + radius + 1)):
                for q in range(max(0, j - radius), min(w, j + radius + 1)):
                    mask[i * w + j, p * w + q] = 1
    aff = np.stack([np.exp(target @ s.T / temperature) * mask for s in sources])  # [S, N, N]
    aff = aff.transpose(0, 2, 1).reshape(-1, n)  # (source cells) x (target cells)
    kth = np.sort(aff, axis=0)[-topk]
    aff = np.where(aff < kth, 0.0, aff)
    aff = aff / aff.sum(0, keepdims=True)
    return (segs.reshape(-1, segs.shape[-1]).T @ aff).T


def test_propagate_step_is_dinos_label_propagation():
    gen = torch.Generator().manual_seed(0)
    h, w, c, k = 5, 6, 8, 3
    target = F.normalize(torch.randn(h * w, c, generator=gen, dtype=torch.float64), dim=-1)
    sources = F.normalize(torch.randn(3, h * w, c, generator=gen, dtype=torch.float64), dim=-1)
    segs = torch.softmax(torch.randn(3, h * w, k, generator=gen, dtype=torch.float64), -1)
    cfg = PropagateConfig(radius=2, topk=4, temperature=0.1)
    got = propagate_step(target, sources, segs, neighbourhood((h, w), 2), cfg)
    want = reference_step(target.numpy(), sources.numpy(), segs.numpy(), 2, 4, 0.1, (h, w))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-9, atol=1e-12)


def test_neighbourhood_is_a_square_window_and_radius_zero_is_unrestricted():
    near = neighbourhood((4, 5), 1)
    assert near.shape == (20, 20) and bool(near[0, 0]) and bool(near[0, 6])
    assert not bool(near[0, 2]) and not bool(near[0, 10])
    assert int(near[7].sum()) == 9
    assert neighbourhood((4, 5), 0) is None


def test_normalise_classes_is_dinos_norm_mask():
    scores = torch.tensor([[[1.0, 3.0]], [[0.0, 0.0]], [[2.0, 2.0]]])
    out = normalise_classes(scores)
    torch.testing.assert_close(out, torch.tensor([[[0.0, 1.0]], [[0.0, 0.0]], [[2.0, 2.0]]]))


@dataclass(eq=False)
class CellColours(Backbone):
    """Features: the mean RGB of each 8x8 cell (the planted structure is in the colours)."""

    size_multiple: ClassVar[int] = 8
    feature_stride: ClassVar[int] = 8

    def extract_features(self, images, geometry, cfg, **options) -> FeatureResult:
        cells = F.avg_pool2d(images, 8).permute(0, 2, 3, 1)
        return FeatureResult(cells, cells, {0: cells}, images, geometry, {"feature_pass": 0.0})


def two_squares(frames: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Two identical green squares on grey, one moving right and one moving left by one
    8-pixel cell per frame, far apart vertically. Returns (video, GT [T, H, W]): background 0,
    the upper square 1, the lower square 2. Colour alone cannot tell the squares apart."""
    video = np.full((frames, 96, 128, 3), 90, dtype=np.uint8)
    gt = np.zeros((frames, 96, 128), dtype=np.int64)
    for t in range(frames):
        a, b = 8 + 8 * t, 96 - 8 * t
        video[t, 8:32, a : a + 24] = (20, 220, 40)
        gt[t, 8:32, a : a + 24] = 1
        video[t, 64:88, b : b + 24] = (20, 220, 40)
        gt[t, 64:88, b : b + 24] = 2
    return video, gt


def run(video, gt0, cfg):
    backbone = CellColours("cells", torch.device("cpu"), torch.float32, {"name": "cells"})
    seg = segmenter(backbone, cfg, "propagate-first-frame")
    return np.stack([r.labels.numpy() for r in seg.segment(video, gt0, progress=False)])


@pytest.mark.parametrize("window", [3, 8])
def test_propagation_follows_two_translating_squares(window):
    video, gt = two_squares()
    cfg = SegmentConfig.fast().replace(window=window, radius=2, n_last_frames=3)
    labels = run(video, gt[0], cfg)
    assert labels.shape == gt.shape
    inner = np.s_[:, 4::8, 4::8]  # cell centres
    assert (labels[inner] == gt[inner]).mean() == 1.0  # each square keeps its own label
    again = run(video, gt[0], cfg)
    assert np.array_equal(again, labels)


def test_without_the_neighbourhood_the_squares_are_confused():
    """Unrestricted attention matches any green cell, so the planted structure is what the
    radius resolves: the test above fails for a propagation without it."""
    video, gt = two_squares()
    cfg = SegmentConfig.fast().replace(window=8, radius=0, n_last_frames=3)
    labels = run(video, gt[0], cfg)
    squares = gt[:, 4::8, 4::8] > 0
    assert (labels[:, 4::8, 4::8][squares] != gt[:, 4::8, 4::8][squares]).any()


def test_void_cells_never_become_a_class_and_ids_are_the_gts():
    video, gt = two_squares(4)
    gt0 = gt[0].copy()
    gt0[:, :8] = -1  # void strip on the left
    gt0 = np.where(gt0 == 2, 7, gt0)  # class ids are kept as they are
    labels = run(video, gt0, SegmentConfig.fast().replace(window=4, radius=2))
    assert set(np.unique(labels)) <= {0, 1, 7}


def test_propagation_needs_the_first_frame_gt():
    video, _ = two_squares(2)
    backbone = CellColours("cells", torch.device("cpu"), torch.float32, {"name": "cells"})
    seg = segmenter(backbone, SegmentConfig.fast(), "propagate-first-frame")
    with pytest.raises(ConfigError, match="first frame's GT"):
        list(seg.segment(video))
    with pytest.raises(ConfigError, match="needs it"):
        get_method("propagate-first-frame").check(backbone, use_first_frame_gt=False)
    for bad in ({"topk": 0}, {"temperature": 0.0}, {"radius": -1}):
        with pytest.raises(ConfigError):
            PropagateConfig(**bad)
