"""Run the method over a dataset: one video at a time, sharded, resumable, atomic.

Outputs follow the layout the official VSPW scripts read: ``PRED/<video>/<frame stem>.png``
(uint8 label ids at the original resolution). Each finished video also gets
``PRED/<video>/.done.json`` (frames, seconds, config hash, the files it wrote), written last,
so its presence marks a finished video; ``PRED/run_manifest_<rank>.json`` records each
process's run.

The per-video function :func:`segment_video_item` is what every launcher runs: the sequential
:func:`run_dataset` (one process, ``--shard i/N``, ``torchrun``/``accelerate launch``) and the
Ray Data recipe in :mod:`zsvss_nb.run.distributed`. A video's labels depend only on its frames, the
config and the model (a fresh scene context per video; the noise is seeded per window), never on
which process ran it or what it ran before, so any split gives byte-identical PNGs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..backbones import load_backbone
from ..backbones.base import Backbone
from ..config import SegmentConfig
from ..datasets import Dataset, VideoItem
from ..errors import ConfigError, DatasetLayoutError, LabelError, PathError, os_problem
from ..io.locks import claim_output, lock_path, probe_lock
from ..io.outputs import (
    DONE_FILE,
    check_disjoint,
    check_name_fits,
    check_output_folder,
    output_files,
    recover,
    staged_output,
)
from ..io.provenance import model_identity, versions
from ..io.video import open_video
from ..io.writers import atomic_write_json, atomic_write_png
from ..methods import DEFAULT, get_method, hashed_config, resolve, segmenter
from .shards import manifest_path, rank_from_env
from .shards import shard as shard_videos

log = logging.getLogger(__name__)

MANIFEST_NAME = re.compile(r"^run_manifest_\d+\.json$")  # PRED/run_manifest_<rank>.json


def config_hash(
    cfg: SegmentConfig, backbone: Backbone, use_first_frame_gt: bool, method: str = DEFAULT
) -> str:
    """sha256 of everything that changes a video's labels: method, config, model weights, dtype,
    GT use.

    The device is left out on purpose, so a run interrupted on one machine resumes on another.
    The config is the method's resolved one without the sections it does not read
    (:func:`zsvss_nb.methods.hashed_config`), and the method is named only when it is not
    ``vidseg``, so VidSeg runs keep the hashes they had before methods existed.
    """
    payload = {
        "config": hashed_config(cfg, method),
        "model_sha256": backbone.fingerprint(),
        "model_kind": backbone.kind,
        "dtype": str(backbone.dtype).replace("torch.", ""),
        "first_frame_gt": bool(use_first_frame_gt),
    }
    if method != DEFAULT:
        payload["method"] = method
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def is_finished(video_dir: Path, key: str) -> bool:
    """True when ``video_dir/.done.json`` exists, parses and carries config hash ``key``."""
    done = video_dir / DONE_FILE
    try:
        data = json.loads(done.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("config_hash") == key


def _first_frame_ids(item: VideoItem, dataset: Dataset, cfg: SegmentConfig) -> np.ndarray:
    """The item's first-frame GT as ids [H, W] int64, the dataset's void id made negative.

    Negative ids never become a class, whatever ``cfg.context.ignore_index`` is; a config with a
    negative ignore id (paper-compat: the reference makes void a class) keeps the ids as read.
    """
    path = item.first_frame_gt
    if path is None:
        first = item.frame_names[0] if item.frame_names else "0"
        raise LabelError(
            f"video {item.name}: first frame {first!r} has no label; first-frame GT needs one"
        )
    ids = dataset.read_label(path)
    if dataset.ignore_index is not None and cfg.context.ignore_index >= 0:
        ids = np.where(ids == dataset.ignore_index, -1, ids)
    return ids


def dataset_inputs(dataset: Dataset) -> list[Path]:
    """The root and every frame folder, label folder and video file ``dataset`` reads."""
    inputs: dict[Path, None] = {Path(dataset.root): None}
    for item in dataset.videos:
        for path in (*item.frames, *item.labels.values()):
            inputs[path.parent] = None
        if item.source is not None:
            inputs[Path(item.source)] = None
    return list(inputs)


def check_dataset_output(dataset: Dataset, out_root: str | os.PathLike[str], rank: int) -> None:
    """What :func:`run_dataset` checks before it computes anything, callable before a model
    loads: ``out_root`` lies outside the dataset's inputs, can be written, and no live process
    runs rank ``rank`` into it; no video takes the name of zsvss's own files there, every
    video folder and label PNG name fits with its temp name, and no video's folder or lock
    is a link zsvss did not create."""
    out = Path(out_root)
    check_disjoint(out, dataset_inputs(dataset))
    check_output_folder(out, beside=False)
    for item in dataset.videos:
        if MANIFEST_NAME.match(item.name) or item.name.startswith("."):
            raise DatasetLayoutError(
                f"video {item.name!r}: its prediction folder would take the name of zsvss's "
                "own files in the output (run_manifest_<rank>.json, hidden names); rename it"
            )
        check_name_fits(out / item.name, f"video {item.name!r}")
        for path in (out / item.name, lock_path(out / item.name)):
            if path.is_symlink():  # zsvss writes there and never follows a link it did not make
                raise PathError(
                    f"{path}: is a symbolic link zsvss did not create; it never follows one in "
                    "a folder it writes: remove it"
                )
        for name in item.frame_names:  # each label PNG is written through a temp name
            check_name_fits(out / item.name / f"{name}.png", f"video {item.name}: frame {name!r}")
    probe_lock(manifest_path(out, rank))


def segment_video_item(
    item: VideoItem,
    out_root: str | os.PathLike[str],
    backbone: Backbone,
    cfg: SegmentConfig,
    use_first_frame_gt: bool,
    dataset: Dataset,
    *,
    key: str | None = None,
    progress: bool = False,
    method: str = DEFAULT,
) -> dict[str, Any]:
    """Segment one dataset video into ``out_root/<video>/<frame stem>.png``, then ``.done.json``.

    The video's folder is one transaction (:func:`zsvss_nb.io.outputs.staged_output`): it is
    written beside its final place and replaces the previous folder as a whole only when the
    video finished, so an interrupted or failed re-run leaves the earlier folder exactly as it
    was and a finished folder never mixes two runs. A second process on the same video fails at
    once (:class:`~zsvss_nb.errors.OutputLockedError`). ``key`` is :func:`config_hash`
    (computed when None). ``method`` names the method (:mod:`zsvss_nb.methods`).
    Returns ``{"video", "frames", "seconds", "skipped", "config_hash"}``.
    """
    if key is None:
        key = config_hash(cfg, backbone, use_first_frame_gt, method)
    if item.frames:
        video = open_video(item.frames)
    elif item.source is not None:
        video = open_video(item.source)
    else:
        raise DatasetLayoutError(f"video {item.name}: lists no frames and no source file")
    gt = _first_frame_ids(item, dataset, cfg) if use_first_frame_gt else None
    tic = time.perf_counter()
    seg = segmenter(backbone, cfg, method)
    count = 0
    target = Path(out_root) / item.name  # a link there was not made by zsvss: refused
    with video, staged_output(target, DONE_FILE, follow=False) as stage:
        for result in seg.segment(video, first_frame_gt=gt, progress=progress):
            atomic_write_png(stage / f"{result.name}.png", result.labels.numpy())
            count += 1
        seconds = round(time.perf_counter() - tic, 3)
        atomic_write_json(
            stage / DONE_FILE,
            {
                "video": item.name,
                "method": method,
                "frames": count,
                "seconds": seconds,
                "config_hash": key,
                "first_frame_gt": str(item.first_frame_gt) if gt is not None else None,
                "zsvss_version": versions()["zsvss"],
                "stats": seg.stats.to_dict(),
                "files": output_files(stage),
            },
        )
    return {
        "video": item.name,
        "frames": count,
        "seconds": seconds,
        "skipped": False,
        "config_hash": key,
    }


_LOCAL_RANK_VARS = ("LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID")


def local_device(
    env: Mapping[str, str] | None = None, cuda_devices: int | None = None
) -> torch.device | None:
    """The GPU of this process under a multi-process launcher: ``cuda:<local rank % #GPUs>``.

    torchrun and accelerate start one process per GPU but leave every process seeing all GPUs,
    so without this each would load the model onto cuda:0. Reads LOCAL_RANK (torchrun,
    accelerate), then the Open MPI and SLURM local ranks. None when there is no CUDA device or
    no local rank (the caller's default device applies). ``cuda_devices`` overrides the count.
    """
    e = os.environ if env is None else env
    count = torch.cuda.device_count() if cuda_devices is None else cuda_devices
    if count < 1:
        return None
    for var in _LOCAL_RANK_VARS:
        if var in e:
            try:
                local = int(e[var])
            except ValueError as err:
                raise ConfigError(f"{var}={e[var]!r} is not an integer") from err
            return torch.device("cuda", local % count)
    return None


def _make_root(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PathError(f"{out}: cannot create the output folder ({os_problem(err)})") from err


def _segment_share(
    items: Iterable[VideoItem],
    out: Path,
    resume: bool,
    key: str,
    done: list[dict[str, Any]],
    skipped: list[str],
    error: dict[str, str],
    segment: Callable[[VideoItem], dict[str, Any]],
) -> None:
    """Segment ``items`` in order: each result appended to ``done``, a video finished with
    config hash ``key`` skipped under ``resume`` (its name appended to ``skipped``); a failure
    is recorded in ``error`` and re-raised, never skipped."""
    for item in items:
        if resume and is_finished(out / item.name, key):
            skipped.append(item.name)
            continue
        try:
            done.append(segment(item))
        except BaseException as err:
            error.update(video=item.name, type=type(err).__name__, message=str(err))
            # INFO, not ERROR: the caller reports the re-raised error (the CLI: one line)
            log.info("video %s failed: %s", item.name, err)
            raise


def run_dataset(
    dataset: Dataset,
    out_root: str | os.PathLike[str],
    backbone: Backbone | str | os.PathLike[str] | None,
    cfg: SegmentConfig | None = None,
    shard: tuple[int, int] | None = None,
    resume: bool = False,
    use_first_frame_gt: bool = False,
    progress: bool = True,
    method: str = DEFAULT,
) -> dict[str, Any]:
    """Segment this process's share of ``dataset`` into ``out_root``; return the run manifest.

    ``method`` is one of :data:`zsvss_nb.methods.METHODS` (default ``vidseg``); it is checked
    against the backbone and the GT use before anything is written, and its forced settings are
    applied to ``cfg`` (the manifest records the resolved config).

    ``backbone``: a loaded :class:`Backbone` or a spec for :func:`load_backbone` (None: the
    configured default), loaded on this process's GPU (:func:`local_device`). ``shard=(i, N)``
    takes every N-th video from i (names in natural order); None reads the rank and world size
    from the launcher's environment (:func:`rank_from_env`: torchrun, accelerate, MPI, SLURM),
    (0, 1) when there is none.
    With ``resume``, videos whose ``.done.json`` carries this run's config hash are skipped;
    otherwise each video's folder is replaced as a whole once that video finishes. An exception
    in a video is recorded in ``run_manifest_<rank>.json`` and re-raised, never skipped; the
    video's previous folder stays as it was. ``out_root`` must lie outside the dataset's root
    and its frame and label folders, and one process per rank may write it at a time.
    """
    rank, world = rank_from_env() if shard is None else (int(shard[0]), int(shard[1]))
    items = shard_videos(dataset.videos, rank, world)
    if not isinstance(backbone, Backbone):
        backbone = load_backbone(backbone, device=local_device())
    get_method(method).check(backbone, use_first_frame_gt)
    cfg = resolve(cfg or backbone.default_config(), method)
    key = config_hash(cfg, backbone, use_first_frame_gt, method)
    out = Path(out_root)
    check_dataset_output(dataset, out, rank)
    _make_root(out)
    started = time.time()
    tic = time.perf_counter()
    done: list[dict[str, Any]] = []
    skipped: list[str] = []
    error: dict[str, str] = {}

    def manifest() -> dict[str, Any]:
        return {
            "dataset": {
                "format": dataset.name,
                "root": str(dataset.root),
                "videos_total": len(dataset.videos),
                "num_classes": dataset.num_classes,
                "ignore_index": dataset.ignore_index,
                "recommended": dataset.recommended,
            },
            "method": method,
            "shard": [rank, world],
            "resume": resume,
            "first_frame_gt": use_first_frame_gt,
            "config": cfg.to_dict(),
            "seed": cfg.features.seed,
            "config_hash": key,
            "model": model_identity(backbone),
            "versions": versions(),
            "videos_assigned": [v.name for v in items],
            "videos_done": done,
            "videos_skipped": skipped,
            "frames_done": sum(d["frames"] for d in done),
            "error": error or None,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
            "seconds": round(time.perf_counter() - tic, 3),
        }

    record = manifest_path(out, rank)
    bar = tqdm(items, desc=f"videos [shard {rank}/{world}]", unit="video", disable=not progress)
    # one process per rank and output, from the start (the CLI claims it before the model
    # loads) to the end: a second one with the same shard fails at once
    with claim_output(record):
        recover(record)
        try:
            _segment_share(
                bar,
                out,
                resume,
                key,
                done,
                skipped,
                error,
                lambda item: segment_video_item(
                    item, out, backbone, cfg, use_first_frame_gt, dataset, key=key, method=method
                ),
            )
        finally:
            bar.close()
            result = manifest()
            atomic_write_json(record, result)
    return result


# -- in memory: a dataset's videos segmented and paired with their GT (notebooks 02 and 05) ---
from collections.abc import Sequence  # noqa: E402

from ..evaluation.evaluate import VideoPrediction  # noqa: E402


def segment_dataset(
    backbone: Any,
    cfg: Any,
    dataset: Dataset,
    max_frames: int | None = None,
    videos: Sequence[str] | None = None,
    first_frame_gt: bool = True,
    keep_frames: bool = True,
    progress: bool = False,
    method: str = DEFAULT,
) -> list[VideoPrediction]:
    """Segment a dataset's videos in memory and pair every frame with its GT.

    Each video is cut to its first ``max_frames`` frames (all when None); ``videos`` picks
    videos by name. With ``first_frame_gt`` the first frame's GT (read with the dataset's
    conventions, e.g. DAVIS 0/255 as 0/1) maps clusters to classes (the "first-frame"
    protocol); without it predictions are cluster ids (for "hungarian" / "majority"). The
    dataset's ignore id replaces ``cfg``'s, so void pixels never become a class. ``method``
    names the method (:mod:`zsvss_nb.methods`).
    """
    from ..io.video import open_video

    if max_frames is not None and max_frames < 1:
        raise ConfigError(f"max_frames={max_frames} must be at least 1")
    if dataset.ignore_index is not None:
        cfg = cfg.replace(ignore_index=dataset.ignore_index)
    get_method(method).check(backbone, first_frame_gt)
    seg = segmenter(backbone, cfg, method)
    items = dataset.videos if videos is None else [dataset.video(n) for n in videos]
    out = []
    for item in items:
        if item.frames:
            video = open_video(item.frames[:max_frames])
        else:  # a video file: label keys are zero-padded frame indices, as its frame names
            whole = open_video(item.source)
            count = len(whole) if max_frames is None else min(len(whole), max_frames)
            video = open_video(whole.read(range(count)), fps=whole.fps)
        names = video.names if item.frames else [f"{i:05d}" for i in range(len(video))]
        gt0 = None
        if first_frame_gt:
            if names[0] not in item.labels:
                raise LabelError(f"video {item.name!r}: first frame {names[0]} has no GT label")
            gt0 = dataset.read_label(item.labels[names[0]])
        results = seg.segment(video, gt0, return_debug=False, progress=progress)
        preds = [r.labels.numpy().astype(np.int64) for r in results]
        gts = [dataset.read_label(item.labels[n]) if n in item.labels else None for n in names]
        frames = video.read(range(len(video))) if keep_frames else None
        out.append(VideoPrediction(item.name, preds, gts, frames))
    return out
