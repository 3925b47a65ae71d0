"""Matplotlib plot helpers and notebook panels.

Plot helpers take ``ax=`` (one Axes, or for grids an Axes whose area is split, or an array of
Axes) and return the Figure. Without ``ax`` they build a pyplot-free ``matplotlib.figure.Figure``,
so nothing accumulates in pyplot's global figure list and a notebook shows the returned figure
once. Such a Figure needs no backend: ``savefig`` and a notebook's display pick their own
canvas, so nothing here chooses or switches the matplotlib backend.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ..errors import InputError, LabelError
from .colors import ArrayLike, frame_np, frames_list, labels_np, overlay, palette

# ----------------------------------------------------------------------------- plot helpers


def _single_axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def _grid_axes(
    ax: Axes | Sequence[Axes] | np.ndarray | None,
    nrows: int,
    ncols: int,
    cell: tuple[float, float] = (2.4, 2.0),
) -> tuple[Figure, np.ndarray]:
    """``[nrows, ncols]`` Axes: new figure, the caller's Axes array, or one Axes split in a grid."""
    if ax is None:
        fig = Figure(figsize=(cell[0] * ncols, cell[1] * nrows), layout="constrained")
        axes = np.asarray(fig.subplots(nrows, ncols, squeeze=False))
        return fig, axes
    if isinstance(ax, Axes):
        fig = ax.figure
        spec = ax.get_subplotspec()
        if spec is None:
            raise InputError("ax must be a subplot (made by subplots / add_subplot) to hold a grid")
        ax.remove()
        sub = spec.subgridspec(nrows, ncols)
        axes = np.array([[fig.add_subplot(sub[r, c]) for c in range(ncols)] for r in range(nrows)])
        return fig, axes
    flat = np.asarray(ax, dtype=object).reshape(-1)
    if flat.size < nrows * ncols:
        raise InputError(f"ax holds {flat.size} Axes; this plot needs {nrows * ncols}")
    for extra in flat[nrows * ncols :]:
        extra.set_axis_off()
    return flat[0].figure, flat[: nrows * ncols].reshape(nrows, ncols)


def _hide_unused(axes: np.ndarray, used: int) -> None:
    for a in axes.reshape(-1)[used:]:
        a.set_axis_off()


def _clean(a: Axes) -> None:
    a.set_xticks([])
    a.set_yticks([])


def show_frames(
    frames: ArrayLike | Sequence[ArrayLike],
    titles: Sequence[str] | None = None,
    ncols: int = 4,
    ax: Axes | Sequence[Axes] | None = None,
) -> Figure:
    """Frames in a grid of ``ncols`` columns; ``frames [B, 3, H, W]``, ``[B, H, W, 3]`` or list."""
    imgs = frames_list(frames)
    if titles is not None and len(titles) != len(imgs):
        raise InputError(f"titles has {len(titles)} entries for {len(imgs)} frames")
    ncols = max(1, min(ncols, len(imgs)))
    nrows = -(-len(imgs) // ncols)
    fig, axes = _grid_axes(ax, nrows, ncols)
    for i, (a, img) in enumerate(zip(axes.reshape(-1), imgs, strict=False)):
        a.imshow(img)
        a.set_title(titles[i] if titles is not None else f"frame {i}")
        _clean(a)
    _hide_unused(axes, len(imgs))
    return fig


def _class_legend(a: Axes, ids: Sequence[int], class_names: Mapping[int, str] | None) -> None:
    colours = palette(256) / 255.0
    names = class_names or {}
    handles = [
        Patch(facecolor=colours[i], edgecolor="k", label=f"{i} {names.get(i, '')}".strip())
        for i in ids
    ]
    a.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def show_labels(
    labels: ArrayLike,
    frame: ArrayLike | None = None,
    alpha: float = 0.5,
    class_names: Mapping[int, str] | None = None,
    legend: bool = True,
    ax: Axes | None = None,
) -> Figure:
    """Label colours ``labels [H, W]``, blended over ``frame`` when one is given, with a legend."""
    lab = labels_np(labels)
    img = palette(256)[lab] if frame is None else overlay(frame, lab, alpha)
    fig, a = _single_axes(ax, (5.0, 3.5))
    a.imshow(img)
    _clean(a)
    if legend:
        _class_legend(a, [int(i) for i in np.unique(lab)], class_names)
    return fig


def show_similarity(
    sim_maps: torch.Tensor | np.ndarray,
    frames: ArrayLike | Sequence[ArrayLike] | None,
    point: tuple[int, int, int],
    ncols: int = 4,
    alpha: float = 0.6,
    vmin: float = -1.0,
    vmax: float = 1.0,
    ax: Axes | Sequence[Axes] | None = None,
) -> Figure:
    """Similarity maps ``[B, h, w]`` over their frames, query ``point = (frame, y, x)`` marked.

    ``point`` is in feature cells; maps are stretched over each frame (cell centres at
    ``(x + 0.5) * W / w``), so the marker sits on the query token.
    """
    sims = np.asarray(sim_maps.detach().cpu() if isinstance(sim_maps, torch.Tensor) else sim_maps)
    if sims.ndim != 3:
        raise InputError(f"sim_maps must be [B, h, w], got shape {sims.shape}")
    b, h, w = sims.shape
    imgs = frames_list(frames) if frames is not None else None
    if imgs is not None and len(imgs) != b:
        raise InputError(f"frames has {len(imgs)} images for {b} similarity maps")
    height, width = imgs[0].shape[:2] if imgs is not None else (h, w)
    qf, qy, qx = point
    ncols = max(1, min(ncols, b))
    fig, axes = _grid_axes(ax, -(-b // ncols), ncols)
    mappable = None
    for i, a in enumerate(axes.reshape(-1)[:b]):
        if imgs is not None:
            a.imshow(imgs[i])
        mappable = a.imshow(
            sims[i],
            cmap="viridis",
            vmin=vmin,
            vmax=vmax,
            alpha=alpha if imgs is not None else 1.0,
            extent=(0, width, height, 0),
            interpolation="nearest",
        )
        if i == qf % b:
            a.plot([(qx + 0.5) * width / w], [(qy + 0.5) * height / h], "r+", ms=12, mew=2)
        a.set_title(f"frame {i}")
        _clean(a)
    _hide_unused(axes, b)
    if mappable is not None:
        fig.colorbar(mappable, ax=list(axes.reshape(-1)), shrink=0.8, label="cosine similarity")
    return fig


def show_difference_maps(
    maps: torch.Tensor | np.ndarray,
    class_ids: Sequence[int],
    class_names: Mapping[int, str] | None = None,
    ncols: int = 4,
    ax: Axes | Sequence[Axes] | None = None,
) -> Figure:
    """Difference maps ``maps [K, H, W]`` (METHOD 1.7 D_c), one panel and colour scale per class."""
    arr = np.asarray(maps.detach().cpu() if isinstance(maps, torch.Tensor) else maps, dtype=float)
    if arr.ndim != 3 or arr.shape[0] != len(class_ids):
        raise InputError(f"maps {arr.shape} must be [K, H, W] with K = {len(class_ids)} class ids")
    k = arr.shape[0]
    ncols = max(1, min(ncols, k))
    fig, axes = _grid_axes(ax, -(-k // ncols), ncols)
    names = class_names or {}
    for i, a in enumerate(axes.reshape(-1)[:k]):
        im = a.imshow(arr[i], cmap="inferno")
        cid = int(class_ids[i])
        a.set_title(f"{cid} {names.get(cid, '')}".strip())
        fig.colorbar(im, ax=a, shrink=0.7)
        _clean(a)
    _hide_unused(axes, k)
    return fig


def plot_per_class_iou(
    ious: Mapping[int, float] | Sequence[float] | torch.Tensor | np.ndarray,
    class_names: Mapping[int, str] | Sequence[str] | None = None,
    sort: bool = False,
    ax: Axes | None = None,
) -> Figure:
    """Bars of per-class IoU in palette colours, NaN classes (absent) left out, mIoU dashed.

    ``ious`` maps class id to IoU, or is indexed by class id.
    """
    if isinstance(ious, Mapping):
        items = [(int(k), float(v)) for k, v in ious.items()]
    else:
        vals = np.asarray(ious.detach().cpu() if isinstance(ious, torch.Tensor) else ious, float)
        items = list(enumerate(vals.reshape(-1).tolist()))
    items = [(k, v) for k, v in items if np.isfinite(v)]
    if sort:
        items.sort(key=lambda kv: -kv[1])
    if isinstance(class_names, Mapping) or class_names is None:
        names = dict(class_names or {})
    else:
        names = dict(enumerate(class_names))
    ids = [k for k, _ in items]
    vals = [v for _, v in items]
    fig, a = _single_axes(ax, (max(3.0, 0.35 * len(ids) + 1.0), 3.0))
    colours = palette(256)[ids] / 255.0 if ids else "C0"
    a.bar(range(len(ids)), vals, color=colours, edgecolor="k", linewidth=0.5)
    a.set_xticks(range(len(ids)))
    a.set_xticklabels([names.get(k, str(k)) for k in ids], rotation=60, ha="right")
    a.set_ylim(0.0, 1.0)
    a.set_ylabel("IoU")
    if vals:
        a.axhline(float(np.mean(vals)), ls="--", c="k", lw=1, label=f"mIoU {np.mean(vals):.3f}")
        a.legend(frameon=False)
    return fig


def qualitative_strip(
    frames: ArrayLike | Sequence[ArrayLike],
    gts: ArrayLike | Sequence[ArrayLike] | None,
    preds: ArrayLike | Sequence[ArrayLike],
    every: int = 1,
    ax: Axes | Sequence[Axes] | None = None,
) -> Figure:
    """Rows frame / ground truth / prediction over time, every ``every``-th frame as a column.

    ``gts`` may be None (two rows). Label maps are ``[B, H, W]`` or a list of ``[H, W]``.
    """
    if every < 1:
        raise InputError(f"every={every} must be at least 1")
    imgs = frames_list(frames)
    pred_list = [labels_np(p, f"preds[{i}]") for i, p in enumerate(preds)]
    gt_list = None if gts is None else [labels_np(g, f"gts[{i}]") for i, g in enumerate(gts)]
    if len(pred_list) != len(imgs) or (gt_list is not None and len(gt_list) != len(imgs)):
        raise InputError("frames, gts and preds must have the same number of frames")
    times = list(range(0, len(imgs), every))
    rows = [("frame", imgs)]
    if gt_list is not None:
        rows.append(("ground truth", [palette(256)[g] for g in gt_list]))
    rows.append(("prediction", [palette(256)[p] for p in pred_list]))
    fig, axes = _grid_axes(ax, len(rows), len(times), cell=(2.0, 1.6))
    for r, (name, row) in enumerate(rows):
        for c, t in enumerate(times):
            a = axes[r, c]
            a.imshow(row[t])
            _clean(a)
            if r == 0:
                a.set_title(f"t = {t}")
            if c == 0:
                a.set_ylabel(name)
    return fig


def plot_tracks(
    frame_images: ArrayLike | Sequence[ArrayLike],
    positions: torch.Tensor | np.ndarray,
    valid: torch.Tensor | np.ndarray | None,
    grid_hw: tuple[int, int],
    max_tracks: int = 64,
    ncols: int = 4,
    ax: Axes | Sequence[Axes] | None = None,
) -> Figure:
    """Tracks drawn over their frames: panel t shows each track's path up to frame t.

    ``positions [B, N, 2]`` are (y, x) feature cells on a ``grid_hw = (h, w)`` grid, ``valid [N]``
    marks tracks kept by the refinement filter (None: all). At most ``max_tracks`` valid tracks,
    evenly spaced over the valid ones, are drawn, each in its own colour.
    """
    imgs = frames_list(frame_images)
    pos = np.asarray(positions.detach().cpu() if isinstance(positions, torch.Tensor) else positions)
    if pos.ndim != 3 or pos.shape[-1] != 2 or pos.shape[0] != len(imgs):
        raise InputError(f"positions {pos.shape} must be [B, N, 2] with B = {len(imgs)} frames")
    keep = np.ones(pos.shape[1], bool)
    if valid is not None:
        keep = np.asarray(valid.detach().cpu() if isinstance(valid, torch.Tensor) else valid, bool)
        if keep.shape != (pos.shape[1],):
            raise InputError(f"valid {keep.shape} must be [N] with N = {pos.shape[1]}")
    idx = np.flatnonzero(keep)
    if max_tracks >= 0 and idx.size > max_tracks:
        idx = idx[np.linspace(0, idx.size - 1, max_tracks).round().astype(int)]
    gh, gw = grid_hw
    height, width = imgs[0].shape[:2]
    xy = np.stack(
        [(pos[:, idx, 1] + 0.5) * width / gw, (pos[:, idx, 0] + 0.5) * height / gh], axis=-1
    ).transpose(1, 0, 2)  # [n, B, 2] in pixels
    colours = matplotlib.colormaps["hsv"](np.linspace(0.0, 1.0, len(idx), endpoint=False))
    b = len(imgs)
    ncols = max(1, min(ncols, b))
    fig, axes = _grid_axes(ax, -(-b // ncols), ncols)
    for t, a in enumerate(axes.reshape(-1)[:b]):
        a.imshow(imgs[t])
        a.add_collection(LineCollection(list(xy[:, : t + 1]), colors=colours, linewidths=1.0))
        if len(idx):
            a.scatter(xy[:, t, 0], xy[:, t, 1], s=6, c=colours)
        a.set_xlim(0, width)
        a.set_ylim(height, 0)
        a.set_title(f"frame {t}")
        _clean(a)
    _hide_unused(axes, b)
    return fig


# ----------------------------------------------------------------------------- notebook panels


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
    class_names: Mapping[int, str] | None = None,
    legend: bool = True,
    ax: Axes | Sequence[Axes] | None = None,
) -> Figure:
    """Label maps ``[B, h, w]`` (or a list of ``[h, w]``, any grid) blended over their frames.

    Each map is resized to its frame by :func:`resize_labels`, so coarse feature-grid labels and
    full-resolution labels can be shown the same way. ``frames``: a batch of B frames, one frame
    for all maps, or None (colours only). One legend lists the ids of all maps.
    """
    maps = [labels_np(m, f"labels[{i}]") for i, m in enumerate(labels)]
    if not maps:
        raise InputError("labels holds no label maps")
    if titles is not None and len(titles) != len(maps):
        raise InputError(f"titles has {len(titles)} entries for {len(maps)} label maps")
    imgs = None if frames is None else _single_or_batch(frames, len(maps))
    ncols = max(1, min(ncols, len(maps)))
    fig, axes = _grid_axes(ax, -(-len(maps) // ncols), ncols)
    for i, (a, lab) in enumerate(zip(axes.reshape(-1), maps, strict=False)):
        if imgs is None:
            a.imshow(palette(256)[lab], interpolation="nearest")
        else:
            a.imshow(overlay(imgs[i], resize_labels(lab, imgs[i].shape[:2]), alpha))
        a.set_title(titles[i] if titles is not None else f"frame {i}")
        _clean(a)
    _hide_unused(axes, len(maps))
    if legend:
        ids = sorted({int(v) for m in maps for v in np.unique(m)})
        _class_legend(axes.reshape(-1)[len(maps) - 1], ids, class_names)
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
) -> Figure:
    """The frame with ``box = (y0, x0, y1, x1)`` marked, then each labelling cropped to the box.

    Label maps of any size are resized to the frame first (:func:`resize_labels`), so a crop
    compares the methods on the same pixels.
    """
    img = frame_np(frame)
    y0, x0, y1, x1 = (int(v) for v in box)
    if not (0 <= y0 < y1 <= img.shape[0] and 0 <= x0 < x1 <= img.shape[1]):
        raise InputError(f"box {tuple(box)} does not fit the {img.shape[1]}x{img.shape[0]} frame")
    fig, axes = _grid_axes(ax, 1, 1 + len(label_maps))
    a0 = axes[0, 0]
    a0.imshow(img)
    a0.add_patch(matplotlib.patches.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="r"))
    a0.set_title("frame")
    _clean(a0)
    for a, (name, lab) in zip(axes[0, 1:], label_maps.items(), strict=True):
        full = resize_labels(labels_np(lab, name), img.shape[:2])
        a.imshow(overlay(img, full, alpha)[y0:y1, x0:x1], interpolation="nearest")
        a.set_title(name)
        _clean(a)
    return fig


def show_label_rows(
    frames: ArrayLike | Sequence[ArrayLike] | None,
    rows: Mapping[str, ArrayLike | Sequence[ArrayLike]],
    alpha: float = 0.5,
    class_names: Mapping[int, str] | None = None,
) -> Figure:
    """One row of label maps per entry of ``rows`` (name -> ``[B, h, w]``), all over the same B
    frames (time runs left to right), named on the left, one legend for all ids."""
    if not rows:
        raise InputError("rows holds no label maps")
    counts = {name: len(maps) for name, maps in rows.items()}
    b = next(iter(counts.values()))
    if any(c != b for c in counts.values()):
        raise InputError(f"rows must hold the same number of maps, got {counts}")
    first = next(iter(rows.values()))[0]
    h, w = (labels_np(first) if frames is None else _single_or_batch(frames, b)[0]).shape[:2]
    fig = Figure(figsize=(2.4 * b + 1.5, (2.4 * h / w + 0.4) * len(rows)), layout="constrained")
    axes = np.asarray(fig.subplots(len(rows), b, squeeze=False))
    ids: set[int] = set()
    for r, (name, maps) in enumerate(rows.items()):
        titles = [f"frame {i}" if r == 0 else "" for i in range(b)]
        show_label_maps(frames, maps, titles, alpha, ncols=b, legend=False, ax=axes[r])
        axes[r, 0].set_ylabel(name)
        ids |= {int(v) for m in maps for v in np.unique(labels_np(m))}
    _class_legend(axes[0, -1], sorted(ids), class_names)
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
    fig, axes = _grid_axes(None, nrows, ncols, cell=cell)
    return show_frames(imgs, titles=titles, ncols=ncols, ax=axes)
