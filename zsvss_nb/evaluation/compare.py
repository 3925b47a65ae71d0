"""Compare segmentation methods on one dataset under the same protocols (``zsvss compare``).

:func:`compare` runs each method through the dataset runner (:func:`zsvss_nb.run.runner.run_dataset`
by default, or the Ray recipe via :func:`ray_runner`), so sharding, resuming by config hash and
atomic outputs apply to every method, then scores every method under every requested protocol
(:func:`zsvss_nb.evaluation.evaluate.evaluate_folders`) and returns a
:class:`~zsvss_nb.evaluation.report.Comparison`.

Which run a (method, protocol) row scores:

- ``first-frame``: the method's run *with* the first frame's GT (VidSeg maps its clusters with
  it, propagation starts from it); methods whose ids are per-frame clusters have no such run
  and are listed as not applicable;
- every other protocol (``hungarian``, ``majority``, ``hungarian-frame``, ``majority-video``):
  the method's GT-free run, whose ids the protocol maps to classes; a method that needs GT
  (``propagate-first-frame``) is scored on its GT run, and the table's GT column says so.

Predictions go to ``OUT/runs/<method>/`` (GT-free) and ``OUT/runs/<method>.first-frame-gt/``,
in the ``PRED/<video>/<frame>.png`` layout of ``zsvss dataset`` (``runs-first<N>`` with
``max_frames``). Seconds per frame are the runs' wall time per frame from their ``.done.json``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..backbones.base import Backbone
from ..config import SegmentConfig
from ..datasets import Dataset
from ..errors import ConfigError
from ..io.outputs import DONE_FILE
from ..io.provenance import model_identity
from ..methods import available, get_method
from ..run.runner import config_hash, is_finished, run_dataset
from .evaluate import evaluate_folders
from .metrics import PROTOCOLS, EvalResult
from .report import Comparison, ComparisonRow

log = logging.getLogger(__name__)

DEFAULT_PROTOCOLS = ("first-frame", "hungarian", "majority")

Runner = Callable[..., Any]


def select_videos(dataset: Dataset, names: Sequence[str] | None) -> Dataset:
    """``dataset`` with only the videos ``names`` (in the dataset's order; None: all)."""
    if names is None:
        return dataset
    unknown = sorted(set(names) - {v.name for v in dataset.videos})
    if unknown:
        raise ConfigError(f"videos {unknown}: not in the dataset ({len(dataset.videos)} videos)")
    return dataclasses.replace(dataset, videos=[v for v in dataset.videos if v.name in names])


def limit_frames(dataset: Dataset, max_frames: int | None) -> Dataset:
    """``dataset`` with every video cut to its first ``max_frames`` frames (and their labels)."""
    if max_frames is None:
        return dataset
    if max_frames < 1:
        raise ConfigError(f"max_frames={max_frames} must be at least 1")
    videos = []
    for item in dataset.videos:
        if not item.frames:
            raise ConfigError(f"video {item.name}: max_frames needs frame folders, not a file")
        frames = item.frames[:max_frames]
        stems = {p.stem for p in frames}
        labels = {k: v for k, v in item.labels.items() if k in stems}
        videos.append(dataclasses.replace(item, frames=frames, labels=labels))
    return dataclasses.replace(dataset, videos=videos)


def plan(
    methods: Sequence[str], protocols: Sequence[str]
) -> tuple[list[tuple[str, str, bool]], list[tuple[str, str, str]]]:
    """(method, protocol, scored on the GT run) for every applicable pair, and the skipped
    (method, protocol, reason) pairs."""
    rows, skipped = [], []
    for protocol in protocols:
        for name in methods:
            m = get_method(name)
            if protocol == "first-frame":
                if m.labels == "clusters":
                    skipped.append((name, protocol, "its ids are per-frame clusters"))
                    continue
                rows.append((name, protocol, True))
            else:
                rows.append((name, protocol, m.labels == "classes"))
    return rows, skipped


def run_folder(
    out: str | os.PathLike[str], method: str, use_gt: bool, max_frames: int | None
) -> Path:
    """Where a method's run writes its PNGs under the comparison's output folder."""
    runs = Path(out) / ("runs" if max_frames is None else f"runs-first{max_frames}")
    return runs / (f"{method}.first-frame-gt" if use_gt else method)


def run_cost(folder: Path, dataset: Dataset) -> tuple[int, float]:
    """(frames, seconds) summed over the videos' ``.done.json`` in ``folder``."""
    frames, seconds = 0, 0.0
    for item in dataset.videos:
        try:
            done = json.loads((folder / item.name / DONE_FILE).read_text())
        except (OSError, ValueError):
            continue
        frames += int(done.get("frames", 0))
        seconds += float(done.get("seconds", 0.0))
    return frames, seconds


def ray_runner(model_spec: str | os.PathLike[str], **ray_options: Any) -> Runner:
    """A runner for :func:`compare` that segments through Ray Data
    (:func:`zsvss_nb.run.distributed.run_dataset_ray`, with ``ray_options`` such as
    ``num_gpus_per_worker``, ``concurrency``, ``ray_address``); every worker loads
    ``model_spec``, which must name the same weights as the backbone given to compare."""

    def run(dataset, out, backbone, cfg, *, use_first_frame_gt, resume, method, **_):
        from ..run.distributed import run_dataset_ray

        return run_dataset_ray(
            dataset,
            out,
            str(model_spec),
            cfg,
            use_first_frame_gt=use_first_frame_gt,
            resume=resume,
            method=method,
            **ray_options,
        )

    return run


def parse_seeds(text: str) -> list[int]:
    """``--seeds 0,1,2`` as [0, 1, 2] (ValueError, which argparse reports, otherwise)."""
    seeds = [int(part) for part in text.split(",") if part.strip()]
    if not seeds:
        raise ValueError(f"no seed in {text!r}")
    return seeds


def seeded(cfg: SegmentConfig, seed: int) -> SegmentConfig:
    """``cfg`` with the noise seed (``features.seed``) and the k-means seed (``context.seed``)
    both set to ``seed``: one run of a seed study."""
    return cfg.replace(
        features=cfg.features.replace(seed=seed), context=cfg.context.replace(seed=seed)
    )


def mean_result(results: Sequence[EvalResult]) -> tuple[EvalResult, dict[str, float]]:
    """The mean of several runs' scores and their spread (population std) per column key
    ("miou", "mvc<n>", "pixel_acc"). One result is returned as it is, with no spread."""
    if len(results) == 1:
        return results[0], {}

    def stats(values: list[float]) -> tuple[float, float]:
        arr = np.asarray(values, dtype=float)
        if np.isnan(arr).all():
            return math.nan, math.nan
        return float(np.nanmean(arr)), float(np.nanstd(arr))

    first = results[0]
    miou, miou_sd = stats([r.miou for r in results])
    acc, acc_sd = stats([r.pixel_acc for r in results])
    mvc = {n: stats([r.mvc.get(n, math.nan) for r in results]) for n in first.mvc}
    per_class = [stats(list(v))[0] for v in zip(*(r.per_class_iou for r in results), strict=True)]
    mean = dataclasses.replace(
        first, miou=miou, pixel_acc=acc, mvc={n: m for n, (m, _) in mvc.items()},
        per_class_iou=per_class, confusion=None,
    )  # fmt: skip
    spread = {"miou": miou_sd, "pixel_acc": acc_sd, **{f"mvc{n}": sd for n, (_, sd) in mvc.items()}}
    return mean, spread


def compare(
    dataset: Dataset,
    backbone: Backbone,
    cfg: SegmentConfig | None = None,
    methods: Sequence[str] | None = None,
    protocols: Sequence[str] = DEFAULT_PROTOCOLS,
    out: str | os.PathLike[str] = "runs/compare",
    *,
    shard: tuple[int, int] | None = None,
    resume: bool = False,
    max_frames: int | None = None,
    videos: Sequence[str] | None = None,
    vc_ns: Sequence[int] = (8, 16),
    progress: bool = True,
    runner: Runner | None = None,
    seeds: Sequence[int] | None = None,
) -> Comparison:
    """Run ``methods`` on ``dataset`` with ``backbone`` and score them under ``protocols``.

    ``cfg`` (default: the backbone's) is the shared base config; each method applies its own
    forced settings, and the dataset's ignore id replaces ``cfg``'s. ``methods`` defaults to
    every method the backbone can run; a named one it cannot run is a ConfigError before
    anything runs. ``shard``, ``resume``: as :func:`run_dataset`; while any run still misses
    videos (other shards), nothing is scored and :attr:`Comparison.incomplete` names those
    runs. ``max_frames`` cuts every video and ``videos`` picks videos by name (a quick run).
    ``runner``: a function with
    :func:`run_dataset`'s arguments (e.g. :func:`ray_runner`). ``seeds``: run everything once
    per seed (:func:`seeded`: noise and k-means seed) into ``OUT/seed<s>/``; each row is then
    the mean over the seeds with the spread in :attr:`ComparisonRow.std`.
    """
    cfg = cfg or backbone.default_config()
    if dataset.ignore_index is not None:
        cfg = cfg.replace(ignore_index=dataset.ignore_index)
    names = available(backbone) if methods is None else list(methods)
    if not names:
        raise ConfigError("no method to compare")
    for name in names:
        reason = get_method(name).missing(backbone)
        if reason is not None:
            raise ConfigError(reason)
    bad = [p for p in protocols if p not in PROTOCOLS]
    if bad or not protocols:
        raise ConfigError(f"protocols {list(protocols)}: choose from {', '.join(PROTOCOLS)}")
    if seeds is not None and (not seeds or len(set(seeds)) != len(seeds)):
        raise ConfigError(f"seeds {list(seeds)}: give at least one seed, each once")
    data = limit_frames(select_videos(dataset, videos), max_frames)
    rows, skipped = plan(names, protocols)
    runs = [(Path(out), cfg)] if seeds is None else [(Path(out) / f"seed{s}", seeded(cfg, s))
                                                     for s in seeds]  # fmt: skip
    run = runner or run_dataset
    incomplete = []
    for root, run_cfg in runs:
        options = {"shard": shard, "resume": resume, "progress": progress, "run": run}
        incomplete += _segment(data, backbone, run_cfg, rows, root, max_frames, options)
    meta = {
        "dataset": f"{data.name} {data.root}",
        "videos": len(data.videos),
        "max_frames": max_frames,
        "model": model_identity(backbone),
        "config": cfg.to_dict(),
        "methods": names,
        "protocols": list(protocols),
        "vc_ns": list(vc_ns),
        "seeds": None if seeds is None else list(seeds),
    }
    if incomplete:
        return Comparison([], skipped, meta, incomplete)
    table = []
    for method, protocol, use_gt in rows:
        results, frames, seconds = [], 0, 0.0
        for root, _ in runs:
            folder = run_folder(root, method, use_gt, max_frames)
            results.append(evaluate_folders(folder, data, protocol=protocol, vc_ns=vc_ns))
            f, s = run_cost(folder, data)
            frames, seconds = frames + f, seconds + s
        per_frame = seconds / frames if frames else math.nan
        result, spread = mean_result(results)
        table.append(
            ComparisonRow(
                method, protocol, use_gt, result, per_frame, frames // len(runs), spread, len(runs)
            )
        )
    return Comparison(table, skipped, meta)


def _segment(data, backbone, cfg, rows, root, max_frames, options) -> list[str]:
    """Run every (method, GT) run of ``rows`` into ``root``; the folders still missing videos."""
    incomplete = []
    for method, use_gt in dict.fromkeys((m, gt) for m, _, gt in rows):
        folder = run_folder(root, method, use_gt, max_frames)
        log.info("compare: %s%s -> %s", method, " (first-frame GT)" if use_gt else "", folder)
        options["run"](
            data,
            folder,
            backbone,
            cfg,
            shard=options["shard"],
            resume=options["resume"],
            use_first_frame_gt=use_gt,
            progress=options["progress"],
            method=method,
        )
        key = config_hash(get_method(method).resolve(cfg), backbone, use_gt, method)
        if not all(is_finished(folder / item.name, key) for item in data.videos):
            incomplete.append(str(folder))
    return incomplete
