"""Evaluation: mIoU, mVC_n and the label-assignment protocols (METHOD section 2).

- mIoU follows the DeepLab-style ``Evaluator`` of the official VSPW code: one confusion matrix
  over all frames of all videos, counting only pixels whose GT id lies in [0, num_classes) and is
  not ``ignore_index``; IoU_k = TP / (TP + FP + FN), mIoU = nanmean over classes. Predicted ids
  outside the class range land in an extra "other" column: they are wrong, never a crash.
- mVC_n is ``VC_perclip.py``: for every video with more than n frames and every start i in
  0 .. len-n-1, G = AND_{j=1..n-1} [gt_i == gt_{i+j}], P likewise on the prediction,
  VC_i = |P & G| / |G|; mVC_n = nanmean over all clips pooled across videos. As in the official
  code the GT ignore id is not masked out of G. When only some frames have GT (Cityscapes: the
  20th of 30), mIoU uses those frames and mVC each run of consecutive labelled frames as a video.
- Protocols map predicted ids to GT classes before scoring: ``first-frame`` (identity: the
  segmenter already mapped clusters with the first frame's GT, the paper's protocol),
  ``hungarian`` (one-to-one per video, maximum overlap), ``majority`` (many-to-one per frame),
  and for image methods run frame by frame ``hungarian-frame`` (one-to-one per frame) and
  ``majority-video`` (many-to-one per video). mVC is computed on the mapped predictions.

All kernels are numpy, vectorised over pixels (bincount; mVC sweeps the frames once); torch
tensors are accepted and moved to the CPU. Results are fractions in [0, 1];
:meth:`EvalResult.table` shows percent. Prediction folders, in-memory runs and notebook
reports are in :mod:`zsvss_nb.evaluation.evaluate`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from ..errors import ConfigError, LabelError

PROTOCOLS = ("first-frame", "hungarian", "majority", "hungarian-frame", "majority-video")


def as_ids(x: Any) -> np.ndarray:
    """An id map (numpy array, torch tensor or nested list) as an int64 numpy array."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype.kind not in "iub":
        raise LabelError(f"label map of dtype {arr.dtype} is not integer ids")
    return arr.astype(np.int64, copy=False)


class ConfusionMatrix:
    """Pixel confusion matrix ``matrix[gt, pred]``: [num_classes, num_classes + 1] int64.

    Column ``num_classes`` counts predictions outside [0, num_classes) (always wrong). Pixels whose
    GT is ``ignore_index`` or outside [0, num_classes) are not counted.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255) -> None:
        if num_classes < 1:
            raise ConfigError(f"num_classes={num_classes} must be at least 1")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes + 1), dtype=np.int64)

    def update(self, pred: Any, gt: Any) -> ConfusionMatrix:
        """Add one frame (or any batch) of ids: ``pred``, ``gt`` of the same shape."""
        p, g = as_ids(pred), as_ids(gt)
        if p.shape != g.shape:
            raise LabelError(f"prediction shape {p.shape} differs from GT shape {g.shape}")
        c = self.num_classes
        valid = (g >= 0) & (g < c)
        if self.ignore_index is not None:
            valid &= g != self.ignore_index
        p, g = p[valid], g[valid]
        p = np.where((p >= 0) & (p < c), p, c)
        counts = np.bincount(g * (c + 1) + p, minlength=c * (c + 1))
        self.matrix += counts.reshape(c, c + 1)
        return self

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add ``other``'s counts into this matrix (e.g. from another shard); returns self."""
        if other.num_classes != self.num_classes:
            raise ConfigError(
                f"cannot merge confusion matrices of {other.num_classes} and "
                f"{self.num_classes} classes"
            )
        self.matrix += other.matrix
        return self

    def _tp_fp_fn(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        m = self.matrix.astype(np.float64)
        tp = np.diag(m[:, : self.num_classes])
        return tp, m[:, : self.num_classes].sum(0) - tp, m.sum(1) - tp

    def iou(self) -> np.ndarray:
        """Per-class IoU [num_classes]; nan for classes absent from both GT and prediction."""
        tp, fp, fn = self._tp_fp_fn()
        return _safe_div(tp, tp + fp + fn)

    def miou(self) -> float:
        """Mean IoU over the classes that occur (nanmean); nan when nothing was counted."""
        return _nanmean(self.iou())

    def pixel_accuracy(self) -> float:
        """Correct pixels / counted pixels."""
        total = self.matrix.sum()
        return float(np.trace(self.matrix[:, : self.num_classes]) / total) if total else math.nan

    def class_accuracy(self) -> float:
        """Mean over GT classes of per-class recall (the VSPW script's "Acc_class")."""
        tp, _, fn = self._tp_fp_fn()
        return _nanmean(_safe_div(tp, tp + fn))


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _nanmean(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    ok = ~np.isnan(x)
    return float(x[ok].mean()) if ok.any() else math.nan


def clip_consistency(preds: Sequence[Any], gts: Sequence[Any], n: int) -> np.ndarray:
    """VC_i of every clip start i in 0 .. len-n-1 of one video: [max(len - n, 0)], nan if |G| = 0.

    ``preds``, ``gts``: equal-length sequences of [H, W] id maps.
    """
    return clip_consistency_multi(preds, gts, (n,))[n]


def clip_consistency_multi(
    preds: Sequence[Any],
    gts: Sequence[Any],
    ns: Sequence[int],
    num_classes: int | None = None,
    ignore_index: int | None = 255,
) -> dict[int, np.ndarray]:
    """:func:`clip_consistency` for several n in one pass over the frames: n -> [len - n].

    A pixel equals frame i's value over frames i .. i+n-1 iff it does not change between
    consecutive frames there, i.e. iff its latest change up to frame i+n-1 happened at or before
    frame i. One sweep keeps the index of each pixel's latest change ([H, W], for GT and
    prediction), so memory stays at a few frames whatever the video length. As in the official
    code the last frame of a video never enters a clip (starts stop at len-n-1). With
    ``num_classes``, a clip whose GT frames hold no valid pixel (all void or out of range) is
    nan: an all-void GT never changes, so it would otherwise score 100 % whatever was predicted.
    """
    for n in ns:
        if n < 2:
            raise ConfigError(f"video consistency needs n >= 2, got n={n}")
    if len(preds) != len(gts):
        raise LabelError(f"{len(preds)} predicted frames but {len(gts)} GT frames")
    total = len(gts)
    out = {n: np.full(max(total - n, 0), np.nan) for n in ns}
    if not ns or total <= min(ns):
        return out
    g_prev, p_prev = as_ids(gts[0]), as_ids(preds[0])
    if p_prev.shape != g_prev.shape:
        raise LabelError(f"frame 0: prediction shape {p_prev.shape} != GT shape {g_prev.shape}")
    g_change = np.zeros(g_prev.shape, dtype=np.int32)
    p_change = np.zeros(g_prev.shape, dtype=np.int32)

    def any_valid(g: np.ndarray) -> bool:
        return num_classes is None or bool(_valid_gt(g, num_classes, ignore_index).any())

    last_valid = 0 if any_valid(g_prev) else -1  # latest frame with a valid GT pixel
    for t in range(1, total - 1):
        g, p = as_ids(gts[t]), as_ids(preds[t])
        if p.shape != g.shape or g.shape != g_prev.shape:
            raise LabelError(
                f"frame {t}: prediction shape {p.shape} / GT shape {g.shape} differ from "
                f"frame 0's {g_prev.shape}"
            )
        g_change[g != g_prev] = t
        p_change[p != p_prev] = t
        last_valid = t if any_valid(g) else last_valid
        for n in ns:
            i = t - n + 1
            if 0 <= i < total - n and last_valid >= i:
                steady = g_change <= i
                hits = np.count_nonzero(steady & (p_change <= i))
                size = np.count_nonzero(steady)
                out[n][i] = hits / size if size else np.nan
        g_prev, p_prev = g, p
    return out


def video_consistency(preds: Sequence[Any], gts: Sequence[Any], n: int) -> tuple[float, int]:
    """(sum of VC_i over clips with |G| > 0, number of such clips) for one video.

    Pool these over videos and divide to get mVC_n (the official nanmean over all clips).
    """
    vc = clip_consistency(preds, gts, n)
    ok = ~np.isnan(vc)
    return float(vc[ok].sum()), int(ok.sum())


def mean_vc(videos: Iterable[tuple[Sequence[Any], Sequence[Any]]], n: int) -> float:
    """mVC_n over ``videos`` = [(preds, gts), ...]: nanmean over all clips pooled; nan if none."""
    total, count = 0.0, 0
    for preds, gts in videos:
        s, c = video_consistency(preds, gts, n)
        total, count = total + s, count + c
    return total / count if count else math.nan


def _valid_gt(g: np.ndarray, num_classes: int, ignore_index: int | None) -> np.ndarray:
    ok = (g >= 0) & (g < num_classes)
    return ok & (g != ignore_index) if ignore_index is not None else ok


def _remap(pred: np.ndarray, lut: np.ndarray, num_classes: int) -> np.ndarray:
    inside = (pred >= 0) & (pred < lut.size)
    out = np.full(pred.shape, num_classes, dtype=np.int64)
    out[inside] = lut[pred[inside]]
    return out


_DENSE_LIMIT = 1 << 20  # largest (max id + 1) * num_classes counted with a dense bincount


def overlap_counts(
    preds: Sequence[np.ndarray],
    gts: Sequence[np.ndarray],
    num_classes: int,
    ignore_index: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Predicted ids >= 0 that touch counted GT pixels [K] and their overlap [K, num_classes].

    Small ids are counted with one dense bincount per frame; huge ids fall back to np.unique.
    """
    c = num_classes
    top = max((int(p.max(initial=-1)) for p in preds), default=-1)
    pairs = []
    for p, g in zip(preds, gts, strict=True):
        if p.shape != g.shape:
            raise LabelError(f"prediction shape {p.shape} differs from GT shape {g.shape}")
        ok = _valid_gt(g, c, ignore_index) & (p >= 0)
        pairs.append((p[ok], g[ok]))
    if top < 0:
        return np.zeros(0, dtype=np.int64), np.zeros((0, c), dtype=np.int64)
    if (top + 1) * c <= _DENSE_LIMIT:
        counts = np.zeros((top + 1) * c, dtype=np.int64)
        for pv, gv in pairs:
            counts += np.bincount(pv * c + gv, minlength=(top + 1) * c)
        dense = counts.reshape(top + 1, c)
        ids = np.flatnonzero(dense.any(1))
        return ids, dense[ids]
    ids, inv = np.unique(np.concatenate([pv for pv, _ in pairs]), return_inverse=True)
    gv = np.concatenate([g for _, g in pairs])
    counts = np.bincount(inv * c + gv, minlength=ids.size * c)
    return ids, counts.reshape(ids.size, c)


def map_hungarian(
    pred_frames: Sequence[Any],
    gt_frames: Sequence[Any],
    num_classes: int,
    ignore_index: int | None = 255,
) -> np.ndarray:
    """One-to-one map of predicted ids to GT classes for one video: lookup [max pred id + 1].

    Solves the assignment maximising the overlap summed over all frames; predicted ids left
    unmatched (or matched with zero overlap) map to ``num_classes``, which always counts wrong.
    Negative ids are never matched (they count wrong too).
    """
    preds = [as_ids(p) for p in pred_frames]
    gts = [as_ids(g) for g in gt_frames]
    if len(preds) != len(gts):
        raise LabelError(f"{len(preds)} predicted frames but {len(gts)} GT frames")
    top = max((int(p.max(initial=-1)) for p in preds), default=-1)
    lut = np.full(max(top + 1, 0), num_classes, dtype=np.int64)
    ids, overlap = overlap_counts(preds, gts, num_classes, ignore_index)
    if ids.size == 0:
        return lut
    rows, cols = linear_sum_assignment(overlap, maximize=True)
    hit = overlap[rows, cols] > 0
    lut[ids[rows[hit]]] = cols[hit]
    return lut


def map_majority_frame(
    pred: Any, gt: Any, num_classes: int, ignore_index: int | None = 255
) -> np.ndarray:
    """Many-to-one per frame: each predicted id becomes the GT class it overlaps most: [H, W].

    Ties go to the lower class id; ids that overlap no counted GT pixel, and negative ids, map
    to ``num_classes`` (wrong).
    """
    p, g = as_ids(pred), as_ids(gt)
    ids, overlap = overlap_counts([p], [g], num_classes, ignore_index)
    lut = np.full(int(p.max(initial=-1)) + 1, num_classes, dtype=np.int64)
    lut[ids] = overlap.argmax(1)
    return _remap(p, lut, num_classes)


def apply_protocol(
    name: str,
    pred_frames: Sequence[Any],
    gt_frames: Sequence[Any],
    num_classes: int,
    ignore_index: int | None = 255,
) -> list[np.ndarray]:
    """Map one video's predicted ids to GT classes under protocol ``name`` (see PROTOCOLS)."""
    if name not in PROTOCOLS:
        raise ConfigError(f"protocol {name!r} is unknown; choose one of {', '.join(PROTOCOLS)}")
    if len(pred_frames) != len(gt_frames):
        raise LabelError(f"{len(pred_frames)} predicted frames but {len(gt_frames)} GT frames")
    if name == "first-frame":
        return [as_ids(p) for p in pred_frames]
    pairs = list(zip(pred_frames, gt_frames, strict=True))
    if name == "majority":
        return [map_majority_frame(p, g, num_classes, ignore_index) for p, g in pairs]
    if name == "hungarian-frame":
        return [
            _remap(as_ids(p), map_hungarian([p], [g], num_classes, ignore_index), num_classes)
            for p, g in pairs
        ]
    if name == "majority-video":
        preds = [as_ids(p) for p in pred_frames]
        ids, overlap = overlap_counts(
            preds, [as_ids(g) for g in gt_frames], num_classes, ignore_index
        )
        lut = np.full(max((int(p.max(initial=-1)) for p in preds), default=-1) + 1, num_classes)
        lut[ids] = overlap.argmax(1)
        return [_remap(p, lut, num_classes) for p in preds]
    lut = map_hungarian(pred_frames, gt_frames, num_classes, ignore_index)
    return [_remap(as_ids(p), lut, num_classes) for p in pred_frames]


def _nan_to_none(x: Any) -> Any:
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_nan_to_none(v) for v in x]
    return x


@dataclass
class EvalResult:
    """Scores of one evaluation (fractions in [0, 1], nan where undefined) and its protocol."""

    miou: float
    pixel_acc: float
    mvc: dict[int, float]  # n -> mVC_n
    per_class_iou: list[float]
    protocol: str
    num_frames: int  # frames with GT that were scored
    num_videos: int  # videos with at least one scored frame
    num_classes: int
    class_names: list[str] | None = None
    confusion: np.ndarray | None = field(default=None, repr=False)

    @property
    def mvc8(self) -> float:
        return self.mvc.get(8, math.nan)

    @property
    def mvc16(self) -> float:
        return self.mvc.get(16, math.nan)

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python summary (nan kept as float nan)."""
        return {
            "protocol": self.protocol,
            "miou": self.miou,
            "mvc8": self.mvc8,
            "mvc16": self.mvc16,
            "mvc": {str(n): v for n, v in sorted(self.mvc.items())},
            "pixel_acc": self.pixel_acc,
            "per_class_iou": list(self.per_class_iou),
            "class_names": self.class_names,
            "num_classes": self.num_classes,
            "num_frames": self.num_frames,
            "num_videos": self.num_videos,
        }

    def to_json(self, indent: int | None = 2) -> str:
        """JSON text of :meth:`to_dict`; nan becomes null."""
        return json.dumps(_nan_to_none(self.to_dict()), indent=indent)

    def table(self) -> str:
        """Markdown table of the summary (percent, two decimals) and the per-class IoU."""

        def pct(v: float) -> str:
            return "n/a" if math.isnan(v) else f"{100 * v:.2f}"

        ns = sorted(self.mvc)
        head = ["protocol", "mIoU", *(f"mVC{n}" for n in ns), "pixel acc", "videos", "frames"]
        row = [
            self.protocol,
            pct(self.miou),
            *(pct(self.mvc[n]) for n in ns),
            pct(self.pixel_acc),
            str(self.num_videos),
            str(self.num_frames),
        ]
        lines = [
            "| " + " | ".join(head) + " |",
            "|" + "---|" * len(head),
            "| " + " | ".join(row) + " |",
        ]
        lines += ["", "| class | IoU |", "|---|---|"]
        names = self.class_names or [str(k) for k in range(len(self.per_class_iou))]
        lines += [f"| {n} | {pct(v)} |" for n, v in zip(names, self.per_class_iou, strict=True)]
        return "\n".join(lines)


def _runs(indices: Sequence[int]) -> list[slice]:
    """Slices of ``indices`` (increasing) covering its runs of consecutive integers."""
    idx = np.asarray(indices)
    cuts = np.flatnonzero(np.diff(idx) != 1) + 1
    bounds = [0, *cuts.tolist(), len(idx)]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def evaluate(
    videos: Iterable[tuple[str, Sequence[Any], Sequence[Any]]],
    num_classes: int,
    ignore_index: int | None = 255,
    protocol: str = "first-frame",
    vc_ns: Sequence[int] = (8, 16),
    class_names: list[str] | None = None,
) -> EvalResult:
    """Score ``videos`` = [(name, preds, gts), ...] of [H, W] id maps under ``protocol``.

    ``gts[i]`` may be None for a frame without GT (its prediction is then unused and may be None
    too): mIoU counts labelled frames only, mVC_n treats each run of consecutive labelled frames
    as one video. Videos are consumed one at a time, so a generator keeps memory flat.
    """
    if protocol not in PROTOCOLS:
        raise ConfigError(f"protocol {protocol!r} is unknown; choose one of {', '.join(PROTOCOLS)}")
    for n in vc_ns:
        if n < 2:
            raise ConfigError(f"video consistency needs n >= 2, got n={n}")
    cm = ConfusionMatrix(num_classes, ignore_index)
    vc_sum = dict.fromkeys(vc_ns, 0.0)
    vc_count = dict.fromkeys(vc_ns, 0)
    num_frames = num_videos = 0
    for name, preds, gts in videos:
        if len(preds) != len(gts):
            raise LabelError(f"video {name!r}: {len(preds)} predicted frames, {len(gts)} GT frames")
        idx = [i for i, g in enumerate(gts) if g is not None]
        if not idx:
            continue
        p = [as_ids(preds[i]) if preds[i] is not None else None for i in idx]
        g = [as_ids(gts[i]) for i in idx]
        for i, a, b in zip(idx, p, g, strict=True):
            if a is None:
                raise LabelError(f"video {name!r} frame {i}: GT present but prediction is None")
            if a.shape != b.shape:
                raise LabelError(
                    f"video {name!r} frame {i}: prediction shape {a.shape} != GT shape {b.shape}"
                )
        mapped = apply_protocol(protocol, p, g, num_classes, ignore_index)
        for a, b in zip(mapped, g, strict=True):
            cm.update(a, b)
        for run in _runs(idx):
            vcs = clip_consistency_multi(mapped[run], g[run], vc_ns, num_classes, ignore_index)
            for n, vc in vcs.items():
                ok = ~np.isnan(vc)
                vc_sum[n] += float(vc[ok].sum())
                vc_count[n] += int(ok.sum())
        num_frames += len(idx)
        num_videos += 1
    return EvalResult(
        miou=cm.miou(),
        pixel_acc=cm.pixel_accuracy(),
        mvc={n: vc_sum[n] / vc_count[n] if vc_count[n] else math.nan for n in vc_ns},
        per_class_iou=[float(v) for v in cm.iou()],
        protocol=protocol,
        num_frames=num_frames,
        num_videos=num_videos,
        num_classes=num_classes,
        class_names=class_names,
        confusion=cm.matrix.copy(),
    )
