"""``zsvss bench``: cost per frame of the pipeline, by stage, against the reference's structure.

The workload (:func:`synthetic_video`) is a seeded synthetic video with ``classes`` planted
regions: a drifting textured background (class 0), a textured ground band whose edge sways
(class 1) and ``classes - 2`` textured blobs that travel across the frame and wrap around with
an off-screen gap, so each blob is absent from part of every 14-frame window as objects are in
real video. Frame 1's planted map is the first-frame ground truth (the paper's protocol, METHOD
1.4), which fixes the class set. Every mode runs the real :class:`~zsvss_nb.pipeline.Segmenter`
(features -> context -> refinement -> upsampling -> label/colour PNGs and the overlay video in a
temporary folder) on the same frames with the same backbone.

Modes are upsampling-config variants (:data:`MODES`): "reference" (the reference code's
structure, METHOD 1.9), "default" (the package's defaults) and single options beyond them.
Per mode the benchmark reports wall seconds per frame and per stage, process CPU seconds,
UNet sample-evaluations and VAE decodes per frame, peak resident memory of the mode (the
kernel's high-water mark is reset before each mode), peak device memory, bytes the process
written (/proc/self/io: write_bytes, what reached the storage layer, counted per dirtied
page; wchar, the bytes passed to write calls) next to the final size of the requested outputs
(``extra_disk_bytes`` = wchar minus that size: anything printed, and any cache a mode might
spill to disk), and the share of pixels labelled as the reference (and as "default") labels
them.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import resource
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .backbone import default_device, native_bf16
from .config import SegmentConfig
from .errors import ConfigError

log = logging.getLogger(__name__)

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

# upsample-config changes per mode; "fast" combines the options whose agreement stays high
MODES: dict[str, dict[str, Any]] = {
    "reference": {"execution": "reference"},
    "default": {},
    "no-prefix": {"share_prefix": False},
    "bf16-decode": {"decode_dtype": "bfloat16"},
    "bf16-unet": {"unet_autocast": "bfloat16"},
    "no-cfg": {"modulation_cfg": False},
    "neighbourhood": {"neighbourhood_classes": True},
    "compile": {"torch_compile": True},
    "fast": {"decode_dtype": "bfloat16", "unet_autocast": "bfloat16"},
}


@dataclass
class Workload:
    """frames: uint8 [N, 3, H, W]; labels: planted class ids [N, H, W] (0 = background)."""

    frames: torch.Tensor
    labels: torch.Tensor
    description: str

    def pair_occupancy(self, cell: int = 16) -> float:
        """Share of (class, frame) pairs present at the feature grid (``cell`` px per cell)."""
        n, h, w = self.labels.shape
        grid = self.labels[:, cell // 2 :: cell, cell // 2 :: cell]
        classes = torch.unique(self.labels[0])
        present = (grid[None] == classes.view(-1, 1, 1, 1)).flatten(2).any(-1)
        return float(present.float().mean())


def _smooth_field(gen: torch.Generator, size: int, waves: int = 4) -> tuple[torch.Tensor, ...]:
    """Random low-frequency sinusoid parameters: (frequencies [waves, 2], phases [waves])."""
    freq = (torch.rand(waves, 2, generator=gen) - 0.5) * 6 * math.pi / size
    phase = torch.rand(waves, generator=gen) * 2 * math.pi
    return freq, phase


def synthetic_video(frames: int = 14, size: int = 256, classes: int = 3, seed: int = 0) -> Workload:
    """The seeded benchmark video: ``frames`` frames of ``size`` x ``size`` (see module doc).

    Blobs have radius 0.13-0.18 x size (several 16-px feature cells), move 4.5 % of the side
    per frame, leave the frame between frames 6 and 11 and wrap around through an off-screen
    gap of 0.6 x size, so over a long video a blob is visible about two thirds of the time;
    every class is visible in frame 1.
    """
    if classes < 2:
        raise ConfigError(f"classes={classes}: the workload needs at least 2 (background, band)")
    if frames < 1 or size < 64:
        raise ConfigError(f"frames={frames}, size={size}: need >= 1 frame of >= 64 px")
    gen = torch.Generator().manual_seed(seed)
    S = size
    yy, xx = torch.meshgrid(
        torch.arange(S, dtype=torch.float32), torch.arange(S, dtype=torch.float32), indexing="ij"
    )
    t = torch.arange(frames, dtype=torch.float32)[:, None, None]
    # background: three channels of drifting low-frequency waves (a slow camera pan)
    bg = []
    for _ in range(3):
        freq, phase = _smooth_field(gen, S)
        wave = sum(
            torch.sin(freq[i, 0] * yy + freq[i, 1] * (xx + 1.5 * t) + phase[i])
            for i in range(len(phase))
        )
        bg.append(0.45 + 0.12 * wave / len(phase))
    image = torch.stack(bg, 1)  # [N, 3, S, S]
    labels = torch.zeros(frames, S, S, dtype=torch.long)
    # class 1: ground band with a swaying edge and diagonal stripes
    edge = S * (0.70 + 0.06 * torch.sin(2 * math.pi * (xx / S + t / 11.0)))
    band = yy >= edge
    stripes = 0.5 + 0.5 * torch.sin((xx + yy) * 2 * math.pi / 12 + t * 0.7)
    colour = torch.tensor([0.25, 0.55, 0.2]).view(1, 3, 1, 1)
    image = torch.where(band[:, None], colour * (0.7 + 0.3 * stripes[:, None]), image)
    labels[band] = 1
    # classes 2..: blobs that travel at a constant speed and wrap through an off-screen gap;
    # blob c leaves the frame at a seeded frame of the first 14-frame window
    for c in range(2, classes):
        r = S * (0.13 + 0.05 * float(torch.rand(1, generator=gen)))
        gap = 0.6 * S
        speed = S * 0.045
        exit_frame = 14 * (0.4 + 0.35 * float(torch.rand(1, generator=gen)))
        cycle = S + 2 * r + gap
        x0 = min(S + r - exit_frame * speed, S - r)  # at least mostly visible in frame 1
        cx = torch.remainder(x0 + r + speed * t, cycle) - r
        if float(torch.rand(1, generator=gen)) < 0.5:  # half of the blobs move leftwards
            cx = S - 1 - cx
        cy = S * (0.2 + 0.35 * float(torch.rand(1, generator=gen))) + 0.04 * S * torch.sin(t / 3)
        blob = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        hue = torch.rand(3, generator=gen) * 0.8 + 0.1
        checker = torch.sin(xx * 2 * math.pi / 9) * torch.sin(yy * 2 * math.pi / 9)
        dots = 0.5 + 0.5 * torch.sign(checker)
        blob_rgb = hue.view(1, 3, 1, 1) * (0.75 + 0.25 * dots[None, None])
        image = torch.where(blob[:, None], blob_rgb, image)
        labels[blob] = c
    image = image + 0.02 * torch.randn(image.shape, generator=gen)
    frames_u8 = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    description = (
        f"{frames} seeded synthetic frames of {S}x{S} (seed {seed}): drifting background "
        f"(class 0), swaying ground band (class 1), {classes - 2} travelling blob(s) that leave "
        "the frame within the first window and are off-screen about a third of the time; "
        "frame 1's planted map is the first-frame GT"
    )
    return Workload(frames_u8, labels, description)


# -- measurement helpers --------------------------------------------------------------------
def _proc_io() -> dict[str, int]:
    try:
        text = Path("/proc/self/io").read_text()
    except OSError:
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


def _reset_peak_rss() -> bool:
    """Reset the kernel's resident high-water mark (Linux clear_refs 5); False if impossible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_gb(reset_ok: bool) -> float:
    if reset_ok:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) * 1024 / 2**30, 3)
    scale = 1 if sys.platform == "darwin" else 1024
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**30, 3)


def _rss_gb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) * 1024 / 2**30, 3)
    except OSError:
        pass
    return float("nan")


def machine_info() -> dict[str, Any]:
    """CPU model, cores, relevant ISA flags, memory, versions and the load average."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        model = next(
            (
                ln.split(":", 1)[1].strip()
                for ln in cpuinfo.splitlines()
                if ln.startswith("model name")
            ),
            platform.processor(),
        )
        flags = next(
            (ln.split(":", 1)[1].split() for ln in cpuinfo.splitlines() if ln.startswith("flags")),
            [],
        )
        info["cpu_model"] = model
        info["isa"] = [
            f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags
        ]
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
        info["memory_gb"] = round(int(mem) * 1024 / 2**30, 1)
    except (OSError, StopIteration, IndexError):
        info["cpu_model"] = platform.processor()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    info["load_average"] = (
        [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    )
    return info


def _mode_config(base: SegmentConfig, mode: str) -> SegmentConfig:
    if mode not in MODES:
        raise ConfigError(f"benchmark mode {mode!r} is not known; choose from {sorted(MODES)}")
    return base.replace(upsample=base.upsample.replace(**MODES[mode]))


def _read_labels(folder: Path) -> np.ndarray:
    from PIL import Image

    paths = sorted(folder.glob("*.png"), key=lambda p: int(p.stem) if p.stem.isdigit() else p.stem)
    return np.stack([np.array(Image.open(p)) for p in paths])


def _dir_bytes(folder: Path, page: int = 1) -> int:
    """Total size of the files under ``folder``, each rounded up to ``page`` bytes."""
    sizes = [p.stat().st_size for p in folder.rglob("*") if p.is_file()]
    return sum(-(-size // page) * page for size in sizes)


def _warm_up(backbone, size: int) -> None:
    """One small UNet call and decode at the workload's shapes (one-time kernel set-up)."""
    from tqdm.auto import tqdm

    from .features import unet_eps

    tqdm.get_lock()  # its lock is a POSIX semaphore: 32 bytes to /dev/shm once per process
    if backbone.kind != "sd":
        return
    z = torch.zeros(1, 4, size // 8, size // 8, device=backbone.device)
    with torch.inference_mode():
        emb = backbone.prompt_embedding("")
        unet_eps(backbone, z, 1.0, 500.0, emb, 1.0)
        backbone.decode(z)
    backbone.fingerprint()  # hashed once here, not inside the first mode's timing


class _PlantedContext:
    """A scene context whose predictions are replaced by the planted maps of the window.

    Everything else is the real :class:`~zsvss_nb.context.SceneContext`: k-means
    initialisation, the KNN prediction (run and timed, its result discarded) and the update.
    """

    def __init__(self, context, planted: torch.Tensor) -> None:
        self._context, self._planted = context, planted  # planted: [B, H, W] ids

    def __getattr__(self, name: str):
        return getattr(self._context, name)

    def predict(self, feats: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        self._context.predict(feats)
        h, w = feats.shape[1:3]
        grid = F.interpolate(self._planted[:, None].float(), size=(h, w), mode="nearest-exact")
        return grid[:, 0].long().to(feats.device)


def _segmenter(backbone, cfg: SegmentConfig, planted: torch.Tensor | None):
    """A :class:`~zsvss_nb.pipeline.Segmenter`; with ``planted`` [N, H, W] its coarse maps
    are the planted ones at the feature grid instead of the KNN's."""
    from .pipeline import Segmenter

    if planted is None:
        return Segmenter(backbone, cfg)

    class PlantedSegmenter(Segmenter):
        def _window(self, window, context, gt, return_debug, stats):
            proxy = _PlantedContext(context, planted[list(window.indices)])
            return super()._window(window, proxy, gt, return_debug, stats)

    return PlantedSegmenter(backbone, cfg)


def run_mode(
    backbone, cfg: SegmentConfig, work: Workload, overlay: bool = True, coarse: str = "planted"
) -> dict[str, Any]:
    """Run the Segmenter once on ``work`` with ``cfg`` into a temporary folder and measure it.

    ``coarse="planted"`` feeds the planted maps to refinement in place of the KNN prediction
    (see :func:`run_benchmark`); "model" keeps the model's own coarse maps.
    """
    from .video import open_video

    if coarse not in ("planted", "model"):
        raise ConfigError(f"coarse={coarse!r}: use 'planted' or 'model'")
    frames = int(work.frames.shape[0])
    gt = work.labels[0].numpy().astype(np.uint8)
    with tempfile.TemporaryDirectory(prefix="zsvss-bench-") as tmp:
        out = Path(tmp) / "out"
        seg = _segmenter(backbone, cfg, work.labels if coarse == "planted" else None)
        _release_free_memory()
        rss_before = _rss_gb()
        reset_ok = _reset_peak_rss()
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
        peak = _peak_rss_gb(reset_ok)
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
        "upsample_config": cfg.upsample.to_dict(),
        "_labels": labels,
    }


def _backbone_info(backbone, channels_last: bool) -> dict[str, Any]:
    return {
        "name": backbone.name,
        "dtype": str(backbone.dtype).replace("torch.", ""),
        "device": str(backbone.device),
        "channels_last": channels_last,
        "feature_stride": backbone.feature_stride,
    }


def _load(model: str, dtype: str | None, device: str | None, channels_last: bool, size: int):
    from .backbone import load_backbone

    tic = time.perf_counter()
    backbone = load_backbone(model, dtype=dtype, device=device)
    load_seconds = time.perf_counter() - tic
    backbone.release_text_encoder()  # as the CLI does: only the "" embedding is needed
    if channels_last:
        for module in (backbone.unet, backbone.vae):
            module.to(memory_format=torch.channels_last)
    _warm_up(backbone, size)
    info = _backbone_info(backbone, channels_last)
    info.update(load_seconds=round(load_seconds, 2), rss_after_load_gb=_rss_gb())
    return backbone, info


def _isolated_mode(job: dict[str, Any]) -> dict[str, Any]:
    """Child-process entry: load the model, run one mode, return its measurements."""
    torch.set_num_threads(job["threads"])
    backbone, info = _load(
        job["model"], job["dtype"], job["device"], job["channels_last"], job["size"]
    )
    work = synthetic_video(job["frames"], job["size"], job["classes"], job["seed"])
    result = run_mode(backbone, job["cfg"], work, job["overlay"], job["coarse"])
    result["backbone"] = info
    return result


def _run_isolated(job: dict[str, Any]) -> dict[str, Any]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(_isolated_mode, job).result()


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    return round(float((a == b).mean()), 6)


def run_benchmark(
    model: str = "tiny",
    size: int = 256,
    frames: int = 14,
    classes: int = 3,
    modes: tuple[str, ...] | list[str] = ("default",),
    json_path: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    window: int = 14,
    overlay: bool = True,
    preset: str | None = None,
    dtype: str | None = None,
    device: str | None = None,
    channels_last: bool = False,
    coarse: str = "planted",
    command: str | None = None,
    backbone=None,
    isolate: bool | None = None,
    allow_emulated_bf16: bool = False,
) -> dict[str, Any]:
    """Run the benchmark for each of ``modes`` on one workload and return the result dict.

    ``preset`` is the base config (default: "tiny" for the tiny model, else "paper-sd");
    each mode changes its upsampling config (:data:`MODES`). The top-level keys describe
    the primary mode ("default" when it ran, else the last mode); ``runs`` holds every
    mode, with ``label_agreement`` against "reference" and ``label_agreement_vs_default``.
    ``backbone`` reuses an already loaded model (then ``model``/``dtype`` only label it).

    ``coarse="planted"`` (default): refinement and upsampling start from the planted maps at
    the feature grid instead of the KNN's prediction (the KNN still runs and is timed). With
    random weights the features cannot separate the planted classes (the random VAE's latents
    vary by ~0.05 between regions against noise of ~0.4 at t*), so the model's own coarse maps
    collapse to one or two classes and the cost of stage 3 would not reflect ``classes``.
    "model" keeps the model's own maps (use it with real weights).

    ``isolate`` runs every mode in a fresh child process that loads the model itself, so
    each mode's peak memory and timing are its own (default: for every model but "tiny",
    unless ``backbone`` is given); otherwise the modes share one loaded model in-process.

    Modes that use bfloat16 are skipped (listed in ``skipped_modes``) on a device without
    native bf16 (:func:`~zsvss_nb.backbone.native_bf16`) unless ``allow_emulated_bf16``.
    """
    modes = list(dict.fromkeys(modes))
    if not modes:
        raise ConfigError("no benchmark mode given")
    for mode in modes:
        if mode not in MODES:
            raise ConfigError(f"benchmark mode {mode!r} is not known; choose from {sorted(MODES)}")
    if size % 64:
        raise ConfigError(f"size={size}: use a multiple of 64 so no resizing is measured")
    base = SegmentConfig.from_preset(preset or ("tiny" if model == "tiny" else "paper-sd"))
    base = base.replace(window=window)
    work = synthetic_video(frames, size, classes, seed)
    if isolate is None:
        isolate = backbone is None and model != "tiny"
    machine = machine_info()
    info: dict[str, Any] = {}
    if not isolate:
        if backbone is None:
            backbone, info = _load(model, dtype, device, channels_last, size)
        else:
            _warm_up(backbone, size)
            info = _backbone_info(backbone, channels_last)
    runs: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    native = native_bf16(backbone.device if backbone is not None else device or default_device())
    for mode in modes:
        cfg = _mode_config(base, mode)
        if cfg.upsample.uses_bfloat16 and not (native or allow_emulated_bf16):
            skipped[mode] = "no native bf16 on this device (emulated bf16 is far slower)"
            log.warning("skipping mode %s: %s", mode, skipped[mode])
            continue
        if isolate:
            job = {
                "model": model,
                "dtype": dtype,
                "device": device,
                "size": size,
                "frames": frames,
                "classes": classes,
                "seed": seed,
                "overlay": overlay,
                "coarse": coarse,
                "channels_last": channels_last,
                "cfg": cfg,
                "threads": torch.get_num_threads(),
            }
            runs[mode] = _run_isolated(job)
            info = runs[mode].pop("backbone")
        else:
            runs[mode] = run_mode(backbone, cfg, work, overlay, coarse)
        runs[mode]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    if not runs:
        raise ConfigError(f"every benchmark mode was skipped: {skipped}")
    modes = [mode for mode in modes if mode in runs]
    labels = {mode: run.pop("_labels") for mode, run in runs.items()}
    for mode, run in runs.items():
        if "reference" in runs and mode != "reference":
            run["label_agreement"] = _agreement(labels[mode], labels["reference"])
            run["speedup_vs_reference"] = round(
                runs["reference"]["seconds_total"] / run["seconds_total"], 3
            )
        if "default" in runs and mode not in ("default", "reference"):
            run["label_agreement_vs_default"] = _agreement(labels[mode], labels["default"])
            run["speedup_vs_default"] = round(
                runs["default"]["seconds_total"] / run["seconds_total"], 3
            )
    primary = "default" if "default" in runs else modes[-1]
    result: dict[str, Any] = {
        "model": info["name"],
        "mode": primary,
        **{k: v for k, v in runs[primary].items() if k != "upsample_config"},
        "modes": modes,
        "runs": runs,
        "skipped_modes": skipped,
        "workload": {
            "frames": frames,
            "size": size,
            "classes": classes,
            "window": window,
            "seed": seed,
            "description": work.description,
            "planted_pair_occupancy": round(work.pair_occupancy(info["feature_stride"]), 4),
            "coarse_maps": coarse,
        },
        "backbone": info,
        "isolated_processes": isolate,
        "base_preset": base.preset,
        "machine": machine,
        "command": command or " ".join(shlex.quote(a) for a in sys.argv),
    }
    if json_path is not None:
        path = Path(json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2, default=str))
    return result


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def format_table(result: dict[str, Any]) -> str:
    """A markdown table: one column per mode, stage seconds per frame and the totals."""
    runs = result["runs"]
    modes = list(runs)
    head = "| per frame | " + " | ".join(modes) + " |"
    rows = [head, "|" + "---|" * (len(modes) + 1)]

    def row(label: str, values: list[Any]) -> None:
        rows.append(f"| {label} | " + " | ".join(values) + " |")

    for key, label in STAGES:
        row(f"{label} [s]", [_fmt(runs[m]["stages"].get(key, 0.0)) for m in modes])
    row("**total wall [s]**", [f"**{_fmt(runs[m]['seconds_per_frame'])}**" for m in modes])
    row("process CPU [s]", [_fmt(runs[m]["cpu_seconds_per_frame"]) for m in modes])
    row("non-diffusion share", [_fmt(runs[m]["non_diffusion_share"], 3) for m in modes])
    row("UNet sample-evals", [_fmt(float(runs[m]["unet_evals_per_frame"]), 1) for m in modes])
    row("VAE decodes", [_fmt(float(runs[m]["vae_decodes_per_frame"]), 2) for m in modes])
    row("peak RSS [GiB]", [_fmt(runs[m]["peak_rss_gb"]) for m in modes])
    if any(runs[m]["peak_device_gb"] is not None for m in modes):
        row("peak device [GiB]", [_fmt(runs[m]["peak_device_gb"]) for m in modes])
    row("bytes to storage (write_bytes)", [_fmt(runs[m]["disk_bytes_written"]) for m in modes])
    row("bytes in write calls (wchar)", [_fmt(runs[m]["syscall_bytes_written"]) for m in modes])
    row("requested outputs' size", [_fmt(runs[m]["output_bytes"]) for m in modes])
    row("written beyond the outputs", [_fmt(runs[m]["extra_disk_bytes"]) for m in modes])
    if "reference" in runs:
        row("speedup vs reference", [_fmt(runs[m].get("speedup_vs_reference"), 2) for m in modes])
        row("labels = reference", [_fmt(runs[m].get("label_agreement"), 4) for m in modes])
    if "default" in runs and len(modes) > 2 - ("reference" not in runs):
        row("labels = default", [_fmt(runs[m].get("label_agreement_vs_default"), 4) for m in modes])
    work, bb, mach = result["workload"], result["backbone"], result["machine"]
    notes = [
        "",
        f"model {result['model']} ({bb['dtype']}, {bb['device']}), {work['frames']} frames of "
        f"{work['size']}x{work['size']}, {work['classes']} classes, window {work['window']}, "
        f"{work['coarse_maps']} coarse maps; planted (class, frame) pair occupancy "
        f"{work['planted_pair_occupancy']:.2f}",
        f"machine: {mach.get('cpu_model', '?')}, {mach['cpu_count']} CPUs, torch "
        f"{mach['torch']} ({mach['torch_threads']} threads), ISA {mach.get('isa', [])}, "
        f"load average at start {mach.get('load_average')}",
    ]
    for mode, reason in result.get("skipped_modes", {}).items():
        notes.append(f"skipped mode {mode}: {reason}")
    return "\n".join(rows + notes)


# -- command line ---------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``zsvss bench`` options."""
    parser.add_argument(
        "--model",
        default="tiny",
        choices=["tiny", "sd21-base-random"],
        help="tiny (CI smoke test) or SD 2.1-base's architecture, random weights",
    )
    parser.add_argument("--size", type=int, default=256, help="frame side in pixels (x64)")
    parser.add_argument("--frames", type=int, default=14)
    parser.add_argument("--classes", type=int, default=3, help="planted classes (>= 2)")
    parser.add_argument(
        "--compare-reference",
        action="store_true",
        help="also run the reference code's structure on the same inputs",
    )
    parser.add_argument(
        "--modes", default=None, help=f"comma-separated extra modes from {', '.join(MODES)}"
    )
    parser.add_argument("--json", default=None, metavar="FILE", help="write the result here")
    parser.add_argument("--seed", type=int, default=0, help="workload seed")
    parser.add_argument("--window", type=int, default=14)
    parser.add_argument("--no-overlay", action="store_true", help="skip overlay.mp4")
    parser.add_argument("--dtype", default=None, help="UNet weights dtype (default float32 on CPU)")
    parser.add_argument(
        "--channels-last",
        action="store_true",
        help="convert UNet and VAE weights to channels_last first",
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run every mode in this process on one loaded model (default for "
        "tiny; other models run each mode in a fresh process)",
    )
    parser.add_argument(
        "--allow-emulated-bf16",
        action="store_true",
        help="run bf16 modes even where the device has no native bf16 (skipped otherwise)",
    )
    parser.add_argument(
        "--coarse",
        default="planted",
        choices=["planted", "model"],
        help="coarse maps from the planted regions (default; random weights "
        "cannot separate them) or from the model's KNN",
    )


def run_from_args(args: argparse.Namespace) -> int:
    """Run ``zsvss bench`` from parsed arguments; prints the table. Returns the exit code."""
    modes: list[str] = ["reference"] if args.compare_reference else []
    modes.append("default")
    if args.modes:
        modes += [m.strip() for m in args.modes.split(",") if m.strip()]
    result = run_benchmark(
        model=args.model,
        size=args.size,
        frames=args.frames,
        classes=args.classes,
        modes=tuple(modes),
        json_path=args.json,
        seed=args.seed,
        window=args.window,
        overlay=not args.no_overlay,
        dtype=args.dtype,
        channels_last=args.channels_last,
        coarse=args.coarse,
        isolate=False if args.in_process else None,
        allow_emulated_bf16=args.allow_emulated_bf16,
    )
    print(format_table(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m zsvss_nb.bench [options]``: the same as ``zsvss bench``."""
    parser = argparse.ArgumentParser(prog="zsvss bench", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_from_args(args)


if __name__ == "__main__":
    sys.exit(main())
