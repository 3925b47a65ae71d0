"""Palettes, overlays, feature images, plots and figure export with provenance.

One namespace over four modules, each loaded on first use of one of its names:

- :mod:`~zsvss_nb.viz.colors`: palette, colorize, overlay, overlay_panel (PIL and numpy, no
  matplotlib: what the run-time writers use);
- :mod:`~zsvss_nb.viz.features`: PCA colours, cosine and cross-frame similarity, their figures;
- :mod:`~zsvss_nb.viz.plots`: the matplotlib plot helpers and notebook panels;
- :mod:`~zsvss_nb.viz.export`: save_figure, read_figure_metadata, publication_style.

``import zsvss_nb.viz`` imports no matplotlib, and nothing here chooses or switches the
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
    "resize_labels": "plots",
    "show_label_maps": "plots",
    "boundary_box": "plots",
    "show_zoom": "plots",
    "show_label_rows": "plots",
    "show_images": "plots",
    # export
    "FIGURE_FORMATS": "export",
    "save_figure": "export",
    "read_figure_metadata": "export",
    "publication_style": "export",
}
_SUBMODULES = ("colors", "features", "plots", "export")

__all__ = list(_LAZY)

if TYPE_CHECKING:
    from .colors import (  # noqa: F401
        VOID_COLOUR,
        VOID_ID,
        ArrayLike,
        colorize,
        overlay,
        overlay_panel,
        palette,
    )
    from .export import (  # noqa: F401
        FIGURE_FORMATS,
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
    from .plots import (  # noqa: F401
        boundary_box,
        plot_per_class_iou,
        plot_tracks,
        qualitative_strip,
        resize_labels,
        show_difference_maps,
        show_frames,
        show_images,
        show_label_maps,
        show_label_rows,
        show_labels,
        show_similarity,
        show_zoom,
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
