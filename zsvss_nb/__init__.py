"""zsvss: training-free video semantic segmentation from pre-trained diffusion models.

The public API (DESIGN.md): ``load_backbone``, ``open_video``, ``Segmenter``, ``SegmentConfig``.
Heavy modules are imported on first use, so ``import zsvss_nb`` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .run.threads import apply_thread_policy

# A fresh kernel that imports zsvss_nb before torch gets passive OpenMP waiting and one thread
# per usable core (zsvss_nb.run.threads); variables the user set are left alone.
apply_thread_policy()

__version__ = "0.1.0"

_LAZY = {
    "load_backbone": ("backbones", "load_backbone"),
    "Backbone": ("backbones.base", "Backbone"),
    "open_video": ("io.video", "open_video"),
    "Video": ("io.video", "Video"),
    "Segmenter": ("pipeline", "Segmenter"),
    "SegmentConfig": ("config", "SegmentConfig"),
    "FeatureConfig": ("config", "FeatureConfig"),
    "ContextConfig": ("config", "ContextConfig"),
    "RefineConfig": ("config", "RefineConfig"),
    "UpsampleConfig": ("config", "UpsampleConfig"),
}

__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:
    from .backbones import load_backbone
    from .backbones.base import Backbone
    from .config import ContextConfig, FeatureConfig, RefineConfig, SegmentConfig, UpsampleConfig
    from .io.video import Video, open_video
    from .pipeline import Segmenter


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module 'zsvss_nb' has no attribute {name!r}")
