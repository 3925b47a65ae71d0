"""One benchmark run: the real Segmenter on the workload, with its time, memory and bytes."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...backbones.precision import decode_dtype, modulation_dtype
from ...config import SegmentConfig
from ...errors import ConfigError
from ...io.provenance import peak_rss_gb, reset_peak_rss, rss_gb
from .workload import PlantedContext, Workload

STAGES = (
    ("encode", "encode (VAE)"),
    ("feature_pass", "feature pass (UNet)"),
    ("context", "context (k-means, KNN)"),
    ("refine", "refinement"),
    ("modulation_unet", "modulation UNet"),
    ("decode", "decode (VAE)"),
    ("difference", "difference maps"),
    ("write", "writing"),
    ("other", "other (I/O, video)"),
)


DIFFUSION_STAGES = ("encode", "feature_pass", "modulation_unet", "decode")


# -- measurement helpers --------------------------------------------------------------------
def _proc_io() -> dict[str, int]:
    """I/O counters of the calling thread, which runs the pipeline and all its writers.

    Per thread, not per process: other threads of the process (a thread pool of some library
    shutting down, say) signal each other with 8-byte eventfd writes that are no disk traffic.
    """
    for source in ("/proc/thread-self/io", "/proc/self/io"):
        try:
            text = Path(source).read_text()
            break
        except OSError:
            continue
    else:
        return {}
    return {k: int(v) for k, v in (line.split(": ") for line in text.splitlines())}


def _release_free_memory() -> None:
    """Return freed heap pages to the OS (glibc malloc_trim), so a mode's peak is its own."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _read_labels(folder: Path) -> np.ndarray:
    from PIL import Image

    paths = sorted(folder.glob("*.png"), key=lambda p: int(p.stem) if p.stem.isdigit() else p.stem)
    return np.stack([np.array(Image.open(p)) for p in paths])


def _dir_bytes(folder: Path, page: int = 1) -> int:
    """Total size of the files under ``folder``, each rounded up to ``page`` bytes."""
    sizes = [p.stat().st_size for p in folder.rglob("*") if p.is_file()]
    return sum(-(-size // page) * page for size in sizes)


def _segmenter(backbone, cfg: SegmentConfig, planted: torch.Tensor | None):
    """A :class:`~zsvss_nb.pipeline.Segmenter`; with ``planted`` [N, H, W] its coarse maps
    are the planted ones at the feature grid instead of the KNN's."""
    from ...pipeline import Segmenter

    if planted is None:
        return Segmenter(backbone, cfg)

    def planted_context(context, window):
        return PlantedContext(context, planted[list(window.indices)])

    return Segmenter(backbone, cfg, window_context=planted_context)


def run_mode(
    backbone, cfg: SegmentConfig, work: Workload, overlay: bool = True, coarse: str = "planted"
) -> dict[str, Any]:
    """Run the Segmenter once on ``work`` with ``cfg`` into a temporary folder and measure it.

    ``coarse="planted"`` feeds the planted maps to refinement in place of the KNN prediction
    (see :func:`run_benchmark`); "model" keeps the model's own coarse maps.
    """
    from ...io.video import open_video

    if coarse not in ("planted", "model"):
        raise ConfigError(f"coarse={coarse!r}: use 'planted' or 'model'")
    frames = int(work.frames.shape[0])
    gt = work.labels[0].numpy().astype(np.uint8)
    with tempfile.TemporaryDirectory(prefix="zsvss-bench-") as tmp:
        out = Path(tmp) / "out"
        seg = _segmenter(backbone, cfg, work.labels if coarse == "planted" else None)
        _release_free_memory()
        rss_before = rss_gb()
        reset_ok = reset_peak_rss()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        io0 = _proc_io()
        cpu0 = time.process_time()
        tic = time.perf_counter()
        seg.run(
            open_video(work.frames, fps=10.0),
            out,
            first_frame_gt=gt,
            overlay=overlay,
            progress=False,
        )
        wall = time.perf_counter() - tic
        cpu = time.process_time() - cpu0
        io1 = _proc_io()
        peak = peak_rss_gb(since_reset=reset_ok)
        output_bytes = _dir_bytes(out)
        output_pages = _dir_bytes(
            out, os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        )
        labels = _read_labels(out / "labels")
    stats = seg.stats
    stages = {key: stats.seconds.get(key, 0.0) for key, _ in STAGES if key != "other"}
    stages["other"] = max(0.0, wall - sum(stages.values()))
    written = io1.get("write_bytes", 0) - io0.get("write_bytes", 0) if io0 else None
    syscall = io1.get("wchar", 0) - io0.get("wchar", 0) if io0 else None
    diffusion = sum(stages[k] for k in DIFFUSION_STAGES)
    return {
        "seconds_total": round(wall, 3),
        "seconds_per_frame": round(wall / frames, 4),
        "cpu_seconds_per_frame": round(cpu / frames, 4),
        "stages": {k: round(v / frames, 4) for k, v in stages.items()},
        "non_diffusion_share": round(1 - diffusion / wall, 4) if wall > 0 else None,
        "unet_evals_per_frame": stats.unet_evals / frames,
        "vae_decodes_per_frame": stats.vae_decodes / frames,
        "peak_rss_gb": peak,
        "peak_rss_source": "VmHWM after reset" if reset_ok else "ru_maxrss (process lifetime)",
        "rss_before_gb": rss_before,
        "peak_device_gb": (
            round(torch.cuda.max_memory_allocated() / 2**30, 3)
            if torch.cuda.is_available()
            else None
        ),
        "disk_bytes_written": written,
        "output_bytes": output_bytes,
        "output_bytes_in_pages": output_pages,
        "syscall_bytes_written": syscall,
        "extra_disk_bytes": None if syscall is None else max(0, syscall - output_bytes),
        "pixel_accuracy_vs_planted": round(float((labels == work.labels.numpy()).mean()), 6),
        "precision": cfg.precision,
        "dtypes": "/".join(
            str(d).replace("torch.", "")
            for d in (modulation_dtype(cfg, backbone.device), decode_dtype(cfg))
        ),
        "upsample_config": cfg.upsample.to_dict(),
        "_labels": labels,
    }


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return round(float((a == b).mean()), 6)
