"""Command line: ``zsvss segment | dataset | eval | compare | bench | info``.

Bad input ends with exit code 2 and one line on stderr naming the input and the problem; the
library's typed errors (:mod:`zsvss_nb.errors`) carry those lines.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import traceback
from typing import Any

from ..errors import InterruptedAfterPublish, ZsvssError, os_problem
from . import commands

log = logging.getLogger("zsvss")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default=None,
        help="diffusers folder, .safetensors/.ckpt file, repo id, 'tiny', 'dinov2-s' "
        "(default: $ZSVSS_MODEL)",
    )
    p.add_argument("--device", default=None, help="cuda, cuda:1, mps or cpu (default: best)")
    p.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "float16", "bfloat16"],
        help="UNet compute dtype (default: float16 on CUDA, float32 otherwise)",
    )


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--preset",
        default=None,
        help="paper-sd, paper-compat, paper-svd, dinov2, fast, tiny (default: the model's own: "
        "paper-svd for SVD models, dinov2 for dinov2-s, paper-sd otherwise)",
    )
    p.add_argument("--k", type=int, default=None, help="k-means clusters (paper: 20)")
    p.add_argument("--window", type=int, default=None, help="frames per window (paper: 14)")
    p.add_argument(
        "--upsample",
        default=None,
        choices=["modulation", "bilinear", "nearest", "bilateral"],
        help="stage 3 method (default: modulation)",
    )
    p.add_argument(
        "--max-side",
        type=int,
        default=None,
        help="downscale frames so the longer side is at most this (beyond the paper)",
    )
    p.add_argument("--size-policy", default=None, choices=["resize64", "pad64"])
    p.add_argument("--lam", type=float, default=None, help="modulation strength (paper: 50)")
    p.add_argument(
        "--modulation-batch",
        default=None,
        help="(class, sign, frame) triples per UNet call: auto (default: from free memory), "
        "N, or 0 = all",
    )
    p.add_argument(
        "--ignore-index",
        type=int,
        default=None,
        help="GT id that never becomes a class (default 255; CamVid 11)",
    )
    p.add_argument("--seed", type=int, default=None, help="noise seed (paper: 1)")
    p.add_argument(
        "--precision",
        default=None,
        choices=["auto", "fp32", "bf16", "fp16"],
        help="UNet compute precision, feature and modulated passes (autocast; default auto: "
        "fp16 on CUDA, fp32 on the CPU); the VAE decode: --set decode_dtype=bfloat16",
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="NAME=VALUE",
        help="any config field, e.g. --set refine.paper_compat=true --set blur_sigma=2",
    )


def _add_format_argument(p: argparse.ArgumentParser, flag: str, **kwargs: Any) -> None:
    """The dataset format argument; its choices are the registered formats."""
    from ..datasets import format_names

    p.add_argument(flag, choices=format_names(), help="dataset format", **kwargs)


def _add_segment(sub) -> None:
    p = sub.add_parser("segment", help="segment one video and write labels, colours, overlay")
    p.add_argument("video", help="frame folder, video file (mp4/mov/mkv/webm/avi)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--first-frame-gt",
        default=None,
        help="label PNG of the first frame: clusters take its classes (paper protocol)",
    )
    p.add_argument(
        "--fps", type=float, default=None, help="frame rate of a frame folder (0.001..1000)"
    )
    p.add_argument("--no-overlay", action="store_true", help="skip overlay.mp4")
    _add_model_args(p)
    _add_config_args(p)
    p.set_defaults(func=commands.cmd_segment)


def _add_dataset(sub) -> None:
    p = sub.add_parser("dataset", help="segment every video of a dataset (sharded, resumable)")
    _add_format_argument(p, "format")
    p.add_argument("root", help="dataset root folder")
    p.add_argument("--out", required=True, help="prediction root: PRED/<video>/<frame>.png")
    p.add_argument("--split", default=None, help="split name (e.g. val)")
    p.add_argument(
        "--shard",
        default=None,
        help="i/N: this process's share (default: from RANK/WORLD_SIZE under torchrun/accelerate)",
    )
    p.add_argument("--resume", action="store_true", help="skip videos already finished")
    p.add_argument(
        "--first-frame-gt",
        action="store_true",
        help="map clusters to classes with each video's first-frame GT (paper)",
    )
    p.add_argument("--num-classes", type=int, default=None)
    _add_model_args(p)
    _add_config_args(p)
    p.set_defaults(func=commands.cmd_dataset)


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="mIoU, mVC8/16 and pixel accuracy of a prediction folder")
    p.add_argument("pred", help="prediction root PRED/<video>/<frame>.png")
    p.add_argument("gt", help="dataset root with ground truth")
    _add_format_argument(p, "--format", required=True)
    p.add_argument(
        "--protocol", default="first-frame", choices=["first-frame", "hungarian", "majority"]
    )
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--ignore-index", type=int, default=None)
    p.add_argument("--split", default=None)
    p.add_argument("--json", default=None, help="write the metrics as JSON here")
    p.add_argument(
        "--lenient-ids",
        action="store_true",
        help="do not count GT ids outside the class range instead of failing "
        "(VSPW's official behaviour, the default for --format vspw)",
    )
    p.add_argument(
        "--allow-mixed",
        action="store_true",
        help="score PRED even when its videos come from runs with different config hashes",
    )
    p.set_defaults(func=commands.cmd_eval)


def _add_compare(sub) -> None:
    p = sub.add_parser("compare", help="run several methods on a dataset and tabulate them")
    _add_format_argument(p, "format")
    p.add_argument("root", help="dataset root folder (with ground truth)")
    p.add_argument("--out", required=True, help="output folder: runs/, comparison.{md,csv,tex}")
    p.add_argument(
        "--methods",
        default=None,
        help="comma-separated, e.g. vidseg,diffseg-frame,kmeans-frame (default: every method "
        "the model can run; see zsvss_nb.methods)",
    )
    p.add_argument(
        "--protocol",
        action="append",
        help="repeat for several, from zsvss_nb.evaluation.metrics.PROTOCOLS (default: "
        "first-frame, hungarian, majority)",
    )
    p.add_argument("--split", default=None, help="split name (e.g. val)")
    p.add_argument("--max-frames", type=int, default=None, help="first N frames of each video")
    p.add_argument("--videos", default=None, help="comma-separated video names (default: all)")
    p.add_argument(
        "--vc", type=int, action="append", help="mVC clip length, repeatable (default: 8, 16)"
    )
    p.add_argument("--shard", default=None, help="i/N: segment this share only (see dataset)")
    p.add_argument("--resume", action="store_true", help="skip videos already finished")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument(
        "--seeds",
        default=None,
        help="comma-separated, e.g. 0,1,2: run every method once per seed (noise and k-means "
        "seed) into OUT/seed<s>/ and report mean ± std",
    )
    _add_model_args(p)
    _add_config_args(p)
    p.set_defaults(func=commands.cmd_compare)


def _add_bench(sub, full: bool) -> None:
    """``bench``: its options need the benchmark module (torch), so they are added only when
    ``full`` (the command is bench, or help is asked for); every other command stays light and
    takes its lock before anything slow loads."""
    p = sub.add_parser("bench", help="benchmark cost per frame (and vs the reference)")
    if not full:
        return
    from . import bench

    bench.add_arguments(p)
    p.set_defaults(func=bench.run_from_args)


def build_parser(full: bool = True) -> argparse.ArgumentParser:
    """The ``zsvss`` parser; ``full=False`` leaves out the bench options (see _add_bench)."""
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="zsvss",
        description="Training-free video semantic segmentation from diffusion features (VidSeg).",
    )
    parser.add_argument("--version", action="version", version=f"zsvss {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_segment(sub)
    _add_dataset(sub)
    _add_eval(sub)
    _add_compare(sub)
    p = sub.add_parser("info", help="versions, device, and which model would load")
    p.add_argument("--model", default=None)
    p.set_defaults(func=commands.cmd_info)
    _add_bench(sub, full)
    return parser


def _terminate(signum, _frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def one_line(text: str) -> str:
    """``text`` on one line: newlines and other control characters in names shown escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _needs_bench(argv: list[str]) -> bool:
    words = [a for a in argv if not a.startswith("-")]
    return (words[:1] == ["bench"]) or not words


def main(argv: list[str] | None = None) -> int:
    """Run the command line; the exit code: 0 done, 2 a known error (one line on stderr), 130
    interrupted, 1 an internal error (a bug: its traceback is printed)."""
    from .threads import apply_thread_policy

    apply_thread_policy()  # before torch loads: passive OpenMP waiting, threads = usable cores
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(full=_needs_bench(argv) or "-h" in argv or "--help" in argv)
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so temp files are removed and no partial output remains
    signal.signal(signal.SIGTERM, _terminate)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except ZsvssError as err:
        print(f"zsvss: error: {one_line(str(err))}", file=sys.stderr)
        return 2
    except OSError as err:  # a file-system failure the library did not name: still one line
        where = f"{err.filename}: " if err.filename else ""
        print(f"zsvss: error: {one_line(where + os_problem(err))}", file=sys.stderr)
        return 2
    except InterruptedAfterPublish as err:
        print(f"zsvss: {one_line(str(err))}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("zsvss: interrupted", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        print(
            "zsvss: internal error: this is a bug in zsvss, not a problem with the input; "
            "please report it with the traceback above",
            file=sys.stderr,
        )
        return 1
