"""Stage 2a: k-means, KNN and the autoregressive scene context model (METHOD 1.4, 1.5).

Everything runs in torch on the features' device: k-means with k-means++ seeding and all
restarts batched through Lloyd's iterations, a chunked KNN classifier whose memory stays bounded
for 20k x 20k tokens, the first-frame-GT majority mapping, and :class:`SceneContext`, which holds
the KNN reference set and refits it window after window.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .config import ContextConfig
from .errors import ConfigError, InputError, LabelError

__all__ = [
    "SceneContext",
    "kmeans",
    "knn_distance",
    "knn_predict",
    "majority_map",
    "merge_clusters",
    "per_frame_kmeans",
    "relabel_clusters",
]


def _work_dtype(x: Tensor) -> torch.dtype:
    """float64 inputs stay float64; everything else is computed in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _sq_dists(x: Tensor, x_sq: Tensor, c: Tensor) -> Tensor:
    """Squared Euclidean distances via ||x||^2 - 2 x.c + ||c||^2, clamped at 0.

    x: [N, C], x_sq: [N], c: [..., k, C] -> [..., N, k].
    """
    c_sq = (c * c).sum(-1)
    d = x_sq[:, None] - 2.0 * (x @ c.transpose(-1, -2)) + c_sq[..., None, :]
    return d.clamp_min_(0.0)


def _kmeans_pp(x: Tensor, x_sq: Tensor, k: int, n_init: int, gen: torch.Generator) -> Tensor:
    """Greedy k-means++ seeding for ``n_init`` restarts at once (as sklearn's).

    Each new centre is the best of 2 + log(k) candidates sampled with probability proportional
    to the squared distance to the nearest chosen centre; "best" = lowest resulting potential.
    x: [N, C] -> initial centres [n_init, k, C].
    """
    n = x.shape[0]
    trials = 2 + int(math.log(k))
    rows = torch.arange(n_init, device=x.device)
    chosen = torch.empty(n_init, k, dtype=torch.long, device=x.device)
    chosen[:, 0] = torch.randint(n, (n_init,), generator=gen, device=x.device)
    closest = _sq_dists(x, x_sq, x[chosen[:, :1]])[..., 0]  # [R, N]
    closest[rows, chosen[:, 0]] = 0.0
    for j in range(1, k):
        # All points coincide with chosen centres only through rounding: sample uniformly then.
        weights = closest + (closest.sum(1, keepdim=True) <= 0).to(closest.dtype)
        cand = torch.multinomial(weights, trials, replacement=True, generator=gen)  # [R, T]
        d_cand = _sq_dists(x, x_sq, x[cand])  # [R, N, T]
        new_closest = torch.minimum(closest[:, :, None], d_cand)
        best = new_closest.sum(1).argmin(1)  # [R]
        chosen[:, j] = cand[rows, best]
        closest = new_closest[rows, :, best]
        closest[rows, chosen[:, j]] = 0.0
    return x[chosen]


def _lloyd(
    x: Tensor, x_sq: Tensor, centres: Tensor, iters: int, tol: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Lloyd iterations for all restarts at once.

    x: [N, C], centres: [R, k, C] -> (centres [R, k, C], labels [R, N], inertia [R]).
    A restart stops (its centres freeze) when its labels no longer change or the summed squared
    centre shift is <= ``tol`` (absolute), as in sklearn. An empty cluster is re-seeded at the
    point farthest from its assigned centre (the i-th empty cluster of a restart at its i-th
    farthest point); unlike sklearn, the donor cluster's mean is not adjusted.
    """
    r, k, _ = centres.shape
    active = torch.ones(r, dtype=torch.bool, device=x.device)
    prev = torch.full((r, x.shape[0]), -1, dtype=torch.long, device=x.device)
    for _ in range(iters):
        min_d, labels = _sq_dists(x, x_sq, centres).min(-1)  # [R, N]
        onehot = torch.nn.functional.one_hot(labels, k).to(x.dtype)  # [R, N, k]
        counts = onehot.sum(1)  # [R, k]
        new = (onehot.transpose(1, 2) @ x) / counts.clamp_min(1.0)[..., None]
        empty = counts == 0
        if bool(empty.any()):
            far = min_d.topk(k, dim=1).indices  # [R, k]
            rank = (empty.cumsum(1) - 1).clamp_min(0)
            new = torch.where(empty[..., None], x[far.gather(1, rank)], new)
        shift = ((new - centres) ** 2).sum((1, 2))
        centres = torch.where(active[:, None, None], new, centres)
        done = (shift <= tol) | (labels == prev).all(1)
        prev = labels
        active = active & ~done
        if not bool(active.any()):
            break
    min_d, labels = _sq_dists(x, x_sq, centres).min(-1)
    return centres, labels, min_d.sum(1)


def kmeans(
    x: Tensor, k: int, n_init: int = 10, iters: int = 300, tol: float = 1e-4, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """k-means (Lloyd) with k-means++ seeding, best of ``n_init`` batched restarts.

    x: [N, C] -> (centroids [k, C] in x's dtype, labels LongTensor [N]). ``tol`` is relative to
    the mean per-dimension variance of x (sklearn's convention); all N points are used. The
    restart with the lowest inertia wins; the result is deterministic given ``seed`` (a
    torch.Generator on x's device). Raises ConfigError when k exceeds the distinct points.
    """
    if x.dim() != 2 or not x.is_floating_point():
        raise InputError(f"kmeans features must be a float [N, C] tensor, got {tuple(x.shape)}")
    if k < 1 or n_init < 1 or iters < 1:
        raise ConfigError(f"kmeans needs k, n_init, iters >= 1 (got {k}, {n_init}, {iters})")
    n = x.shape[0]
    if k > n:
        raise ConfigError(f"k={k} clusters requested but the features have only {n} tokens")
    distinct = torch.unique(x, dim=0).shape[0]
    if k > distinct:
        raise ConfigError(
            f"k={k} clusters requested but the features have only {distinct} distinct tokens"
        )
    xw = x.detach().to(_work_dtype(x))
    mean = xw.mean(0)
    xc = xw - mean  # centring reduces cancellation in the distance expansion
    x_sq = (xc * xc).sum(1)
    tol_abs = float(tol * xc.var(0, unbiased=False).mean())
    gen = torch.Generator(device=x.device).manual_seed(seed)
    init = _kmeans_pp(xc, x_sq, k, n_init, gen)
    centres, labels, inertia = _lloyd(xc, x_sq, init, iters, tol_abs)
    best = int(inertia.argmin())
    return (centres[best] + mean).to(x.dtype), labels[best]


def _knn(
    ref_x: Tensor, ref_y: Tensor | None, x: Tensor, k: int, chunk: int
) -> tuple[Tensor, Tensor]:
    """Chunked Euclidean k-NN: (uniform-vote label [N] or empty, nearest distance [N]).

    Only a [chunk, M] distance block is alive at a time. Vote ties go to the smallest label.
    """
    if ref_x.dim() != 2 or x.dim() != 2 or ref_x.shape[1] != x.shape[1]:
        raise InputError(
            f"knn reference {tuple(ref_x.shape)} and queries {tuple(x.shape)} must be [M, C], "
            "[N, C] with the same C"
        )
    if k < 1 or k > ref_x.shape[0]:
        raise ConfigError(
            f"knn k={k} neighbours requested but the reference holds {ref_x.shape[0]} tokens"
        )
    if chunk < 1:
        raise ConfigError(f"knn chunk={chunk} must be at least 1")
    wd = torch.float64 if torch.float64 in (ref_x.dtype, x.dtype) else torch.float32
    mean = ref_x.to(wd).mean(0)
    ref = ref_x.detach().to(wd) - mean
    ref_sq = (ref * ref).sum(1)
    if ref_y is not None:
        if ref_y.shape != ref_x.shape[:1]:
            raise LabelError(f"knn labels {tuple(ref_y.shape)} must be [{ref_x.shape[0]}]")
        classes, inv = torch.unique(ref_y, return_inverse=True)  # sorted: argmax picks smallest
    preds, dists = [], []
    for start in range(0, x.shape[0], chunk):
        q = x[start : start + chunk].detach().to(wd) - mean
        d = _sq_dists(ref, ref_sq, q).T  # [chunk, M]
        val, idx = d.topk(k, dim=1, largest=False)
        dists.append(val[:, 0].sqrt())
        if ref_y is not None:
            votes = torch.zeros(q.shape[0], classes.numel(), dtype=torch.long, device=x.device)
            votes.scatter_add_(1, inv[idx], torch.ones_like(idx))
            preds.append(classes[votes.argmax(1)])
    empty = torch.empty(0, dtype=torch.long, device=x.device)
    pred = torch.cat(preds) if preds else empty
    dist = torch.cat(dists) if dists else torch.empty(0, dtype=wd, device=x.device)
    return pred, dist


def knn_predict(ref_x: Tensor, ref_y: Tensor, x: Tensor, k: int = 4, chunk: int = 4096) -> Tensor:
    """KNN classifier (Euclidean, uniform vote, ties -> smallest label), like sklearn's.

    ref_x: [M, C], ref_y: LongTensor [M], x: [N, C] -> LongTensor [N]. Computed in chunks of
    ``chunk`` query rows so only a [chunk, M] distance block is alive.
    """
    return _knn(ref_x, ref_y, x, k, chunk)[0]


def knn_distance(ref_x: Tensor, x: Tensor, chunk: int = 4096) -> Tensor:
    """Euclidean distance of each query to its nearest reference token. [M, C], [N, C] -> [N]."""
    return _knn(ref_x, None, x, 1, chunk)[1]


def majority_map(
    cluster_ids: Tensor, gt: Tensor, ignore_index: int = 255, num_clusters: int | None = None
) -> Tensor:
    """Cluster -> class lookup by majority vote against ground truth (METHOD 1.4 step 2).

    cluster_ids: [h*w] or [h, w] ints in [0, K); gt: [h, w] class ids. Returns a LongTensor [K]
    (K = ``num_clusters`` or max id + 1): each cluster present takes the most frequent GT class
    of its tokens (ties -> smallest id); ids equal to ``ignore_index`` or negative never become
    a class. A present cluster whose tokens are all void takes the majority class of all valid
    tokens; clusters absent from ``cluster_ids`` map to -1.
    """
    ids = cluster_ids.reshape(-1).long()
    g = gt.reshape(-1).long().to(ids.device)
    if g.numel() != ids.numel():
        raise LabelError(f"gt has {g.numel()} pixels but there are {ids.numel()} cluster ids")
    if ids.numel() and int(ids.min()) < 0:
        raise InputError("cluster ids must be non-negative")
    k = int(ids.max()) + 1 if num_clusters is None else num_clusters
    if ids.numel() and int(ids.max()) >= k:
        raise InputError(f"cluster id {int(ids.max())} >= num_clusters={k}")
    valid = (g != ignore_index) & (g >= 0)
    if not bool(valid.any()):
        raise LabelError("gt has no valid (non-void) pixels to map clusters to classes")
    n_cls = int(g[valid].max()) + 1
    counts = torch.bincount(ids[valid] * n_cls + g[valid], minlength=k * n_cls).view(k, n_cls)
    lut = counts.argmax(1)
    fallback = torch.bincount(g[valid], minlength=n_cls).argmax()
    lut = torch.where(counts.sum(1) > 0, lut, fallback)
    present = torch.bincount(ids, minlength=k) > 0
    return torch.where(present, lut, torch.full_like(lut, -1))


def merge_clusters(x: Tensor, centroids: Tensor, labels: Tensor, threshold: float) -> Tensor:
    """Merge k-means clusters whose centroids are close: [N, C], [K, C], [N] -> cluster [K].

    The two closest centroids (Euclidean) merge into their size-weighted mean while their
    distance is below ``threshold`` times the RMS distance of the tokens to their own centroid
    (a scale-free criterion: "closer than the clusters are wide"). Returns, for every input
    cluster, the id (in [0, K)) of the input cluster it now belongs to: the merged group's
    lowest id. Beyond the paper (METHOD 1.4 fixes K); the loop runs at most K - 1 times.
    """
    k = centroids.shape[0]
    wd = _work_dtype(x)
    c = centroids.to(wd)
    counts = torch.bincount(labels, minlength=k).to(wd)
    spread = float(((x.to(wd) - c[labels]) ** 2).sum(1).mean().sqrt())
    group = torch.arange(k, device=x.device)
    alive = counts > 0
    limit = threshold * spread
    while int(alive.sum()) > 1:
        d = torch.cdist(c, c)
        d[~(alive[:, None] & alive[None, :])] = torch.inf
        d.fill_diagonal_(torch.inf)
        flat = int(d.argmin())
        i, j = sorted(divmod(flat, k))
        if not float(d[i, j]) < limit:
            break
        total = counts[i] + counts[j]
        c[i] = (counts[i] * c[i] + counts[j] * c[j]) / total
        counts[i], counts[j], alive[j] = total, 0, False
        group[group == j] = i
    return group


def relabel_clusters(feats: Tensor, votes: Tensor, k: int, cfg: ContextConfig) -> Tensor:
    """Cluster-level relabelling: [N, C] tokens, [N] KNN votes -> [N] labels.

    k-means (``cfg``'s restarts, iterations and seed) splits the window into ``k`` clusters and
    every cluster takes the label most of its tokens voted for (ties -> the smallest label), so
    a region keeps one identity even where single tokens drift towards another label's memory.
    Beyond the paper (METHOD 1.5 labels each token by its own vote).
    """
    k = min(k, int(torch.unique(feats, dim=0).shape[0]))
    _, assign = kmeans(feats, k, cfg.n_init, cfg.kmeans_iters, cfg.kmeans_tol, cfg.seed)
    classes, inv = torch.unique(votes, return_inverse=True)
    counts = torch.zeros(k * classes.numel(), dtype=torch.long, device=votes.device)
    counts.scatter_add_(0, assign * classes.numel() + inv, torch.ones_like(inv))
    winner = classes[counts.view(k, classes.numel()).argmax(1)]
    return winner[assign]


def _first_appearance_lut(ids: Tensor, k: int) -> Tensor:
    """Cluster -> label, labels numbered by first appearance in ``ids`` (raster order).

    Clusters absent from ``ids`` come after, in cluster-id order. ids: [n] -> LongTensor [k].
    """
    n = ids.numel()
    first = torch.full((k,), n, dtype=torch.long, device=ids.device)
    first.scatter_reduce_(0, ids, torch.arange(n, device=ids.device), reduce="amin")
    key = torch.where(first < n, first, n + torch.arange(k, device=ids.device))
    lut = torch.empty(k, dtype=torch.long, device=ids.device)
    lut[key.argsort()] = torch.arange(k, device=ids.device)
    return lut


def _check_feats(feats: Tensor, name: str = "feats") -> tuple[int, int, int, int]:
    if feats.dim() != 4 or not feats.is_floating_point():
        raise InputError(f"{name} must be a float [B, h, w, C] tensor, got {tuple(feats.shape)}")
    b, h, w, c = feats.shape
    return b, h, w, c


def per_frame_kmeans(feats: Tensor, cfg: ContextConfig) -> Tensor:
    """The image-method baseline: k-means on each frame's tokens alone (``cfg``'s K, restarts,
    iterations and seed). feats [B, h, w, C] -> LongTensor [B, h, w]; ids are numbered by
    first appearance in each frame's raster order, so they are not aligned over time."""
    _check_feats(feats)
    out = []
    for frame in feats.detach():
        tokens = frame.reshape(-1, frame.shape[-1])
        k = min(cfg.k, tokens.shape[0])
        _, assign = kmeans(tokens, k, cfg.n_init, cfg.kmeans_iters, cfg.kmeans_tol, cfg.seed)
        out.append(_first_appearance_lut(assign, cfg.k)[assign].view(frame.shape[:2]))
    return torch.stack(out)


class SceneContext:
    """The KNN scene context model Omega, carried window to window (METHOD 1.4, 1.5).

    ``initialise`` clusters the first window and labels frame 1; ``predict`` labels every frame
    of a window by KNN against the reference set; ``update`` refits the reference on a window's
    (refined) labels. Without GT the labels are k-means cluster ids renumbered by first
    appearance in frame 1's raster order (clusters absent from frame 1 follow, in cluster
    order), so ids are reproducible; with GT they are class ids (many-to-one majority).

    ``cfg.merge_threshold`` merges close k-means clusters before frame 1 is labelled
    (:func:`merge_clusters`); ``cfg.relabel="cluster"`` makes ``predict`` vote per window
    cluster instead of per token (:func:`relabel_clusters`). Both are beyond the paper.

    With ``cfg.spawn_threshold`` set, ``predict`` gives the tokens whose nearest reference token
    is farther than the threshold (Euclidean, feature units) one new label id, the next unused
    id, at most one new id per call; it is added to :attr:`classes`.
    """

    def __init__(self, cfg: ContextConfig | None = None) -> None:
        self.cfg = cfg if cfg is not None else ContextConfig()
        self._ref_x: Tensor | None = None
        self._ref_y: Tensor | None = None
        self._classes: Tensor | None = None
        self._next_label = 0
        self.centroids: Tensor | None = None  # [K, C] k-means centres of initialise
        self.cluster_to_label: Tensor | None = None  # [K] label of each cluster (-1: unused)

    @property
    def initialised(self) -> bool:
        return self._ref_x is not None

    @property
    def classes(self) -> Tensor:
        """Sorted label ids in use: frame 1's labels, plus any spawned or updated ones."""
        self._require()
        return self._classes

    @property
    def reference(self) -> tuple[Tensor, Tensor]:
        """The KNN reference set: (features [M, C], labels [M])."""
        self._require()
        return self._ref_x, self._ref_y

    def _require(self) -> None:
        if not self.initialised:
            raise RuntimeError("SceneContext is not initialised: call initialise(feats) first")

    def _add_classes(self, labels: Tensor) -> None:
        self._classes = torch.unique(torch.cat([self._classes, labels.reshape(-1)]))
        self._next_label = max(self._next_label, int(self._classes.max()) + 1)

    def initialise(self, feats: Tensor, gt: Tensor | None = None) -> Tensor:
        """Cluster the first window and fit the reference on frame 1. feats: [B, h, w, C].

        gt: optional [h, w] class ids of frame 1 (at feature resolution). Returns frame 1's
        labels LongTensor [h, w].
        """
        b, h, w, c = _check_feats(feats)
        cfg = self.cfg
        tokens = feats.detach().reshape(-1, c)
        n1 = h * w
        fit_x = tokens if cfg.kmeans_scope == "window" else tokens[:n1]
        if cfg.k > fit_x.shape[0]:
            raise ConfigError(
                f"k={cfg.k} clusters requested but the {cfg.kmeans_scope} has only "
                f"{fit_x.shape[0]} tokens"
            )
        centroids, assign = kmeans(
            fit_x, cfg.k, cfg.n_init, cfg.kmeans_iters, cfg.kmeans_tol, cfg.seed
        )
        if cfg.merge_threshold is not None:
            group = merge_clusters(fit_x, centroids, assign, cfg.merge_threshold)
            assign = group[assign]
        first = assign[:n1]  # frame 1 comes first in both scopes
        if gt is None:
            lut = _first_appearance_lut(first, cfg.k)
        else:
            if tuple(gt.shape) != (h, w):
                raise LabelError(f"gt has shape {tuple(gt.shape)} but the features are {h}x{w}")
            lut = majority_map(first, gt.to(feats.device), cfg.ignore_index, cfg.k)
        labels = lut[first]
        self.centroids, self.cluster_to_label = centroids, lut
        self._ref_x, self._ref_y = tokens[:n1].clone(), labels.clone()
        self._classes = torch.unique(labels)
        self._next_label = int(lut.max()) + 1
        return labels.view(h, w)

    def predict(self, feats: Tensor) -> Tensor:
        """KNN labels of every frame of a window. feats: [B, h, w, C] -> LongTensor [B, h, w]."""
        self._require()
        b, h, w, c = _check_feats(feats)
        if c != self._ref_x.shape[1]:
            raise InputError(
                f"feats have {c} channels but the context was fit on {self._ref_x.shape[1]}"
            )
        if self.cfg.propagation == "per-frame-kmeans":
            return self._per_frame_kmeans(feats)
        x = feats.detach().reshape(-1, c)
        pred, dist = _knn(self._ref_x, self._ref_y, x, self.cfg.knn_k, self.cfg.knn_chunk)
        if self.cfg.relabel == "cluster":
            pred = relabel_clusters(x, pred, self.cfg.k, self.cfg)
        if self.cfg.spawn_threshold is not None:
            far = dist > self.cfg.spawn_threshold
            if bool(far.any()):
                pred = torch.where(far, torch.full_like(pred, self._next_label), pred)
                self._add_classes(pred[far][:1])
        return pred.view(b, h, w)

    def _per_frame_kmeans(self, feats: Tensor) -> Tensor:
        """Baseline: k-means on each frame alone (:func:`per_frame_kmeans`)."""
        labels = per_frame_kmeans(feats, self.cfg)
        self._add_classes(labels)
        return labels

    def update(self, feats: Tensor, labels: Tensor) -> None:
        """Refit the reference on a window (autoregressive update, METHOD 1.5).

        feats: [B, h, w, C], labels: [B, h, w]. memory "last" replaces the reference with this
        window (the paper); "bank" appends and keeps the ``memory_size`` most recent tokens.
        """
        self._require()
        b, h, w, c = _check_feats(feats)
        if tuple(labels.shape) != (b, h, w):
            raise LabelError(f"labels have shape {tuple(labels.shape)}, expected {(b, h, w)}")
        if c != self._ref_x.shape[1]:
            raise InputError(
                f"feats have {c} channels but the context was fit on {self._ref_x.shape[1]}"
            )
        x = feats.detach().reshape(-1, c).to(self._ref_x.device)
        y = labels.reshape(-1).long().to(self._ref_x.device)
        if self.cfg.memory == "last":
            self._ref_x, self._ref_y = x.clone(), y.clone()
        else:
            keep = self.cfg.memory_size
            self._ref_x = torch.cat([self._ref_x, x])[-keep:]
            self._ref_y = torch.cat([self._ref_y, y])[-keep:]
        self._add_classes(y)

    def state_dict(self) -> dict[str, Any]:
        """Tensors and counters needed to resume (the config is not included)."""
        self._require()
        return {
            "ref_x": self._ref_x,
            "ref_y": self._ref_y,
            "classes": self._classes,
            "next_label": self._next_label,
            "centroids": self.centroids,
            "cluster_to_label": self.cluster_to_label,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self._ref_x, self._ref_y = state["ref_x"], state["ref_y"]
        self._classes, self._next_label = state["classes"], int(state["next_label"])
        self.centroids, self.cluster_to_label = state["centroids"], state["cluster_to_label"]
