"""Tests of zsvss_nb.methods.diffseg: DiffSeg's kernels against plain references, planted
block-diagonal attention recovered, and the method end to end on a backbone with planted maps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zsvss_nb import SegmentConfig
from zsvss_nb.backbones.base import AttentionMaps, Backbone
from zsvss_nb.config import DiffSegConfig
from zsvss_nb.errors import ConfigError
from zsvss_nb.kernels.frames import Geometry
from zsvss_nb.methods import segmenter
from zsvss_nb.methods.diffseg import (
    aggregate_attention,
    anchor_axis,
    anchor_grid,
    greedy_merge,
    merge_attention,
    proposal_labels,
    symmetric_kl,
)

# ------------------------------------------------------------------ plain references


def reference_axis(size: int, count: int) -> list[int]:
    """google/diffseg's generate_sampling_grid along one axis, written for any size."""
    segment_len = (size - 1) // (count - 1)
    total_len = segment_len * (count - 1)
    start = (size - 1 - total_len) // 2
    return [int(v) for v in np.linspace(start, total_len + start, count)]


def reference_kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    out = np.zeros((len(p), len(q)))
    for i, x in enumerate(p):
        for j, y in enumerate(q):
            quotient = np.log(x) - np.log(y)
            out[i, j] = (x * quotient).sum() / 2 - (y * quotient).sum() / 2
    return out


def reference_merge(close: np.ndarray, attns: np.ndarray) -> np.ndarray:
    """The official later merging iteration (segmentor.py mask_merge, iter > 0)."""
    matched, new = set(), []
    for i in range(len(attns)):
        if i in matched:
            continue
        matched.add(i)
        row = close[i]
        matched.update(np.flatnonzero(row).tolist())
        new.append(attns[row].mean(0))
    return np.array(new)


def reference_aggregate(maps: list[torch.Tensor]) -> torch.Tensor:
    """One query cell and one resolution at a time: upsample the key map, renormalise, weight."""
    _, H, W = maps[0].shape[:3]
    sides = [float(m.shape[1] * m.shape[2]) ** 0.5 for m in maps]
    out = torch.zeros(H * W, H * W)
    for m, side in zip(maps, sides, strict=True):
        h, w = m.shape[1:3]
        for Y in range(H):
            for X in range(W):
                key = m[0, Y * h // H, X * w // W][None, None]
                up = F.interpolate(key, size=(H, W), mode="bilinear", align_corners=False)
                out[Y * W + X] += side / sum(sides) * (up / up.sum()).reshape(-1)
    return out


def planted_attention(regions: np.ndarray, leak: float = 1e-3) -> torch.Tensor:
    """Block-diagonal attention on a grid: each cell attends uniformly to its own region.

    regions: [h, w] region ids -> [1, h, w, h, w], rows summing to 1 (``leak`` elsewhere).
    """
    flat = regions.reshape(-1)
    same = flat[:, None] == flat[None, :]
    inside = same / same.sum(1, keepdims=True) * (1 - leak)
    outside = ~same / np.maximum((~same).sum(1, keepdims=True), 1) * leak
    h, w = regions.shape
    return torch.from_numpy(inside + outside).float().reshape(1, h, w, h, w)


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two label maps split the pixels identically (up to renaming)."""
    pairs = {(int(x), int(y)) for x, y in zip(a.reshape(-1), b.reshape(-1), strict=True)}
    return len(pairs) == len(np.unique(a)) == len(np.unique(b))


def planted_regions(h: int = 16, w: int = 16) -> np.ndarray:
    """A disk, a diagonal band and two background halves: not block-shaped in raster order."""
    y, x = np.mgrid[:h, :w]
    regions = (x >= w // 2).astype(int)
    regions[abs(y - x) <= 1] = 2
    regions[(y - 4) ** 2 + (x - 11) ** 2 <= 6] = 3
    return regions


# ------------------------------------------------------------------ kernels


@pytest.mark.parametrize("size,count", [(64, 16), (56, 16), (40, 16), (24, 16), (17, 4)])
def test_anchor_axis_is_diffsegs_sampling_grid(size, count):
    assert anchor_axis(size, count).tolist() == reference_axis(size, count)


def test_anchor_grid_small_grids_use_every_cell_and_raster_order():
    assert anchor_axis(5, 16).tolist() == [0, 1, 2, 3, 4]
    assert anchor_axis(9, 1).tolist() == [4]
    grid = anchor_grid((3, 4), 16)
    assert grid.tolist() == list(range(12))


def test_symmetric_kl_matches_the_official_formula():
    gen = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(5, 30, generator=gen, dtype=torch.float64), 1)
    q = torch.softmax(torch.randn(7, 30, generator=gen, dtype=torch.float64), 1)
    np.testing.assert_allclose(symmetric_kl(p, q).numpy(), reference_kl(p.numpy(), q.numpy()))
    assert torch.allclose(symmetric_kl(p, p).diagonal(), torch.zeros(5, dtype=torch.float64))


def test_greedy_merge_matches_the_official_iteration():
    gen = torch.Generator().manual_seed(1)
    attns = torch.softmax(torch.randn(12, 20, generator=gen, dtype=torch.float64), 1)
    close = torch.rand(12, 12, generator=gen) < 0.3
    close = close | close.T | torch.eye(12, dtype=torch.bool)
    expected = reference_merge(close.numpy(), attns.numpy())
    np.testing.assert_allclose(greedy_merge(close, attns).numpy(), expected)


def test_aggregation_matches_a_per_query_reference():
    gen = torch.Generator().manual_seed(2)
    maps = [
        torch.softmax(torch.randn(1, h, w, h * w, generator=gen), -1).reshape(1, h, w, h, w)
        for h, w in ((8, 6), (4, 3), (2, 2))
    ]
    got = aggregate_attention(maps)[0]
    torch.testing.assert_close(got, reference_aggregate(maps), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got.sum(-1), torch.ones(48))
    uniform = aggregate_attention(maps, "uniform")[0]
    assert not torch.allclose(uniform, got)


# ------------------------------------------------------------------ planted structure


@pytest.mark.parametrize("coarse", [False, True])
def test_planted_block_diagonal_attention_is_recovered(coarse):
    regions = planted_regions()
    maps = [planted_attention(regions)]
    if coarse:  # the same structure seen by a coarser layer too (the finer one wins ties)
        maps.append(planted_attention(regions[::2, ::2]))
    attn = aggregate_attention(maps)[0]
    proposals = merge_attention(attn, (16, 16), DiffSegConfig())
    assert proposals.shape[0] == 4  # 256 anchors merged into one proposal per region
    cells = proposal_labels(proposals, (16, 16), Geometry((16, 16), (16, 16), "resize64"))
    assert same_partition(cells.numpy(), regions)  # the argmax at the cells is the planting
    pixels = proposal_labels(proposals, (16, 16), Geometry((64, 64), (64, 64), "resize64"))
    assert pixels.shape == (64, 64) and set(np.unique(pixels.numpy())) == {0, 1, 2, 3}


def test_a_low_threshold_keeps_regions_apart_and_one_high_merges_them():
    regions = planted_regions()
    attn = aggregate_attention([planted_attention(regions, leak=0.2)])[0]
    kl = symmetric_kl(attn, attn)
    between = kl[torch.from_numpy(regions.reshape(-1)[:, None] != regions.reshape(-1)[None])]
    high = DiffSegConfig(kl_threshold=float(between.max()) + 1.0)
    assert merge_attention(attn, (16, 16), high).shape[0] == 1
    low = DiffSegConfig(kl_threshold=float(between.min()) / 2)
    assert merge_attention(attn, (16, 16), low).shape[0] == 4


# ------------------------------------------------------------------ the method end to end


@dataclass(eq=False)
class ColourAttention(Backbone):
    """Attention between 8x8 cells by colour: each cell attends to cells of its own colour, at
    two resolutions (8 and 16 pixels a cell). No features, no modulation."""

    size_multiple: ClassVar[int] = 16
    has_attention_maps: ClassVar[bool] = True

    def attention_maps(self, images, geometry, cfg) -> AttentionMaps:
        maps = []
        for stride in (8, 16):
            cells = F.avg_pool2d(images, stride).permute(0, 2, 3, 1)  # [B, h, w, 3]
            b, h, w, _ = cells.shape
            flat = cells.reshape(b, h * w, 3)
            logits = -(torch.cdist(flat, flat) ** 2) / 0.01
            maps.append(torch.softmax(logits, -1).reshape(b, h, w, h, w))
        return AttentionMaps(maps=tuple(maps), seconds={"attention_pass": 0.0}, unet_evals=0)


def planted_video(frames: int = 4) -> np.ndarray:
    """Red left half, blue right half, a green square drifting right: three colour regions,
    aligned with 16-pixel cells (so no cell of either resolution mixes colours)."""
    video = np.zeros((frames, 64, 128, 3), dtype=np.uint8)
    video[:, :, :64, 0] = 220
    video[:, :, 64:, 2] = 220
    for t in range(frames):
        video[t, 16:48, 16 + 16 * t : 48 + 16 * t] = (0, 230, 0)
    return video


def test_diffseg_frame_segments_planted_colour_regions_per_frame():
    backbone = ColourAttention("colours", torch.device("cpu"), torch.float32, {"name": "c"})
    video = planted_video()
    cfg = SegmentConfig.fast().replace(window=3)
    seg = segmenter(backbone, cfg, "diffseg-frame")
    results = list(seg.segment(video, progress=False))
    assert len(results) == 4 and seg.stats.upsampler == "bilinear"
    truth = np.zeros(video.shape[:3], int)
    truth[:, :, 64:] = 1
    truth[(video[..., 1] > 100)] = 2
    for r in results:
        labels = r.labels.numpy()
        assert labels.shape == (64, 128)
        inner = np.s_[4:-4:8, 4:-4:8]  # cell centres away from the region borders
        assert same_partition(labels[inner], truth[r.index][inner])
    again = [r.labels for r in segmenter(backbone, cfg, "diffseg-frame").segment(video)]
    assert all(torch.equal(a, r.labels) for a, r in zip(again, results, strict=True))


def test_diffseg_needs_attention_maps():
    bare = Backbone("bare", torch.device("cpu"), torch.float32, {"name": "bare"})
    with pytest.raises(ConfigError, match="diffseg-frame needs self-attention maps"):
        segmenter(bare, SegmentConfig.fast(), "diffseg-frame")
    with pytest.raises(ConfigError, match="no self-attention maps"):
        bare.attention_maps(torch.zeros(1, 3, 64, 64), None, SegmentConfig.fast())


def test_diffseg_config_is_validated():
    for bad in ({"timestep": 1000}, {"anchors": 0}, {"kl_threshold": 0.0}, {"weighting": "x"}):
        with pytest.raises(ConfigError):
            DiffSegConfig(**bad)
