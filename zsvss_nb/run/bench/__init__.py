"""``zsvss bench``: cost per frame of the pipeline, by stage, against the reference's structure.

The workload (:func:`synthetic_video`) is a seeded synthetic video with ``classes`` planted
regions: a drifting textured background (class 0), a textured ground band whose edge sways
(class 1) and ``classes - 2`` textured blobs that travel across the frame and wrap around with
an off-screen gap, so each blob is absent from part of every 14-frame window as objects are in
real video. Frame 1's planted map is the first-frame ground truth (the paper's protocol, METHOD
1.4), which fixes the class set. Every mode runs the real :class:`~zsvss_nb.pipeline.Segmenter`
(features -> context -> refinement -> upsampling -> label/colour PNGs and the overlay video in a
temporary folder) on the same frames with the same backbone.

Modes are config variants (:data:`MODES`): "reference" (the reference code's structure, METHOD
1.9, with its UNet in the precision the reference code uses on this device,
:func:`reference_precision`), "reference-fp32" (the same in fp32), "default" (the package's
defaults), "fp32" and the precision modes, and single options beyond them.
Per mode the benchmark reports wall seconds per frame and per stage, process CPU seconds,
UNet sample-evaluations and VAE decodes per frame, peak resident memory of the mode (the
kernel's high-water mark is reset before each mode), peak device memory, bytes the pipeline
thread wrote (/proc/thread-self/io: write_bytes, what reached the storage layer, counted per dirtied
page; wchar, the bytes passed to write calls) next to the final size of the requested outputs
(``extra_disk_bytes`` = wchar minus that size: anything printed, and any cache a mode might
spill to disk), and the share of pixels labelled as the reference (and as "default") labels
them.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch

from ...backbones.precision import default_device, native_bf16
from ...config import SegmentConfig
from ...errors import ConfigError
from ...fieldtypes import parse_names
from ...io.outputs import check_output_file
from ...io.provenance import machine_info, rss_gb
from ...io.writers import atomic_write_json
from .load import busy_processes, check_load
from .measure import STAGES, agreement, run_mode
from .workload import synthetic_video

log = logging.getLogger(__name__)


REFERENCE_PRECISION = "reference"  # stands for reference_precision(device) in MODES

# config changes per mode (SegmentConfig.replace names); the precision modes set both the UNet's
# precision and the decode's dtype, so they mean the same whatever the defaults are
MODES: dict[str, dict[str, Any]] = {
    "reference": {"execution": "reference", "precision": REFERENCE_PRECISION},
    "reference-fp32": {"execution": "reference", "precision": "fp32"},
    "default": {},
    "fp32": {"precision": "fp32", "decode_dtype": "float32"},
    "no-prefix": {"share_prefix": False},
    "bf16-unet": {"precision": "bf16", "decode_dtype": "float32"},
    "bf16-decode": {"precision": "fp32", "decode_dtype": "bfloat16"},
    "fast": {"precision": "bf16", "decode_dtype": "bfloat16"},
    "no-reuse-attention": {"reuse_attention": False},
    "region-decode": {"decode_margin": 8},  # decode each pair on its mask's box + 64 px
    "no-cfg": {"modulation_cfg": False},
    "neighbourhood": {"neighbourhood_classes": True},
    "compile": {"torch_compile": True},
    "batch-8": {"modulation_batch": 8, "decode_batch": 4},  # the fixed sizes before "auto"
    "batch-all": {"modulation_batch": 0, "decode_batch": 0},  # everything in one call
}


def reference_precision(device: torch.device | str) -> str:
    """The UNet precision the reference code runs with on ``device``: its ``torch.autocast``
    is fp16 on CUDA and bf16 on the CPU, which pays only with native bf16 (fp32 otherwise)."""
    device = torch.device(device)
    if device.type == "cuda":
        return "fp16"
    if device.type == "cpu" and native_bf16(device):
        return "bf16"
    return "fp32"


def _mode_config(base: SegmentConfig, mode: str, device: torch.device | str) -> SegmentConfig:
    if mode not in MODES:
        raise ConfigError(f"benchmark mode {mode!r} is not known; choose from {sorted(MODES)}")
    changes = dict(MODES[mode])
    if changes.get("precision") == REFERENCE_PRECISION:
        changes["precision"] = reference_precision(device)
    return base.replace(**changes) if changes else base


def _warm_up(backbone, size: int) -> None:
    """One small model call at the workload's shapes (one-time kernel set-up), untimed."""
    from tqdm.auto import tqdm

    tqdm.get_lock()  # its lock is a POSIX semaphore: 32 bytes to /dev/shm once per process
    backbone.warm_up(size)


def _backbone_info(backbone, channels_last: bool) -> dict[str, Any]:
    return {
        "name": backbone.name,
        "dtype": str(backbone.dtype).replace("torch.", ""),
        "device": str(backbone.device),
        "channels_last": channels_last,
        "feature_stride": backbone.feature_stride,
    }


def _load(model: str, dtype: str | None, device: str | None, channels_last: bool, size: int):
    from ...backbones import load_backbone

    tic = time.perf_counter()
    backbone = load_backbone(model, dtype=dtype, device=device)
    load_seconds = time.perf_counter() - tic
    backbone.release_text_encoder()  # as the CLI does: only the "" embedding is needed
    if channels_last:
        for module in (backbone.unet, backbone.vae):
            module.to(memory_format=torch.channels_last)
    _warm_up(backbone, size)
    info = _backbone_info(backbone, channels_last)
    info.update(load_seconds=round(load_seconds, 2), rss_after_load_gb=rss_gb())
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
    load: int = 0,
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
    native bf16 (:func:`~zsvss_nb.backbones.precision.native_bf16`) unless ``allow_emulated_bf16``.

    ``load`` > 0 runs the primary mode once more with that many busy processes beside it
    (:func:`~zsvss_nb.run.bench.load.busy_processes`) and reports the loaded/idle ratio (``load``).
    """
    modes = _checked_modes(modes, size, json_path, load)
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
    }
    measurer = _Measurer(backbone if not isolate else None, work, job, info)
    run_device = backbone.device if backbone is not None else device or default_device()
    runs, skipped, configs = _measure_modes(measurer, base, modes, run_device, allow_emulated_bf16)
    modes = [mode for mode in modes if mode in runs]
    labels = {mode: run.pop("_labels") for mode, run in runs.items()}
    for mode, run in runs.items():
        _compare(run, mode, runs, labels)
    primary = "default" if "default" in runs else modes[-1]
    loaded = None
    if load:
        with busy_processes(load):
            loaded = measurer.measure(configs[primary])
        loaded = _load_report(runs[primary], loaded, labels[primary], load)
    info = measurer.info
    result: dict[str, Any] = {
        "model": info["name"],
        "mode": primary,
        **{k: v for k, v in runs[primary].items() if k != "upsample_config"},
        "modes": modes,
        "runs": runs,
        "skipped_modes": skipped,
        "load": loaded,
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
        atomic_write_json(json_path, result)
    return result


def _checked_modes(
    modes: tuple[str, ...] | list[str], size: int, json_path: str | os.PathLike | None, load: int
) -> list[str]:
    """The distinct requested modes, after checking the request before anything runs."""
    modes = list(dict.fromkeys(modes))
    if not modes:
        raise ConfigError("no benchmark mode given")
    for mode in modes:
        if mode not in MODES:
            raise ConfigError(f"benchmark mode {mode!r} is not known; choose from {sorted(MODES)}")
    if size % 64:
        raise ConfigError(f"size={size}: use a multiple of 64 so no resizing is measured")
    if json_path is not None:  # before the (long) benchmark
        check_output_file(json_path, "--json", create_parent=True)
    check_load(load)
    return modes


@dataclass
class _Measurer:
    """Measures one mode: in this process on ``backbone``, or (``backbone`` None) in a fresh
    child that loads the model itself from ``job``; ``info`` describes the backbone."""

    backbone: Any
    work: Any
    job: dict[str, Any]
    info: dict[str, Any]

    def measure(self, cfg: SegmentConfig) -> dict[str, Any]:
        if self.backbone is not None:
            run = run_mode(self.backbone, cfg, self.work, self.job["overlay"], self.job["coarse"])
        else:
            run = _run_isolated({**self.job, "cfg": cfg, "threads": torch.get_num_threads()})
            self.info = run.pop("backbone")
        run["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
        return run


def _measure_modes(
    measurer: _Measurer,
    base: SegmentConfig,
    modes: list[str],
    device: torch.device | str,
    allow_emulated_bf16: bool,
) -> tuple[dict[str, dict[str, Any]], dict[str, str], dict[str, SegmentConfig]]:
    """(runs, skipped modes with their reason, configs) of every mode; a bf16 mode is skipped
    on a device without native bf16 unless ``allow_emulated_bf16``."""
    native = native_bf16(device)
    runs: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    configs = {}
    for mode in modes:
        cfg = _mode_config(base, mode, device)
        if cfg.uses_bfloat16 and not (native or allow_emulated_bf16):
            skipped[mode] = "no native bf16 on this device (emulated bf16 is far slower)"
            log.warning("skipping mode %s: %s", mode, skipped[mode])
            continue
        configs[mode] = cfg
        runs[mode] = measurer.measure(cfg)
    if not runs:
        raise ConfigError(f"every benchmark mode was skipped: {skipped}")
    return runs, skipped, configs


COMPARED = ("reference", "reference-fp32", "default", "fp32")  # modes others are compared with


def _comparison_keys(other: str) -> tuple[str, str]:
    """(label agreement key, speedup key suffix) of a comparison with mode ``other``: the
    reference's keep issue 7's names ``label_agreement`` and ``speedup_vs_reference``."""
    if other == "reference":
        return "label_agreement", "reference"
    name = other.replace("-", "_")
    return f"label_agreement_vs_{name}", name


def _compare(run: dict[str, Any], mode: str, runs: dict[str, dict], labels: dict) -> None:
    """Agreement and speedups of ``run`` against the reference, reference-fp32, default, fp32."""
    for other in COMPARED:
        if other not in runs or other == mode:
            continue
        base = runs[other]
        agree, name = _comparison_keys(other)
        run[agree] = agreement(labels[mode], labels[other])
        run[f"speedup_vs_{name}"] = round(base["seconds_total"] / run["seconds_total"], 3)
        run[f"cpu_speedup_vs_{name}"] = round(
            base["cpu_seconds_per_frame"] / max(run["cpu_seconds_per_frame"], 1e-9), 3
        )


def _load_report(idle: dict, loaded: dict, idle_labels, busy: int) -> dict[str, Any]:
    """The primary mode with ``busy`` spinning processes beside it, against its idle run."""
    labels = loaded.pop("_labels")
    return {
        "busy_processes": busy,
        "idle_seconds_per_frame": idle["seconds_per_frame"],
        "loaded_seconds_per_frame": loaded["seconds_per_frame"],
        "loaded_over_idle": round(loaded["seconds_total"] / idle["seconds_total"], 3),
        "idle_cpu_seconds_per_frame": idle["cpu_seconds_per_frame"],
        "loaded_cpu_seconds_per_frame": loaded["cpu_seconds_per_frame"],
        "label_agreement_with_idle": agreement(labels, idle_labels),
        "load_average_after": loaded["load_average_after"],
        "run": loaded,
    }


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
    row("UNet / decode dtype", [runs[m].get("dtypes", "-") for m in modes])
    for other in COMPARED:
        if other not in runs or len(modes) < 2:
            continue
        agree, name = _comparison_keys(other)
        row(f"speedup vs {other}", [_fmt(runs[m].get(f"speedup_vs_{name}"), 2) for m in modes])
        row(
            f"CPU-time speedup vs {other}",
            [_fmt(runs[m].get(f"cpu_speedup_vs_{name}"), 2) for m in modes],
        )
        row(f"labels = {other}", [_fmt(runs[m].get(agree), 4) for m in modes])
    work, bb, mach = result["workload"], result["backbone"], result["machine"]
    notes = [
        "",
        f"model {result['model']} ({bb['dtype']}, {bb['device']}), {work['frames']} frames of "
        f"{work['size']}x{work['size']}, {work['classes']} classes, window {work['window']}, "
        f"{work['coarse_maps']} coarse maps; planted (class, frame) pair occupancy "
        f"{work['planted_pair_occupancy']:.2f}",
        f"machine: {mach.get('cpu_model', '?')}, {mach['cpu_count']} CPUs, torch "
        f"{mach['torch']} ({mach['torch_threads']} threads, OpenMP wait policy "
        f"{mach.get('omp_wait_policy')}), ISA {mach.get('isa', [])}, "
        f"load average at start {mach.get('load_average')}",
    ]
    for mode, reason in result.get("skipped_modes", {}).items():
        notes.append(f"skipped mode {mode}: {reason}")
    load = result.get("load")
    if load:
        notes.append(
            f"with {load['busy_processes']} busy processes beside it, {result['mode']} took "
            f"{load['loaded_seconds_per_frame']:.2f} s/frame against "
            f"{load['idle_seconds_per_frame']:.2f} idle: {load['loaded_over_idle']:.2f}x "
            f"(CPU {load['loaded_cpu_seconds_per_frame']:.2f} against "
            f"{load['idle_cpu_seconds_per_frame']:.2f} s/frame; load average after "
            f"{load['load_average_after']})"
        )
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
        "--load",
        type=int,
        default=0,
        metavar="N",
        help="also run the primary mode with N busy processes beside it (shared-machine "
        "check; reports loaded/idle)",
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
    modes += parse_names(args.modes) or []
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
        load=args.load,
    )
    print(format_table(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m zsvss_nb.run.bench [options]``: the same as ``zsvss bench``."""
    parser = argparse.ArgumentParser(prog="zsvss bench", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_from_args(args)


__all__ = [
    "MODES",
    "add_arguments",
    "format_table",
    "main",
    "run_benchmark",
    "run_from_args",
]
