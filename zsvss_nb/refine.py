"""Stage 2b: correspondence-based refinement (CBR, METHOD 1.6), vectorised over all points.

A point is seeded at every feature cell of a window's first frame and chained frame by frame by
nearest-neighbour matching of L2-normalised block-7 q features; tracks that hop too far are
dropped; each surviving track votes for its majority coarse label, which is written back along
it. The only Python loop is over the B - 1 hops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import RefineConfig
from .errors import InputError, LabelError

__all__ = ["Tracks", "refine", "track"]


@dataclass(frozen=True)
class Tracks:
    """Dense tracks of one window, one per frame-1 cell in raster order.

    positions: LongTensor [B, h*w, 2], (y, x) of each track in each frame.
    valid: BoolTensor [h*w], tracks that pass the hop filter.
    """

    positions: Tensor
    valid: Tensor


def _check_feats(feats: Tensor) -> tuple[int, int, int, int]:
    if feats.dim() != 4 or not feats.is_floating_point():
        raise InputError(f"feats must be a float [B, h, w, C] tensor, got {tuple(feats.shape)}")
    b, h, w, c = feats.shape
    if b < 1 or h * w < 1:
        raise InputError(f"feats {tuple(feats.shape)} hold no frames or no cells")
    return b, h, w, c


def track(feats: Tensor, cfg: RefineConfig | None = None, chunk: int = 4096) -> Tracks:
    """Chain every frame-1 cell through the window by argmax matching (METHOD 1.6 step 1).

    feats: [B, h, w, C] raw block-7 q (L2-normalised here). Hop t (0-based) moves p_t in frame
    t to p_{t+1} = argmax_q S_t(q) over the cells q of frame t+1 (ties -> lowest flat index):

    - ``use_aux=False``: S_t = cos(F_t[p_t], F_{t+1}[q]).
    - ``paper_compat=True``: S_t = t/(t+1) cos(F_t[p_t], F_{t+1}[q]) + 1/(t+1) cos(F_t[p_t],
      F_0[q]), the reference's formula: at t = 0 only the frame-1 term counts, so p_1 = p_0.
    - default: S_t = (t+1)/(t+2) cos(F_t[p_t], F_{t+1}[q]) + 1/(t+2) cos(F_0[p_0], F_{t+1}[q]).
      Both terms score the frame being entered: the last appearance of the point and its
      frame-1 template (an anchor against drift, weight decaying like the reference's). The
      reference's aux term instead scores a cell by what frame 1 held there, which pulls tracks
      back to their seed's layout; here at t = 0 both terms coincide, so the first hop is plain
      nearest-neighbour matching into frame 2.

    Filter (step 2): a track is invalid if any hop has dy or dx > ``hop_threshold`` cells;
    absolute values by default, signed (only down/right moves) with ``paper_compat``. With
    ``min_survival`` (beyond the paper) the window's threshold is raised to the smallest value
    that keeps that share of tracks, so a low-frame-rate clip is not left unrefined.
    ``chunk`` bounds the [chunk, h*w] similarity blocks, not the results.
    """
    cfg = cfg if cfg is not None else RefineConfig()
    b, h, w, c = _check_feats(feats)
    n = h * w
    wd = torch.float64 if feats.dtype == torch.float64 else torch.float32
    f = F.normalize(feats.detach().reshape(b, n, c).to(wd), dim=-1)
    cur = torch.arange(n, device=feats.device)
    flat = [cur]
    for t in range(b - 1):
        nxt = torch.empty_like(cur)
        for s in range(0, n, chunk):
            src = f[t, cur[s : s + chunk]]  # [m, C]
            if not cfg.use_aux:
                score = src @ f[t + 1].T
            elif cfg.paper_compat:
                score = (1.0 / (t + 1)) * (src @ f[0].T)
                if t > 0:  # at t = 0 the reference's weight on the next frame is exactly 0
                    score = (t / (t + 1)) * (src @ f[t + 1].T) + score
            else:
                # cos is linear in the query: blend the two queries, one matmul.
                query = ((t + 1) / (t + 2)) * src + (1.0 / (t + 2)) * f[0, s : s + chunk]
                score = query @ f[t + 1].T
            nxt[s : s + chunk] = score.argmax(1)
        cur = nxt
        flat.append(cur)
    idx = torch.stack(flat)  # [B, N]
    pos = torch.stack([idx // w, idx % w], dim=-1)
    step = pos[1:] - pos[:-1]  # [B-1, N, 2]
    if not cfg.paper_compat:
        step = step.abs()
    longest = step.amax(-1).amax(0) if b > 1 else torch.zeros_like(cur)  # [N] longest hop
    threshold = cfg.hop_threshold
    if cfg.min_survival is not None and b > 1:
        # the smallest threshold >= hop_threshold that keeps min_survival of the tracks
        need = longest.sort().values[max(math.ceil(cfg.min_survival * n) - 1, 0)]
        threshold = max(threshold, int(need))
    valid = longest <= threshold
    return Tracks(positions=pos, valid=valid)


def _majority_first(lab: Tensor) -> Tensor:
    """Majority label of each column, ties -> the label seen first (Counter.most_common).

    lab: [B, N] -> [N]. Counts come from pairwise equality along the track ([B, B, N]).
    """
    b = lab.shape[0]
    eq = lab[:, None, :] == lab[None, :, :]  # eq[i, j, n]: frames i and j agree on track n
    count = eq.sum(1)  # [B, N]
    order = torch.arange(b, device=lab.device)[None, :, None]
    first = torch.where(eq, order, b).amin(1)  # first frame holding frame i's label
    best = (count * b - first).argmax(0)  # count first, then earliest first appearance
    return lab.gather(0, best[None]).squeeze(0)


def refine(labels: Tensor, feats: Tensor, cfg: RefineConfig | None = None) -> Tensor:
    """Make coarse labels temporally consistent along dense tracks (METHOD 1.6).

    labels: [B, h, w] ints (KNN output), feats: [B, h, w, C] raw block-7 q. Each surviving track
    takes the majority of the original labels along it (ties -> first seen) and writes it to
    all its positions; where tracks collide the one with the higher seed raster index wins;
    cells on no surviving track keep their label. Returns [B, h, w] (``labels`` itself when
    ``cfg.enabled`` is False).
    """
    cfg = cfg if cfg is not None else RefineConfig()
    if not cfg.enabled:
        return labels
    b, h, w, _ = _check_feats(feats)
    if tuple(labels.shape) != (b, h, w) or labels.is_floating_point():
        raise LabelError(
            f"labels must be an integer [B, h, w] = {(b, h, w)} tensor, got "
            f"{labels.dtype} {tuple(labels.shape)}"
        )
    n = h * w
    tr = track(feats, cfg)
    idx = (tr.positions[..., 0] * w + tr.positions[..., 1]).to(labels.device)  # [B, N]
    flat = labels.reshape(b, n)
    winner = _majority_first(flat.gather(1, idx))  # [N]
    seeds = torch.arange(n, device=labels.device)
    claim = torch.where(tr.valid.to(labels.device), seeds, -1).expand(b, n)
    # Which track writes each (frame, cell) last: the highest surviving seed index landing
    # there. Computed with an order-independent max, since scatter with duplicates is not.
    owner = torch.full((b, n), -1, dtype=torch.long, device=labels.device)
    owner.scatter_reduce_(1, idx, claim, reduce="amax")
    out = torch.where(owner >= 0, winner[owner.clamp_min(0)], flat)
    return out.view(b, h, w)
