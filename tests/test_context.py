"""Tests of zsvss_nb.context: k-means, KNN, majority mapping and the scene context model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zsvss_nb.config import ContextConfig
from zsvss_nb.context import (
    SceneContext,
    _lloyd,
    kmeans,
    knn_distance,
    knn_predict,
    majority_map,
    merge_clusters,
)
from zsvss_nb.errors import ConfigError, LabelError


def sklearn_obj(module: str, name: str):
    """An sklearn object for the comparison tests (skipped when sklearn is missing)."""
    return getattr(pytest.importorskip(f"sklearn.{module}"), name)


def planted_blobs(
    n: int, dim: int, k: int, sep: float, seed: int
) -> tuple[torch.Tensor, np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, dim, generator=g) * sep
    truth = torch.randint(k, (n,), generator=g)
    x = centres[truth] + torch.randn(n, dim, generator=g)
    return x, truth.numpy()


# -- k-means -------------------------------------------------------------------------------------


def inertia(x: np.ndarray, labels: np.ndarray, centres: np.ndarray) -> float:
    return float(((x - centres[labels]) ** 2).sum())


def test_kmeans_matches_sklearn_inertia_and_recovers_planted_clusters() -> None:
    x, truth = planted_blobs(3000, 16, 8, sep=3.0, seed=0)
    cent, lab = kmeans(x, 8, n_init=10, seed=0)
    assert cent.shape == (8, 16) and lab.shape == (3000,) and lab.dtype == torch.long
    xn = x.numpy()
    ours = inertia(xn, lab.numpy(), cent.numpy())
    ref = sklearn_obj("cluster", "KMeans")(n_clusters=8, n_init=10, random_state=0).fit(xn)
    assert ours <= 1.01 * ref.inertia_
    assert sklearn_obj("metrics", "adjusted_rand_score")(truth, lab.numpy()) > 0.95
    # A converged k-means is a fixed point: labels are the nearest centres (loop reference) and
    # centres are the means of their points.
    for i in range(0, 3000, 97):
        d = [float(((x[i] - cent[j]) ** 2).sum()) for j in range(8)]
        assert lab[i].item() == int(np.argmin(d))
    for j in range(8):
        assert torch.allclose(cent[j], x[lab == j].mean(0), atol=1e-3)


def test_kmeans_is_deterministic_and_seed_dependent_only_through_init() -> None:
    x, _ = planted_blobs(600, 8, 5, sep=2.0, seed=1)
    c1, l1 = kmeans(x, 5, n_init=3, seed=7)
    c2, l2 = kmeans(x, 5, n_init=3, seed=7)
    assert torch.equal(c1, c2) and torch.equal(l1, l2)


def test_kmeans_rejects_k_beyond_distinct_points() -> None:
    base = torch.randn(12, 4)
    x = base.repeat(5, 1)  # 60 tokens, 12 distinct
    with pytest.raises(ConfigError, match="k=30 clusters .* 12 distinct"):
        kmeans(x, 30)
    with pytest.raises(ConfigError, match="only 60 tokens"):
        kmeans(x, 61)
    _, lab = kmeans(x, 12, n_init=2)
    assert lab.unique().numel() == 12


def test_lloyd_reseeds_an_empty_cluster_at_the_farthest_point() -> None:
    x = torch.tensor(
        [[0.0, 0.0], [0.1, 0.0], [10.0, 0.0], [10.1, 0.0], [30.0, 0.0]], dtype=torch.float64
    )
    x_sq = (x * x).sum(1)
    # The third centre is so far away that it gets no points in the first E-step.
    init = torch.tensor([[[0.05, 0.0], [10.05, 0.0], [1000.0, 0.0]]], dtype=torch.float64)
    cent, lab, inert = _lloyd(x, x_sq, init, iters=20, tol=0.0)
    assert sorted(lab[0].tolist()) == [0, 0, 1, 1, 2]
    assert lab[0, 4].item() == 2 and torch.allclose(cent[0, 2], x[4])
    assert inert[0].item() == pytest.approx(4 * 0.05**2, abs=1e-12)


# -- KNN -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("m", "n", "c", "chunk", "classes"),
    [(300, 500, 8, 64, [0, 1, 2, 3, 4]), (50, 37, 3, 4096, [3, 7, 100]), (20, 200, 2, 7, [0, 1])],
)
def test_knn_predict_equals_sklearn(m: int, n: int, c: int, chunk: int, classes: list) -> None:
    g = torch.Generator().manual_seed(m + n)
    ref_x = torch.randn(m, c, generator=g, dtype=torch.float64)
    ref_y = torch.tensor(classes)[torch.randint(len(classes), (m,), generator=g)]
    x = torch.randn(n, c, generator=g, dtype=torch.float64)
    ours = knn_predict(ref_x, ref_y, x, k=4, chunk=chunk)
    expected = (
        sklearn_obj("neighbors", "KNeighborsClassifier")(n_neighbors=4)
        .fit(ref_x.numpy(), ref_y.numpy())
        .predict(x.numpy())
    )
    assert ours.dtype == torch.long
    assert ours.tolist() == expected.tolist()
    # float32 path agrees on the same data too
    ours32 = knn_predict(ref_x.float(), ref_y, x.float(), k=4, chunk=chunk)
    assert (ours32 == ours).float().mean() > 0.99
    dist = knn_distance(ref_x, x, chunk=chunk)
    loop = [min(float(((x[i] - ref_x[j]) ** 2).sum()) ** 0.5 for j in range(m)) for i in range(n)]
    assert torch.allclose(dist, torch.tensor(loop, dtype=dist.dtype), atol=1e-9)


def test_knn_vote_tie_goes_to_the_smallest_label() -> None:
    ref_x = torch.tensor([[1.0], [2.0], [3.0], [4.0], [50.0]], dtype=torch.float64)
    ref_y = torch.tensor([9, 9, 2, 2, 0])
    x = torch.tensor([[0.0]], dtype=torch.float64)
    assert knn_predict(ref_x, ref_y, x, k=4).tolist() == [2]
    clf = sklearn_obj("neighbors", "KNeighborsClassifier")(n_neighbors=4)
    assert clf.fit(ref_x.numpy(), ref_y.numpy()).predict(x.numpy()).tolist() == [2]
    with pytest.raises(ConfigError, match="k=6"):
        knn_predict(ref_x, ref_y, x, k=6)


# -- majority mapping ----------------------------------------------------------------------------


def test_majority_map_void_ties_and_fallback() -> None:
    clusters = torch.tensor([[0, 0, 0, 1], [1, 1, 2, 2], [3, 3, 3, 3]])
    gt = torch.tensor([[5, 5, 255, 7], [7, 255, 255, 255], [4, 6, 4, 6]])
    lut = majority_map(clusters, gt, ignore_index=255, num_clusters=6)
    # cluster 0: 5,5,void -> 5; cluster 1: 7,7,void -> 7; cluster 2: all void -> the majority
    # of all valid tokens (5:2, 7:2, 4:2, 6:2 -> tie -> 4); cluster 3: 4,6,4,6 -> tie -> 4;
    # clusters 4, 5 absent -> -1
    assert lut.tolist() == [5, 7, 4, 4, -1, -1]
    # negative ids never become a class either; with ignore_index=-1 the 255 ids are classes
    gt2 = torch.tensor([[-1, -1, 3, 255]])
    assert majority_map(torch.tensor([0, 0, 0, 1]), gt2, ignore_index=-1).tolist() == [3, 255]
    with pytest.raises(LabelError):
        majority_map(clusters, torch.full((3, 4), 255), ignore_index=255)


def test_majority_map_matches_loop_reference() -> None:
    g = torch.Generator().manual_seed(3)
    clusters = torch.randint(6, (12, 9), generator=g)
    gt = torch.tensor([0, 2, 2, 5, 255])[torch.randint(5, (12, 9), generator=g)]
    lut = majority_map(clusters, gt, ignore_index=255)
    for c in clusters.unique().tolist():
        vals = gt[(clusters == c) & (gt != 255)].tolist()
        if not vals:
            vals = gt[gt != 255].tolist()
        counts = {v: vals.count(v) for v in vals}
        best = max(counts.values())
        assert lut[c].item() == min(v for v, n in counts.items() if n == best)


# -- scene context -------------------------------------------------------------------------------

H, W = 6, 8


def layout(shift: int) -> torch.Tensor:
    """Class map [H, W] of 4 planted classes (quadrants), rolled horizontally by ``shift``."""
    cls = torch.zeros(H, W, dtype=torch.long)
    cls[:, W // 2 :] = 1
    cls[H // 2 :] += 2
    return cls.roll(shift, dims=1)


def window(centres: torch.Tensor, maps: list[torch.Tensor], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    cls = torch.stack(maps)
    return centres[cls] + 0.3 * torch.randn(*cls.shape, centres.shape[1], generator=g)


@pytest.fixture
def centres() -> torch.Tensor:
    return torch.randn(5, 16, generator=torch.Generator().manual_seed(11)) * 4.0


def test_scene_context_labels_are_consistent_across_windows(centres: torch.Tensor) -> None:
    ctx = SceneContext(ContextConfig(k=4, n_init=4))
    assert not ctx.initialised
    w1 = window(centres, [layout(0), layout(1), layout(2)], seed=1)
    first = ctx.initialise(w1)
    # clusters are renumbered by first appearance in frame 1's raster order
    assert first.tolist() == layout(0).tolist()
    assert ctx.classes.tolist() == [0, 1, 2, 3]
    pred1 = ctx.predict(w1)
    assert torch.equal(pred1, torch.stack([layout(0), layout(1), layout(2)]))
    ctx.update(w1, pred1)
    w2 = window(centres, [layout(3), layout(4), layout(5)], seed=2)
    pred2 = ctx.predict(w2)
    assert torch.equal(pred2, torch.stack([layout(3), layout(4), layout(5)]))
    # resuming from a state dict gives the same predictions
    other = SceneContext(ctx.cfg)
    other.load_state_dict(ctx.state_dict())
    assert torch.equal(other.predict(w2), pred2)


def test_scene_context_with_gt_maps_clusters_to_classes(centres: torch.Tensor) -> None:
    ctx = SceneContext(ContextConfig(k=4, n_init=4, kmeans_scope="frame1"))
    w1 = window(centres, [layout(0), layout(1)], seed=3)
    ids = torch.tensor([3, 7, 12, 40])
    gt = ids[layout(0)]
    gt[0, 0] = 255  # void pixels never become a class
    first = ctx.initialise(w1, gt)
    assert first.tolist() == ids[layout(0)].tolist()
    assert ctx.classes.tolist() == [3, 7, 12, 40]
    assert torch.equal(ctx.predict(w1), ids[torch.stack([layout(0), layout(1)])])
    # many-to-one: two GT classes for four clusters
    merged = SceneContext(ContextConfig(k=4, n_init=4))
    assert merged.initialise(w1, (layout(0) >= 2).long() * 9).unique().tolist() == [0, 9]
    assert merged.classes.tolist() == [0, 9]
    with pytest.raises(LabelError):
        SceneContext(ContextConfig(k=4)).initialise(w1, gt[:, :4])


def test_scene_context_bank_memory_keeps_the_most_recent_tokens(centres: torch.Tensor) -> None:
    w1 = window(centres, [layout(0)] * 3, seed=4)
    w2 = window(centres, [layout(1)] * 3, seed=5)
    labels = torch.stack([layout(1)] * 3)
    big = SceneContext(ContextConfig(k=4, n_init=2, memory="bank", memory_size=1000))
    big.initialise(w1)
    big.update(w1, labels)
    big.update(w2, labels)
    assert big.reference[0].shape[0] == H * W + 2 * 3 * H * W
    small = SceneContext(ContextConfig(k=4, n_init=2, memory="bank", memory_size=100))
    small.initialise(w1)
    small.update(w1, labels)
    small.update(w2, labels)
    ref_x, ref_y = small.reference
    assert ref_x.shape[0] == 100 and torch.equal(ref_x, w2.reshape(-1, 16)[-100:])
    assert torch.equal(ref_y, labels.reshape(-1)[-100:])
    last = SceneContext(ContextConfig(k=4, n_init=2))
    last.initialise(w1)
    last.update(w2, labels)
    assert torch.equal(last.reference[0], w2.reshape(-1, 16))


def test_scene_context_spawns_one_new_label_for_a_new_cluster(centres: torch.Tensor) -> None:
    ctx = SceneContext(ContextConfig(k=4, n_init=2, spawn_threshold=5.0))
    ctx.initialise(window(centres, [layout(0)] * 2, seed=6))
    new_map = layout(0).clone()
    new_map[1:3, 2:5] = 4  # planted object of an unseen class
    w2 = window(centres, [new_map, new_map], seed=7)
    pred = ctx.predict(w2)
    expected = torch.where(new_map == 4, 4, layout(0))  # next unused id is 4
    assert torch.equal(pred, torch.stack([expected, expected]))
    assert ctx.classes.tolist() == [0, 1, 2, 3, 4]
    ctx.update(w2, pred)
    pred3 = ctx.predict(window(centres, [new_map], seed=8))
    assert torch.equal(pred3[0], expected)  # the object keeps its id; nothing new spawned
    assert ctx.classes.tolist() == [0, 1, 2, 3, 4]
    # without the option the object takes an existing label
    plain = SceneContext(ContextConfig(k=4, n_init=2))
    plain.initialise(window(centres, [layout(0)] * 2, seed=6))
    assert int(plain.predict(w2).max()) <= 3


def test_scene_context_rejects_k_beyond_the_window_tokens(centres: torch.Tensor) -> None:
    feats = window(centres, [layout(0)], seed=9)
    with pytest.raises(ConfigError, match=f"k=60 .* {H * W} tokens"):
        SceneContext(ContextConfig(k=60)).initialise(feats)
    with pytest.raises(RuntimeError):
        SceneContext().predict(feats)


def test_per_frame_kmeans_baseline_clusters_each_frame_alone():
    # three frames, each with two well separated clusters whose centres differ per frame;
    # ids follow first appearance in raster order, so planted layouts map to known ids
    g = torch.Generator().manual_seed(5)
    h, w, c = 4, 6, 8
    layout = torch.zeros(h, w, dtype=torch.long)
    layout[:, 3:] = 1
    frames = []
    for _ in range(3):
        centres = torch.randn(2, c, generator=g) * 10
        frames.append(centres[layout] + 0.01 * torch.randn(h, w, c, generator=g))
    feats = torch.stack(frames)
    ctx = SceneContext(ContextConfig(k=2, n_init=2, propagation="per-frame-kmeans"))
    ctx.initialise(feats)
    pred = ctx.predict(feats)
    assert torch.equal(pred, layout.expand(3, h, w))


# -- options beyond the paper: merging clusters, cluster-level relabelling ------------------------


def test_merge_clusters_joins_the_halves_of_a_split_blob() -> None:
    x, truth = planted_blobs(600, 16, 2, sep=6.0, seed=3)
    centroids, labels = kmeans(x, 4, n_init=4, seed=0)
    assert torch.unique(labels).numel() == 4  # k-means splits each blob in two
    group = merge_clusters(x, centroids, labels, threshold=2.0)
    merged = group[labels].numpy()
    assert np.unique(merged).size == 2
    for k in np.unique(merged):  # each merged cluster is one planted blob
        assert np.unique(truth[merged == k]).size == 1
    # a threshold below every centroid distance merges nothing
    assert torch.equal(merge_clusters(x, centroids, labels, 1e-6), torch.arange(4))


def test_scene_context_merge_threshold_labels_frame1_with_the_true_count(centres) -> None:
    w1 = window(centres[:2], [layout(0) % 2, layout(1) % 2], seed=5)  # 2 classes, K = 4
    plain = SceneContext(ContextConfig(k=4, n_init=4)).initialise(w1)
    merged = SceneContext(ContextConfig(k=4, n_init=4, merge_threshold=2.0)).initialise(w1)
    assert torch.unique(plain).numel() > 2
    assert merged.tolist() == (layout(0) % 2).tolist()


def drifting_video() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two windows of 2 frames over 3 classes (left half, top right, bottom right).

    Window 2's class-0 tokens move off their memory and spread towards class 1's: a third of
    them are nearer class 1's reference tokens, yet they stay one well-separated cluster.
    Returns (window 1 [2, H, W, 3], window 2, the class map [H, W]).
    """
    cls = torch.zeros(H, W, dtype=torch.long)
    cls[: H // 2, W // 2 :] = 1
    cls[H // 2 :, W // 2 :] = 2
    ref = torch.tensor([[0.0, 0.0, 0.0], [4.0, 0.0, 0.0], [0.0, 4.0, 0.0]])
    g = torch.Generator().manual_seed(0)
    w1 = ref[cls].expand(2, H, W, 3) + 0.05 * torch.randn(2, H, W, 3, generator=g)
    w2 = ref[cls].expand(2, H, W, 3) + 0.05 * torch.randn(2, H, W, 3, generator=g)
    left = cls == 0
    spread = torch.linspace(0.0, 3.0, int(left.sum()))  # x of the moved class-0 tokens
    w2 = w2.clone()
    w2[:, left] = torch.stack([spread, torch.zeros_like(spread), torch.full_like(spread, 6.0)], 1)
    return w1, w2, cls


def run_two_windows(cfg: ContextConfig) -> tuple[torch.Tensor, torch.Tensor]:
    w1, w2, _ = drifting_video()
    ctx = SceneContext(cfg)
    ctx.initialise(w1)
    p1 = ctx.predict(w1)
    ctx.update(w1, p1)
    return p1, ctx.predict(w2)


def test_cluster_relabelling_keeps_identities_where_token_votes_drift() -> None:
    _, _, cls = drifting_video()
    cfg = ContextConfig(k=3, n_init=4, knn_k=1)
    p1, p2 = run_two_windows(cfg)
    assert torch.equal(p1, cls.expand(2, H, W))  # ids: first appearance in frame 1
    # the paper's per-token vote carries class 1's label onto a third of class 0's tokens
    assert not torch.equal(p2, p1)
    assert (p2[:, cls == 0] == 1).float().mean() > 0.25
    # voting per window cluster keeps every region's identity: the video is consistent
    q1, q2 = run_two_windows(cfg.replace(relabel="cluster"))
    assert torch.equal(q1, p1)
    assert torch.equal(q2, q1)


def test_merge_and_relabel_options_reject_bad_values() -> None:
    with pytest.raises(ConfigError, match="merge_threshold"):
        ContextConfig(merge_threshold=-1.0)
    with pytest.raises(ConfigError, match="relabel"):
        ContextConfig(relabel="segment")
