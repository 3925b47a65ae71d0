"""Evaluation over prediction folders and in memory, and notebook reports.

- :func:`evaluate_folders` scores ``PRED/<video>/<frame stem>.png`` (what ``zsvss dataset``
  writes) against a dataset's GT, with :func:`load_prediction` reading one id PNG;
- :class:`VideoPrediction` holds one video segmented in memory (``runner.segment_dataset``),
  :func:`evaluate_protocols` scores such runs under several protocols into a
  :class:`ResultTable`, which a notebook renders as :class:`Markdown`;
- :func:`flicker_rate` and :func:`label_change_fraction` measure label changes between frames
  without GT.

The metric kernels and protocols themselves are in :mod:`zsvss_nb.evaluation.metrics`. Nothing here
runs the pipeline.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..datasets import Dataset, open_dataset
from ..errors import ConfigError, LabelError, PredictionMissingError
from ..io.outputs import DONE_FILE
from .metrics import PROTOCOLS, EvalResult, as_ids, evaluate

log = logging.getLogger(__name__)


def load_prediction(path: str | os.PathLike[str]) -> np.ndarray:
    """Predicted ids from a PNG (mode L, P or I): [H, W] int64; palette PNGs give indices."""
    p = Path(path)
    try:
        with Image.open(p) as im:
            if im.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
                raise LabelError(f"{p}: prediction is mode {im.mode}; expected id PNG (L/P/I)")
            return np.array(im).astype(np.int64)
    except FileNotFoundError as e:
        raise PredictionMissingError(f"{p}: prediction file does not exist") from e
    except (UnidentifiedImageError, OSError) as e:
        raise LabelError(f"{p}: cannot read prediction image ({e})") from e


def run_hashes(pred_root: str | os.PathLike[str], videos: Iterable[str]) -> dict[str, str]:
    """``{video: config hash}`` from each video's ``.done.json`` under ``pred_root`` (videos
    without one, e.g. predictions of another tool, are left out)."""
    hashes = {}
    for name in videos:
        try:
            data = json.loads((Path(pred_root) / name / DONE_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("config_hash"), str):
            hashes[name] = data["config_hash"]
    return hashes


def check_one_run(
    pred_root: str | os.PathLike[str], videos: Iterable[str], allow_mixed: bool = False
) -> None:
    """Refuse (ConfigError) a prediction folder whose videos carry different config hashes,
    i.e. mixes runs with different settings; ``allow_mixed`` makes it a warning."""
    by_hash: dict[str, list[str]] = {}
    for name, key in run_hashes(pred_root, videos).items():
        by_hash.setdefault(key, []).append(name)
    if len(by_hash) < 2:
        return
    groups = "; ".join(
        f"{key[:12]} for {', '.join(names[:2])}{' ...' if len(names) > 2 else ''}"
        for key, names in sorted(by_hash.items(), key=lambda kv: kv[1][0])
    )
    text = (
        f"{pred_root}: its videos come from {len(by_hash)} runs with different settings ({groups})"
    )
    if not allow_mixed:
        raise ConfigError(
            f"{text}; score one run at a time, or pass --allow-mixed (allow_mixed=True)"
        )
    log.warning("%s; scoring them together as asked (--allow-mixed)", text)


def evaluate_folders(
    pred_root: str | os.PathLike[str],
    dataset_or_gt_root: Dataset | str | os.PathLike[str],
    fmt: str | None = None,
    protocol: str = "first-frame",
    num_classes: int | None = None,
    ignore_index: int | None = None,
    split: str | None = None,
    vc_ns: Sequence[int] = (8, 16),
    strict_ids: bool | None = None,
    allow_mixed: bool = False,
) -> EvalResult:
    """Score predictions ``pred_root/<video>/<frame stem>.png`` against a dataset's GT.

    ``dataset_or_gt_root`` is an opened :class:`Dataset` or a root opened with ``fmt``/``split``.
    ``num_classes``/``ignore_index`` override the dataset's. Every labelled frame needs a
    prediction: all are checked before any is read (PredictionMissingError names the video and its
    first missing frame). Videos without GT are skipped. With ``strict_ids`` a GT id outside
    [0, num_classes) that is not the ignore id is a LabelError naming the file and the id (a
    wrong ``num_classes`` or ignore id would otherwise drop those pixels silently); False keeps
    the official evaluator's behaviour of not counting them. The default (None) is the format's
    ``strict_ids``: strict for every built-in format but VSPW, whose official evaluator counts
    only GT ids in [0, 124) by design. Videos whose ``.done.json`` carry different config hashes
    (runs with different settings mixed in one folder) are refused unless ``allow_mixed``
    (:func:`check_one_run`).
    """
    root = Path(pred_root)
    if isinstance(dataset_or_gt_root, Dataset):
        ds = dataset_or_gt_root
    else:
        if fmt is None:
            raise ConfigError(
                "evaluate_folders needs fmt when given a GT root instead of a Dataset"
            )
        ds = open_dataset(fmt, dataset_or_gt_root, split)
    if strict_ids is None:
        strict_ids = ds.format is None or ds.format.strict_ids
    c = ds.num_classes if num_classes is None else num_classes
    ign = ds.ignore_index if ignore_index is None else ignore_index
    if c < 1:
        raise ConfigError(f"{ds.root}: dataset has no classes; pass num_classes")
    if protocol not in PROTOCOLS:
        raise ConfigError(f"protocol {protocol!r} is unknown; choose one of {', '.join(PROTOCOLS)}")
    jobs = []
    for v in ds.videos:
        names = v.frame_names
        if not any(s in v.labels for s in names):
            continue
        folder = root / v.name
        missing = [s for s in names if s in v.labels and not (folder / f"{s}.png").is_file()]
        if missing:
            raise PredictionMissingError(
                f"{folder}: video {v.name!r} lacks predictions for {len(missing)} labelled "
                f"frame(s), first {missing[0]}.png"
            )
        jobs.append((v, folder, names))
    check_one_run(root, [v.name for v, _, _ in jobs], allow_mixed)

    def videos() -> Iterator[tuple[str, list[Any], list[Any]]]:
        for v, folder, names in jobs:
            preds: list[Any] = []
            gts: list[Any] = []
            for s in names:
                if s not in v.labels:
                    preds.append(None)
                    gts.append(None)
                    continue
                pred = load_prediction(folder / f"{s}.png")
                gt = ds.read_label(v.labels[s])
                if strict_ids:
                    unknown = gt[(gt < 0) | (gt >= c)]
                    unknown = unknown[unknown != ign] if ign is not None else unknown
                    if unknown.size:
                        raise LabelError(
                            f"{v.labels[s]}: GT id {int(unknown[0])} is outside the class range "
                            f"0..{c - 1} and is not the ignore id {ign} (set num_classes or "
                            "ignore_index)"
                        )
                if pred.shape != gt.shape:
                    raise LabelError(
                        f"{v.labels[s]}: GT size {gt.shape} differs from prediction "
                        f"{folder / f'{s}.png'} size {pred.shape}"
                    )
                preds.append(pred)
                gts.append(gt)
            yield v.name, preds, gts

    names = ds.class_names if ds.class_names is not None and len(ds.class_names) == c else None
    return evaluate(videos(), c, ign, protocol, vc_ns, names)


# ---------------------------------------------------------------- notebook helpers


def label_change_fraction(labels: Sequence[Any] | Any) -> np.ndarray:
    """Share of pixels whose id differs from the previous frame's, per consecutive pair: [T - 1].

    ``labels``: [T, H, W] (array or tensor) or a sequence of [H, W] id maps of one size. A
    temporally stable segmentation of a static scene scores 0; an empty array for T < 2.
    """
    frames = [as_ids(m) for m in labels]
    if not frames:
        raise LabelError("label_change_fraction needs at least one label map")
    shapes = {f.shape for f in frames}
    if len(shapes) != 1 or frames[0].ndim != 2:
        raise LabelError(f"label maps must all be [H, W] of one size, got {sorted(shapes)}")
    if len(frames) < 2:
        return np.zeros(0)
    stack = np.stack(frames)
    return (stack[1:] != stack[:-1]).reshape(len(frames) - 1, -1).mean(1)


def flicker_rate(labels: Sequence[Any] | Any) -> float:
    """Flicker: mean share of pixels whose label changes between consecutive frames; nan if T < 2.

    Unlike mVC it needs no ground truth, so it compares e.g. coarse labels before and after
    refinement directly; real motion also counts as change, so compare runs on the same clip.
    """
    changes = label_change_fraction(labels)
    return float(changes.mean()) if changes.size else math.nan


@dataclass
class VideoPrediction:
    """One segmented video in memory: predicted ids and GT per frame ([H, W] int64, GT None where
    the frame is unlabelled), and optionally the frames (uint8 [T, 3, H, W]) for figures."""

    name: str
    preds: list[np.ndarray]
    gts: list[np.ndarray | None]
    frames: Any = None

    def as_tuple(self) -> tuple[str, list[np.ndarray], list[np.ndarray | None]]:
        """``(name, preds, gts)``, the item :func:`evaluate` takes."""
        return self.name, self.preds, self.gts


def _pct(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{100 * v:.2f}"


class Markdown(str):
    """Text that a notebook renders as markdown (and prints as itself)."""

    def _repr_markdown_(self) -> str:
        return str(self)


def _md_table(head: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


@dataclass(repr=False)
class ResultTable:
    """Results of several runs and protocols as one table; ``a + b`` concatenates the rows.

    A notebook shows it as markdown (run, protocol, mIoU, mVC_n, pixel accuracy, videos,
    frames, in percent); :meth:`per_class` gives per-class IoU with one column per row.
    """

    rows: list[tuple[str, EvalResult]] = field(default_factory=list)

    def __add__(self, other: ResultTable) -> ResultTable:
        return ResultTable([*self.rows, *other.rows])

    def __len__(self) -> int:
        return len(self.rows)

    def result(self, run: str, protocol: str) -> EvalResult:
        """The result of run ``run`` under ``protocol``."""
        for name, res in self.rows:
            if name == run and res.protocol == protocol:
                return res
        raise ConfigError(f"no result for run {run!r} under protocol {protocol!r}")

    def select(
        self, runs: Sequence[str] | None = None, protocols: Sequence[str] | None = None
    ) -> ResultTable:
        """The rows whose run is in ``runs`` and protocol in ``protocols`` (None: any), in order."""
        return ResultTable(
            [
                (name, r)
                for name, r in self.rows
                if (runs is None or name in runs) and (protocols is None or r.protocol in protocols)
            ]
        )

    def markdown(self) -> Markdown:
        """The summary table as markdown."""
        ns = sorted({n for _, r in self.rows for n in r.mvc})
        head = [
            "run",
            "protocol",
            "mIoU",
            *(f"mVC{n}" for n in ns),
            "pixel acc",
            "videos",
            "frames",
        ]
        rows = [
            [
                name,
                r.protocol,
                _pct(r.miou),
                *(_pct(r.mvc.get(n, math.nan)) for n in ns),
                _pct(r.pixel_acc),
                str(r.num_videos),
                str(r.num_frames),
            ]
            for name, r in self.rows
        ]
        return Markdown("\n".join(_md_table(head, rows)))

    def per_class(self) -> Markdown:
        """Per-class IoU (percent) as markdown: one row per class, one column per table row.

        All rows must score the same class set (one dataset): :meth:`select` them first.
        """
        if not self.rows:
            raise ConfigError("the table has no rows")
        classes = {(r.num_classes, tuple(r.class_names or ())) for _, r in self.rows}
        if len(classes) > 1:
            raise ConfigError("rows score different class sets; select the rows of one dataset")
        first = self.rows[0][1]
        names = first.class_names or [str(k) for k in range(first.num_classes)]
        head = ["class", *(f"{name} ({r.protocol})" for name, r in self.rows)]
        rows = [
            [names[k], *(_pct(r.per_class_iou[k]) for _, r in self.rows)]
            for k in range(first.num_classes)
        ]
        return Markdown("\n".join(_md_table(head, rows)))

    def _repr_markdown_(self) -> str:
        return self.markdown()

    def __str__(self) -> str:
        return self.markdown()

    def __repr__(self) -> str:
        return self.markdown()


def evaluate_protocols(
    videos: Iterable[VideoPrediction | tuple[str, Sequence[Any], Sequence[Any]]],
    num_classes: int,
    ignore_index: int | None = 255,
    protocols: Sequence[str] = PROTOCOLS,
    vc_ns: Sequence[int] = (8, 16),
    class_names: list[str] | None = None,
    run: str = "",
) -> ResultTable:
    """Score the same in-memory predictions under each of ``protocols``: one row per protocol.

    ``videos``: :class:`VideoPrediction` s or ``(name, preds, gts)`` tuples (read once, kept in
    a list). Each row is :func:`evaluate` under that protocol, labelled ``run``.
    """
    items = [v.as_tuple() if isinstance(v, VideoPrediction) else tuple(v) for v in videos]
    return ResultTable(
        [
            (run, evaluate(items, num_classes, ignore_index, p, vc_ns, class_names))
            for p in protocols
        ]
    )
