"""Ray Data recipe: the per-video function of :mod:`zsvss_nb.run.runner` on a cluster.

``ray.data.from_items(videos).map_batches(worker, batch_size=1, num_gpus=...)``: each actor loads
the backbone once and segments one video per call with :func:`segment_video_item`, so the PNGs
are byte-identical to a :func:`run_dataset` run of the same videos (given the same hardware and
library versions). Needs the ``distributed`` extra: ``pip install 'zsvss[distributed]'``.
"""

from __future__ import annotations

import base64
import os
import pickle
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..config import SegmentConfig
from ..datasets import Dataset, natural_key
from ..errors import ConfigError, MissingDependencyError


def _import_ray():
    try:
        import ray
        import ray.data
    except ImportError as err:
        raise MissingDependencyError(
            f"Ray is not installed ({err}); pip install 'zsvss[distributed]'"
        ) from err
    return ray


class VideoWorker:
    """Ray Data callable class: loads the backbone once, then segments one video per row.

    Rows are ``{"video": name}``; the returned batch holds the per-video summaries of
    :func:`segment_video_item` plus ``host`` and ``error``. A failure (also of loading the
    model) becomes an error row carrying the pickled exception, so the driver can re-raise it
    with its type: Ray Data would otherwise wrap it in an untyped ``UserCodeException``.
    """

    def __init__(
        self,
        dataset: Dataset,
        out_root: str,
        model_spec: str,
        cfg: dict[str, Any],
        use_first_frame_gt: bool = False,
        resume: bool = False,
        method: str = "vidseg",
    ) -> None:
        from ..backbones import load_backbone
        from .runner import config_hash

        self.dataset = dataset
        self.out_root = Path(out_root)
        self.use_first_frame_gt = use_first_frame_gt
        self.resume = resume
        self.method = method
        self.host = f"{socket.gethostname()}:{os.getpid()}"
        self.init_error: Exception | None = None
        try:
            self.cfg = SegmentConfig.from_dict(cfg)
            self.backbone = load_backbone(model_spec)
            self.key = config_hash(self.cfg, self.backbone, use_first_frame_gt, method)
        except Exception as err:
            self.init_error = err

    def _one(self, name: str) -> dict[str, Any]:
        from .runner import is_finished, segment_video_item

        if self.init_error is not None:
            raise self.init_error
        item = self.dataset.video(name)
        if self.resume and is_finished(self.out_root / item.name, self.key):
            return {
                "video": item.name,
                "frames": 0,
                "seconds": 0.0,
                "skipped": True,
                "config_hash": self.key,
            }
        return segment_video_item(
            item,
            self.out_root,
            self.backbone,
            self.cfg,
            self.use_first_frame_gt,
            self.dataset,
            key=self.key,
            method=self.method,
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = []
        for raw in batch["video"]:
            name = str(raw)
            tic = time.perf_counter()
            try:
                row = {**self._one(name), "error": "", "exception": ""}
            except Exception as err:
                row = {
                    "video": name,
                    "frames": 0,
                    "seconds": round(time.perf_counter() - tic, 3),
                    "skipped": False,
                    "config_hash": getattr(self, "key", ""),
                    "error": f"{type(err).__name__}: {err}",
                    "exception": _pack(err),
                }
            rows.append({**row, "host": self.host})
        return {key: np.array([r[key] for r in rows]) for key in rows[0]}


def _pack(err: Exception) -> str:
    """The exception pickled as base64 text ("" when it cannot be pickled)."""
    try:
        return base64.b64encode(pickle.dumps(err)).decode("ascii")
    except Exception:
        return ""


def _unpack(row: dict[str, Any]) -> Exception:
    """The exception of an error row, or a RuntimeError with its text when it did not pickle."""
    if row["exception"]:
        try:
            err = pickle.loads(base64.b64decode(row["exception"]))
            if isinstance(err, Exception):
                return err
        except Exception:
            pass
    return RuntimeError(f"video {row['video']}: {row['error']}")


def _plain(value: Any) -> Any:
    """numpy scalars from Ray's batches back to Python values."""
    return value.item() if isinstance(value, np.generic) else value


def _map_videos(
    ray: Any,
    names: list[str],
    worker_kwargs: dict[str, Any],
    concurrency: int | None,
    num_gpus: float,
    num_cpus: float,
) -> list[dict[str, Any]]:
    """One :class:`VideoWorker` row per video name, run on an actor pool of ``concurrency``
    actors (None: 1 up to one per video)."""
    compute = (
        ray.data.ActorPoolStrategy(size=concurrency)
        if concurrency is not None
        else ray.data.ActorPoolStrategy(min_size=1, max_size=len(names))
    )
    return (
        ray.data.from_items([{"video": n} for n in names])
        .map_batches(
            VideoWorker,
            fn_constructor_kwargs=worker_kwargs,
            batch_size=1,
            compute=compute,
            num_gpus=num_gpus,
            num_cpus=num_cpus,
        )
        .take_all()
    )


def run_dataset_ray(
    dataset: Dataset,
    out_root: str | os.PathLike[str],
    model_spec: str,
    cfg: SegmentConfig | dict[str, Any] | None = None,
    num_gpus_per_worker: float = 0.0,
    num_cpus_per_worker: float = 1,
    concurrency: int | None = None,
    use_first_frame_gt: bool = False,
    ray_address: str | None = None,
    *,
    resume: bool = False,
    runtime_env: dict[str, Any] | None = None,
    method: str = "vidseg",
) -> list[dict[str, Any]]:
    """Segment every video of ``dataset`` into ``out_root`` with a Ray Data actor pool.

    ``model_spec`` is what :func:`load_backbone` takes (each worker loads it once; on a cluster it
    must resolve on every node). ``concurrency``: number of actors (None: 1 up to one per video,
    as resources allow). Connects to ``ray_address`` (or starts a local Ray) unless Ray is
    already initialised, and shuts down only a Ray it started. With ``resume``, videos whose
    ``.done.json`` matches the config hash are skipped (``"skipped": True``). A failing video
    does not stop the others (they are expensive on a cluster); once all have run, the
    manifest lists every failure and the first one (in video order) is re-raised with its own
    type, e.g. :class:`LabelError`. ``method`` names the method (:mod:`zsvss_nb.methods`; its
    forced settings are applied here). Returns the per-video summaries sorted by video name.
    """
    ray = _import_ray()
    if concurrency is not None and concurrency < 1:
        raise ConfigError(f"concurrency={concurrency} must be at least 1")
    if num_gpus_per_worker < 0 or num_cpus_per_worker < 0:
        raise ConfigError("num_gpus_per_worker and num_cpus_per_worker must be >= 0")
    from ..methods import resolve

    cfg = cfg or SegmentConfig.paper_sd()
    cfg = cfg if isinstance(cfg, SegmentConfig) else SegmentConfig.from_dict(dict(cfg))
    cfg_dict = resolve(cfg, method).to_dict()  # a bad config or method fails here, not on workers
    names = [v.name for v in dataset.videos]
    out = Path(out_root).resolve()
    from ..io.outputs import check_disjoint, check_output_folder
    from .runner import dataset_inputs

    check_disjoint(out, dataset_inputs(dataset))  # outputs never overwrite the dataset
    check_output_folder(out, beside=False)
    out.mkdir(parents=True, exist_ok=True)
    if not names:
        return []
    started = not ray.is_initialized()
    if started:
        ray.init(address=ray_address, runtime_env=runtime_env, include_dashboard=False)
    try:
        tic = time.perf_counter()
        worker_kwargs = {
            "dataset": dataset,
            "out_root": str(out),
            "model_spec": str(model_spec),
            "cfg": cfg_dict,
            "use_first_frame_gt": use_first_frame_gt,
            "resume": resume,
            "method": method,
        }
        rows = _map_videos(
            ray, names, worker_kwargs, concurrency, num_gpus_per_worker, num_cpus_per_worker
        )
        rows = [{k: _plain(v) for k, v in row.items()} for row in rows]
        rows.sort(key=lambda s: natural_key(str(s["video"])))
        failed = [r for r in rows if r["error"]]
        summaries = [{k: v for k, v in r.items() if k != "exception"} for r in rows]
        _write_manifest(
            out,
            dataset,
            model_spec,
            cfg_dict,
            summaries,
            resume,
            use_first_frame_gt,
            time.perf_counter() - tic,
            ray.__version__,
            method,
        )
        if failed:
            err = _unpack(failed[0])
            if hasattr(err, "add_note"):
                err.add_note(
                    f"video {failed[0]['video']} failed ({len(failed)} of {len(rows)} videos "
                    f"failed; see {out / 'run_manifest_ray.json'})"
                )
            raise err
        return summaries
    finally:
        if started:
            ray.shutdown()


def _write_manifest(
    out: Path,
    dataset: Dataset,
    model_spec: str,
    cfg: dict[str, Any],
    summaries: list[dict[str, Any]],
    resume: bool,
    use_gt: bool,
    seconds: float,
    ray_version: str,
    method: str = "vidseg",
) -> None:
    """``out/run_manifest_ray.json``: the Ray run's config, model spec and per-video summaries."""
    from ..io.provenance import versions
    from ..io.writers import atomic_write_json

    atomic_write_json(
        out / "run_manifest_ray.json",
        {
            "dataset": {
                "format": dataset.name,
                "root": str(dataset.root),
                "videos_total": len(dataset.videos),
                "recommended": dataset.recommended,
            },
            "launcher": "ray",
            "method": method,
            "resume": resume,
            "first_frame_gt": use_gt,
            "config": cfg,
            "model_spec": str(model_spec),
            "versions": {**versions(), "ray": ray_version},
            "videos_done": [s for s in summaries if not s["skipped"] and not s["error"]],
            "videos_failed": [s for s in summaries if s["error"]],
            "videos_skipped": [s["video"] for s in summaries if s["skipped"]],
            "frames_done": sum(int(s["frames"]) for s in summaries),
            "seconds": round(seconds, 3),
        },
    )
