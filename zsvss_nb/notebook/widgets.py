"""ipywidgets explorers for the notebooks, built only from zsvss_nb calls.

Each explorer is an :class:`~zsvss_nb.notebook.explorer.Explorer`: a VBox of controls above one
figure. Building it draws the figure once, so a notebook run without a live frontend (nbval,
nbconvert) still holds the picture: the Output widget keeps it as a PNG, the explorer's display
bundle carries the same PNG for renderers without widget support, and displaying an explorer adds a
static copy (an HTML image) that JupyterLab hides once the live widget renders, so a static HTML
export, which cannot run widgets, still shows every explorer. Moving a control redraws through the
same viz function the static cells use, so ``explorer.save(...)`` exports exactly what is shown.
Expensive results (feature passes, modulation runs, segmentations, tracks) are cached per control
value inside each explorer, never globally.

Controls take typed values: integers and fractions are IntSlider / FloatSlider (their readout
accepts a typed number), fixed choices are Dropdowns. Query points are given the same way in
every explorer: a frame and a relative position (y, x) in [0, 1] (:func:`viz.relative_cell`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import ipywidgets as widgets
import torch
from matplotlib.figure import Figure

from ..backbones.base import FeatureResult
from ..config import SegmentConfig
from ..errors import ConfigError, InputError
from ..features import extract
from ..kernels.ops import normalise_tokens
from . import viz
from .explorer import Explorer, choice, fraction_slider, query_controls, slider
from .session import model_label

__all__ = [
    "block_explorer",
    "context_explorer",
    "dinov2_explorer",
    "feature_explorer",
    "kmeans_explorer",
    "lambda_explorer",
    "refine_explorer",
    "similarity_explorer",
]


def _cfg_value(cfg: SegmentConfig, name: str) -> Any:
    """The value of a (top-level or stage) config field, as ``cfg.replace`` routes the name."""
    if hasattr(cfg, name):
        return getattr(cfg, name)
    for f in dataclasses.fields(cfg):
        stage = getattr(cfg, f.name)
        if dataclasses.is_dataclass(stage) and hasattr(stage, name):
            return getattr(stage, name)
    raise ConfigError(f"no config field is called {name!r}")


def _features_of(feats: FeatureResult | torch.Tensor) -> torch.Tensor:
    f = feats.features if isinstance(feats, FeatureResult) else feats
    if not isinstance(f, torch.Tensor) or f.ndim != 4:
        raise InputError("feats must be a FeatureResult or a [B, h, w, C] tensor")
    return f


def _frames_of(feats: FeatureResult | torch.Tensor, frames: Any) -> Any:
    if frames is not None:
        return frames
    return feats.images if isinstance(feats, FeatureResult) else None


# -------------------------------------------------------------------------- explorers


def similarity_explorer(
    feats: FeatureResult | torch.Tensor,
    frames: Any = None,
    ncols: int = 4,
    point: tuple[int, float, float] = (0, 0.5, 0.5),
) -> Explorer:
    """Query frame and relative position (y, x in [0, 1]) -> cosine similarity of that token to
    every token of every frame, drawn over the frames.

    ``feats``: a FeatureResult (its aggregated features and processed frames) or [B, h, w, C];
    ``frames`` overrides the images the maps are drawn over (e.g. the original frames).
    """
    f = _features_of(feats)
    images = _frames_of(feats, frames)
    b, h, w, _ = f.shape

    def draw(frame: int, fy: float, fx: float) -> Figure:
        y, x = viz.relative_cell((fy, fx), (h, w))
        sims = viz.cosine_similarity_map(f, frame, y, x)
        fig = viz.show_similarity(sims, images, (frame, y, x), ncols=ncols)
        fig.suptitle(f"similarity to frame {frame}, cell (y={y}, x={x}) of {h}x{w}")
        return fig

    return Explorer(query_controls(b, point), draw)


def feature_explorer(
    backbone: Any,
    window: Any,
    cfg: SegmentConfig,
    options: Mapping[str, Sequence[Any]],
    blocks: Sequence[int] | None = None,
    frames: Any = None,
    name: str | None = None,
) -> Explorer:
    """Dropdowns over config fields -> PCA images and similarity maps of re-extracted features.

    ``options`` maps a config field (any name ``cfg.replace`` accepts, e.g. ``start_step``,
    ``dinov2_layer``, ``normalisation``) to the values offered; each combination is extracted
    once and cached. ``blocks`` adds a decoder-block dropdown (diffusion backbones) showing that
    block's q, normalised as ``cfg`` says, instead of the aggregated features. Sliders frame,
    y, x pick the query (relative position, so it survives a change of grid). ``name`` labels
    the rows (default: :func:`zsvss_nb.notebook.session.model_label` of the backbone).
    """
    names = list(options)
    cache: dict[tuple[Any, ...], FeatureResult] = {}
    label = name or (model_label(backbone) if hasattr(backbone, "identity") else "features")

    def result(values: tuple[Any, ...]) -> FeatureResult:
        if values not in cache:
            run_cfg = cfg.replace(**dict(zip(names, values, strict=True)))
            cache[values] = extract(
                backbone, window, run_cfg, extra_blocks=blocks or (), keep_cache=False
            )
        return cache[values]

    def draw(frame: int, fy: float, fx: float, block: int | None = None, **chosen: Any) -> Figure:
        res = result(tuple(chosen[n] for n in names))
        feats = res.features
        title = label + "".join(f", {n}={chosen[n]}" for n in names)
        if block is not None:
            feats = normalise_tokens(res.block_features[block], cfg.features.normalisation)
            title += f", block {block} ({feats.shape[1]}x{feats.shape[2]})"
        schedule = getattr(res, "schedule", None)  # diffusion passes only
        if "start_step" in chosen and schedule is not None:
            title += f", DDPM t={int(schedule.timesteps[chosen['start_step']])}"
        images = frames if frames is not None else res.images
        fig = viz.show_feature_views({label: feats}, images, (frame, fy, fx))
        fig.suptitle(title)
        return fig

    batch = int(getattr(window, "frames", window).shape[0])
    controls: dict[str, widgets.ValueWidget] = {}
    if blocks:
        default = cfg.features.refine_block if cfg.features.refine_block in blocks else blocks[0]
        controls["block"] = choice("block", blocks, default)
    for n in names:
        controls[n] = choice(n, options[n], _cfg_value(cfg, n))
    controls |= query_controls(batch, (0, 0.5, 0.5))
    return Explorer(controls, draw)


def block_explorer(
    backbone: Any,
    window: Any,
    cfg: SegmentConfig,
    blocks: Sequence[int] = tuple(range(3, 12)),
    start_steps: Sequence[int] | None = None,
    frames: Any = None,
) -> Explorer:
    """Decoder block (3..11) and noise level t* (``start_step``) -> PCA and similarity maps.

    ``start_steps`` defaults to a few steps up to ``cfg``'s feature step, including ``cfg``'s
    own; each is one extraction (all blocks at once), cached.
    """
    fcfg = cfg.features
    if start_steps is None:
        cands = {fcfg.start_step, fcfg.feature_step, *range(0, fcfg.feature_step, 5)}
        start_steps = sorted(s for s in cands if 0 <= s <= fcfg.feature_step)
    return feature_explorer(
        backbone, window, cfg, {"start_step": list(start_steps)}, blocks=list(blocks), frames=frames
    )


def dinov2_explorer(
    backbone: Any,
    window: Any,
    cfg: SegmentConfig,
    layers: Sequence[int] = (-1, 2, 5, 8, 11),
    normalisations: Sequence[str] = ("linf", "l2", "none"),
    frames: Any = None,
) -> Explorer:
    """ViT layer (``dinov2_layer``, -1 = last, after the final layernorm) and token
    normalisation -> PCA and similarity maps of the comparison backbone's features."""
    options = {"dinov2_layer": list(layers), "normalisation": list(normalisations)}
    return feature_explorer(backbone, window, cfg, options, frames=frames)


def kmeans_explorer(
    feats: FeatureResult | torch.Tensor,
    frames: Any = None,
    ks: Sequence[int] = tuple(range(2, 13)),
    k: int | None = None,
    cfg: SegmentConfig | None = None,
) -> Explorer:
    """K slider -> frame 1's labels exactly as the pipeline's first window gives them.

    Runs :meth:`zsvss_nb.context.SceneContext.initialise` (METHOD 1.4) with ``cfg``'s context
    settings and K from the slider: the same k-means scope (the window's tokens, or frame 1's),
    restarts (``n_init``), tolerance and seed, ids renumbered by first appearance in frame 1.
    The title says which clustering it is. One run per K, cached; the slider spans ``ks``.
    """
    from ..context import SceneContext

    f = _features_of(feats)
    images = _frames_of(feats, frames)
    _, h, w, _ = f.shape
    ctx = (cfg or SegmentConfig()).context
    cache: dict[int, torch.Tensor] = {}

    def draw(k: int) -> Figure:
        if k not in cache:
            cache[k] = SceneContext(ctx.replace(k=k)).initialise(f)
        shown = None if images is None else images[0]
        fig = Figure(figsize=(6.0, 6.0 * h / w + 1.2), layout="constrained")
        viz.show_label_maps(
            shown, [cache[k]], titles=[f"frame 1, {h}x{w} cells"], ax=fig.add_subplot()
        )
        scope = "all tokens of the window" if ctx.kmeans_scope == "window" else "frame 1's tokens"
        fig.suptitle(
            f"K = {k}: k-means on {scope} (n_init {ctx.n_init}, seed {ctx.seed}), as the pipeline"
        )
        return fig

    lo, hi = min(ks), max(ks)
    value = ctx.k if k is None else k
    return Explorer({"k": slider("K", lo, hi, min(max(value, lo), hi))}, draw)


def lambda_explorer(
    backbone: Any,
    feats: FeatureResult,
    coarse: torch.Tensor,
    cfg: SegmentConfig,
    frame: int = 0,
    lams: Sequence[float] = (5.0, 10.0, 20.0, 50.0, 100.0),
    frames: Any = None,
    class_names: Mapping[int, str] | None = None,
    precomputed: Mapping[float, Any] | None = None,
) -> Explorer:
    """Lambda -> masked modulation (METHOD 1.7) of one window: per-class difference maps of a
    frame, and its raw (argmax of D) and filtered labels. One modulation run per lambda, cached.

    ``feats`` must carry the injection caches (``extract(..., keep_cache=True)``); ``coarse``:
    the refined coarse labels [B, h, w]. ``precomputed`` (lambda -> UpsampleResult of this
    window, e.g. the run already shown) seeds the cache so that lambda is not run again.
    Lambda is a dropdown of ``lams`` (each value is a modulation run).
    """
    from ..upsample import modulate

    cache: dict[float, Any] = {float(k): v for k, v in (precomputed or {}).items()}
    images = feats.images if frames is None else frames

    def draw(lam: float, frame: int) -> Figure:
        if lam not in cache:
            cache[lam] = modulate(backbone, feats, coarse, cfg.replace(lam=float(lam)))
        up = cache[lam]
        image = images[frame]
        size = (int(image.shape[-2]), int(image.shape[-1]))
        ids = [int(i) for i in up.classes]
        ncols = min(len(ids), 5)
        fig = Figure(figsize=(10.0, 7.0), layout="constrained")
        top, bottom = fig.subplots(2, 1, height_ratios=(-(-len(ids) // ncols), 1.2))
        viz.show_difference_maps(
            up.diff[:, frame], ids, class_names, ncols=ncols, ax=top, size=size
        )
        pair = [up.raw_labels[frame], up.labels[frame]]
        viz.show_label_maps(
            image, pair, titles=["raw argmax D", "filtered"], class_names=class_names, ax=bottom
        )
        fig.suptitle(f"lambda = {lam:g}, frame {frame}")
        return fig

    lams = sorted(float(v) for v in lams)
    default = cfg.upsample.lam if cfg.upsample.lam in lams else lams[0]
    controls = {
        "lam": choice("lambda", lams, default),
        "frame": slider("frame", 0, int(coarse.shape[0]) - 1, frame),
    }
    return Explorer(controls, draw)


def refine_explorer(
    feats: FeatureResult,
    coarse: torch.Tensor,
    cfg: SegmentConfig,
    frames: Any = None,
    hops: Sequence[int] = range(0, 5),
    query: tuple[float, float] = (0.5, 0.5),
    max_tracks: int = 64,
    shown: int = 4,
) -> Explorer:
    """Hop threshold (METHOD 1.6 step 2) and a query track -> surviving tracks and refined labels.

    Top row: the surviving tracks (at most ``max_tracks``) on ``shown`` frames spread over the
    window, with the query track (seeded at the frame-1 cell under the relative point y, x)
    drawn white, dashed when the filter drops it. Bottom row: the labels refined with that
    threshold. The title gives how many tracks survive and the flicker before and after.
    One tracking and refinement per threshold, cached.
    """
    from ..evaluation.evaluate import flicker_rate
    from ..refine import refine, track

    f = feats.refine_features
    images = feats.images if frames is None else frames
    b = int(f.shape[0])
    h, w = feats.grid_hw
    cache: dict[int, tuple[Any, torch.Tensor]] = {}

    def draw(hop: int, fy: float, fx: float) -> Figure:
        if hop not in cache:
            rcfg = cfg.refine.replace(hop_threshold=int(hop))
            cache[hop] = (track(f, rcfg), refine(coarse, f, rcfg))
        tracks, refined = cache[hop]
        y, x = viz.relative_cell((fy, fx), (h, w))
        q = y * w + x
        cols = viz.spread_indices(b, shown)
        fig = Figure(figsize=(2.6 * len(cols), 2 * (2.6 * h / w + 0.4) + 1.0), layout="constrained")
        top, bottom = fig.subplots(2, 1)
        viz.plot_tracks(
            images,
            tracks.positions,
            tracks.valid,
            (h, w),
            max_tracks,
            ncols=len(cols),
            ax=top,
            highlight=q,
            shown=cols,
        )
        viz.show_label_maps(
            [images[t] for t in cols],
            refined[cols],
            titles=[f"refined, frame {t}" for t in cols],
            ncols=len(cols),
            ax=bottom,
        )
        kept = int(tracks.valid.sum())
        fate = "kept" if bool(tracks.valid[q]) else "dropped"
        fig.suptitle(
            f"hop threshold {hop} cell(s): {kept} of {h * w} tracks survive; query track at cell "
            f"(y={y}, x={x}) {fate}\nflicker {flicker_rate(coarse):.3f} (coarse) -> "
            f"{flicker_rate(refined):.3f} (refined)"
        )
        return fig

    hops = sorted(int(v) for v in hops)
    value = min(max(cfg.refine.hop_threshold, hops[0]), hops[-1])
    controls = {
        "hop": slider("hop", hops[0], hops[-1], value),
        "fy": fraction_slider("y (0-1)", float(query[0])),
        "fx": fraction_slider("x (0-1)", float(query[1])),
    }
    return Explorer(controls, draw)


def context_explorer(
    backbone: Any,
    video: Any,
    cfg: SegmentConfig,
    modes: Sequence[str] = ("last", "bank"),
    first_frame_gt: Any = None,
    class_names: Mapping[int, str] | None = None,
    colours: viz.colors.PaletteLike = None,
) -> Explorer:
    """Memory mode of the scene context (``last``: refit on the previous window, the paper;
    ``bank``: keep the most recent tokens of all windows) -> coarse and refined maps over time.

    Runs the Segmenter with bilinear upsampling (only the coarse maps are shown), cached per
    mode; the title gives each row's flicker (:func:`zsvss_nb.evaluation.evaluate.flicker_rate`).
    """
    from ..evaluation.evaluate import flicker_rate
    from ..pipeline import Segmenter

    cache: dict[str, list[Any]] = {}

    def draw(memory: str) -> Figure:
        if memory not in cache:
            seg = Segmenter(backbone, cfg.replace(memory=memory, method="bilinear"))
            cache[memory] = list(
                seg.segment(video, first_frame_gt, return_debug=True, progress=False)
            )
        res = cache[memory]
        rows = {"coarse (KNN)": [r.coarse for r in res], "refined": [r.refined for r in res]}
        fig = viz.show_label_rows(
            torch.stack([r.frame for r in res]),
            rows,
            class_names=class_names,
            indices=[r.index for r in res],
            colours=colours,
        )
        flick = ", ".join(f"{k} {flicker_rate(v):.3f}" for k, v in rows.items())
        fig.suptitle(f"memory={memory!r}, window={cfg.window}: flicker {flick}")
        return fig

    return Explorer({"memory": choice("memory", modes, cfg.context.memory)}, draw)
