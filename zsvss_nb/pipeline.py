"""The Segmenter: streams a video's windows through the three stages and writes the outputs.

Per window (DESIGN.md data flow): 1 features -> 2a scene context (KNN) -> 2b refinement ->
2c context update -> 3 upsampling. Only the current window's tensors and caches are alive, so
memory stays flat however long the video is; nothing touches the disk between stages.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .backbones.base import Backbone, FeatureResult
from .backbones.memory import is_out_of_memory
from .config import SegmentConfig
from .context import SceneContext
from .datasets import load_gt
from .errors import ConfigError, DeviceOutOfMemoryError, FrameSizeError, LabelError
from .features import extract
from .io.locks import is_claimed, probe_lock
from .io.outputs import (
    MANIFEST,
    check_disjoint,
    check_name_fits,
    check_output_folder,
    check_publishable,
    check_replaceable,
    output_files,
    staged_output,
)
from .io.provenance import model_identity, peak_device_gb, peak_rss_gb, versions
from .io.video import Video, Window, open_video, window_spans
from .io.writers import atomic_write_json, atomic_write_png, write_video
from .kernels.frames import geometry_for, to_grid
from .refine import refine
from .upsample import upsample

log = logging.getLogger(__name__)

# one lock per backbone: its attention hooks hold the tensors of one pass at a time, so the
# windows of Segmenters sharing a backbone across threads run one after another
_WINDOW_LOCKS: weakref.WeakKeyDictionary[Any, threading.RLock] = weakref.WeakKeyDictionary()
_WINDOW_LOCKS_GUARD = threading.Lock()


def window_lock(backbone: Backbone) -> threading.RLock:
    """The lock that serialises passes through ``backbone`` across threads."""
    with _WINDOW_LOCKS_GUARD:
        lock = _WINDOW_LOCKS.get(backbone)
        if lock is None:
            lock = _WINDOW_LOCKS[backbone] = threading.RLock()
        return lock


@dataclass
class FrameResult:
    """One output frame. Unpacks as ``index, labels`` (labels: LongTensor [H, W]).

    With ``return_debug``: coarse and refined [h, w] maps, the unfiltered labels, the per-class
    normalised difference maps diff [K, H', W'] (modulation only) and the class ids of diff.
    """

    index: int
    labels: torch.Tensor
    name: str = ""
    frame: torch.Tensor | None = None
    coarse: torch.Tensor | None = None
    refined: torch.Tensor | None = None
    raw_labels: torch.Tensor | None = None
    diff: torch.Tensor | None = None
    classes: torch.Tensor | None = None

    def __iter__(self):
        return iter((self.index, self.labels))


@dataclass
class WindowLabels:
    """One window labelled by :meth:`Segmenter.label_window`: labels [B, H, W] at the original
    size and what the method has for ``return_debug`` (None where it has none): coarse and
    refined maps [B, h, w], the unfiltered labels [B, H, W], the normalised difference maps
    [K, B, H', W'] and the class ids [K] of diff."""

    labels: torch.Tensor
    coarse: torch.Tensor | None = None
    refined: torch.Tensor | None = None
    raw_labels: torch.Tensor | None = None
    diff: torch.Tensor | None = None
    classes: torch.Tensor | None = None


def frame_results(window: Window, labelled: WindowLabels, return_debug: bool) -> list[FrameResult]:
    """The :class:`FrameResult` of each frame new in ``window`` (overlap frames are skipped),
    on the CPU, with the debug maps when ``return_debug``."""
    out = []
    for j, (index, name) in enumerate(zip(window.indices, window.names, strict=True)):
        if not bool(window.is_new[j]):
            continue
        result = FrameResult(index, labelled.labels[j].cpu(), name=name, frame=window.frames[j])
        if return_debug:
            if labelled.coarse is not None:
                result.coarse = labelled.coarse[j].cpu()
            if labelled.refined is not None:
                result.refined = labelled.refined[j].cpu()
            if labelled.raw_labels is not None:
                result.raw_labels = labelled.raw_labels[j].cpu()
            if labelled.diff is not None:
                result.diff = labelled.diff[:, j].cpu()
            if labelled.classes is not None:
                result.classes = labelled.classes.cpu()
        out.append(result)
    return out


@dataclass
class RunStats:
    """Cost of a run: seconds per stage, model evaluations, peak memory."""

    seconds: dict[str, float] = field(default_factory=dict)
    frames: int = 0
    windows: int = 0
    frames_processed: int = 0
    unet_evals: int = 0
    vae_decodes: int = 0
    upsampler: str | None = None  # the stage-3 method that actually ran

    def add(self, seconds: dict[str, float]) -> None:
        for key, value in seconds.items():
            self.seconds[key] = self.seconds.get(key, 0.0) + value

    def to_dict(self) -> dict[str, Any]:
        n = max(self.frames, 1)
        return {
            "frames": self.frames,
            "windows": self.windows,
            "frames_processed": self.frames_processed,
            "seconds": {k: round(v, 4) for k, v in self.seconds.items()},
            "seconds_total": round(sum(self.seconds.values()), 4),
            "seconds_per_frame": round(sum(self.seconds.values()) / n, 4),
            "unet_evals_per_frame": self.unet_evals / n,
            "vae_decodes_per_frame": self.vae_decodes / n,
            "upsampler": self.upsampler,
            "peak_rss_gb": peak_rss_gb(),
            "peak_device_gb": peak_device_gb(),
        }


def load_label_mask(src, size_hw: tuple[int, int]) -> torch.Tensor:
    """A GT mask (PNG path or array [H, W]) as LongTensor, checked against the video's size.

    Files are read by :func:`zsvss_nb.datasets.load_gt` (the one set of mode rules), as stored
    (no 0/255 -> 0/1 mapping).
    """
    if isinstance(src, (str, Path)):
        path = Path(src)
        if not path.exists():
            raise LabelError(f"first-frame GT {path} does not exist")
        if not path.is_file():
            raise LabelError(f"first-frame GT {path} is not a file")
        array, name = load_gt(path, binary=False), str(path)
    else:
        array, name = np.asarray(src), "first-frame GT array"
    if array.ndim != 2:
        raise LabelError(f"{name} has shape {array.shape}; expected [H, W] label ids")
    if tuple(array.shape) != tuple(size_hw):
        raise LabelError(
            f"{name} is {array.shape[1]}x{array.shape[0]} but the video is "
            f"{size_hw[1]}x{size_hw[0]}"
        )
    return torch.from_numpy(array.astype(np.int64))


def check_segment_output(
    video: Video, out_dir: str | Path, first_frame_gt=None, ignore_index: int = 255
) -> torch.Tensor | None:
    """What :meth:`Segmenter.run` checks before it computes anything, callable before a model
    loads (the CLI does): the first-frame GT fits the video and the uint8 PNGs, ``out_dir``
    can be written, lies outside every input, holds only zsvss outputs and is not locked by a
    live run. Returns the GT ids [H, W] (None without GT).
    """
    gt_path = first_frame_gt if isinstance(first_frame_gt, (str, Path)) else None
    ids = None
    if first_frame_gt is not None:
        w, h = video.size
        ids = load_label_mask(first_frame_gt, (h, w))
        classes = ids[(ids >= 0) & (ids != ignore_index)]
        if classes.numel() and int(classes.max()) > 255:
            raise LabelError(
                f"first-frame GT {gt_path or 'array'}: class id {int(classes.max())} does not "
                "fit the uint8 label PNGs (ids 0..255, or the ignore id)"
            )
    check_disjoint(out_dir, [*video.inputs, *([gt_path] if gt_path is not None else [])])
    check_output_folder(out_dir)
    for name in video.names:  # every label PNG is written through a temp name beside it
        check_name_fits(Path(out_dir, "labels", f"{name}.png"), f"{video.source}: frame {name!r}")
    check_replaceable(out_dir, MANIFEST)
    probe_lock(out_dir)
    if is_claimed(out_dir):  # under the run's lock: what publish will do, tried now
        check_publishable(out_dir)
    return ids


class Segmenter:
    """Run the method on videos: ``for index, labels in seg.segment(video)`` or ``seg.run``."""

    def __init__(
        self,
        backbone: Backbone,
        cfg: SegmentConfig | None = None,
        window_context: Callable[[SceneContext, Window], Any] | None = None,
    ) -> None:
        """``window_context(context, window)``, if given, wraps the video's
        :class:`SceneContext` for one window (the wrapper offers ``initialised``,
        ``initialise``, ``predict`` and ``update``); the benchmark uses it to plant known
        coarse maps in place of the KNN's.

        One Segmenter segments one video at a time (a second thread using it meanwhile gets a
        :class:`ConfigError`); Segmenters sharing a backbone in several threads take turns per
        window, as the backbone's attention hooks hold one pass at a time.
        """
        if cfg is not None and not isinstance(cfg, SegmentConfig):
            raise ConfigError(
                f"Segmenter needs a SegmentConfig, got {type(cfg).__name__}; build one with "
                "SegmentConfig.from_dict(...) or SegmentConfig().replace(...)"
            )
        self.backbone = backbone
        self.cfg = cfg or backbone.default_config()
        self._guard = threading.Lock()
        self._owner: int | None = None  # the thread segmenting now
        self._depth = 0
        self.window_context = window_context
        self.stats = RunStats()
        if self.cfg.upsample.method == "modulation" and not backbone.can_modulate:
            log.warning(
                "%s cannot do masked modulation (a diffusion backbone can): stage 3 upsamples "
                "bilinearly; the manifest records upsampler=bilinear",
                backbone.name,
            )

    def segment(
        self,
        video,
        first_frame_gt=None,
        return_debug: bool = False,
        progress: bool = True,
    ) -> Iterator[FrameResult]:
        """Yield a :class:`FrameResult` per frame, in order, each frame once.

        ``video``: anything :func:`open_video` takes, or a :class:`Video`. ``first_frame_gt``:
        a label PNG or array at the video's size; clusters then take frame-1 GT classes
        (METHOD 1.4 step 2, the paper's protocol).
        """
        video = video if isinstance(video, Video) else open_video(video)
        self._enter()
        try:
            yield from self._segment(video, first_frame_gt, return_debug, progress)
        finally:
            self._leave()

    def _enter(self) -> None:
        me = threading.get_ident()
        with self._guard:
            if self._owner not in (None, me):
                raise ConfigError(
                    "this Segmenter is segmenting in another thread; use one Segmenter per "
                    "thread (Segmenters may share a backbone)"
                )
            self._owner, self._depth = me, self._depth + 1

    def _leave(self) -> None:
        with self._guard:
            self._depth -= 1
            if self._depth == 0:
                self._owner = None

    def _segment(self, video, first_frame_gt, return_debug, progress) -> Iterator[FrameResult]:
        cfg = self.cfg
        w, h = video.size
        try:  # a frame too small for the feature grid fails here, naming the video
            geometry = geometry_for(
                h, w, cfg.features.size_policy, self.backbone.size_multiple, cfg.features.max_side
            )
        except FrameSizeError as err:
            raise FrameSizeError(f"{video.source}: {err}") from None
        advice = self.backbone.size_advice(geometry.processed, cfg)
        if advice is not None:  # once per video, before the first (long) window
            log.warning("%s: %s", video.source, advice)
        stats = self.stats = RunStats(frames=len(video))
        gt = None
        if first_frame_gt is not None:
            w, h = video.size
            gt = load_label_mask(first_frame_gt, (h, w))
        context = SceneContext(cfg.context)
        n_windows = len(window_spans(len(video), cfg.window))
        bar = tqdm(total=n_windows, desc="windows", unit="win", disable=not progress, leave=False)
        try:
            for window in video.windows(cfg.window):
                try:
                    ctx = (
                        context
                        if self.window_context is None
                        else self.window_context(context, window)
                    )
                    with window_lock(self.backbone):
                        results = self._window(window, ctx, gt, return_debug, stats)
                except RuntimeError as err:
                    if isinstance(err, DeviceOutOfMemoryError) or not is_out_of_memory(err):
                        raise
                    raise DeviceOutOfMemoryError(
                        f"out of memory on {self.backbone.device} for a {len(window.indices)}-"
                        "frame window: lower the window size (--window), "
                        "upsample.modulation_batch (--modulation-batch), or use --dtype "
                        "float16/bfloat16"
                    ) from err
                bar.update(1)
                yield from results
        finally:
            bar.close()

    def window_features(self, window: Window, stats: RunStats) -> FeatureResult:
        """Stage 1 on one window, its seconds and UNet evaluations added to ``stats``."""
        feats = extract(self.backbone, window, self.cfg)
        stats.add(feats.seconds)
        stats.unet_evals += feats.unet_evals
        return feats

    def label_window(
        self, window: Window, context: Any, gt: torch.Tensor | None, stats: RunStats
    ) -> WindowLabels:
        """Label one window: the step a method overrides (:mod:`zsvss_nb.methods`).

        Here VidSeg's stages 1-3. ``context`` is the video's :class:`SceneContext` (or what
        ``window_context`` wraps it in; a method that keeps no scene context ignores it),
        ``gt`` the first frame's GT [H, W] (void negative) or None; the seconds, UNet
        evaluations and decodes spent go into ``stats``.
        """
        cfg = self.cfg
        feats = self.window_features(window, stats)  # 1. features
        tic = time.perf_counter()
        if not context.initialised:  # 2a. scene context (k-means on the first window)
            grid_gt = None
            if gt is not None:
                grid_gt = to_grid(gt, feats.geometry, feats.grid_hw)
            context.initialise(feats.features, grid_gt)
        coarse = context.predict(feats.features)
        stats.add({"context": time.perf_counter() - tic})
        tic = time.perf_counter()
        refined = refine(coarse, feats.refine_features, cfg.refine)  # 2b. refinement
        stats.add({"refine": time.perf_counter() - tic})
        tic = time.perf_counter()
        context.update(feats.features, refined)  # 2c. autoregressive update
        stats.add({"context": time.perf_counter() - tic})
        up = upsample(self.backbone, feats, refined, cfg)  # 3. upsampling
        stats.upsampler = up.method
        stats.add(up.seconds)
        stats.unet_evals += up.unet_evals
        stats.vae_decodes += up.vae_decodes
        return WindowLabels(up.labels, coarse, refined, up.raw_labels, up.diff, up.classes)

    def _window(self, window, context, gt, return_debug, stats) -> list[FrameResult]:
        stats.windows += 1
        stats.frames_processed += len(window.indices)
        return frame_results(window, self.label_window(window, context, gt, stats), return_debug)

    def run(
        self,
        video,
        out_dir: str | Path,
        first_frame_gt=None,
        overlay: bool = True,
        class_names: dict[int, str] | None = None,
        progress: bool = True,
    ) -> dict[str, Any]:
        """Segment ``video`` and write labels/, color/, overlay.mp4 and manifest.json to out_dir.

        The run writes into a staging folder beside ``out_dir`` and replaces ``out_dir`` as a
        whole only when it succeeds (:func:`zsvss_nb.io.outputs.staged_output`): a failed or
        interrupted run leaves the previous outputs exactly as they were, a rerun leaves no
        stale frame of an earlier one, and a second run on the same ``out_dir`` at once fails
        with :class:`~zsvss_nb.errors.OutputLockedError`. An ``out_dir`` that is, contains or
        lies inside an input is refused. Returns the manifest.
        """
        from .notebook.viz import colorize, overlay_panel

        out = Path(out_dir)
        video = video if isinstance(video, Video) else open_video(video)
        # fail on a bad mask or output before anything is computed or written
        first_frame_gt_ids = check_segment_output(
            video, out, first_frame_gt, self.cfg.context.ignore_index
        )
        started = time.time()

        def frames(stage: Path):
            for result in self.segment(video, first_frame_gt_ids, progress=progress):
                labels = result.labels
                if int(labels.max()) > 255 or int(labels.min()) < 0:
                    raise LabelError(f"label ids {int(labels.max())} do not fit a uint8 PNG")
                ids = labels.numpy().astype(np.uint8)
                tic = time.perf_counter()
                for folder, image in (("labels", ids), ("color", colorize(ids))):
                    atomic_write_png(stage / folder / f"{result.name}.png", image)
                panel = None
                if overlay:
                    rgb = result.frame.permute(1, 2, 0).cpu().numpy()
                    panel = overlay_panel(rgb, ids, class_names=class_names)
                self.stats.add({"write": time.perf_counter() - tic})
                yield panel

        with staged_output(out, MANIFEST) as stage:
            if overlay:
                write_video(stage / "overlay.mp4", frames(stage), fps=video.fps or 10.0)
            else:
                for _ in frames(stage):
                    pass
            manifest = self.manifest(video, first_frame_gt, started)
            manifest["files"] = output_files(stage)  # what a later run may replace
            atomic_write_json(stage / MANIFEST, manifest)
        return manifest

    def manifest(self, video, first_frame_gt, started: float) -> dict[str, Any]:
        """What reproduces the run: config, model identity and hash, versions, seed, costs."""
        return {
            "zsvss_version": versions()["zsvss"],
            "video": {
                "source": video.source,
                "frames": len(video),
                "size": list(video.size),
                "fps": video.fps,
            },
            "first_frame_gt": str(first_frame_gt) if first_frame_gt is not None else None,
            "config": self.cfg.to_dict(),
            "seed": self.cfg.features.seed,
            "model": model_identity(self.backbone),
            "device": str(self.backbone.device),
            "dtype": str(self.backbone.dtype).replace("torch.", ""),
            "versions": versions(),
            "stats": self.stats.to_dict(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
            "wall_seconds": round(time.time() - started, 3),
        }
