"""Palettes, overlays, feature images, plots and figure export with provenance.

One namespace over six modules, each loaded on first use of one of its names:

- :mod:`~zsvss_nb.notebook.viz.colors`: palettes (VOC for label files, cluster colours, the
  datasets' own),
  colorize, overlay, overlay_panel (PIL and numpy, no matplotlib: what the run-time writers use);
- :mod:`~zsvss_nb.notebook.viz.features`: PCA colours, cosine and cross-frame similarity, their
  figures;
- :mod:`~zsvss_nb.notebook.viz.plots`: the matplotlib plot helpers;
- :mod:`~zsvss_nb.notebook.viz.panels`: notebook panels (label maps of any grid, rows over time,
  zooms);
- :mod:`~zsvss_nb.notebook.viz.layout`: axes grids, legends below the panels, frame picks;
- :mod:`~zsvss_nb.notebook.viz.export`: save_figure, read_figure_metadata, publication_style.

``import zsvss_nb.notebook.viz`` imports no matplotlib, and nothing here chooses or switches the
matplotlib backend: figures are pyplot-free ``matplotlib.figure.Figure`` objects, which need
none. Plot helpers take ``ax=`` and return the Figure.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {
    # colors
    "VOID_ID": "colors",
    "VOID_COLOUR": "colors",
    "ArrayLike": "colors",
    "palette": "colors",
    "PALETTES": "colors",
    "cluster_palette": "colors",
    "dataset_palette": "colors",
    "dataset_names": "colors",
    "resolve_palette": "colors",
    "colorize": "colors",
    "overlay": "colors",
    "overlay_panel": "colors",
    # features
    "feature_pca_rgb": "features",
    "cosine_similarity_map": "features",
    "relative_cell": "features",
    "show_feature_pca": "features",
    "show_feature_views": "features",
    "cross_frame_similarity": "features",
    "show_similarity_matrices": "features",
    # plots
    "show_frames": "plots",
    "show_labels": "plots",
    "show_similarity": "plots",
    "show_difference_maps": "plots",
    "plot_per_class_iou": "plots",
    "qualitative_strip": "plots",
    "plot_tracks": "plots",
    # panels
    "resize_labels": "panels",
    "show_label_maps": "panels",
    "boundary_box": "panels",
    "show_zoom": "panels",
    "show_label_rows": "panels",
    "show_images": "panels",
    # layout
    "spread_indices": "layout",
    "frames_around": "layout",
    # export
    "FIGURE_FORMATS": "export",
    "save_figure": "export",
    "read_figure_metadata": "export",
    "publication_style": "export",
    "COLUMN_WIDTH": "export",
    "PAGE_WIDTH": "export",
    "figure_provenance": "export",
}
_SUBMODULES = ("colors", "features", "plots", "panels", "layout", "export")

__all__ = list(_LAZY)

if TYPE_CHECKING:
    from .colors import (  # noqa: F401
        PALETTES,
        VOID_COLOUR,
        VOID_ID,
        ArrayLike,
        cluster_palette,
        colorize,
        dataset_names,
        dataset_palette,
        overlay,
        overlay_panel,
        palette,
        resolve_palette,
    )
    from .export import (  # noqa: F401
        COLUMN_WIDTH,
        FIGURE_FORMATS,
        PAGE_WIDTH,
        figure_provenance,
        publication_style,
        read_figure_metadata,
        save_figure,
    )
    from .features import (  # noqa: F401
        cosine_similarity_map,
        cross_frame_similarity,
        feature_pca_rgb,
        relative_cell,
        show_feature_pca,
        show_feature_views,
        show_similarity_matrices,
    )
    from .layout import frames_around, spread_indices  # noqa: F401
    from .panels import (  # noqa: F401
        boundary_box,
        resize_labels,
        show_images,
        show_label_maps,
        show_label_rows,
        show_zoom,
    )
    from .plots import (  # noqa: F401
        plot_per_class_iou,
        plot_tracks,
        qualitative_strip,
        show_difference_maps,
        show_frames,
        show_labels,
        show_similarity,
    )


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value  # later look-ups skip __getattr__
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, *_SUBMODULES})
