"""Notebook panels: label maps of any grid over their frames, rows over time, zooms, big images.

Built on :mod:`zsvss_nb.notebook.viz.plots` and :mod:`zsvss_nb.notebook.viz.layout`: pyplot-free
Figures, label colours from :func:`~zsvss_nb.notebook.viz.colors.resolve_palette`, one legend below
the panels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ...errors import InputError, LabelError
from .colors import (
    ArrayLike,
    ClassNames,
    PaletteLike,
    frame_np,
    frames_list,
    labels_np,
    overlay,
    resolve_palette,
)
from .layout import MAX_COLUMNS, class_legend, clean_axes, grid_axes, hide_unused, spread_indices
from .plots import show_frames


def resize_labels(labels: ArrayLike, size: tuple[int, int]) -> np.ndarray:
    """Label ids ``[..., h, w]`` -> ``[..., H, W]`` by nearest neighbour (ids are never blended).

    Output pixel ``(i, j)`` takes the input cell holding its centre: row ``floor((i + 0.5) h / H)``.
    """
    arr = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if arr.ndim < 2 or arr.dtype.kind not in "iub":
        raise LabelError(f"labels must be integer ids [..., h, w], got {arr.dtype} {arr.shape}")
    height, width = int(size[0]), int(size[1])
    if height < 1 or width < 1:
        raise InputError(f"size {tuple(size)} must be positive")
    h, w = arr.shape[-2:]
    rows = np.minimum(((np.arange(height) + 0.5) * h / height).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * w / width).astype(np.int64), w - 1)
    return arr[..., rows[:, None], cols[None, :]].astype(np.int64)


def _single_or_batch(frames: ArrayLike | Sequence[ArrayLike], count: int) -> list[np.ndarray]:
    """``count`` uint8 HWC images: a batch of ``count`` frames, or one frame repeated."""
    if isinstance(frames, (torch.Tensor, np.ndarray)) and frames.ndim == 3:
        return [frame_np(frames)] * count
    imgs = frames_list(frames)
    if len(imgs) != count:
        raise InputError(f"{len(imgs)} frames for {count} label maps")
    return imgs


def show_label_maps(
    frames: ArrayLike | Sequence[ArrayLike] | None,
    labels: ArrayLike | Sequence[ArrayLike],
    titles: Sequence[str] | None = None,
    alpha: float = 0.5,
    ncols: int = 4,
    class_names: ClassNames = None,
    legend: bool = True,
    ax: Axes | Sequence[Axes] | None = None,
    colours: PaletteLike = None,
) -> Figure:
    """Label maps ``[B, h, w]`` (or a list of ``[h, w]``, any grid) blended over their frames.

    Each map is resized to its frame by :func:`resize_labels`, so coarse feature-grid labels and
    full-resolution labels can be shown the same way, at the frame's aspect ratio. ``frames``: a
    batch of B frames, one frame for all maps, or None (colours only). One legend below the
    panels lists the ids of all maps; ``colours`` is the palette (cluster colours by default).
    """
    maps = [labels_np(m, f"labels[{i}]") for i, m in enumerate(labels)]
    if not maps:
        raise InputError("labels holds no label maps")
    if titles is not None and len(titles) != len(maps):
        raise InputError(f"titles has {len(titles)} entries for {len(maps)} label maps")
    imgs = None if frames is None else _single_or_batch(frames, len(maps))
    pal = resolve_palette(colours)
    ncols = max(1, min(ncols, len(maps)))
    fig, axes = grid_axes(ax, -(-len(maps) // ncols), ncols)
    for i, (a, lab) in enumerate(zip(axes.reshape(-1), maps, strict=False)):
        if imgs is None:
            a.imshow(pal[lab], interpolation="nearest")
        else:
            a.imshow(overlay(imgs[i], resize_labels(lab, imgs[i].shape[:2]), alpha, pal))
        a.set_title(titles[i] if titles is not None else f"frame {i}")
        clean_axes(a)
    hide_unused(axes, len(maps))
    if legend:
        ids = sorted({int(v) for m in maps for v in np.unique(m)})
        class_legend(fig, ids, pal, class_names)
    return fig


def boundary_box(labels: ArrayLike, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The ``size = (bh, bw)`` window of ``labels [H, W]`` holding the most label boundaries.

    A pixel is a boundary pixel when its right or lower neighbour has another id. Returns
    ``(y0, x0, y1, x1)`` (half-open); ties go to the first window in raster order. Sums come
    from an integral image, so every window is scored at once.
    """
    lab = labels_np(labels)
    height, width = lab.shape
    bh, bw = min(int(size[0]), height), min(int(size[1]), width)
    if bh < 1 or bw < 1:
        raise InputError(f"box size {tuple(size)} must be positive")
    edge = np.zeros(lab.shape, dtype=np.int64)
    edge[:, :-1] |= lab[:, :-1] != lab[:, 1:]
    edge[:-1, :] |= lab[:-1, :] != lab[1:, :]
    integral = np.pad(edge.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    score = (
        integral[bh:, bw:] - integral[:-bh, bw:] - integral[bh:, :-bw] + integral[:-bh, :-bw]
    )  # [H - bh + 1, W - bw + 1]
    y0, x0 = np.unravel_index(int(score.argmax()), score.shape)
    return int(y0), int(x0), int(y0) + bh, int(x0) + bw


def show_zoom(
    frame: ArrayLike,
    label_maps: Mapping[str, ArrayLike],
    box: tuple[int, int, int, int],
    alpha: float = 0.5,
    ax: Axes | Sequence[Axes] | None = None,
    colours: PaletteLike = None,
    class_names: ClassNames = None,
    legend: bool = True,
) -> Figure:
    """The frame with ``box = (y0, x0, y1, x1)`` marked, then each labelling cropped to the box.

    Label maps of any size are resized to the frame first (:func:`resize_labels`), so a crop
    compares the methods on the same pixels; one legend below names the ids in the crops.
    """
    img = frame_np(frame)
    y0, x0, y1, x1 = (int(v) for v in box)
    if not (0 <= y0 < y1 <= img.shape[0] and 0 <= x0 < x1 <= img.shape[1]):
        raise InputError(f"box {tuple(box)} does not fit the {img.shape[1]}x{img.shape[0]} frame")
    pal = resolve_palette(colours)
    fig, axes = grid_axes(ax, 1, 1 + len(label_maps))
    a0 = axes[0, 0]
    a0.imshow(img)
    a0.add_patch(matplotlib.patches.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="r"))
    a0.set_title("frame")
    clean_axes(a0)
    ids: set[int] = set()
    for a, (name, lab) in zip(axes[0, 1:], label_maps.items(), strict=True):
        full = resize_labels(labels_np(lab, name), img.shape[:2])[y0:y1, x0:x1]
        a.imshow(overlay(img[y0:y1, x0:x1], full, alpha, pal), interpolation="nearest")
        a.set_title(name)
        clean_axes(a)
        ids |= {int(v) for v in np.unique(full)}
    if legend:
        class_legend(fig, sorted(ids), pal, class_names)
    return fig


def show_label_rows(
    frames: ArrayLike | Sequence[ArrayLike] | None,
    rows: Mapping[str, ArrayLike | Sequence[ArrayLike]],
    alpha: float = 0.5,
    class_names: ClassNames = None,
    *,
    indices: Sequence[int] | None = None,
    max_cols: int = MAX_COLUMNS,
    colours: PaletteLike = None,
    title: str | None = None,
) -> Figure:
    """One row of label maps per entry of ``rows`` (name -> ``[B, h, w]``), all over the same B
    frames (time runs left to right), named on the left, one legend below for all ids.

    At most ``max_cols`` frames are shown, evenly spread over the B frames (first and last
    kept); the top row's titles give their frame numbers (``indices``, default 0..B-1).
    """
    if not rows:
        raise InputError("rows holds no label maps")
    counts = {name: len(maps) for name, maps in rows.items()}
    b = next(iter(counts.values()))
    if any(c != b for c in counts.values()):
        raise InputError(f"rows must hold the same number of maps, got {counts}")
    numbers = list(range(b)) if indices is None else [int(i) for i in indices]
    if len(numbers) != b:
        raise InputError(f"indices has {len(numbers)} entries for {b} frames")
    cols = spread_indices(b, max_cols)
    imgs = None if frames is None else _single_or_batch(frames, b)
    first = next(iter(rows.values()))[0]
    h, w = (labels_np(first) if imgs is None else imgs[0]).shape[:2]
    n = len(cols)
    fig = Figure(
        figsize=(2.2 * n + 0.6, (2.2 * h / w + 0.35) * len(rows) + 0.6), layout="constrained"
    )
    axes = np.asarray(fig.subplots(len(rows), n, squeeze=False))
    pal = resolve_palette(colours)
    ids: set[int] = set()
    for r, (name, maps) in enumerate(rows.items()):
        shown = [labels_np(maps[c], f"{name}[{c}]") for c in cols]
        titles = [f"frame {numbers[c]}" if r == 0 else "" for c in cols]
        picked = None if imgs is None else [imgs[c] for c in cols]
        show_label_maps(
            picked, shown, titles, alpha, ncols=n, legend=False, ax=axes[r], colours=pal
        )
        axes[r, 0].set_ylabel(name)
        ids |= {int(v) for m in shown for v in np.unique(m)}
    class_legend(fig, sorted(ids), pal, class_names)
    if title:
        fig.suptitle(title)
    return fig


def show_images(
    images: ArrayLike | Sequence[ArrayLike],
    titles: Sequence[str] | None = None,
    ncols: int = 1,
    width: float = 10.0,
) -> Figure:
    """Large images (e.g. overlay-video panels) in a figure ``width`` inches wide, each panel's
    height following the first image's aspect ratio, ``ncols`` per row."""
    imgs = frames_list(images, "images")
    if not imgs:
        raise InputError("images holds no image")
    ncols = max(1, min(ncols, len(imgs)))
    nrows = -(-len(imgs) // ncols)
    h, w = imgs[0].shape[:2]
    cell = (width / ncols, width / ncols * h / w + 0.3)
    fig, axes = grid_axes(None, nrows, ncols, cell=cell)
    return show_frames(imgs, titles=titles, ncols=ncols, ax=axes)
