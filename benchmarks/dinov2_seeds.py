"""Seed study of the DINOv2-S settings on every labelled clip in data/, features computed once.

    python benchmarks/dinov2_seeds.py --seeds 0 1 2 3 4 --variant base \
        --variant "merge:context.merge_threshold=1.0" --json runs/q/study.json

The ViT's features do not depend on any seed (no diffusion noise), so each clip's windows are
extracted once and every (variant, seed) run reuses them; only the k-means seed
(``context.seed``) varies. Each run goes through the package's Segmenter (GT-free for the
Hungarian protocol, with first-frame GT for the first-frame protocol) and is scored with
:func:`zsvss_nb.evaluation.metrics.evaluate` and diagnosed with
:mod:`zsvss_nb.evaluation.diagnosis`. ``--method kmeans-frame`` / ``diffseg-frame`` score the
per-frame baselines instead. Prints mean +- std over seeds per clip and writes every run.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from zsvss_nb.backbones import load_backbone
from zsvss_nb.config import SegmentConfig
from zsvss_nb.datasets import open_dataset
from zsvss_nb.evaluation import diagnosis
from zsvss_nb.evaluation.metrics import evaluate
from zsvss_nb.io.video import open_video
from zsvss_nb.methods import get_method
from zsvss_nb.refine import track
from zsvss_nb.run.runner import _first_frame_ids
from zsvss_nb.upsample import nearest_labels

CLIPS = {  # format, root, explicit K (the README's per-dataset K)
    "0006R0": ("camvid", "data/camvid", 10),
    "0016E5_15Hz": ("camvid", "data/camvid", 10),
    "car-shadow": ("davis", "data/davis2016", 4),
    "blackswan": ("davis", "data/davis2016", 4),
}
_CACHE: dict[tuple[str, tuple[int, ...]], object] = {}


def cached(segmenter):
    """Make ``segmenter`` reuse stage-1 results per (video, window) across runs."""
    plain = segmenter.window_features

    def window_features(window, stats):
        key = (segmenter._clip, tuple(window.indices))
        if key not in _CACHE:
            _CACHE[key] = plain(window, stats)
        return _CACHE[key]

    segmenter.window_features = window_features
    return segmenter


def parse_variant(text: str) -> tuple[str, list[tuple[str, str]]]:
    name, _, rest = text.partition(":")
    sets = [tuple(s.split("=", 1)) for s in rest.split(",") if s]
    return name, sets


def run_clip(backbone, cfg, method, clip, use_gt, diagnose):
    fmt, root, _ = CLIPS[clip]
    ds = open_dataset(fmt, root)
    item = ds.video(clip)
    if ds.ignore_index is not None:
        cfg = cfg.replace(ignore_index=ds.ignore_index)
    seg = get_method(method).segmenter(backbone, cfg)
    seg._clip = clip
    cached(seg)
    gt = _first_frame_ids(item, ds, seg.cfg) if use_gt else None
    video = open_video(item.frames)
    preds, coarse, refined, debug = [], [], [], diagnose and method.startswith("vidseg")
    for r in seg.segment(video, first_frame_gt=gt, return_debug=debug, progress=False):
        preds.append(r.labels.numpy())
        if debug:
            coarse.append(r.coarse)
            refined.append(r.refined)
    gts = [ds.read_label(item.labels[s]) if s in item.labels else None for s in item.frame_names]
    out = {}
    for proto in ("first-frame",) if use_gt else ("hungarian",):
        res = evaluate([(clip, preds, gts)], ds.num_classes, ds.ignore_index, proto, (8, 16))
        out[proto] = {"miou": res.miou, "mvc8": res.mvc8, "mvc16": res.mvc16, "acc": res.pixel_acc}
        out[f"confusion/{proto}"] = res.confusion.tolist()  # pools clips: summed, then mIoU
    if debug and not use_gt:
        out["diag"] = diagnose_run(seg, clip, video, preds, coarse, refined, gts, ds)
    return out


def diagnose_run(seg, clip, video, preds, coarse, refined, gts, ds):
    cfg = seg.cfg
    lab = [i for i, g in enumerate(gts) if g is not None]
    p, g = [preds[i] for i in lab], [gts[i] for i in lab]
    wins = diagnosis.frame_windows(len(preds), cfg.window)[lab]
    nc, ig = ds.num_classes, ds.ignore_index
    first = _CACHE[(clip, tuple(range(min(cfg.window, len(preds)))))]
    size = tuple(first.images.shape[-2:])
    stages = {}
    for name, maps in (("knn", coarse), ("refined", refined)):
        full = [nearest_labels(maps[i][None], first.geometry, size)[0].numpy() for i in lab]
        gaps = diagnosis.protocol_gaps(full, g, nc, ig)
        stages[name] = {
            "acc": gaps.acc,
            "miou": gaps.miou,
            "drift": gaps.drift,
            "splits": gaps.splits,
        }
    gaps = diagnosis.protocol_gaps(p, g, nc, ig)
    stages["final"] = {
        "acc": gaps.acc,
        "miou": gaps.miou,
        "drift": gaps.drift,
        "splits": gaps.splits,
    }
    survival = []
    for key, feats in _CACHE.items():
        if key[0] != clip:
            continue
        survival.append(float(track(feats.refine_features, cfg.refine).valid.float().mean()))
    changed = float(
        np.mean([(c != r).float().mean() for c, r in zip(coarse, refined, strict=True)])
    )
    return {
        "stages": stages,
        "window_acc": diagnosis.window_accuracy(p, g, wins, nc, ig).tolist(),
        "window_swaps": diagnosis.window_swaps(p, g, wins, nc, ig).tolist(),
        "class_splits": diagnosis.class_splits(p, g, nc, ig).tolist(),
        "track_survival": survival,
        "refine_changed": changed,
    }


def summarise(runs: list[dict]) -> dict:
    keys = {
        (p, m)
        for r in runs
        for p in r
        if p not in ("diag", "seconds") and "/" not in p
        for m in r[p]
    }
    out = {}
    for p, m in sorted(keys):
        vals = np.array([r[p][m] for r in runs if p in r], dtype=float) * 100
        out[f"{p}/{m}"] = (float(np.nanmean(vals)), float(np.nanstd(vals)), len(vals))
    return out


def report(paths: list[Path]) -> str:
    """A markdown table (mean ± std over seeds, percent) of every (method, variant, clip)."""
    rows = {}
    for path in paths:
        for key, entry in json.loads(path.read_text()).items():
            method, variant, clip = key.split("|")
            rows.setdefault((method, variant), {})[clip] = entry["summary"]
    cols = [("hungarian/miou", "mIoU-H"), ("hungarian/mvc8", "mVC8-H"),
            ("first-frame/miou", "mIoU-FF"), ("first-frame/mvc8", "mVC8-FF")]  # fmt: skip
    head = "| method | variant | clip | " + " | ".join(h for _, h in cols) + " | seeds |"
    lines = [head, "|---|---|---|" + "---:|" * (len(cols) + 1)]
    for (method, variant), clips in rows.items():
        for clip in CLIPS:
            if clip not in clips:
                continue
            summ = clips[clip]
            cells = [f"{summ[k][0]:.1f} ± {summ[k][1]:.1f}" if k in summ else "–" for k, _ in cols]
            n = max(v[2] for v in summ.values())
            lines.append(f"| {method} | {variant} | {clip} | " + " | ".join(cells) + f" | {n} |")
    return "\n".join(lines)


def figure(paths: list[Path], out: Path) -> list[Path]:
    """Bars of pixel accuracy under the three mappings per clip and variant (seed 0's diagnosis),
    saved through :func:`zsvss_nb.notebook.viz.export.save_figure`."""
    from matplotlib.figure import Figure

    from zsvss_nb.notebook.viz.export import save_figure

    bars = []
    for path in paths:
        for key, entry in json.loads(path.read_text()).items():
            diag = entry["runs"][0].get("diag")
            if diag:
                _, variant, clip = key.split("|")
                bars.append((f"{clip}\n{variant}", diag["stages"]["final"]["acc"]))
    fig = Figure(figsize=(1.2 + 0.9 * len(bars), 3.0), layout="constrained")
    ax = fig.add_subplot()
    names = {"majority": "majority per frame", "majority-video": "majority per video",
             "hungarian": "Hungarian per video"}  # fmt: skip
    for j, (proto, label) in enumerate(names.items()):
        xs = [i + (j - 1) * 0.27 for i in range(len(bars))]
        ax.bar(xs, [100 * acc[proto] for _, acc in bars], 0.27, label=label)
    ax.set_xticks(range(len(bars)))
    ax.set_xticklabels([b[0] for b in bars], fontsize="small")
    ax.set_ylabel("pixel accuracy (%)")
    ax.set_ylim(0, 100)
    fig.legend(frameon=False, fontsize="small", ncol=3, loc="outside upper center")
    ax.set_xlabel("drift = per frame - per video; splits = per video - Hungarian", fontsize="small")
    return save_figure(
        fig, out, config=SegmentConfig.dinov2().to_dict(), model={"name": "dinov2-s"}
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variant", action="append", default=None, help="name:field=value,...")
    ap.add_argument("--method", default="vidseg")
    ap.add_argument("--clips", nargs="+", default=list(CLIPS))
    ap.add_argument("--ff-clips", nargs="*", default=None, help="first-frame runs (default all)")
    ap.add_argument("--diagnose", action="store_true")
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--report", type=Path, nargs="*", help="only print the table of these JSONs")
    ap.add_argument("--figure", type=Path, default=None, help="with --report: save a figure")
    args = ap.parse_args()
    if args.report is not None and args.figure is not None:
        print(figure([args.json, *args.report], args.figure))
    if args.report is not None:
        print(report([args.json, *args.report]))
        return
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    backbone = load_backbone("dinov2-s")
    variants = [parse_variant(v) for v in (args.variant or ["base"])]
    results = json.loads(args.json.read_text()) if args.json.exists() else {}
    for name, sets in variants:
        for clip in args.clips:
            cfg = SegmentConfig.dinov2().replace(k=CLIPS[clip][2])
            for key, value in sets:
                cfg = cfg.override(key, value)
            runs = []
            for seed in args.seeds:
                tic = time.perf_counter()
                c = cfg.replace(context=cfg.context.replace(seed=seed))
                r = run_clip(backbone, c, args.method, clip, False, args.diagnose and seed == 0)
                ff = args.ff_clips is None or clip in args.ff_clips
                if ff and get_method(args.method).labels != "clusters":
                    r.update(run_clip(backbone, c, args.method, clip, True, False))
                r["seconds"] = time.perf_counter() - tic
                runs.append(r)
            summary = summarise(runs)
            results[f"{args.method}|{name}|{clip}"] = {
                "runs": runs,
                "summary": summary,
                "sets": sets,
                "seeds": args.seeds,
            }
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=1))
            line = "  ".join(
                f"{k} {m:.1f}±{s:.1f}"
                for k, (m, s, _) in summary.items()
                if k.endswith(("miou", "mvc8"))
            )
            print(f"{args.method} {name} {clip}: {line}", flush=True)


if __name__ == "__main__":
    main()
