"""The segmentation methods the dataset runner and ``zsvss compare`` can run, by name.

=========================  ===================================================================
``vidseg``                 the paper's method (:mod:`.vidseg`)
``vidseg-no-refine``       ablation: no correspondence-based refinement
``vidseg-no-context-update``  ablation: the scene context is never refit after frame 1
``vidseg-bilinear``        ablation: bilinear upsampling instead of masked modulation
``kmeans-frame``           k-means on each frame's features (:mod:`.kmeans_frame`)
``diffseg-frame``          DiffSeg on each frame (:mod:`.diffseg`)
``emerdiff-frame``         EmerDiff-style k-means + masked modulation per frame (:mod:`.emerdiff`)
``propagate-first-frame``  first-frame GT propagated by feature neighbours (:mod:`.propagate`)
=========================  ===================================================================

Each module's docstring cites the method's paper and says where its defaults come from. A
method is a :class:`Method`; :func:`segmenter` builds its Segmenter, :func:`resolve` applies
its forced settings, :func:`hashed_config` is what its config hash covers.
"""

from __future__ import annotations

from typing import Any

from ..backbones.base import Backbone
from ..config import SegmentConfig
from ..errors import ConfigError
from ..pipeline import Segmenter
from . import diffseg, emerdiff, kmeans_frame, propagate, vidseg
from .common import Method

DEFAULT = "vidseg"

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        vidseg.VIDSEG,
        vidseg.NO_REFINE,
        vidseg.NO_CONTEXT_UPDATE,
        vidseg.BILINEAR,
        kmeans_frame.METHOD,
        diffseg.METHOD,
        emerdiff.METHOD,
        propagate.METHOD,
    )
}

SECTIONS = tuple(sorted({s for m in METHODS.values() for s in m.sections}))


def get_method(name: str) -> Method:
    """The method called ``name`` (ConfigError listing the known names otherwise)."""
    if name not in METHODS:
        raise ConfigError(f"method {name!r} is not known; choose from {', '.join(METHODS)}")
    return METHODS[name]


def resolve(cfg: SegmentConfig, method: str = DEFAULT) -> SegmentConfig:
    """``cfg`` with the forced settings of ``method`` (what its manifests record)."""
    return get_method(method).resolve(cfg)


def segmenter(
    backbone: Backbone, cfg: SegmentConfig | None = None, method: str = DEFAULT
) -> Segmenter:
    """The Segmenter of ``method`` on ``backbone``: ``segment`` and ``run`` as for VidSeg."""
    return get_method(method).segmenter(backbone, cfg)


def hashed_config(cfg: SegmentConfig, method: str = DEFAULT) -> dict[str, Any]:
    """The resolved config as a dict without the method sections ``method`` does not read.

    So a ``vidseg`` run's hash does not change when DiffSeg's or propagation's defaults do
    (and equals the hash of runs made before those sections existed).
    """
    m = get_method(method)
    data = m.resolve(cfg).to_dict()
    for section in SECTIONS:
        if section not in m.sections:
            data.pop(section, None)
    return data


def available(backbone: Backbone, names: list[str] | None = None) -> list[str]:
    """The methods among ``names`` (default: all) that ``backbone`` can run, in order."""
    chosen = list(METHODS) if names is None else names
    return [n for n in chosen if get_method(n).missing(backbone) is None]


__all__ = [
    "DEFAULT",
    "METHODS",
    "SECTIONS",
    "available",
    "get_method",
    "hashed_config",
    "resolve",
    "segmenter",
]
