"""The Euler sampler's schedule, the query features a diffusion pass reads, and step checks."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..config import FeatureConfig, SegmentConfig
from ..errors import ConfigError
from ..kernels.ops import aggregate, normalise_tokens


# -- sampling ---------------------------------------------------------------------------------
def block_stride(block: int) -> int:
    """Pixels per token of reference decoder block ``block``: 32 (3-5), 16 (6-8), 8 (9-11)."""
    return 2 ** (6 - block // 3)


@dataclass
class Schedule:
    """The Euler sampler's discretisation: ``timesteps`` [n] and ``sigmas`` [n + 1] (last 0)."""

    timesteps: torch.Tensor
    sigmas: torch.Tensor

    @classmethod
    def for_backbone(cls, backbone, num_steps: int) -> Schedule:
        """The schedule of ``backbone.scheduler_config`` (diffusers EulerDiscreteScheduler)."""
        from diffusers import EulerDiscreteScheduler

        sched = EulerDiscreteScheduler.from_config(backbone.scheduler_config)
        sched.set_timesteps(num_steps)
        return cls(sched.timesteps.float().cpu(), sched.sigmas.float().cpu())


def query_features(
    stored: Mapping[tuple[int, int, str, str], torch.Tensor],
    fcfg: FeatureConfig,
    blocks: list[int],
    image_hw: tuple[int, int],
) -> dict[str, Any]:
    """The feature fields of a diffusion pass's result from its captured queries (METHOD 1.3).

    ``stored[(feature_step, b, "attn1", "q")]`` is [halves, B, N, C]: the cond half of each of
    ``blocks`` becomes [B, h_b, w_b, C] (``block_features``); the mean (or concatenation) of
    ``fcfg.blocks``, normalised per token, is ``features``; ``fcfg.refine_block``'s raw q the
    refinement's ``refine_features``.
    """
    H, W = image_hw
    block_features = {}
    for b in blocks:
        q = stored[(fcfg.feature_step, b, "attn1", "q")][-1].float()  # cond half (METHOD 1.2)
        s = block_stride(b)
        block_features[b] = q.unflatten(1, (H // s, W // s))
    feats = aggregate([block_features[b] for b in fcfg.blocks], fcfg.aggregation)
    return {
        "features": normalise_tokens(feats, fcfg.normalisation),
        "refine_features": block_features[fcfg.refine_block],
        "block_features": block_features,
    }


# -- stage 3 --------------------------------------------------------------------------------
def check_modulation_steps(cfg: SegmentConfig) -> None:
    """The modulation and blending steps lie in the denoising steps, the modulated blocks have
    attention (decoder blocks 3-11); a one-line :class:`ConfigError` otherwise."""
    start, end = cfg.features.start_step, cfg.features.num_inference_steps
    for name in ("modulation_steps", "blend_steps"):
        bad = [s for s in getattr(cfg.upsample, name) if not start <= s < end]
        if bad:
            raise ConfigError(
                f"upsample.{name} {bad} lie outside the denoising steps [{start}, {end})"
            )
    bad = [b for b in cfg.upsample.modulated_blocks if not 3 <= b <= 11]
    if bad:
        raise ConfigError(f"modulated_blocks {bad} have no attention")
