"""Palettes, overlays, feature images and figure export with provenance.

Plot helpers take ``ax=`` (one Axes, or for grids an Axes whose area is split, or an array of
Axes) and return the Figure. Without ``ax`` they build a pyplot-free ``matplotlib.figure.Figure``,
so nothing accumulates in pyplot's global figure list and a notebook shows the returned figure
once. ``save_figure`` writes PDF/PNG/SVG atomically and stores the config and model identity in
each file's metadata; ``read_figure_metadata`` reads them back.

Label colours use the PASCAL VOC bit-interleaving palette (the one DAVIS/VSPW palette PNGs use):
id 0 is black, and id 255 (void / ignore) is white, a colour no other id has.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import sys
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import matplotlib
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .errors import InputError, LabelError


def _choose_headless_backend() -> None:
    """Use Agg when no display is reachable and nobody has chosen a backend yet."""
    if "matplotlib.pyplot" in sys.modules or os.environ.get("MPLBACKEND"):
        return
    get_backend = getattr(matplotlib.rcParams, "_get_backend_or_none", None)
    if get_backend is not None and get_backend() is not None:
        return
    if "ipykernel" in sys.modules:  # notebooks pick their own (inline, widget)
        return
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        matplotlib.use("Agg")


_choose_headless_backend()

from matplotlib.axes import Axes  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

VOID_ID = 255
VOID_COLOUR = (255, 255, 255)
FIGURE_FORMATS = ("pdf", "png", "svg")

ArrayLike = torch.Tensor | np.ndarray


# ----------------------------------------------------------------------------- colours


def palette(n: int = 256) -> np.ndarray:
    """Fixed label colours, uint8 ``[n, 3]``; ``n`` in 1..256.

    PASCAL VOC scheme: bit ``j`` of the id goes to bit ``7 - j // 3`` of channel ``j % 3``, so the
    256 colours are distinct and every channel is a multiple of 32 (at most 224). Index 255, the
    void / ignore id, is overridden with white, which therefore marks void pixels only.
    """
    if not 1 <= n <= 256:
        raise InputError(f"palette size n={n} must lie in 1..256")
    ids = np.arange(n, dtype=np.int64)
    bits = (ids[:, None] >> np.arange(8)) & 1  # [n, 8], least significant first
    out = np.zeros((n, 3), dtype=np.int64)
    for j in range(8):  # 8 bits, not per pixel: fixed-size loop
        out[:, j % 3] |= bits[:, j] << (7 - j // 3)
    out = out.astype(np.uint8)
    if n > VOID_ID:
        out[VOID_ID] = VOID_COLOUR
    return out


def _labels_np(labels: ArrayLike, name: str = "labels") -> np.ndarray:
    """``labels [H, W]`` as int64 numpy, checked to be ids in 0..255."""
    arr = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if arr.ndim != 2:
        raise LabelError(f"{name} must be [H, W], got shape {tuple(arr.shape)}")
    if arr.dtype.kind not in "iub":
        raise LabelError(f"{name} must hold integer ids, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise LabelError(f"{name} ids must lie in 0..255, got {arr.min()}..{arr.max()}")
    return arr


def _frame_np(frame: ArrayLike, name: str = "frame") -> np.ndarray:
    """One image as uint8 ``[H, W, 3]``.

    Accepts ``[H, W, 3]``, ``[3, H, W]`` (tensors are read channel-first when both fit),
    ``[H, W]`` grey, uint8 or float in [0, 1] (clipped).
    """
    is_tensor = isinstance(frame, torch.Tensor)
    arr = frame.detach().cpu().numpy() if is_tensor else np.asarray(frame)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    elif arr.ndim == 3 and arr.shape[0] in (1, 3) and (is_tensor or arr.shape[-1] not in (1, 3)):
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3):
        raise InputError(f"{name} must be [H, W, 3] or [3, H, W], got shape {tuple(arr.shape)}")
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype.kind == "f":
        return (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if arr.dtype.kind in "iub":
        return np.clip(arr, 0, 255).astype(np.uint8)
    raise InputError(f"{name} has unsupported dtype {arr.dtype}")


def _frames_list(frames: ArrayLike | Sequence[ArrayLike], name: str = "frames") -> list[np.ndarray]:
    """A batch ``[B, 3, H, W]`` / ``[B, H, W, 3]`` or a sequence of frames, as uint8 HWC."""
    if isinstance(frames, (torch.Tensor, np.ndarray)) and frames.ndim != 4:
        raise InputError(f"{name} must be a batch [B, ...] of images, got {tuple(frames.shape)}")
    return [_frame_np(f, f"{name}[{i}]") for i, f in enumerate(frames)]


def colorize(labels: ArrayLike) -> Image.Image:
    """``labels [H, W]`` as an indexed (mode "P") image with :func:`palette` attached.

    ``np.array(img)`` gives the ids back, also after saving as PNG.
    """
    img = Image.fromarray(_labels_np(labels).astype(np.uint8), mode="P")
    img.putpalette(palette(256).reshape(-1).tolist())
    return img


def overlay(frame: ArrayLike, labels: ArrayLike, alpha: float = 0.5) -> np.ndarray:
    """``(1 - alpha) * frame + alpha * colour(labels)``; uint8 ``[H, W, 3]``."""
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha={alpha} must lie in [0, 1]")
    img = _frame_np(frame)
    lab = _labels_np(labels)
    if lab.shape != img.shape[:2]:
        raise LabelError(f"labels shape {lab.shape} differs from frame size {img.shape[:2]}")
    colour = palette(256)[lab].astype(np.float32)
    out = (1.0 - alpha) * img.astype(np.float32) + alpha * colour
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _load_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow < 10.1 or no FreeType: bitmap font
        return ImageFont.load_default()


def _legend_strip(
    ids: Sequence[int], class_names: Mapping[int, str] | None, width: int, height_hint: int
) -> np.ndarray:
    """Colour swatches with "id name" text, wrapped into rows of ``width`` pixels."""
    font = _load_font(max(10, height_hint // 30))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = max(12, int(probe.textbbox((0, 0), "Ag0", font=font)[3]) + 4)
    sw, pad = line_h - 4, 6
    names = class_names or {}
    texts = [f"{i} {names.get(i, 'void' if i == VOID_ID else '')}".strip() for i in ids]
    widths = [sw + 4 + int(probe.textlength(t, font=font)) + 2 * pad for t in texts]
    positions, x, row = [], pad, 0
    for w in widths:
        if x + w > width and x > pad:
            x, row = pad, row + 1
        positions.append((x, row))
        x += w
    strip = Image.new("RGB", (width, (row + 1) * line_h + pad), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    colours = palette(256)
    for i, text, (x, r) in zip(ids, texts, positions, strict=True):
        y = pad // 2 + r * line_h + 2
        draw.rectangle((x, y, x + sw, y + sw), fill=tuple(int(c) for c in colours[i]), outline=0)
        draw.text((x + sw + 4, y), text, fill=(0, 0, 0), font=font)
    return np.asarray(strip)


def overlay_panel(
    frame: ArrayLike,
    labels: ArrayLike,
    class_names: Mapping[int, str] | None = None,
    legend: bool = True,
    alpha: float = 0.5,
) -> np.ndarray:
    """``frame | colour labels | blend`` side by side, legend strip below; uint8 [H', W', 3].

    H' and W' are even (padded with white) so the panels can be H.264-encoded as video frames.
    """
    img = _frame_np(frame)
    lab = _labels_np(labels)
    panel = np.concatenate([img, palette(256)[lab], overlay(img, lab, alpha)], axis=1)
    if legend:
        ids = [int(i) for i in np.unique(lab)]
        strip = _legend_strip(ids, class_names, panel.shape[1], img.shape[0])
        panel = np.concatenate([panel, strip], axis=0)
    h, w = panel.shape[:2]
    return np.pad(panel, ((0, h % 2), (0, w % 2), (0, 0)), constant_values=255)


# ----------------------------------------------------------------------------- feature images


def _robust_unit(proj: torch.Tensor, ref: torch.Tensor, lo_q: float, hi_q: float) -> torch.Tensor:
    """Columns of ``proj [N, k]`` to [0, 1] by the ``lo_q``, ``hi_q`` quantiles of ``ref``."""
    srt = torch.sort(ref, dim=0).values
    n = srt.shape[0]
    lo = srt[round(lo_q * (n - 1))]
    hi = srt[round(hi_q * (n - 1))]
    span = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    return ((proj - lo) / span).clamp(0.0, 1.0)


def _check_feats(feats: torch.Tensor) -> None:
    if not isinstance(feats, torch.Tensor) or feats.ndim != 4:
        shape = tuple(feats.shape) if hasattr(feats, "shape") else type(feats).__name__
        raise InputError(f"feats must be a tensor [B, h, w, C], got {shape}")


def feature_pca_rgb(
    feats: torch.Tensor,
    n_components: int = 3,
    fit_on: Literal["all", "first"] = "all",
) -> torch.Tensor:
    """Joint PCA of tokens shown as colours; ``feats [B, h, w, C]`` -> ``[B, h, w, 3]`` in [0, 1].

    One projection (centred, eigenvectors of the covariance, largest loading made positive for a
    deterministic sign) and one scaling (1st-99th percentile per component) serve every frame, so
    a colour means the same feature direction in all frames. ``fit_on="first"`` fits on frame 0
    only. ``n_components`` 1 gives grey, 2 leaves blue at 0.
    """
    _check_feats(feats)
    if not 1 <= n_components <= 3:
        raise InputError(f"n_components={n_components} must lie in 1..3")
    if fit_on not in ("all", "first"):
        raise InputError(f"fit_on={fit_on!r}: use 'all' or 'first'")
    b, h, w, c = feats.shape
    x = feats.reshape(b * h * w, c).float()
    fit = x if fit_on == "all" else x[: h * w]
    mean = fit.mean(dim=0)
    centred_fit = fit - mean
    cov = centred_fit.T @ centred_fit / max(fit.shape[0] - 1, 1)
    _, vecs = torch.linalg.eigh(cov)  # ascending eigenvalues
    k = min(n_components, c)
    comps = vecs[:, -k:].flip(-1)  # [C, k], largest variance first
    sign = torch.sign(comps.gather(0, comps.abs().argmax(dim=0, keepdim=True)))
    comps = comps * torch.where(sign == 0, torch.ones_like(sign), sign)
    unit = _robust_unit((x - mean) @ comps, centred_fit @ comps, 0.01, 0.99)  # [N, k]
    if n_components == 1:
        rgb = unit.expand(-1, 3)
    else:
        rgb = torch.cat([unit, unit.new_zeros(unit.shape[0], 3 - k)], dim=1)
    return rgb.reshape(b, h, w, 3).to(feats.dtype if feats.is_floating_point() else torch.float32)


def cosine_similarity_map(feats: torch.Tensor, frame: int, y: int, x: int) -> torch.Tensor:
    """Cosine similarity of all tokens to the one at ``(frame, y, x)``; ``[B, h, w]`` in [-1, 1]."""
    _check_feats(feats)
    b, h, w, _ = feats.shape
    if not (-b <= frame < b and 0 <= y < h and 0 <= x < w):
        raise InputError(f"query (frame={frame}, y={y}, x={x}) lies outside feats [{b}, {h}, {w}]")
    unit = torch.nn.functional.normalize(feats.float(), dim=-1, eps=1e-12)
    return (unit @ unit[frame, y, x]).clamp(-1.0, 1.0)


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
    imgs = _frames_list(frames)
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
    lab = _labels_np(labels)
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
    imgs = _frames_list(frames) if frames is not None else None
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
    imgs = _frames_list(frames)
    pred_list = [_labels_np(p, f"preds[{i}]") for i, p in enumerate(preds)]
    gt_list = None if gts is None else [_labels_np(g, f"gts[{i}]") for i, g in enumerate(gts)]
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
    imgs = _frames_list(frame_images)
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


# ----------------------------------------------------------------------------- export


def _version() -> str:
    try:
        from . import __version__
    except ImportError:
        return "0.1.0"
    return str(__version__)


def _as_jsonable(obj: Any, name: str, attr: str | None = None) -> Any:
    """Config/model description as plain JSON data (dataclass, ``.to_dict()``, ``.identity``)."""
    if obj is None or isinstance(obj, Mapping):
        return None if obj is None else dict(obj)
    if attr is not None and isinstance(getattr(obj, attr, None), Mapping):
        return dict(getattr(obj, attr))
    if callable(getattr(obj, "to_dict", None)):
        return obj.to_dict()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    raise InputError(f"{name} must be a dict, a dataclass or have .to_dict(), got {type(obj)}")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=True, default=str)


def save_figure(
    fig: Figure,
    path_stem: str | Path,
    *,
    config: Any = None,
    model: Any = None,
    formats: Sequence[str] = ("pdf", "png"),
    dpi: float | None = 200,
) -> list[Path]:
    """Write ``fig`` as ``<path_stem>.<fmt>`` per format, atomically, with provenance metadata.

    PNG: tEXt ``zsvss:config`` / ``zsvss:model`` (JSON) and ``Software``. PDF (standard keys
    only): ``Subject`` = config JSON, ``Keywords`` = model JSON, ``Creator``. SVG: Dublin Core
    ``Description`` / ``Keywords``. ``config``: dict or dataclass; ``model``: dict or an object
    with an ``.identity`` dict. ``dpi=None`` uses ``rcParams["savefig.dpi"]`` (300 inside
    :func:`publication_style`).
    """
    bad = [f for f in formats if f not in FIGURE_FORMATS]
    if bad or not formats:
        raise InputError(f"formats {tuple(formats)}: choose from {FIGURE_FORMATS}")
    cfg_json = _dumps(_as_jsonable(config, "config"))
    model_json = _dumps(_as_jsonable(model, "model", attr="identity"))
    software = f"zsvss {_version()}"
    meta = {
        "png": {"zsvss:config": cfg_json, "zsvss:model": model_json, "Software": software},
        "pdf": {"Subject": cfg_json, "Keywords": model_json, "Creator": software},
        "svg": {"Description": cfg_json, "Keywords": model_json, "Creator": software},
    }
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        target = stem.with_name(f"{stem.name}.{fmt}")
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with open(tmp, "xb") as fh:  # plain open, so the file gets the umask's permissions
                fig.savefig(fh, format=fmt, dpi=dpi, metadata=meta[fmt], bbox_inches="tight")
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        written.append(target)
    return written


def _pdf_string(data: bytes, key: bytes) -> str | None:
    """The literal or hex string value of ``/key`` in a PDF Info dictionary, decoded."""
    m = re.search(rb"/" + key + rb"\s*([(<])", data)
    if m is None:
        return None
    i = m.end()
    if m.group(1) == b"<":
        end = data.index(b">", i)
        raw = bytes.fromhex(re.sub(rb"\s", b"", data[i:end]).decode("ascii"))
    else:
        out, depth = bytearray(), 1
        escapes = {ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t", ord("b"): b"\b"}
        while depth:
            ch = data[i]
            if ch == ord("\\"):
                nxt = data[i + 1]
                out += escapes.get(nxt, bytes([nxt]))
                i += 2
                continue
            depth += (ch == ord("(")) - (ch == ord(")"))
            if depth:
                out.append(ch)
            i += 1
        raw = bytes(out)
    if raw.startswith(b"\xfe\xff"):
        return raw[2:].decode("utf-16-be")
    return raw.decode("latin-1")


def read_figure_metadata(path: str | Path) -> dict[str, Any]:
    """Provenance written by :func:`save_figure`: ``{"config", "model", "software"}``.

    ``config`` and ``model`` are the decoded JSON (None when absent).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"figure {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".png":
        with Image.open(path) as img:
            text = dict(getattr(img, "text", {}) or img.info)
        cfg, model = text.get("zsvss:config"), text.get("zsvss:model")
        software = text.get("Software")
    elif suffix == ".pdf":
        data = path.read_bytes()
        cfg, model = _pdf_string(data, b"Subject"), _pdf_string(data, b"Keywords")
        software = _pdf_string(data, b"Creator")
    elif suffix == ".svg":
        ns = {
            "dc": "http://purl.org/dc/elements/1.1/",
            "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
            "cc": "http://creativecommons.org/ns#",
        }
        root = ET.parse(path).getroot()
        cfg = root.findtext(".//dc:description", namespaces=ns)
        model = root.findtext(".//dc:subject/rdf:Bag/rdf:li", namespaces=ns)
        software = root.findtext(".//dc:creator/cc:Agent/dc:title", namespaces=ns)
    else:
        raise InputError(f"figure {path}: metadata is read from .png, .pdf or .svg only")
    return {
        "config": json.loads(cfg) if cfg else None,
        "model": json.loads(model) if model else None,
        "software": software,
    }


@contextlib.contextmanager
def publication_style(**overrides: Any) -> Iterator[None]:
    """rcParams for paper figures (small fonts, no top/right spines, 300 dpi, TrueType in PDF).

    Create the figure inside the ``with`` block: most rcParams are read when artists are made.
    """
    params = {
        "font.size": 8,
        "axes.titlesize": 9,
        "axes.labelsize": 8,
        "xtick.labelsize": 7,
        "ytick.labelsize": 7,
        "legend.fontsize": 7,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "savefig.dpi": 300,
        "pdf.fonttype": 42,
        "ps.fonttype": 42,
        **overrides,
    }
    with matplotlib.rc_context(params):
        yield


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


def relative_cell(point: tuple[float, float], grid_hw: tuple[int, int]) -> tuple[int, int]:
    """The ``(y, x)`` cell of an ``h x w`` grid that holds the relative position ``(fy, fx)``.

    ``fy, fx`` in [0, 1] (1 is the bottom/right edge, which belongs to the last cell); the same
    relative point picks corresponding cells on grids of different resolution.
    """
    fy, fx = float(point[0]), float(point[1])
    if not (0.0 <= fy <= 1.0 and 0.0 <= fx <= 1.0):
        raise InputError(f"relative point {tuple(point)} must lie in [0, 1] x [0, 1]")
    h, w = grid_hw
    return min(int(fy * h), h - 1), min(int(fx * w), w - 1)


def show_feature_pca(
    feats: torch.Tensor,
    titles: Sequence[str] | None = None,
    ncols: int = 4,
    fit_on: Literal["all", "first"] = "all",
    ax: Axes | Sequence[Axes] | None = None,
) -> Figure:
    """PCA-to-RGB images (:func:`feature_pca_rgb`, one joint fit) of ``feats [B, h, w, C]``."""
    rgb = feature_pca_rgb(feats, fit_on=fit_on).detach().float().cpu().numpy()  # [B, h, w, 3]
    return show_frames(rgb, titles=titles, ncols=ncols, ax=ax)


def _single_or_batch(frames: ArrayLike | Sequence[ArrayLike], count: int) -> list[np.ndarray]:
    """``count`` uint8 HWC images: a batch of ``count`` frames, or one frame repeated."""
    if isinstance(frames, (torch.Tensor, np.ndarray)) and frames.ndim == 3:
        return [_frame_np(frames)] * count
    imgs = _frames_list(frames)
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
    maps = [_labels_np(m, f"labels[{i}]") for i, m in enumerate(labels)]
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


def show_feature_views(
    features: Mapping[str, torch.Tensor],
    frames: ArrayLike | Sequence[ArrayLike],
    point: tuple[int, float, float] = (0, 0.5, 0.5),
    alpha: float = 0.6,
) -> Figure:
    """Two rows per model: PCA images and cosine similarity to one query, over the same frames.

    ``features`` maps a name to ``[B, h, w, C]`` (grids may differ between models);
    ``point = (frame, fy, fx)`` is relative (see :func:`relative_cell`), so every model is
    queried at the same place of the same frame.
    """
    if not features:
        raise InputError("features holds no model")
    imgs = _frames_list(frames)
    b = len(imgs)
    for name, f in features.items():
        _check_feats(f)
        if f.shape[0] != b:
            raise InputError(f"features[{name!r}] has {f.shape[0]} frames, frames has {b}")
    fig = Figure(figsize=(2.4 * b + 1.0, 2.0 * 2 * len(features)), layout="constrained")
    axes = np.asarray(fig.subplots(2 * len(features), b, squeeze=False))
    frame = point[0] % b
    for m, (name, f) in enumerate(features.items()):
        y, x = relative_cell(point[1:], (f.shape[1], f.shape[2]))
        show_feature_pca(f, ncols=b, ax=axes[2 * m])
        sims = cosine_similarity_map(f, frame, y, x)
        show_similarity(sims, imgs, (frame, y, x), ncols=b, alpha=alpha, ax=axes[2 * m + 1])
        axes[2 * m, 0].set_ylabel(f"{name}\nPCA")
        axes[2 * m + 1, 0].set_ylabel(f"{name}\nsimilarity")
    return fig


def boundary_box(labels: ArrayLike, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The ``size = (bh, bw)`` window of ``labels [H, W]`` holding the most label boundaries.

    A pixel is a boundary pixel when its right or lower neighbour has another id. Returns
    ``(y0, x0, y1, x1)`` (half-open); ties go to the first window in raster order. Sums come
    from an integral image, so every window is scored at once.
    """
    lab = _labels_np(labels)
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
    img = _frame_np(frame)
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
        full = resize_labels(_labels_np(lab, name), img.shape[:2])
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
    h, w = (_labels_np(first) if frames is None else _single_or_batch(frames, b)[0]).shape[:2]
    fig = Figure(figsize=(2.4 * b + 1.5, (2.4 * h / w + 0.4) * len(rows)), layout="constrained")
    axes = np.asarray(fig.subplots(len(rows), b, squeeze=False))
    ids: set[int] = set()
    for r, (name, maps) in enumerate(rows.items()):
        titles = [f"frame {i}" if r == 0 else "" for i in range(b)]
        show_label_maps(frames, maps, titles, alpha, ncols=b, legend=False, ax=axes[r])
        axes[r, 0].set_ylabel(name)
        ids |= {int(v) for m in maps for v in np.unique(_labels_np(m))}
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
    imgs = _frames_list(images, "images")
    if not imgs:
        raise InputError("images holds no image")
    ncols = max(1, min(ncols, len(imgs)))
    nrows = -(-len(imgs) // ncols)
    h, w = imgs[0].shape[:2]
    cell = (width / ncols, width / ncols * h / w + 0.3)
    fig, axes = _grid_axes(None, nrows, ncols, cell=cell)
    return show_frames(imgs, titles=titles, ncols=ncols, ax=axes)
