"""Make the README gallery: small PNGs of what the notebooks show, from dinov2-s on the samples.

Run from the repository root (CPU is fine: 61-88 s on 2 shared EPYC cores):

    python docs/gallery/make_gallery.py

Every figure goes through ``zsvss_nb.viz.save_figure`` (provenance in the PNG metadata: the
model with its weights' sha256, the config as run, the clip and frame indices, the commit), at
a low dpi so each file stays small. The workload is the notebooks' CPU cap
(``zsvss_nb.notebook.check_model``): 448 px frames, the first frames of each clip.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from zsvss_nb import viz
from zsvss_nb.context import SceneContext
from zsvss_nb.datasets import open_dataset
from zsvss_nb.features import extract
from zsvss_nb.notebook import check_model, model_label
from zsvss_nb.refine import refine
from zsvss_nb.runner import segment_dataset
from zsvss_nb.upsample import upsample
from zsvss_nb.video import take_frames

ROOT = Path(__file__).resolve().parents[2]
CAMVID = ROOT / "data" / "camvid"
CLIP = "0016E5_15Hz"
DPI = 60  # small files for the README; the notebooks export at 300 dpi


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--frames", type=int, default=8, help="frames of the CamVid clip")
    parser.add_argument("--k", type=int, default=12, help="k-means clusters (paper: 20)")
    args = parser.parse_args()

    run = check_model("dinov2-s")
    backbone = run.load()
    label = model_label(backbone)
    source = CAMVID / CLIP / "images"
    clip = take_frames(source, run.frames(args.frames))
    window = clip.read(range(len(clip)))
    cfg = run.config(clip, window=len(clip), k=args.k)
    shown = {"clip": str(source.relative_to(ROOT)), "frames": list(range(len(clip)))}
    models = {label: (backbone, cfg)}

    def save(fig, name: str, dpi: float = DPI, **where) -> None:
        (path,) = viz.save_figure(
            fig, args.out / name, models=models, formats=("png",), dpi=dpi, **(shown | where)
        )
        print(f"{path.relative_to(ROOT)}: {path.stat().st_size // 1024} KB")

    feats = extract(backbone, window, cfg, keep_cache=False)
    size = tuple(window.shape[-2:])
    save(viz.show_feature_pca(feats.features[:4], size=size), "features_pca", frames=[0, 1, 2, 3])

    y, x = viz.relative_cell((0.6, 0.5), feats.grid_hw)  # a query on the road in frame 0
    sims = viz.cosine_similarity_map(feats.features, 0, y, x)[:4]
    save(viz.show_similarity(sims, window[:4], (0, y, x)), "similarity", frames=[0, 1, 2, 3])

    context = SceneContext(cfg.context)
    context.initialise(feats.features)
    coarse = context.predict(feats.features)
    refined = refine(coarse, feats.refine_features, cfg.refine)
    rows = {"coarse (KNN)": coarse, "refined": refined}
    title = f"CamVid {CLIP}, {label}: K = {args.k}, cluster ids, before and after refinement"
    save(viz.show_label_rows(window, rows, title=title, max_cols=4), "coarse_vs_refined")

    frame = len(clip) // 2
    labels = {
        method: upsample(backbone, feats, refined, cfg.replace(method=method)).labels[frame]
        for method in ("nearest", "bilinear", "bilateral")
    }
    compare = viz.show_label_maps(window[frame], list(labels.values()), titles=list(labels))
    compare.suptitle(f"CamVid {CLIP} frame {frame}, {label}: feature-grid labels upsampled")
    save(compare, "upsamplers", dpi=2 * DPI, frames=[frame])

    camvid = open_dataset("camvid", CAMVID)
    (video,) = segment_dataset(backbone, cfg, camvid, len(clip), videos=[CLIP])
    names = {**dict(enumerate(camvid.class_names)), camvid.ignore_index: "void"}
    strip = viz.qualitative_strip(
        video.frames,
        video.gts,
        video.preds,
        class_names=names,
        colours=viz.dataset_palette(camvid),
        title=f"CamVid {CLIP}, {label}, first-frame protocol (K = {args.k})",
        max_cols=4,
    )
    save(strip, "qualitative_camvid", clip={"dataset": "camvid", "video": CLIP})


if __name__ == "__main__":
    main()
