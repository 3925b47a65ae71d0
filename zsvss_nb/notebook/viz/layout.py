"""Figure layout shared by the plot helpers: axes grids, legends outside the grid, frame picks.

Every figure built here uses matplotlib's constrained layout, so a legend placed with
:func:`class_legend` sits below the panels (``loc="outside lower center"``) instead of inside
one column, and never changes the size of one row or column of panels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ...errors import InputError
from .colors import ClassNames, label_text

MAX_COLUMNS = 8  # panels per row of a time strip: wider figures are unreadable in a paper
LEGEND_COLUMNS = 6  # legend entries per line below a figure


def single_axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    """The caller's Axes, or a new constrained-layout figure with one Axes."""
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def grid_axes(
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


def hide_unused(axes: np.ndarray, used: int) -> None:
    """Switch off the Axes after the first ``used`` (a partly filled last row)."""
    for a in axes.reshape(-1)[used:]:
        a.set_axis_off()


def clean_axes(a: Axes) -> None:
    """No ticks: image panels."""
    a.set_xticks([])
    a.set_yticks([])


def frame_extent(size_hw: tuple[int, int]) -> tuple[float, float, float, float]:
    """``imshow`` extent that draws any grid over a ``(H, W)`` frame: same place, same aspect."""
    height, width = size_hw
    return (0.0, float(width), float(height), 0.0)


def spread_indices(count: int, max_count: int = MAX_COLUMNS) -> list[int]:
    """At most ``max_count`` indices of ``range(count)``, evenly spread, first and last kept."""
    if count < 1:
        raise InputError("nothing to show: no frames")
    if max_count < 1:
        raise InputError(f"max_count={max_count} must be at least 1")
    if count <= max_count:
        return list(range(count))
    if max_count == 1:
        return [0]
    return sorted({int(round(v)) for v in np.linspace(0, count - 1, max_count)})


def frames_around(count: int, frame: int, max_count: int = MAX_COLUMNS) -> list[int]:
    """At most ``max_count`` consecutive indices of ``range(count)`` holding ``frame`` (as
    near the middle as the ends allow): the frames an explorer shows around its query frame."""
    spread_indices(count, max_count)  # the same checks
    n = min(count, max_count)
    start = min(max(frame % count - (n - 1) // 2, 0), count - n)
    return list(range(start, start + n))


def class_legend(
    fig: Figure,
    ids: Sequence[int],
    colours: np.ndarray,
    class_names: ClassNames = None,
    title: str | None = None,
) -> None:
    """One legend of label colours below all panels of ``fig`` ("id name" per entry).

    ``colours``: the ``[256, 3]`` palette the panels use. On a constrained-layout figure the
    legend gets its own space below the grid, and the figure grows by the legend's height, so
    the panels keep their size.
    """
    handles = [
        Patch(
            facecolor=colours[i] / 255.0,
            edgecolor="k",
            linewidth=0.5,
            label=label_text(i, class_names),
        )
        for i in ids
    ]
    if not handles:
        return
    legend = fig.legend(
        handles=handles,
        loc="outside lower center",
        ncols=min(len(handles), LEGEND_COLUMNS),
        frameon=False,
        title=title,
    )
    lines = -(-len(handles) // LEGEND_COLUMNS) + (title is not None)
    line_inches = 1.8 * legend.get_texts()[0].get_fontsize() / 72.0
    width, height = fig.get_size_inches()
    fig.set_size_inches(width, height + lines * line_inches + 0.1)
