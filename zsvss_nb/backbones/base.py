"""The backbone contract: what every model says about itself and the two stage entry points.

A backbone is one model family behind one small interface (SAM 2's checked backbone passed in
at construction, DIFT's one-shape featurizer). The stages never ask which model they hold:

- class attributes say what it can do: ``size_multiple`` (input sides, METHOD 1.1),
  ``feature_stride`` (pixels per feature cell) and ``can_modulate`` (stage 3, METHOD 1.7);
- :meth:`Backbone.default_config` is the paper's config for this model;
- :meth:`Backbone.extract_features` is stage 1 on prepared frames and returns a
  :class:`FeatureResult`; :meth:`Backbone.modulation_maps` is the model-specific part of stage 3
  and returns the unnormalised per-class difference maps (:class:`ModulationMaps`);
- :meth:`Backbone.attention_maps` (``has_attention_maps``) gives self-attention probabilities
  per resolution (:class:`AttentionMaps`), what attention-based baselines such as DiffSeg read;
- :meth:`Backbone.fingerprint` is the one hash that names the weights in manifests and figures.

Adding a model means subclassing :class:`Backbone` in a module of its own and registering its
loader in :mod:`zsvss_nb.backbones`; ``tests/test_backbone_contract.py`` runs a minimal one
through :class:`~zsvss_nb.pipeline.Segmenter`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ..config import SegmentConfig
from ..errors import ConfigError
from ..kernels.frames import Geometry

CacheKey = tuple[int, int, str, str]  # (step, block, "attn1"|"attn2"|"tattn1"..., "q"|"k")


@dataclass
class FeatureResult:
    """What stages 2 and 3 need from one window's feature pass.

    features: [B, h, w, C] normalised clustering features (float32).
    refine_features: [B, h, w, C'] raw features the refinement tracks on (METHOD 1.6).
    block_features: raw features per captured block at the feature step, [B, h_b, w_b, C_b].
    images: [B, 3, H', W'] the processed frames in [0, 1]; geometry maps back to the original.
    seconds: stage-1 timings ("encode" includes frame preparation, "feature_pass");
    unet_evals: model sample-evaluations spent.
    """

    features: torch.Tensor
    refine_features: torch.Tensor
    block_features: dict[int, torch.Tensor]
    images: torch.Tensor
    geometry: Geometry
    seconds: dict[str, float] = field(default_factory=dict)
    unet_evals: int = 0

    @property
    def grid_hw(self) -> tuple[int, int]:
        return int(self.features.shape[1]), int(self.features.shape[2])


@dataclass
class DiffusionFeatureResult(FeatureResult):
    """A diffusion backbone's feature pass plus what its modulated passes replay.

    z_start: the noised latent at t* [B, 4, H'/8, W'/8]; latents[i]: latent after step i.
    cache: stored projections for injection per (step, block, layer, "q"|"k"), as
    [halves, B, N, C] (temporal layers: [halves, N, B, C]). halves: CFG halves of the pass.
    """

    z_start: torch.Tensor | None = None
    latents: dict[int, torch.Tensor] = field(default_factory=dict)
    cache: dict[CacheKey, torch.Tensor] = field(default_factory=dict)
    schedule: Any = None
    sigma_start: float | None = None
    halves: int = 2


@dataclass
class ModulationMaps:
    """The model-specific result of stage 3 for one window.

    diff: [K, B, H', W'] unnormalised difference maps D_c (METHOD 1.7 step 3) at the processed
    size, zero where a (class, frame) pair was not modulated; candidates: [K, B, h, w] bool, the
    classes allowed to compete at each feature cell, or None for all of them.
    """

    diff: torch.Tensor
    candidates: torch.Tensor | None = None
    unet_evals: int = 0
    vae_decodes: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class AttentionMaps:
    """Self-attention probabilities of one batch of frames, one tensor per resolution.

    maps: finest first, each [B, h, w, h, w] (query cell, key cell) with every query's row
    summing to 1 over the key grid, averaged over heads and over the layers of that
    resolution. seconds: timings ("encode", "attention_pass"); unet_evals: model evaluations.
    """

    maps: tuple[torch.Tensor, ...]
    seconds: dict[str, float] = field(default_factory=dict)
    unet_evals: int = 0


@dataclass(eq=False)
class Backbone:
    """A loaded model and what it can do (see the module docstring for the contract).

    ``kind`` labels the family ("sd", "svd", "dinov2", ...) in manifests; nothing branches on
    it. ``identity`` names the model and where it came from; :meth:`fingerprint` adds a hash.
    """

    kind: str
    device: torch.device
    dtype: torch.dtype
    identity: dict[str, Any]
    _fingerprint: str | None = field(default=None, repr=False, kw_only=True)
    # bytes per unit of work measured by backbones.memory.BatchPlanner, keyed by call and shape
    footprints: dict[tuple, float] = field(default_factory=dict, repr=False, kw_only=True)

    size_multiple: ClassVar[int] = 64  # input sides must be multiples of this (METHOD 1.1)
    feature_stride: ClassVar[int] = 16  # pixels per feature cell (decoder blocks 6-8: H/16)
    can_modulate: ClassVar[bool] = False  # stage 3 masked modulation (METHOD 1.7)
    has_attention_maps: ClassVar[bool] = False  # attention_maps() (attention-based baselines)

    @property
    def name(self) -> str:
        return str(self.identity.get("name", "unknown"))

    def modules(self) -> list[nn.Module]:
        """The model's networks, in a fixed order (what :meth:`fingerprint` hashes)."""
        return []

    @classmethod
    def default_config(cls) -> SegmentConfig:
        """The settings this model runs with unless told otherwise (the paper's, for SD/SVD)."""
        return SegmentConfig.paper_sd()

    def extract_features(
        self,
        images: torch.Tensor,
        geometry: Geometry,
        cfg: SegmentConfig,
        *,
        extra_blocks: Iterable[int] = (),
        keep_cache: bool | None = None,
        started: float | None = None,
    ) -> FeatureResult:
        """Stage 1 on prepared frames [B, 3, H', W'] in [0, 1] (on this device).

        ``extra_blocks`` adds blocks to ``block_features`` (probing); ``keep_cache`` keeps what
        :meth:`modulation_maps` replays (default: when stage 3 is masked modulation);
        ``started`` is when frame preparation began (it counts as "encode").
        """
        raise ConfigError(f"backbone {self.kind!r} does not extract features")

    def modulation_maps(
        self,
        feats: FeatureResult,
        masks: torch.Tensor,
        classes: torch.Tensor,
        coarse: torch.Tensor,
        cfg: SegmentConfig,
    ) -> ModulationMaps:
        """The per-class difference maps of masked modulation for masks [K, B, h, w]."""
        raise ConfigError(f"masked modulation needs a diffusion backbone, not {self.kind!r}")

    def size_advice(self, image_hw: tuple[int, int], cfg: SegmentConfig) -> str | None:
        """A one-line warning when frames processed at ``image_hw`` (H', W') are so large that
        the model changes how it runs or needs far more memory (None: nothing to say)."""
        return None

    def attention_maps(
        self, images: torch.Tensor, geometry: Geometry, cfg: SegmentConfig
    ) -> AttentionMaps:
        """Self-attention probabilities of prepared frames [B, 3, H', W'] in [0, 1]."""
        raise ConfigError(f"backbone {self.kind!r} provides no self-attention maps")

    def release_text_encoder(self, prompts: tuple[str, ...] = ("",)) -> None:
        """Drop a text encoder once ``prompts`` are embedded (a no-op without one)."""

    def warm_up(self, size: int) -> None:
        """Run the model once at ``size`` x ``size`` so one-time kernel set-up is not timed."""
        self.fingerprint()

    def fingerprint(self) -> str:
        """sha256 of the weights' source file(s) or, for built models, of the parameters."""
        if self._fingerprint is None:
            files = [Path(p) for p in self.identity.get("files", [])]
            h = hashlib.sha256()
            if files:
                for path in files:
                    with open(path, "rb") as fh:
                        for chunk in iter(lambda: fh.read(1 << 22), b""):
                            h.update(chunk)
            else:
                for module in self.modules():
                    for name, tensor in module.state_dict().items():
                        h.update(name.encode())
                        h.update(tensor.detach().float().cpu().numpy().tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint
