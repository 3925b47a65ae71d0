"""Tests of zsvss_nb.refine against a per-point loop reference that follows METHOD 1.6."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
import torch

from zsvss_nb.config import RefineConfig
from zsvss_nb.errors import LabelError
from zsvss_nb.refine import refine, track

# -- loop reference ------------------------------------------------------------------------------


def ref_tracks(feats: np.ndarray, cfg: RefineConfig) -> tuple[list[list[tuple[int, int]]], list]:
    """Per-point tracking and filtering, literally as METHOD 1.6 (and the default variant)."""
    b, h, w, _ = feats.shape
    f = feats / np.linalg.norm(feats, axis=-1, keepdims=True)
    cells = [(y, x) for y in range(h) for x in range(w)]
    trajs, valid = [], []
    for y0, x0 in cells:
        traj = [(y0, x0)]
        for t in range(b - 1):
            y, x = traj[-1]
            best, best_s = None, -np.inf
            for qy, qx in cells:  # scan in raster order; strict '>' keeps the lowest index
                cos_next = float(np.dot(f[t, y, x], f[t + 1, qy, qx]))
                if not cfg.use_aux:
                    s = cos_next
                elif cfg.paper_compat:
                    s = t / (t + 1) * cos_next + 1 / (t + 1) * float(
                        np.dot(f[t, y, x], f[0, qy, qx])
                    )
                else:
                    cos_tmpl = float(np.dot(f[0, y0, x0], f[t + 1, qy, qx]))
                    s = (t + 1) / (t + 2) * cos_next + 1 / (t + 2) * cos_tmpl
                if s > best_s:
                    best, best_s = (qy, qx), s
            traj.append(best)
        ok = True
        for i in range(1, b):
            dy, dx = traj[i][0] - traj[i - 1][0], traj[i][1] - traj[i - 1][1]
            if not cfg.paper_compat:
                dy, dx = abs(dy), abs(dx)
            if dy > cfg.hop_threshold or dx > cfg.hop_threshold:
                ok = False
        trajs.append(traj)
        valid.append(ok)
    return trajs, valid


def ref_refine(labels: np.ndarray, feats: np.ndarray, cfg: RefineConfig) -> np.ndarray:
    trajs, valid = ref_tracks(feats, cfg)
    out = labels.copy()
    for traj, ok in zip(trajs, valid, strict=True):
        if not ok:
            continue
        votes = [labels[i, y, x] for i, (y, x) in enumerate(traj)]
        winner = Counter(votes).most_common(1)[0][0]
        for i, (y, x) in enumerate(traj):
            out[i, y, x] = winner
    return out


CONFIGS = [
    RefineConfig(paper_compat=pc, use_aux=aux)
    for pc, aux in itertools.product([False, True], [True, False])
]


def shifting(b: int, h: int, w: int, c: int, vy: int, vx: int, seed: int) -> np.ndarray:
    """Random codes attached to a texture that moves (vy, vx) cells per frame: [b, h, w, c]."""
    rng = np.random.default_rng(seed)
    oy, ox = abs(vy) * b, abs(vx) * b
    tex = rng.standard_normal((h + 2 * oy, w + 2 * ox, c))
    ys, xs = np.arange(h), np.arange(w)
    frames = [tex[(ys - vy * t + oy)[:, None], (xs - vx * t + ox)[None, :]] for t in range(b)]
    return np.stack(frames)


# -- equality with the loop reference ------------------------------------------------------------


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"compat{c.paper_compat}-aux{c.use_aux}")
@pytest.mark.parametrize("kind", ["random", "shifting"])
def test_refine_equals_loop_reference(cfg: RefineConfig, kind: str) -> None:
    rng = np.random.default_rng(0)
    b, h, w, c = 6, 5, 7, 8
    if kind == "random":
        feats = rng.standard_normal((b, h, w, c))
    else:
        feats = shifting(b, h, w, c, 0, 1, seed=1) + 0.3 * rng.standard_normal((b, h, w, c))
    labels = rng.integers(0, 3, size=(b, h, w))
    ft = torch.from_numpy(feats)
    tr = track(ft, cfg)
    trajs, valid = ref_tracks(feats, cfg)
    assert tr.positions.shape == (b, h * w, 2) and tr.positions.dtype == torch.long
    assert tr.positions.permute(1, 0, 2).tolist() == [[list(p) for p in t] for t in trajs]
    assert tr.valid.tolist() == valid
    out = refine(torch.from_numpy(labels), ft, cfg)
    np.testing.assert_array_equal(out.numpy(), ref_refine(labels, feats, cfg))
    if kind == "shifting" and not cfg.paper_compat:
        assert 0 < sum(valid) < h * w  # both branches of the filter are exercised


def test_exact_ties_go_to_the_lowest_index_and_later_tracks_win_collisions() -> None:
    # The second frame is constant: every cell ties, so every track hops to cell 0 and all
    # surviving tracks collide there. Each track votes [its seed id, 100] -> tie -> seed id.
    b, h, w = 2, 3, 4
    feats = torch.zeros(b, h, w, 3, dtype=torch.float64)
    feats[0] = torch.randn(h, w, 3, dtype=torch.float64)
    feats[1, :, :, 0] = 1.0
    labels = torch.stack([torch.arange(h * w).view(h, w), 100 + torch.arange(h * w).view(h, w)])
    for cfg in (RefineConfig(use_aux=False), RefineConfig(use_aux=False, paper_compat=True)):
        assert (track(feats, cfg).positions[1] == 0).all()
        out = refine(labels, feats, cfg)
        np.testing.assert_array_equal(out.numpy(), ref_refine(labels.numpy(), feats.numpy(), cfg))
        assert torch.equal(out[0], labels[0])
        assert torch.equal(out[1].flatten()[1:], labels[1].flatten()[1:])
    # absolute filter: only seeds within one cell of (0, 0) survive, the last is (1, 1) = 5;
    # signed filter: every move is up/left, all survive, the last seed (11) wins.
    assert refine(labels, feats, RefineConfig(use_aux=False))[1, 0, 0].item() == 5
    signed = RefineConfig(use_aux=False, paper_compat=True)
    assert refine(labels, feats, signed)[1, 0, 0].item() == 11


def test_majority_tie_goes_to_the_first_seen_label() -> None:
    b, h, w = 4, 2, 3
    feats = torch.randn(1, h, w, 16, dtype=torch.float64).repeat(b, 1, 1, 1)  # static scene
    labels = torch.zeros(b, h, w, dtype=torch.long)
    labels[:, 0, 0] = torch.tensor([2, 1, 1, 2])
    labels[:, 0, 1] = torch.tensor([1, 2, 2, 1])
    labels[:, 1, 2] = torch.tensor([3, 4, 4, 4])
    out = refine(labels, feats)
    assert out[:, 0, 0].tolist() == [2] * 4
    assert out[:, 0, 1].tolist() == [1] * 4
    assert out[:, 1, 2].tolist() == [4] * 4


# -- planted motion ------------------------------------------------------------------------------


def test_tracks_follow_a_translating_texture_and_fix_label_errors() -> None:
    b, h, w, c = 5, 6, 10, 32
    feats = torch.from_numpy(shifting(b, h, w, c, 0, 1, seed=2))
    tr = track(feats)
    pos = tr.positions.view(b, h, w, 2)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    inside = xs + (b - 1) < w  # content that stays in view for the whole window
    for t in range(b):
        assert torch.equal(pos[t, ..., 0][inside], ys[inside])
        assert torch.equal(pos[t, ..., 1][inside], (xs + t)[inside])
    assert tr.valid.view(h, w)[inside].all()
    # Labels attached to the content (two vertical bands), with an error planted on one
    # content cell in 2 of 5 frames: the track's majority corrects it.
    content = (torch.arange(-b, w) >= 3).long()  # label of content column x - t
    truth = torch.stack([content[(xs - t + b)] for t in range(b)])
    noisy = truth.clone()
    noisy[1, 2, 2 + 1] = 1 - truth[1, 2, 2 + 1]  # content column 2 in frame 1 sits at x = 3
    noisy[3, 2, 2 + 3] = 1 - truth[3, 2, 2 + 3]
    out = refine(noisy, feats)
    assert torch.equal(out, truth)
    np.testing.assert_array_equal(
        out.numpy(), ref_refine(noisy.numpy(), feats.numpy(), RefineConfig())
    )


def test_signed_and_absolute_filters_differ_on_up_left_jumps() -> None:
    b, h, w, c = 4, 8, 9, 32
    cfg_abs = RefineConfig(use_aux=False)
    cfg_signed = RefineConfig(use_aux=False, paper_compat=True)
    left = torch.from_numpy(shifting(b, h, w, c, 0, -2, seed=3))  # content jumps 2 cells left
    up = torch.from_numpy(shifting(b, h, w, c, -2, 0, seed=4))
    for feats, axis in ((left, 1), (up, 0)):
        tr_abs, tr_signed = track(feats, cfg_abs), track(feats, cfg_signed)
        assert torch.equal(tr_abs.positions, tr_signed.positions)
        start = tr_abs.positions[0, :, axis]
        stays = start - 2 * (b - 1) >= 0  # seeds whose content stays in view
        hops = tr_abs.positions[1:, stays, axis] - tr_abs.positions[:-1, stays, axis]
        assert (hops == -2).all()
        assert not tr_abs.valid[stays].any()  # |-2| > 1: dropped
        assert tr_signed.valid[stays].all()  # -2 > 1 is false: the reference keeps them
    down = torch.from_numpy(shifting(b, h, w, c, 2, 0, seed=5))
    stays = torch.arange(h * w) // w + 2 * (b - 1) < h
    assert not track(down, cfg_abs).valid[stays].any()
    assert not track(down, cfg_signed).valid[stays].any()


def test_paper_compat_first_hop_is_the_identity() -> None:
    feats = torch.from_numpy(shifting(4, 5, 8, 16, 0, 1, seed=6))
    tr = track(feats, RefineConfig(paper_compat=True))
    assert torch.equal(tr.positions[1], tr.positions[0])
    assert not torch.equal(track(feats).positions[1], track(feats).positions[0])


def test_refine_disabled_single_frame_and_bad_input() -> None:
    feats = torch.randn(3, 4, 5, 8)
    labels = torch.randint(0, 4, (3, 4, 5))
    assert refine(labels, feats, RefineConfig(enabled=False)) is labels
    one = refine(labels[:1], feats[:1])
    assert torch.equal(one, labels[:1])
    assert track(feats[:1]).valid.all()
    with pytest.raises(LabelError):
        refine(labels[:, :3], feats)
    with pytest.raises(LabelError):
        refine(labels.float(), feats)


def test_min_survival_raises_the_hop_threshold_for_fast_motion() -> None:
    # content moves 2 cells per frame (a low frame rate): the paper's 1-cell filter drops
    # every track; min_survival raises the window's threshold to 2, which keeps the tracks
    # of content in view and no more than needed
    b, h, w, c = 4, 5, 16, 32
    feats = torch.from_numpy(shifting(b, h, w, c, 0, 2, seed=4))
    assert not track(feats).valid.any()
    tr = track(feats, RefineConfig(min_survival=0.5))
    xs = torch.arange(w).repeat(h)
    inside = xs + 2 * (b - 1) < w
    assert tr.valid[inside].all()
    longest = (tr.positions[1:] - tr.positions[:-1]).abs().amax(-1).amax(0)
    assert int(longest[tr.valid].max()) == 2
    # a threshold that already keeps enough tracks is not changed
    slow = torch.from_numpy(shifting(b, h, w, c, 0, 1, seed=4))
    assert torch.equal(track(slow, RefineConfig(min_survival=0.2)).valid, track(slow).valid)


def test_min_survival_outside_the_unit_interval_is_refused() -> None:
    from zsvss_nb.errors import ConfigError

    with pytest.raises(ConfigError, match="min_survival"):
        RefineConfig(min_survival=1.5)
