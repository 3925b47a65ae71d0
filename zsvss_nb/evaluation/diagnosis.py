"""Where temporal consistency is lost: per-stage numbers for one video's predictions.

GT-free ids (the Hungarian protocol's input) lose points in three separable ways, measured here
against the ground truth, on [H, W] id maps (any resolution, as long as prediction and GT agree):

- **splits** (:func:`protocol_gaps`): a class covered by several ids; one-to-one matching
  (Hungarian) counts all but one as wrong, many-to-one per video (``majority-video``) does not.
  The accuracy gap majority-video - hungarian is the cost of splits (and of surplus ids).
- **drift** (:func:`protocol_gaps`, :func:`window_accuracy`, :func:`window_swaps`): an id
  that means one class early and another later (the KNN carrying a wrong label to the next
  window, or ids that swap between windows). The gap majority-per-frame - majority-video is
  its cost; :func:`window_swaps` names the boundaries where ids change their class.
- **refinement no-op** (:func:`refinement_stats`): tracks dropped by the hop filter leave the
  KNN labels as they are (METHOD 1.6); on low-frame-rate clips no track survives a window.

Scene-context background: METHOD.md sections 1.4-1.6 (k-means on the first window, KNN carried
window to window, refinement along tracks).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import LabelError
from ..io.video import window_spans
from .metrics import ConfusionMatrix, apply_protocol, as_ids, overlap_counts

__all__ = [
    "ProtocolGaps",
    "class_splits",
    "frame_windows",
    "protocol_gaps",
    "refinement_stats",
    "window_accuracy",
    "window_swaps",
]


def frame_windows(length: int, size: int = 14) -> np.ndarray:
    """Which window first produces each frame (the Segmenter's output order): [length] ints.

    With the last window shifted back (METHOD 1.5), its overlap frames belong to the earlier
    window, as :attr:`zsvss_nb.io.video.Window.is_new` says.
    """
    owner = np.full(length, -1, dtype=np.int64)
    for w, (start, stop) in enumerate(window_spans(length, size)):
        part = owner[start:stop]
        part[part < 0] = w
    return owner


def _stack(preds: Sequence[Any], gts: Sequence[Any]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    p = [as_ids(x) for x in preds]
    g = [as_ids(x) for x in gts]
    if len(p) != len(g) or not p:
        raise LabelError(f"{len(p)} predicted frames but {len(g)} GT frames (need >= 1 each)")
    return p, g


@dataclass(frozen=True)
class ProtocolGaps:
    """Pixel accuracy and mIoU of one video under three mappings, and the losses between them.

    ``drift`` = acc(majority per frame) - acc(majority per video): ids whose class changes over
    time. ``splits`` = acc(majority per video) - acc(hungarian): classes split over several ids.
    """

    acc: dict[str, float]
    miou: dict[str, float]

    @property
    def drift(self) -> float:
        return self.acc["majority"] - self.acc["majority-video"]

    @property
    def splits(self) -> float:
        return self.acc["majority-video"] - self.acc["hungarian"]


def protocol_gaps(
    preds: Sequence[Any], gts: Sequence[Any], num_classes: int, ignore_index: int | None = 255
) -> ProtocolGaps:
    """Score one video's GT-free ids under majority (per frame), majority-video and hungarian.

    preds, gts: sequences of [H, W] id maps. Returns :class:`ProtocolGaps`.
    """
    p, g = _stack(preds, gts)
    acc, miou = {}, {}
    for name in ("majority", "majority-video", "hungarian"):
        cm = ConfusionMatrix(num_classes, ignore_index)
        for a, b in zip(apply_protocol(name, p, g, num_classes, ignore_index), g, strict=True):
            cm.update(a, b)
        acc[name], miou[name] = cm.pixel_accuracy(), cm.miou()
    return ProtocolGaps(acc, miou)


def _majority_lut(
    preds: list[np.ndarray], gts: list[np.ndarray], num_classes: int, ignore_index: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """(ids [K], majority class of each id [K]) over the given frames; ids with no valid GT
    pixel are left out."""
    ids, overlap = overlap_counts(preds, gts, num_classes, ignore_index)
    return ids, overlap.argmax(1) if ids.size else np.zeros(0, dtype=np.int64)


def window_accuracy(
    preds: Sequence[Any],
    gts: Sequence[Any],
    windows: Sequence[int],
    num_classes: int,
    ignore_index: int | None = 255,
) -> np.ndarray:
    """Accuracy of each window with the id -> class map frozen on window 0 (many-to-one).

    A fall from window to window is labels carried wrongly (KNN drift), not segmentation
    quality: the same map scores every window. Ids first seen after window 0 count as wrong.
    windows: the window of each frame (:func:`frame_windows`). Returns [n_windows] (nan for a
    window without valid GT).
    """
    p, g = _stack(preds, gts)
    win = np.asarray(windows)
    first = [i for i in range(len(p)) if win[i] == 0]
    ids, cls = _majority_lut(
        [p[i] for i in first], [g[i] for i in first], num_classes, ignore_index
    )
    top = max(int(x.max(initial=-1)) for x in p)
    lut = np.full(max(top + 1, 1), -1, dtype=np.int64)
    lut[ids] = cls
    hit = np.zeros(int(win.max()) + 1)
    tot = np.zeros_like(hit)
    for a, b, w in zip(p, g, win, strict=True):
        ok = (b >= 0) & (b < num_classes) & (b != (-1 if ignore_index is None else ignore_index))
        mapped = np.where(a >= 0, lut[np.clip(a, 0, lut.size - 1)], -1)
        hit[w] += float((mapped[ok] == b[ok]).sum())
        tot[w] += float(ok.sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tot > 0, hit / tot, np.nan)


def window_swaps(
    preds: Sequence[Any],
    gts: Sequence[Any],
    windows: Sequence[int],
    num_classes: int,
    ignore_index: int | None = 255,
) -> np.ndarray:
    """Per window boundary w -> w+1: the share of window w+1's valid pixels whose id had another
    majority class in window w (an identity swap, or a label the KNN carried onto the wrong
    class). Ids new in window w+1 are not counted. Returns [n_windows - 1]."""
    p, g = _stack(preds, gts)
    win = np.asarray(windows)
    n = int(win.max()) + 1
    luts = []
    for w in range(n):
        sel = [i for i in range(len(p)) if win[i] == w]
        luts.append(
            dict(
                zip(
                    *_majority_lut(
                        [p[i] for i in sel], [g[i] for i in sel], num_classes, ignore_index
                    ),
                    strict=True,
                )
            )
        )
    out = np.zeros(max(n - 1, 0))
    for w in range(n - 1):
        a, b = luts[w], luts[w + 1]
        sel = [i for i in range(len(p)) if win[i] == w + 1]
        ids, overlap = overlap_counts(
            [p[i] for i in sel], [g[i] for i in sel], num_classes, ignore_index
        )
        swapped = np.array([k in a and a[k] != b[k] for k in ids.tolist()], dtype=bool)
        total = overlap.sum()
        out[w] = float(overlap[swapped].sum() / total) if total else np.nan
    return out


def class_splits(
    preds: Sequence[Any],
    gts: Sequence[Any],
    num_classes: int,
    ignore_index: int | None = 255,
    share: float = 0.1,
) -> np.ndarray:
    """For each GT class, how many ids hold at least ``share`` of its pixels (over the video).

    1 is a clean class; 2 or more is a class split between clusters (one-to-one matching
    counts all but one as wrong); 0: absent, or scattered over many small ids. [num_classes].
    """
    p, g = _stack(preds, gts)
    _, overlap = overlap_counts(p, g, num_classes, ignore_index)
    total = overlap.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(total > 0, overlap / np.maximum(total, 1), 0.0)
    return (frac >= share).sum(0)


def refinement_stats(coarse: Any, refined: Any, valid: Any) -> dict[str, float]:
    """How much the refinement did in one window: the share of tracks that survived the hop
    filter (``valid`` [h*w] bool, :class:`zsvss_nb.refine.Tracks`) and the share of coarse
    cells it changed (coarse, refined: [B, h, w])."""
    c, r, v = as_ids(coarse), as_ids(refined), np.asarray(valid, dtype=bool)
    if c.shape != r.shape:
        raise LabelError(f"coarse {c.shape} and refined {r.shape} maps differ in shape")
    return {"survival": float(v.mean()) if v.size else 0.0, "changed": float((c != r).mean())}
