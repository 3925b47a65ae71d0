"""Stage 1 with Stable Diffusion: noise to t*, denoise with guidance, read decoder queries.

METHOD.md 1.1-1.3: VAE-encode (posterior sample, scale 0.18215), add sigma_{t*} * eps with one
noise draw per window (seed reset per window), run the Euler sampler from t* to the end with
classifier-free guidance (cond = empty-prompt embedding, uncond = zeros), capture the spatial
self-attention q of decoder blocks 6-8 at the last step from the cond half, average them and
normalise each token by its max-abs. The same pass stores what stage 3 replays (q/k of the
injected blocks and the latent after every step), on the device, never on disk. Without
stage 3 (a bilinear or other upsampler) nothing after the last block's q at the feature step is
used, so that UNet call stops there (exact; ``attention.ForwardDone``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils._pytree import tree_map_only

from ...config import SegmentConfig
from ...kernels.frames import Geometry
from ..base import DiffusionFeatureResult
from ..denoise import StepValues, feature_capture, feature_pass
from ..schedule import Schedule, query_features

if TYPE_CHECKING:
    from .model import StableDiffusion


@dataclass
class SdFeatureResult(DiffusionFeatureResult):
    """The SD feature pass plus the UNet prefix the batched modulation replays.

    prefix: outputs of :func:`prefix_modules` at the first modulation step, batch [halves * B]
    ([uncond; cond] halves of frames), keyed by module path; prefix_key = (step, block, layer)
    they were recorded for.
    """

    prefix: dict[str, Any] = field(default_factory=dict)
    prefix_key: tuple[int, int, str] | None = None


def prefix_modules(unet: nn.Module, block: int, layer: str) -> dict[str, nn.Module]:
    """The modules of a diffusers UNet that run before ``layer``'s output in decoder ``block``.

    In execution order and coarsest first: every down block, the mid block, the up blocks
    before ``block``'s, then inside that up block the resnets up to and the transformers
    before ``block``'s own (plus its self-attention when ``layer`` is "attn2"). Their outputs
    depend only on the step's latent, timestep and prompt, so a modulated pass that starts from
    the feature pass's latent reproduces them exactly up to the modulated layer (METHOD 1.7a).
    """
    up, idx = divmod(block, 3)
    names = [f"down_blocks.{i}" for i in range(len(unet.down_blocks))]
    if getattr(unet, "mid_block", None) is not None:
        names.append("mid_block")
    names += [f"up_blocks.{j}" for j in range(up)]
    for i in range(idx + 1):  # resnet i runs before transformer i in a cross-attn up block
        names.append(f"up_blocks.{up}.resnets.{i}")
        if i < idx:
            names.append(f"up_blocks.{up}.attentions.{i}")
    if layer == "attn2":
        names.append(f"up_blocks.{up}.attentions.{idx}.transformer_blocks.0.attn1")
    return {name: unet.get_submodule(name) for name in names}


def prefix_plan(cfg: SegmentConfig) -> tuple[int, int, str] | None:
    """(step, block, layer) whose UNet prefix the batched modulation can replay, or None."""
    ucfg, fcfg = cfg.upsample, cfg.features
    if not (ucfg.method == "modulation" and ucfg.share_prefix and ucfg.execution == "batched"):
        return None
    if not ucfg.modulation_steps or not ucfg.modulated_blocks:
        return None
    step = min(ucfg.modulation_steps)
    if not fcfg.start_step <= step < fcfg.num_inference_steps:
        return None
    return step, min(ucfg.modulated_blocks), "attn2" if ucfg.tensor == "attn2_out" else "attn1"


def cfg_embeddings(backbone: StableDiffusion, prompt: str, guidance: float) -> torch.Tensor:
    """[halves, 77, D]: (zeros, prompt) with guidance (METHOD 1.2: uncond = zero embedding)."""
    cond = backbone.prompt_embedding(prompt)
    if guidance == 1.0:
        return cond
    return torch.cat([torch.zeros_like(cond), cond])


def unet_eps(
    backbone: StableDiffusion,
    z: torch.Tensor,
    sigma: float,
    timestep: float,
    emb: torch.Tensor,
    guidance: float,
) -> torch.Tensor:
    """Guided epsilon for latents z [n, 4, h, w]: one UNet call on [uncond; cond] (METHOD 1.2)."""
    halves = emb.shape[0]
    x = (z / (sigma**2 + 1) ** 0.5).to(backbone.dtype)
    x = x.repeat(halves, 1, 1, 1)
    ctx = emb.repeat_interleave(z.shape[0], dim=0)
    t = torch.full((x.shape[0],), float(timestep), device=x.device)
    eps = backbone.unet(x, t, encoder_hidden_states=ctx).sample.float()
    if halves == 1:
        return eps
    eps_u, eps_c = eps.chunk(2)
    return eps_u + guidance * (eps_c - eps_u)


def encode_and_noise(
    backbone: StableDiffusion, images: torch.Tensor, cfg: SegmentConfig, schedule: Schedule
) -> tuple[torch.Tensor, float]:
    """z_{t*} = z0 + sigma_{t*} * eps with the generator seeded per window (METHOD 1.2)."""
    gen = torch.Generator(device=backbone.device).manual_seed(cfg.features.seed)
    z0 = backbone.encode(
        images, gen, sample=cfg.features.sample_posterior, tile=cfg.features.vae_tile
    ).float()
    eps = torch.randn(z0.shape, generator=gen, device=z0.device, dtype=z0.dtype)
    sigma = float(schedule.sigmas[cfg.features.start_step])
    return z0 + sigma * eps, sigma


def modulation_point(cfg: SegmentConfig) -> tuple[int, int, int] | None:
    """(step, block, 0 for attn1 / 1 for attn2) of the earliest modulated layer, or None."""
    ucfg = cfg.upsample
    if not ucfg.modulation_steps or not ucfg.modulated_blocks:
        return None
    layer = 1 if ucfg.tensor == "attn2_out" else 0
    return min(ucfg.modulation_steps), min(ucfg.modulated_blocks), layer


def _before_modulation(key: tuple, prefix_key: tuple[int, int, str] | None) -> bool:
    """Whether the projection ``key`` = (step, block, layer, kind) is computed before the
    modulated layer at the replayed step, so every modulated pass reproduces it exactly and
    it need not be stored for injection."""
    if prefix_key is None:
        return False
    step, block, layer = prefix_key
    # in the modulated block, the projections of the modulated layer and of those before it
    return key[0] == step and (
        key[1] < block or (key[1] == block and (key[2] == "attn1" or layer == "attn2"))
    )


@contextlib.contextmanager
def record_prefix(
    unet: nn.Module, prefix_key: tuple[int, int, str] | None, plan, store: dict[str, Any]
) -> Iterator[None]:
    """While the block runs, keep the outputs of :func:`prefix_modules` at the replayed step
    in ``store`` (tensors or tuples of tensors, keyed by module path)."""
    handles = []
    if prefix_key is not None:
        step = prefix_key[0]
        for name, module in prefix_modules(unet, *prefix_key[1:]).items():

            def hook(_module: nn.Module, _inputs, output, name: str = name):
                if plan.step == step:
                    store[name] = tree_map_only(torch.Tensor, lambda t: t.detach(), output)

            handles.append(module.register_forward_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _capture_plan(
    cfg: SegmentConfig, keep: bool, extra_blocks: Iterable[int]
) -> tuple[list[int], dict, tuple[int, int, str] | None]:
    """Feature blocks, what to capture at which steps, and the replayed prefix's key."""
    fcfg = cfg.features
    feature_blocks, capture = feature_capture(fcfg, extra_blocks)
    steps = set(range(fcfg.start_step, fcfg.num_inference_steps))
    prefix_key = prefix_plan(cfg) if keep else None
    if keep and cfg.upsample.inject:
        for b in cfg.upsample.injected_blocks:
            # attn2 k is to_k(text embedding): identical in every pass, so it is not stored.
            for kind_key in ((b, "attn1", "q"), (b, "attn1", "k"), (b, "attn2", "q")):
                capture.setdefault(kind_key, set()).update(
                    s for s in steps if not _before_modulation((s, *kind_key), prefix_key)
                )
    return feature_blocks, capture, prefix_key


@torch.inference_mode()
def extract_sd(
    backbone: StableDiffusion,
    images: torch.Tensor,
    geometry: Geometry,
    cfg: SegmentConfig,
    extra_blocks: Iterable[int] = (),
    keep_cache: bool | None = None,
    started: float | None = None,
) -> SdFeatureResult:
    """Stage 1 on prepared frames [B, 3, H', W'] in [0, 1] (see the module docstring).

    ``extra_blocks`` adds more blocks' q to ``block_features`` (for probing). ``keep_cache``
    stores the injection caches (default: when stage 3 is masked modulation).
    """
    fcfg = cfg.features
    seconds: dict[str, float] = {}
    tic = time.perf_counter() if started is None else started
    schedule = Schedule.for_backbone(backbone, fcfg.num_inference_steps)
    z, sigma = encode_and_noise(backbone, images, cfg, schedule)
    z_start = z.clone()
    seconds["encode"] = time.perf_counter() - tic

    keep = cfg.upsample.method == "modulation" if keep_cache is None else keep_cache
    feature_blocks, capture, prefix_key = _capture_plan(cfg, keep, extra_blocks)
    emb = cfg_embeddings(backbone, fcfg.prompt, fcfg.guidance_scale)
    at = StepValues.of(schedule)

    def step(i: int, z: torch.Tensor) -> torch.Tensor:
        eps = unet_eps(backbone, z, at.sigmas[i], at.timesteps[i], emb, fcfg.guidance_scale)
        return z + at.deltas[i] * eps

    tic = time.perf_counter()
    prefix: dict[str, Any] = {}
    done = feature_pass(
        backbone.unet,
        backbone.device,
        cfg,
        z,
        step,
        capture,
        emb.shape[0],
        keep,
        hooks=lambda ctl: record_prefix(backbone.unet, prefix_key, ctl.plan, prefix),
    )
    seconds["feature_pass"] = time.perf_counter() - tic

    cache = {}
    if keep and cfg.upsample.inject:
        cache = {
            k: v
            for k, v in done.stored.items()
            if k[0] >= fcfg.start_step
            and k[1] in cfg.upsample.injected_blocks
            and not _before_modulation(k, prefix_key)
        }
    return SdFeatureResult(
        **query_features(done.stored, fcfg, feature_blocks, tuple(images.shape[-2:])),
        images=images,
        geometry=geometry,
        z_start=z_start,
        latents=done.latents,
        cache=cache,
        schedule=schedule,
        sigma_start=sigma,
        unet_evals=(done.last_step + 1 - fcfg.start_step) * emb.shape[0] * z.shape[0],
        seconds=seconds,
        prefix=prefix,
        prefix_key=prefix_key if prefix else None,
        halves=emb.shape[0],
    )
