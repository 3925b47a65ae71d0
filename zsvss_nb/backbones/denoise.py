"""The feature pass's denoising loop, shared by the SD and SVD backends (METHOD 1.2, 1.3).

A backend supplies one sampler step (its UNet call and Euler update); this module owns what is
the same for both: which projections are captured, the attention hooks, the precision, the
features-only stop, the latents kept for stage 3, and the schedule read once as Python floats
so the per-step loop never reads a tensor back to the host.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from ..config import FeatureConfig, SegmentConfig
from ..kernels.attention import AttentionController, ForwardDone, features_only_stop
from .precision import autocast, unet_dtype, warn_if_emulated_bf16
from .schedule import Schedule

CaptureKey = tuple[int, str, str]  # (block, layer, "q"|"k")


@dataclass(frozen=True)
class StepValues:
    """The schedule as Python floats: sigma_i, the UNet's timestep and sigma_{i+1} - sigma_i
    (computed in float32, as the tensors' difference)."""

    sigmas: list[float]
    timesteps: list[float]
    deltas: list[float]

    @classmethod
    def of(cls, schedule: Schedule) -> StepValues:
        sigmas = schedule.sigmas
        return cls(
            sigmas.tolist(), schedule.timesteps.tolist(), (sigmas[1:] - sigmas[:-1]).tolist()
        )


def feature_capture(
    fcfg: FeatureConfig, extra_blocks: Iterable[int] = ()
) -> tuple[list[int], dict[CaptureKey, set[int]]]:
    """The feature blocks (``fcfg.blocks``, the refinement block and ``extra_blocks``) and the
    capture plan that stores their self-attention q at the feature step."""
    blocks = sorted({*fcfg.blocks, fcfg.refine_block, *extra_blocks})
    return blocks, {(b, "attn1", "q"): {fcfg.feature_step} for b in blocks}


@dataclass
class FeaturePass:
    """What the loop left: latents after each step (when kept), the captured projections and
    the last step run."""

    latents: dict[int, torch.Tensor]
    stored: dict[tuple[int, int, str, str], torch.Tensor]
    last_step: int


def feature_pass(
    unet: torch.nn.Module,
    device: torch.device,
    cfg: SegmentConfig,
    z: torch.Tensor,
    step: Callable[[int, torch.Tensor], torch.Tensor],
    capture: dict[CaptureKey, set[int]],
    halves: int,
    keep: bool,
    layers: tuple[str, ...] = ("attn1", "attn2"),
    latent: Callable[[torch.Tensor], torch.Tensor] = lambda z: z,
    hooks: Callable[[AttentionController], contextlib.AbstractContextManager] | None = None,
) -> FeaturePass:
    """Denoise ``z`` from ``features.start_step`` with ``step(i, z) -> z`` under the capture
    hooks. Without ``keep`` (no stage 3 caches) the pass ends once every wanted q is stored
    (``attention.features_only_stop``); with it ``latent(z)`` is kept after every step.
    ``hooks(ctl)`` enters further hooks that need the controller's plan.
    """
    fcfg = cfg.features
    warn_if_emulated_bf16(cfg, device)
    precision = autocast(device, unet_dtype(cfg.precision, device))
    stop = None if keep else features_only_stop(capture)
    last_step = fcfg.num_inference_steps - 1 if stop is None else stop[0]
    latents: dict[int, torch.Tensor] = {}
    blocks = sorted({k[0] for k in capture})
    with AttentionController(unet, blocks, layers) as ctl, precision:
        ctl.plan.capture = {k: frozenset(v) for k, v in capture.items()}
        ctl.plan.halves = halves
        ctl.plan.stop_after = stop
        with hooks(ctl) if hooks is not None else contextlib.nullcontext():
            for i in range(fcfg.start_step, last_step + 1):
                ctl.plan.step = i
                try:
                    z = step(i, z)
                except ForwardDone:
                    break  # features only: every wanted q is stored, the rest is unused
                if keep:
                    latents[i] = latent(z)
        stored = ctl.stored
    return FeaturePass(latents, stored, last_step)
