"""One prepared device check (issue 28): smoke tests, the bench at the paper's sizes, fp16 against
fp32 and the reference's structure, peak device memory per batch plan, all in one JSON.

On a bare CUDA machine with the project's wheels (about 5 minutes on one H100, under 8):

    python benchmarks/gpu_check.py --json gpu_check.json

On the CPU, in CI (the tiny model only, seconds):

    python benchmarks/gpu_check.py --device cpu --small --json cpu_check.json

Sections: ``smoke`` (the tiny model and, without ``--small``, ``sd21-base-random`` end to end
through the real pipeline, outputs written), ``bench`` (``zsvss bench`` at 512x512, 14 frames,
10 classes: modes default, fp32, reference and the fixed plan batch-8, one loaded model with
float32 weights so fp32 is fp32 and the other modes run under autocast as the reference code
does), ``agreement`` (labels of the default against fp32 and the reference), ``plans``
(modulation batch plan, seconds and peak device memory per mode). A failing section is
recorded with its error and the others still run; the exit code is 1 if any failed.
"""

import argparse
import json
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zsvss_nb.io.provenance import machine_info  # noqa: E402
from zsvss_nb.run.bench import run_benchmark  # noqa: E402

FULL = {"size": 512, "frames": 14, "classes": 10}  # the paper's sizes (issue 28)
SMALL = {"size": 64, "frames": 2, "classes": 2}
BENCH_MODES = ("default", "fp32", "reference", "batch-8")


def device_info(device: torch.device) -> dict[str, Any]:
    """Name, memory and versions of ``device`` (CUDA: the card; the CPU: its model)."""
    info: dict[str, Any] = {"device": str(device), "torch": torch.__version__}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        free, total = torch.cuda.mem_get_info(device)
        info.update(
            name=torch.cuda.get_device_name(device),
            total_memory_gb=round(total / 2**30, 2),
            free_memory_gb=round(free / 2**30, 2),
            capability=f"{props.major}.{props.minor}",
            cuda=torch.version.cuda,
            # "fp32" convolutions use TF32 on Ampere and later unless this is False
            cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
            matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
        )
    else:
        machine = machine_info()
        info.update(name=machine.get("cpu_model") or platform.machine(), isa=machine.get("isa"))
        info.update(threads=torch.get_num_threads())
    return info


def section(report: dict[str, Any], name: str, fn) -> Any:
    """Run ``fn()`` as section ``name``: its result, seconds and any error go into ``report``."""
    tic = time.perf_counter()
    try:
        result = fn()
        report[name] = result
        return result
    except Exception as err:  # a failed section must not hide the others' numbers
        report[name] = {"error": f"{type(err).__name__}: {err}", "trace": traceback.format_exc()}
        report["failed"].append(name)
        return None
    finally:
        report["seconds"][name] = round(time.perf_counter() - tic, 1)


def summary(run: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "seconds_per_frame",
        "unet_evals_per_frame",
        "vae_decodes_per_frame",
        "peak_device_gb",
        "peak_rss_gb",
        "precision",
        "dtypes",
        "label_agreement",
        "label_agreement_vs_fp32",
        "label_agreement_vs_default",
        "speedup_vs_reference",
        "speedup_vs_fp32",
    )
    out = {k: run[k] for k in keys if k in run}
    out["modulation_batch"] = run.get("upsample_config", {}).get("modulation_batch")
    return out


def smoke(model: str, device: str, sizes: dict[str, int]) -> dict[str, Any]:
    """The real pipeline end to end on ``model`` (default mode), checked, summarised."""
    result = run_benchmark(
        model, modes=("default",), device=device, overlay=False, isolate=False, **sizes
    )
    run = result["runs"]["default"]
    if result["backbone"]["device"].split(":")[0] != torch.device(device).type:
        raise RuntimeError(f"{model} ran on {result['backbone']['device']}, not {device}")
    if not run["seconds_per_frame"] > 0 or run["vae_decodes_per_frame"] <= 0:
        raise RuntimeError(f"{model}: no modulation ran ({summary(run)})")
    return {"model": model, **sizes, **summary(run)}


def bench(model: str, device: str, sizes: dict[str, int]) -> dict[str, Any]:
    """The bench's modes on one loaded model with float32 weights."""
    result = run_benchmark(
        model,
        modes=BENCH_MODES,
        device=device,
        dtype="float32",
        isolate=False,
        overlay=False,
        **sizes,
    )
    return {
        "model": model,
        **sizes,
        "runs": {mode: summary(run) for mode, run in result["runs"].items()},
        "skipped_modes": result["skipped_modes"],
        "machine": result["machine"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", default=default, help=f"cuda or cpu (default: {default})")
    parser.add_argument("--small", action="store_true", help="tiny model and sizes (CI, CPU)")
    parser.add_argument("--json", default="gpu_check.json", help="where the report goes")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    report: dict[str, Any] = {"small": args.small, "failed": [], "seconds": {}}
    report["device"] = device_info(device)
    sizes = SMALL if args.small else FULL
    models = ("tiny",) if args.small else ("tiny", "sd21-base-random")
    bench_model = "tiny" if args.small else "sd21-base-random"
    for model in models:
        section(report, f"smoke_{model}", lambda m=model: smoke(m, args.device, SMALL))
    result = section(report, "bench", lambda: bench(bench_model, args.device, sizes))
    if result is not None:
        runs = result["runs"]
        report["agreement"] = {
            "default_vs_fp32": runs["default"].get("label_agreement_vs_fp32"),
            "default_vs_reference": runs["default"].get("label_agreement"),
            "fp32_vs_reference": runs["fp32"].get("label_agreement"),
            "batch_8_vs_default": runs["batch-8"].get("label_agreement_vs_default"),
        }
        report["plans"] = {
            mode: {
                k: run.get(k) for k in ("modulation_batch", "seconds_per_frame", "peak_device_gb")
            }
            for mode, run in runs.items()
        }
    report["seconds"]["total"] = round(sum(report["seconds"].values()), 1)
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps({k: report.get(k) for k in ("device", "agreement", "plans", "failed")}))
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
