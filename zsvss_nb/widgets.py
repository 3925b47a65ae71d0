"""ipywidgets explorers for the notebooks, built only from zsvss_nb calls.

Each explorer is an :class:`Explorer`: a VBox of controls above one figure. Building it draws the
figure once, so a notebook run without a live frontend (nbval, nbconvert) still holds the
picture: the Output widget keeps it as a PNG and the explorer's own display bundle carries the
same PNG for renderers without widget support. Moving a control redraws through the same viz
function the static cells use, so ``explorer.save(...)`` exports exactly what is shown. Expensive
results (feature passes, modulation runs, segmentations) are cached per control value inside
each explorer, never globally.
"""

from __future__ import annotations

import base64
import dataclasses
import io
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import torch
from matplotlib.figure import Figure

from . import viz
from .config import SegmentConfig
from .errors import ConfigError, InputError, ZsvssError
from .features import FeatureResult, extract, normalise_tokens
from .video import take_frames

__all__ = [
    "Explorer",
    "block_explorer",
    "context_explorer",
    "dinov2_explorer",
    "feature_explorer",
    "kmeans_explorer",
    "lambda_explorer",
    "similarity_explorer",
    "take_frames",
]


def _png(fig: Figure, dpi: float = 100) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


class Explorer(widgets.VBox):
    """Controls (name -> value widget) above an Output holding the figure ``draw(**values)``.

    ``figure`` is the last figure drawn; :meth:`save` exports it with provenance. A bad control
    value (a typed zsvss error, e.g. K above the number of tokens) shows its message in place
    of the figure instead of raising inside the widget callback.
    """

    def __init__(
        self, controls: Mapping[str, widgets.ValueWidget], draw: Callable[..., Figure]
    ) -> None:
        output = widgets.Output()
        row = widgets.HBox(list(controls.values()), layout=widgets.Layout(flex_flow="row wrap"))
        super().__init__([row, output])
        self.controls = dict(controls)
        self.output = output
        self.figure: Figure | None = None
        self._draw = draw
        self._png: bytes | None = None
        self.refresh()
        for control in self.controls.values():
            control.observe(self._changed, names="value")

    @property
    def values(self) -> dict[str, Any]:
        """The current value of every control."""
        return {name: c.value for name, c in self.controls.items()}

    def refresh(self) -> Figure:
        """Draw the figure for the current values and show it (errors propagate)."""
        fig = self._draw(**self.values)
        self.figure, self._png = fig, _png(fig)
        data = {"image/png": base64.b64encode(self._png).decode("ascii"), "text/plain": repr(fig)}
        self.output.outputs = ({"output_type": "display_data", "data": data, "metadata": {}},)
        return fig

    def _changed(self, _change: Any) -> None:
        try:
            self.refresh()
        except ZsvssError as err:
            self.output.outputs = ({"output_type": "stream", "name": "stderr", "text": str(err)},)

    def save(
        self,
        path_stem: str | Path,
        config: Any = None,
        model: Any = None,
        formats: Sequence[str] = ("pdf", "png"),
    ) -> list[Path]:
        """Export the figure shown now through :func:`zsvss_nb.viz.save_figure`."""
        if self.figure is None:
            raise InputError("the explorer has no figure to save")
        return viz.save_figure(self.figure, path_stem, config=config, model=model, formats=formats)

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        data = super()._repr_mimebundle_(**kwargs)
        if self._png is not None:  # for renderers without widgets (static HTML, GitHub)
            data["image/png"] = base64.b64encode(self._png).decode("ascii")
        return data


# -------------------------------------------------------------------------- controls


def _slider(name: str, lo: int, hi: int, value: int) -> widgets.IntSlider:
    return widgets.IntSlider(value=value, min=lo, max=hi, description=name, continuous_update=False)


def _fslider(name: str, value: float) -> widgets.FloatSlider:
    return widgets.FloatSlider(
        value=value, min=0.0, max=1.0, step=0.05, description=name, continuous_update=False
    )


def _choice(name: str, options: Sequence[Any], value: Any) -> widgets.Dropdown:
    opts = list(options)
    if not opts:
        raise ConfigError(f"{name}: no options to choose from")
    return widgets.Dropdown(
        options=opts, value=value if value in opts else opts[0], description=name
    )


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
    feats: FeatureResult | torch.Tensor, frames: Any = None, ncols: int = 4
) -> Explorer:
    """Sliders frame, y, x (feature cells) -> cosine similarity of that token to all frames.

    ``feats``: a FeatureResult (its aggregated features and processed frames) or [B, h, w, C];
    ``frames`` overrides the images the maps are drawn over.
    """
    f = _features_of(feats)
    images = _frames_of(feats, frames)
    b, h, w, _ = f.shape

    def draw(frame: int, y: int, x: int) -> Figure:
        sims = viz.cosine_similarity_map(f, frame, y, x)
        return viz.show_similarity(sims, images, (frame, y, x), ncols=ncols)

    controls = {
        "frame": _slider("frame", 0, b - 1, 0),
        "y": _slider("y", 0, h - 1, h // 2),
        "x": _slider("x", 0, w - 1, w // 2),
    }
    return Explorer(controls, draw)


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
    fy, fx pick the query (relative position, so it survives a change of grid).
    """
    names = list(options)
    cache: dict[tuple[Any, ...], FeatureResult] = {}
    label = name or str(getattr(backbone, "name", "features"))

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
        controls["block"] = _choice("block", blocks, default)
    for n in names:
        controls[n] = _choice(n, options[n], _cfg_value(cfg, n))
    controls["frame"] = _slider("frame", 0, batch - 1, 0)
    controls["fy"] = _fslider("y (0-1)", 0.5)
    controls["fx"] = _fslider("x (0-1)", 0.5)
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
    return feature_explorer(backbone, window, cfg, options, frames=frames, name="DINOv2")


def kmeans_explorer(
    feats: FeatureResult | torch.Tensor,
    frames: Any = None,
    ks: Sequence[int] = tuple(range(2, 13)),
    k: int = 5,
    scope: str = "frame1",
    n_init: int = 2,
    seed: int = 0,
) -> Explorer:
    """K slider -> k-means clusters of frame 1 (``scope="frame1"``) or of the whole window.

    The same torch k-means as the scene context model (METHOD 1.4), cached per K.
    """
    from .context import kmeans

    if scope not in ("frame1", "window"):
        raise ConfigError(f"scope={scope!r}: use 'frame1' or 'window'")
    f = _features_of(feats)
    images = _frames_of(feats, frames)
    b, h, w, c = f.shape
    tokens = f[:1] if scope == "frame1" else f
    cache: dict[int, torch.Tensor] = {}

    def draw(k: int) -> Figure:
        if k not in cache:
            cache[k] = kmeans(tokens.reshape(-1, c), k, n_init=n_init, seed=seed)[1]
        maps = cache[k].view(tokens.shape[0], h, w)
        shown = None if images is None else images[: tokens.shape[0]]
        titles = [f"K={k}, frame {i}" for i in range(tokens.shape[0])]
        if tokens.shape[0] > 1:
            return viz.show_label_maps(shown, maps, titles=titles)
        fig = Figure(figsize=(6.0, 4.0), layout="constrained")  # one frame: show it large
        return viz.show_label_maps(shown, maps, titles=titles, ax=fig.add_subplot())

    ks = sorted(ks)
    return Explorer(
        {
            "k": widgets.SelectionSlider(
                options=ks, value=k if k in ks else ks[0], description="K", continuous_update=False
            )
        },
        draw,
    )


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
    """
    from .upsample import modulate

    cache: dict[float, Any] = {float(k): v for k, v in (precomputed or {}).items()}
    images = feats.images if frames is None else frames

    def draw(lam: float, frame: int) -> Figure:
        if lam not in cache:
            cache[lam] = modulate(backbone, feats, coarse, cfg.replace(lam=float(lam)))
        up = cache[lam]
        fig = Figure(figsize=(10.0, 6.0), layout="constrained")
        top, bottom = fig.subplots(2, 1, height_ratios=(1.0, 1.2))
        ids = [int(i) for i in up.classes]
        viz.show_difference_maps(up.diff[:, frame], ids, class_names, ncols=len(ids), ax=top)
        pair = [up.raw_labels[frame], up.labels[frame]]
        viz.show_label_maps(
            images[frame],
            pair,
            titles=["raw argmax D", "filtered"],
            class_names=class_names,
            ax=bottom,
        )
        fig.suptitle(f"lambda = {lam:g}, frame {frame}")
        return fig

    lams = sorted(float(v) for v in lams)
    default = cfg.upsample.lam if cfg.upsample.lam in lams else lams[0]
    controls = {
        "lam": widgets.SelectionSlider(
            options=lams, value=default, description="lambda", continuous_update=False
        ),
        "frame": _slider("frame", 0, int(coarse.shape[0]) - 1, frame),
    }
    return Explorer(controls, draw)


def context_explorer(
    backbone: Any,
    video: Any,
    cfg: SegmentConfig,
    modes: Sequence[str] = ("last", "bank"),
    first_frame_gt: Any = None,
    class_names: Mapping[int, str] | None = None,
) -> Explorer:
    """Memory mode of the scene context (``last``: refit on the previous window, the paper;
    ``bank``: keep the most recent tokens of all windows) -> coarse and refined maps over time.

    Runs the Segmenter with bilinear upsampling (only the coarse maps are shown), cached per
    mode; the title gives each row's flicker (:func:`zsvss_nb.evaluate.flicker_rate`).
    """
    from .evaluate import flicker_rate
    from .pipeline import Segmenter

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
            torch.stack([r.frame for r in res]), rows, class_names=class_names
        )
        flick = ", ".join(f"{k} {flicker_rate(v):.3f}" for k, v in rows.items())
        fig.suptitle(f"memory={memory!r}, window={cfg.window}: flicker {flick}")
        return fig

    return Explorer({"memory": _choice("memory", modes, cfg.context.memory)}, draw)


# -------------------------------------------------------------------------- helpers
