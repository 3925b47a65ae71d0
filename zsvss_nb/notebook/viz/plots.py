"""Matplotlib plot helpers: frames, label maps, similarity and difference maps, IoU bars, strips.

Plot helpers take ``ax=`` (one Axes, or for grids an Axes whose area is split, or an array of
Axes) and return the Figure. Without ``ax`` they build a pyplot-free ``matplotlib.figure.Figure``,
so nothing accumulates in pyplot's global figure list and a notebook shows the returned figure
once. Such a Figure needs no backend: ``savefig`` and a notebook's display pick their own
canvas, so nothing here chooses or switches the matplotlib backend.

Maps computed on another grid than the frame (feature cells, the processed size) are drawn
over the frame's own extent, so every panel has the frame's aspect ratio. Label colours come
from :func:`~zsvss_nb.notebook.viz.colors.resolve_palette` (cluster colours unless a dataset palette
is given), and legends sit below the panels (:func:`~zsvss_nb.notebook.viz.layout.class_legend`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from ...errors import InputError
from .colors import (
    ArrayLike,
    ClassNames,
    PaletteLike,
    frames_list,
    labels_np,
    overlay,
    resolve_palette,
)
from .layout import (
    MAX_COLUMNS,
    class_legend,
    clean_axes,
    frame_extent,
    grid_axes,
    hide_unused,
    single_axes,
    spread_indices,
)


def _array(x: torch.Tensor | np.ndarray, dtype: type | None = None) -> np.ndarray:
    return np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=dtype)


def show_frames(
    frames: ArrayLike | Sequence[ArrayLike],
    titles: Sequence[str] | None = None,
    ncols: int = 4,
    ax: Axes | Sequence[Axes] | None = None,
    size: tuple[int, int] | None = None,
) -> Figure:
    """Frames in a grid of ``ncols`` columns; ``frames [B, 3, H, W]``, ``[B, H, W, 3]`` or list.

    ``size = (H, W)`` draws every image over that extent (e.g. feature-grid images at the
    original frame's aspect ratio).
    """
    imgs = frames_list(frames)
    if titles is not None and len(titles) != len(imgs):
        raise InputError(f"titles has {len(titles)} entries for {len(imgs)} frames")
    ncols = max(1, min(ncols, len(imgs)))
    nrows = -(-len(imgs) // ncols)
    fig, axes = grid_axes(ax, nrows, ncols)
    extent = None if size is None else frame_extent(size)
    for i, (a, img) in enumerate(zip(axes.reshape(-1), imgs, strict=False)):
        a.imshow(img, extent=extent, interpolation="nearest" if extent else None)
        a.set_title(titles[i] if titles is not None else f"frame {i}")
        clean_axes(a)
    hide_unused(axes, len(imgs))
    return fig


def show_labels(
    labels: ArrayLike,
    frame: ArrayLike | None = None,
    alpha: float = 0.5,
    class_names: ClassNames = None,
    legend: bool = True,
    ax: Axes | None = None,
    colours: PaletteLike = None,
) -> Figure:
    """Label colours ``labels [H, W]``, blended over ``frame`` when one is given, with a legend.

    ``colours``: a palette (:func:`~zsvss_nb.notebook.viz.colors.resolve_palette`; cluster colours
    by default, a dataset's name for its class colours).
    """
    lab = labels_np(labels)
    pal = resolve_palette(colours)
    img = pal[lab] if frame is None else overlay(frame, lab, alpha, pal)
    fig, a = single_axes(ax, (5.0, 3.5))
    a.imshow(img)
    clean_axes(a)
    if legend:
        class_legend(fig, [int(i) for i in np.unique(lab)], pal, class_names)
    return fig


def show_similarity(
    sim_maps: torch.Tensor | np.ndarray,
    frames: ArrayLike | Sequence[ArrayLike] | None,
    point: tuple[int, int, int],
    ncols: int = 4,
    alpha: float = 0.6,
    vmin: float | None = None,
    vmax: float | None = None,
    ax: Axes | Sequence[Axes] | None = None,
) -> Figure:
    """Similarity maps ``[B, h, w]`` over their frames, query ``point = (frame, y, x)`` marked.

    ``point`` is in feature cells; maps are stretched over each frame (cell centres at
    ``(x + 0.5) * W / w``), so the marker sits on the query token. The colour range is the
    maps' own minimum and maximum unless ``vmin`` / ``vmax`` fix it; the colour bar says so.
    """
    sims = _array(sim_maps, float)
    if sims.ndim != 3:
        raise InputError(f"sim_maps must be [B, h, w], got shape {sims.shape}")
    b, h, w = sims.shape
    imgs = frames_list(frames) if frames is not None else None
    if imgs is not None and len(imgs) != b:
        raise InputError(f"frames has {len(imgs)} images for {b} similarity maps")
    height, width = imgs[0].shape[:2] if imgs is not None else (h, w)
    lo = float(np.nanmin(sims)) if vmin is None else vmin
    hi = float(np.nanmax(sims)) if vmax is None else vmax
    hi = hi if hi > lo else lo + 1e-6
    qf, qy, qx = point
    ncols = max(1, min(ncols, b))
    fig, axes = grid_axes(ax, -(-b // ncols), ncols)
    mappable = None
    for i, a in enumerate(axes.reshape(-1)[:b]):
        if imgs is not None:
            a.imshow(imgs[i])
        mappable = a.imshow(
            sims[i],
            cmap="viridis",
            vmin=lo,
            vmax=hi,
            alpha=alpha if imgs is not None else 1.0,
            extent=frame_extent((height, width)),
            interpolation="nearest",
        )
        if i == qf % b:
            a.plot([(qx + 0.5) * width / w], [(qy + 0.5) * height / h], "r+", ms=12, mew=2)
        a.set_title(f"frame {i}")
        clean_axes(a)
    hide_unused(axes, b)
    if mappable is not None:
        fig.colorbar(mappable, ax=list(axes.reshape(-1)), shrink=0.8, label="cosine similarity")
    return fig


def show_difference_maps(
    maps: torch.Tensor | np.ndarray,
    class_ids: Sequence[int],
    class_names: ClassNames = None,
    ncols: int = 4,
    ax: Axes | Sequence[Axes] | None = None,
    size: tuple[int, int] | None = None,
) -> Figure:
    """Difference maps ``maps [K, H', W']`` (METHOD 1.7 D_c), one panel and colour scale per class.

    Each panel's colour bar spans that class's own range and is labelled; ``size = (H, W)``
    draws the maps (computed at the processed size) at the original frame's aspect ratio.
    """
    arr = _array(maps, float)
    if arr.ndim != 3 or arr.shape[0] != len(class_ids):
        raise InputError(f"maps {arr.shape} must be [K, H, W] with K = {len(class_ids)} class ids")
    k = arr.shape[0]
    ncols = max(1, min(ncols, k))
    fig, axes = grid_axes(ax, -(-k // ncols), ncols)
    names = class_names or {}
    extent = frame_extent(size if size is not None else arr.shape[1:])
    for i, a in enumerate(axes.reshape(-1)[:k]):
        im = a.imshow(arr[i], cmap="inferno", extent=extent)
        cid = int(class_ids[i])
        a.set_title(f"{cid} {names.get(cid, '')}".strip())
        fig.colorbar(im, ax=a, shrink=0.7, label="D_c")
        clean_axes(a)
    hide_unused(axes, k)
    return fig


def plot_per_class_iou(
    ious: Mapping[int, float] | Sequence[float] | torch.Tensor | np.ndarray,
    class_names: Mapping[int, str] | Sequence[str] | None = None,
    sort: bool = False,
    ax: Axes | None = None,
    title: str | None = None,
    colours: PaletteLike = None,
    miou: float | None = None,
) -> Figure:
    """Bars of per-class IoU in percent (as the result tables), NaN classes (absent) left out,
    mIoU dashed.

    ``ious`` maps class id to IoU in [0, 1], or is indexed by class id. ``miou`` (in [0, 1])
    is the table's mIoU; without it the mean of the bars. ``title`` should name the run, the
    backbone and the protocol; ``colours`` the class palette (e.g. the dataset's name).
    """
    if isinstance(ious, Mapping):
        items = [(int(k), float(v)) for k, v in ious.items()]
    else:
        items = list(enumerate(_array(ious, float).reshape(-1).tolist()))
    items = [(k, v) for k, v in items if np.isfinite(v)]
    if sort:
        items.sort(key=lambda kv: -kv[1])
    if isinstance(class_names, Mapping) or class_names is None:
        names = dict(class_names or {})
    else:
        names = dict(enumerate(class_names))
    ids = [k for k, _ in items]
    vals = [100.0 * v for _, v in items]
    fig, a = single_axes(ax, (max(3.0, 0.35 * len(ids) + 1.0), 3.0))
    bar_colours = resolve_palette(colours)[ids] / 255.0 if ids else "C0"
    a.bar(range(len(ids)), vals, color=bar_colours, edgecolor="k", linewidth=0.5)
    a.set_xticks(range(len(ids)))
    a.set_xticklabels([names.get(k, str(k)) for k in ids], rotation=60, ha="right")
    a.set_ylim(0.0, 100.0)
    a.set_ylabel("IoU (%)")
    if vals:
        mean = float(np.mean(vals)) if miou is None else 100.0 * miou
        a.axhline(mean, ls="--", c="k", lw=1, label=f"mIoU {mean:.2f}")
        a.legend(frameon=False)
    if title:
        a.set_title(title)
    return fig


def qualitative_strip(
    frames: ArrayLike | Sequence[ArrayLike],
    gts: ArrayLike | Sequence[ArrayLike] | None,
    preds: ArrayLike | Sequence[ArrayLike],
    every: int = 1,
    ax: Axes | Sequence[Axes] | None = None,
    *,
    class_names: Mapping[int, str] | Sequence[str] | None = None,
    colours: PaletteLike = None,
    title: str | None = None,
    indices: Sequence[int] | None = None,
    max_cols: int = MAX_COLUMNS,
    legend: bool = True,
) -> Figure:
    """Rows frame / ground truth / prediction over time, every ``every``-th frame as a column.

    At most ``max_cols`` columns, evenly spread over the clip; titles give the frame indices
    (``indices``: the clip's own frame numbers, default 0, 1, ...). ``gts`` may be None (two
    rows). Label maps are ``[B, H, W]`` or a list of ``[H, W]``, coloured with ``colours`` (the
    dataset's palette for class ids) and named in a legend below; ``title`` should name the run,
    the backbone and the protocol.
    """
    if every < 1:
        raise InputError(f"every={every} must be at least 1")
    imgs = frames_list(frames)
    pred_list = [labels_np(p, f"preds[{i}]") for i, p in enumerate(preds)]
    gt_list = None if gts is None else [labels_np(g, f"gts[{i}]") for i, g in enumerate(gts)]
    if len(pred_list) != len(imgs) or (gt_list is not None and len(gt_list) != len(imgs)):
        raise InputError("frames, gts and preds must have the same number of frames")
    numbers = list(range(len(imgs))) if indices is None else [int(i) for i in indices]
    if len(numbers) != len(imgs):
        raise InputError(f"indices has {len(numbers)} entries for {len(imgs)} frames")
    steps = list(range(0, len(imgs), every))
    times = [steps[j] for j in spread_indices(len(steps), max_cols)]
    pal = resolve_palette(colours)
    rows = [("frame", imgs)]
    if gt_list is not None:
        rows.append(("ground truth", [pal[g] for g in gt_list]))
    rows.append(("prediction", [pal[p] for p in pred_list]))
    cell = (2.0, 2.0 * imgs[0].shape[0] / imgs[0].shape[1] + 0.3)
    fig, axes = grid_axes(ax, len(rows), len(times), cell=cell)
    for r, (name, row) in enumerate(rows):
        for c, t in enumerate(times):
            a = axes[r, c]
            a.imshow(row[t], interpolation="nearest")
            clean_axes(a)
            if r == 0:
                a.set_title(f"frame {numbers[t]}")
            if c == 0:
                a.set_ylabel(name)
    if legend:
        maps = [*(gt_list or []), *pred_list]
        ids = sorted({int(v) for t in times for m in maps[t :: len(imgs)] for v in np.unique(m)})
        if isinstance(class_names, Mapping) or class_names is None:
            names = dict(class_names or {})
        else:
            names = dict(enumerate(class_names))
        class_legend(fig, ids, pal, names)
    if title:
        fig.suptitle(title)
    return fig


def plot_tracks(
    frame_images: ArrayLike | Sequence[ArrayLike],
    positions: torch.Tensor | np.ndarray,
    valid: torch.Tensor | np.ndarray | None,
    grid_hw: tuple[int, int],
    max_tracks: int = 64,
    ncols: int = 4,
    ax: Axes | Sequence[Axes] | None = None,
    highlight: int | None = None,
    shown: Sequence[int] | None = None,
) -> Figure:
    """Tracks drawn over their frames: panel t shows each track's path up to frame t.

    ``positions [B, N, 2]`` are (y, x) feature cells on a ``grid_hw = (h, w)`` grid, ``valid [N]``
    marks tracks kept by the refinement filter (None: all). At most ``max_tracks`` valid tracks,
    evenly spaced over the valid ones, are drawn, each in its own colour. ``highlight`` (a track
    index) is drawn thick and white, solid if it survives the filter and dashed if not.
    ``shown``: the frames that get a panel (default all).
    """
    imgs = frames_list(frame_images)
    pos = _array(positions)
    if pos.ndim != 3 or pos.shape[-1] != 2 or pos.shape[0] != len(imgs):
        raise InputError(f"positions {pos.shape} must be [B, N, 2] with B = {len(imgs)} frames")
    keep = np.ones(pos.shape[1], bool)
    if valid is not None:
        keep = _array(valid, bool)
        if keep.shape != (pos.shape[1],):
            raise InputError(f"valid {keep.shape} must be [N] with N = {pos.shape[1]}")
    if highlight is not None and not 0 <= highlight < pos.shape[1]:
        raise InputError(f"highlight={highlight} is not a track index (0..{pos.shape[1] - 1})")
    idx = np.flatnonzero(keep)
    if max_tracks >= 0 and idx.size > max_tracks:
        idx = idx[np.linspace(0, idx.size - 1, max_tracks).round().astype(int)]
    gh, gw = grid_hw
    height, width = imgs[0].shape[:2]
    scale = np.array([width / gw, height / gh])
    xy = ((pos[:, :, ::-1] + 0.5) * scale).transpose(1, 0, 2)  # [N, B, 2] (x, y) in pixels
    colours = matplotlib.colormaps["hsv"](np.linspace(0.0, 1.0, len(idx), endpoint=False))
    panels = list(range(len(imgs))) if shown is None else [int(t) for t in shown]
    if not panels or not all(0 <= t < len(imgs) for t in panels):
        raise InputError(f"shown {panels} must be frame indices in 0..{len(imgs) - 1}")
    b = len(panels)
    ncols = max(1, min(ncols, b))
    fig, axes = grid_axes(ax, -(-b // ncols), ncols)
    for t, a in zip(panels, axes.reshape(-1)[:b], strict=True):
        a.imshow(imgs[t])
        a.add_collection(LineCollection(list(xy[idx, : t + 1]), colors=colours, linewidths=1.0))
        if len(idx):
            a.scatter(xy[idx, t, 0], xy[idx, t, 1], s=6, c=colours)
        if highlight is not None:
            style = "-" if keep[highlight] else "--"
            path = xy[highlight, : t + 1]
            a.plot(path[:, 0], path[:, 1], style, c="w", lw=2.5)
            a.plot(path[-1:, 0], path[-1:, 1], "o", mfc="w", mec="k", ms=6)
        a.set_xlim(0, width)
        a.set_ylim(height, 0)
        a.set_title(f"frame {t}")
        clean_axes(a)
    hide_unused(axes, b)
    return fig
