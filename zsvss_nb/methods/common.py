"""What every method shares: the :class:`Method` record and the timing helper.

A method is a :class:`~zsvss_nb.pipeline.Segmenter` (or a subclass of it) plus a few facts the
runner and the comparison need: which backbone capabilities it needs, whether it takes
first-frame ground truth, whether its ids are independent per frame, and which settings it
forces. Because every method is a Segmenter, ``segment`` and ``run`` (label PNGs, colours,
overlay, manifest) work the same for all of them, and so does the dataset runner; a method that
labels windows its own way overrides :meth:`Segmenter.label_window
<zsvss_nb.pipeline.Segmenter.label_window>` and returns :class:`~zsvss_nb.pipeline.WindowLabels`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from ..backbones.base import Backbone
from ..config import SegmentConfig
from ..errors import ConfigError
from ..pipeline import RunStats, Segmenter

Labels = Literal["either", "clusters", "classes"]

CAPABILITIES: dict[str, tuple[str, str]] = {
    # need -> (Backbone attribute, what a backbone without it lacks)
    "modulation": ("can_modulate", "masked modulation (a diffusion backbone)"),
    "attention": ("has_attention_maps", "self-attention maps (Backbone.attention_maps)"),
}


def unchanged(cfg: SegmentConfig) -> SegmentConfig:
    """The configure step of a method that forces no setting."""
    return cfg


@dataclass(frozen=True)
class Method:
    """A segmentation method the runner can run, and what it needs.

    ``build(backbone, cfg)`` returns its Segmenter; ``configure`` forces the settings that
    define the method (applied by :meth:`resolve`, so manifests record what ran). ``labels``:
    "either" (with first-frame GT the ids are classes, without they are clusters), "clusters"
    (GT-free ids only) or "classes" (needs first-frame GT). ``per_frame``: ids are not aligned
    over time, so score it per frame (``hungarian-frame``, ``majority``). ``needs``: backbone
    capabilities (keys of :data:`CAPABILITIES`). ``sections``: the SegmentConfig sections
    beyond the stages it reads ("diffseg", "propagate"), the only ones its config hash covers.
    """

    name: str
    summary: str
    build: Callable[[Backbone, SegmentConfig], Segmenter]
    configure: Callable[[SegmentConfig], SegmentConfig] = unchanged
    labels: Labels = "either"
    per_frame: bool = False
    needs: tuple[str, ...] = ()
    sections: tuple[str, ...] = ()
    paper: str = ""

    def resolve(self, cfg: SegmentConfig) -> SegmentConfig:
        """``cfg`` with this method's forced settings (idempotent)."""
        return self.configure(cfg)

    def missing(self, backbone: Backbone) -> str | None:
        """What ``backbone`` lacks to run this method, or None when it can."""
        for need in self.needs:
            attribute, what = CAPABILITIES[need]
            if not getattr(backbone, attribute, False):
                return f"{self.name} needs {what}; {backbone.name} has none"
        return None

    def check(self, backbone: Backbone, use_first_frame_gt: bool) -> None:
        """Raise one-line ConfigError when this method cannot run as asked."""
        reason = self.missing(backbone)
        if reason is not None:
            raise ConfigError(reason)
        if use_first_frame_gt and self.labels == "clusters":
            raise ConfigError(
                f"{self.name} labels every frame on its own and takes no first-frame GT; score "
                "its cluster ids under hungarian-frame or majority"
            )
        if not use_first_frame_gt and self.labels == "classes":
            raise ConfigError(f"{self.name} propagates the first frame's GT: it needs it")

    def segmenter(self, backbone: Backbone, cfg: SegmentConfig | None = None) -> Segmenter:
        """The method's Segmenter for ``backbone`` (``cfg`` defaults to the backbone's own)."""
        reason = self.missing(backbone)
        if reason is not None:
            raise ConfigError(reason)
        return self.build(backbone, self.resolve(cfg or backbone.default_config()))


def timed(stats: RunStats, key: str, since: float) -> float:
    """Add the seconds since ``since`` to ``stats.seconds[key]``; return the current time."""
    now = time.perf_counter()
    stats.add({key: now - since})
    return now
