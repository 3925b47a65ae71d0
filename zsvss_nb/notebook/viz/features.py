"""Feature images: joint PCA colours, cosine similarity to one token, cross-frame similarity.

The kernels (:func:`feature_pca_rgb`, :func:`cosine_similarity_map`,
:func:`cross_frame_similarity`, :func:`relative_cell`) are torch only; the ``show_*`` helpers draw
them with :mod:`zsvss_nb.notebook.viz.plots` and return pyplot-free Figures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ...errors import ConfigError, InputError
from .colors import ArrayLike, frames_list
from .layout import MAX_COLUMNS, frames_around
from .plots import show_frames, show_similarity

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
    size: tuple[int, int] | None = None,
) -> Figure:
    """PCA-to-RGB images (:func:`feature_pca_rgb`, one joint fit) of ``feats [B, h, w, C]``.

    ``size = (H, W)``: draw each image over the original frame's extent, so it has the frame's
    aspect ratio even when the processed grid does not (the paper's multiple-of-64 resize).
    """
    rgb = feature_pca_rgb(feats, fit_on=fit_on).detach().float().cpu().numpy()  # [B, h, w, 3]
    return show_frames(rgb, titles=titles, ncols=ncols, ax=ax, size=size)


def show_feature_views(
    features: Mapping[str, torch.Tensor],
    frames: ArrayLike | Sequence[ArrayLike],
    point: tuple[int, float, float] = (0, 0.5, 0.5),
    alpha: float = 0.6,
    max_cols: int = MAX_COLUMNS,
) -> Figure:
    """Two rows per model: PCA images and cosine similarity to one query, over the same frames.

    ``features`` maps a name to ``[B, h, w, C]`` (grids may differ between models);
    ``point = (frame, fy, fx)`` is relative (see :func:`relative_cell`), so every model is
    queried at the same place of the same frame. At most ``max_cols`` consecutive frames
    around the query frame are drawn (:func:`layout.frames_around`; titles give their numbers),
    while the PCA is fitted on all B. Every panel is drawn at the frames' aspect ratio; each
    similarity row has its own data-driven colour range.
    """
    if not features:
        raise InputError("features holds no model")
    imgs = frames_list(frames)
    b = len(imgs)
    for name, f in features.items():
        _check_feats(f)
        if f.shape[0] != b:
            raise InputError(f"features[{name!r}] has {f.shape[0]} frames, frames has {b}")
    frame = point[0] % b
    cols = frames_around(b, frame, max_cols)
    n = len(cols)
    fig = Figure(figsize=(2.4 * n + 1.0, 2.0 * 2 * len(features)), layout="constrained")
    axes = np.asarray(fig.subplots(2 * len(features), n, squeeze=False))
    titles = [f"frame {t}" for t in cols]
    for m, (name, f) in enumerate(features.items()):
        y, x = relative_cell(point[1:], (f.shape[1], f.shape[2]))
        rgb = feature_pca_rgb(f).detach().float().cpu().numpy()[cols]
        show_frames(rgb, titles=titles, ncols=n, ax=axes[2 * m], size=imgs[0].shape[:2])
        sims = cosine_similarity_map(f, frame, y, x)[cols]
        query = (cols.index(frame), y, x)
        shown = [imgs[t] for t in cols]
        show_similarity(sims, shown, query, ncols=n, alpha=alpha, ax=axes[2 * m + 1])
        for a, title in zip(axes[2 * m + 1], titles, strict=True):
            a.set_title(title)
        axes[2 * m, 0].set_ylabel(f"{name}\nPCA")
        axes[2 * m + 1, 0].set_ylabel(f"{name}\nsimilarity")
    return fig


# ----------------------------------------------------------------------------- frame to frame


def cross_frame_similarity(feats: torch.Tensor) -> torch.Tensor:
    """[B, B]: for frames i, j the mean over tokens of frame i of the max cosine similarity to
    the tokens of frame j, for ``feats`` [B, h, w, C]. 1 on the diagonal; high off the diagonal
    means every token finds a close match in the other frame (what tracking relies on)."""
    if feats.ndim != 4:
        raise ConfigError(f"feats {list(feats.shape)}: expected [B, h, w, C]")
    unit = F.normalize(feats.float().flatten(1, 2), dim=-1)  # [B, N, C]
    rows = [
        torch.einsum("nc,bmc->bnm", unit[i], unit).amax(-1).mean(-1) for i in range(unit.shape[0])
    ]
    return torch.stack(rows)


def show_similarity_matrices(features: Mapping[str, torch.Tensor], vmin: float = 0.0) -> Figure:
    """Heat maps of :func:`cross_frame_similarity` [B, B], one per model, side by side.

    ``features`` maps a name to [B, h, w, C]; returns a pyplot-free matplotlib Figure, which a
    notebook shows and ``viz.save_figure`` exports.
    """
    if not features:
        raise ConfigError("features holds no model")
    fig = Figure(figsize=(3.0 * len(features) + 1.0, 3.0), layout="constrained")
    axes = fig.subplots(1, len(features), squeeze=False)[0]
    image = None
    for ax, (name, feats) in zip(axes, features.items(), strict=True):
        sim = cross_frame_similarity(feats).numpy()
        image = ax.imshow(sim, vmin=vmin, vmax=1.0, cmap="viridis")
        ax.set_title(
            f"{name}: {sim[~torch.eye(len(sim), dtype=torch.bool).numpy()].mean():.3f}"
            if len(sim) > 1
            else name,
            fontsize=9,
        )
        ax.set_xlabel("frame j")
        ax.set_ylabel("frame i")
        ax.set_xticks(range(len(sim)))
        ax.set_yticks(range(len(sim)))
    fig.colorbar(image, ax=list(axes), shrink=0.85, label="mean best-match cosine, i to j")
    return fig
