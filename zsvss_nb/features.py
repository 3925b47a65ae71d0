"""Stage 1: noise a window to step t*, denoise with CFG, and read decoder self-attention queries.

METHOD.md 1.1-1.3: VAE-encode (posterior sample, scale 0.18215), add sigma_{t*} * eps with one
noise draw per window (seed reset per window), run the Euler sampler from t* to the end with
classifier-free guidance (cond = empty-prompt embedding, uncond = zeros), capture the spatial
self-attention q of decoder blocks 6-8 at the last step from the cond half, average them and
normalise each token by its max-abs. The same pass stores what stage 3 replays (q/k of the
injected blocks and the latent after every step), on the device, never on disk.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_map_only

from .attention import AttentionController
from .backbone import Backbone
from .config import SegmentConfig
from .errors import ConfigError

CacheKey = tuple[int, int, str, str]  # (step, block, "attn1"|"attn2", "q"|"k")


def block_stride(block: int) -> int:
    """Pixels per token of reference decoder block ``block``: 32 (3-5), 16 (6-8), 8 (9-11)."""
    return 2 ** (6 - block // 3)


@dataclass
class Schedule:
    """The Euler sampler's discretisation: ``timesteps`` [n] and ``sigmas`` [n + 1] (last 0)."""

    timesteps: torch.Tensor
    sigmas: torch.Tensor

    @classmethod
    def for_backbone(cls, backbone: Backbone, num_steps: int) -> Schedule:
        from diffusers import EulerDiscreteScheduler

        sched = EulerDiscreteScheduler.from_config(backbone.scheduler_config)
        sched.set_timesteps(num_steps)
        return cls(sched.timesteps.float().cpu(), sched.sigmas.float().cpu())


@dataclass
class FeatureResult:
    """Everything the later stages need from one window's unmodulated pass.

    features: [B, h, w, C] aggregated, normalised clustering features (float32).
    refine_features: [B, h, w, C'] raw q of the refinement block (METHOD 1.6).
    block_features: raw q per captured block at the feature step, [B, h_b, w_b, C_b].
    images: [B, 3, H', W'] the processed frames in [0, 1]; geometry maps back to the original.
    z_start: the noised latent at t* [B, 4, H'/8, W'/8]; latents[i]: latent after step i.
    cache: stored projections for injection, [halves, B, N, C] per (step, block, layer, kind).
    prefix: outputs of :func:`prefix_modules` at the first modulation step, batch [halves * B]
    ([uncond; cond] halves of frames), keyed by module path; prefix_key = (step, block, layer)
    they were recorded for. halves: CFG halves of the feature pass (1 without guidance).
    """

    features: torch.Tensor
    refine_features: torch.Tensor
    block_features: dict[int, torch.Tensor]
    images: torch.Tensor
    geometry: object
    z_start: torch.Tensor | None = None
    latents: dict[int, torch.Tensor] = field(default_factory=dict)
    cache: dict[CacheKey, torch.Tensor] = field(default_factory=dict)
    schedule: Schedule | None = None
    sigma_start: float | None = None
    unet_evals: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    prefix: dict[str, Any] = field(default_factory=dict)
    prefix_key: tuple[int, int, str] | None = None
    halves: int = 2

    @property
    def grid_hw(self) -> tuple[int, int]:
        return int(self.features.shape[1]), int(self.features.shape[2])


def normalise_tokens(x: torch.Tensor, mode: str) -> torch.Tensor:
    """Per-token normalisation of [..., C]: "linf" (METHOD 1.3: f / max|f|), "l2" or "none"."""
    if mode == "linf":
        return x / x.abs().amax(dim=-1, keepdim=True).clamp_min(1e-12)
    if mode == "l2":
        return torch.nn.functional.normalize(x, dim=-1)
    if mode == "none":
        return x
    raise ConfigError(f"normalisation={mode!r}: use 'linf', 'l2' or 'none'")


def aggregate(blocks: list[torch.Tensor], mode: str) -> torch.Tensor:
    """Combine per-block [B, h, w, C] queries: element-wise "mean" (METHOD 1.3) or "concat"."""
    if mode == "mean":
        return torch.stack(blocks).mean(0)
    if mode == "concat":
        return torch.cat(blocks, dim=-1)
    raise ConfigError(f"aggregation={mode!r}: use 'mean' or 'concat'")


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


def cfg_embeddings(backbone: Backbone, prompt: str, guidance: float) -> torch.Tensor:
    """[halves, 77, D]: (zeros, prompt) with guidance (METHOD 1.2: uncond = zero embedding)."""
    cond = backbone.prompt_embedding(prompt)
    if guidance == 1.0:
        return cond
    return torch.cat([torch.zeros_like(cond), cond])


def unet_eps(
    backbone: Backbone,
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
    backbone: Backbone, images: torch.Tensor, cfg: SegmentConfig, schedule: Schedule
) -> tuple[torch.Tensor, float]:
    """z_{t*} = z0 + sigma_{t*} * eps with the generator seeded per window (METHOD 1.2)."""
    gen = torch.Generator(device=backbone.device).manual_seed(cfg.features.seed)
    z0 = backbone.encode(images, gen, sample=cfg.features.sample_posterior).float()
    eps = torch.randn(z0.shape, generator=gen, device=z0.device, dtype=z0.dtype)
    sigma = float(schedule.sigmas[cfg.features.start_step])
    return z0 + sigma * eps, sigma


def _as_frames(window) -> torch.Tensor:
    frames = getattr(window, "frames", window)
    if not isinstance(frames, torch.Tensor) or frames.ndim != 4 or frames.shape[1] != 3:
        raise ConfigError("window must be a Window or a frame tensor [B, 3, H, W]")
    return frames


@torch.inference_mode()
def extract(
    backbone: Backbone,
    window,
    cfg: SegmentConfig | None = None,
    extra_blocks: Iterable[int] = (),
    keep_cache: bool | None = None,
) -> FeatureResult:
    """Run stage 1 on one window and return :class:`FeatureResult`.

    ``window``: a :class:`zsvss_nb.video.Window` or frames [B, 3, H, W] (uint8, or float in
    [0, 1]). ``extra_blocks`` adds more blocks' q to ``block_features`` (for probing).
    ``keep_cache`` stores the injection caches (default: when stage 3 is masked modulation).
    """
    from .video import prepare_frames

    if backbone.kind == "svd":  # Stable Video Diffusion: its own sampler and conditioning
        from . import svd

        return svd.extract(backbone, window, cfg, extra_blocks, keep_cache)
    cfg = cfg or SegmentConfig.paper_sd()
    fcfg = cfg.features
    frames = _as_frames(window)
    if not frames.dtype.is_floating_point:
        frames = frames.float() / 255.0
    seconds: dict[str, float] = {}
    tic = time.perf_counter()
    images, geometry = prepare_frames(
        (frames * 255).round().to(torch.uint8) if frames.is_floating_point() else frames,
        fcfg.size_policy,
        backbone.size_multiple,
        fcfg.max_side,
        fcfg.resize_filter,
    )
    images = images.to(backbone.device)
    if backbone.kind == "dinov2":
        return _extract_vit(backbone, images, geometry, cfg, seconds, tic)

    schedule = Schedule.for_backbone(backbone, fcfg.num_inference_steps)
    z, sigma = encode_and_noise(backbone, images, cfg, schedule)
    z_start = z.clone()
    seconds["encode"] = time.perf_counter() - tic

    keep = cfg.upsample.method == "modulation" if keep_cache is None else keep_cache
    feature_blocks = sorted({*fcfg.blocks, fcfg.refine_block, *extra_blocks})
    capture: dict[tuple[int, str, str], set[int]] = {
        (b, "attn1", "q"): {fcfg.feature_step} for b in feature_blocks
    }
    steps = set(range(fcfg.start_step, fcfg.num_inference_steps))
    prefix_key = prefix_plan(cfg) if keep else None
    if keep and cfg.upsample.inject:
        for b in cfg.upsample.injected_blocks:
            # attn2 k is to_k(text embedding): identical in every pass, so it is not stored.
            for kind_key in ((b, "attn1", "q"), (b, "attn1", "k"), (b, "attn2", "q")):
                capture.setdefault(kind_key, set()).update(
                    s for s in steps if not _before_modulation((s, *kind_key), prefix_key)
                )
    emb = cfg_embeddings(backbone, fcfg.prompt, fcfg.guidance_scale)
    blocks_hooked = sorted({k[0] for k in capture})

    tic = time.perf_counter()
    latents: dict[int, torch.Tensor] = {}
    prefix: dict[str, Any] = {}
    with AttentionController(backbone.unet, blocks_hooked) as ctl:
        ctl.plan.capture = {k: frozenset(v) for k, v in capture.items()}
        ctl.plan.halves = emb.shape[0]
        handles = []
        if prefix_key is not None:
            for name, module in prefix_modules(backbone.unet, *prefix_key[1:]).items():
                handles.append(
                    module.register_forward_hook(
                        _prefix_hook(prefix, name, ctl.plan, prefix_key[0])
                    )
                )
        try:
            for i in range(fcfg.start_step, fcfg.num_inference_steps):
                ctl.plan.step = i
                eps = unet_eps(
                    backbone,
                    z,
                    float(schedule.sigmas[i]),
                    float(schedule.timesteps[i]),
                    emb,
                    fcfg.guidance_scale,
                )
                z = z + (schedule.sigmas[i + 1] - schedule.sigmas[i]).item() * eps
                if keep:
                    latents[i] = z
        finally:
            for handle in handles:
                handle.remove()
        stored = ctl.stored
    seconds["feature_pass"] = time.perf_counter() - tic

    H, W = images.shape[-2:]
    block_features = {}
    for b in feature_blocks:
        q = stored[(fcfg.feature_step, b, "attn1", "q")][-1].float()  # cond half (METHOD 1.2)
        s = block_stride(b)
        block_features[b] = q.unflatten(1, (H // s, W // s))
    feats = aggregate([block_features[b] for b in fcfg.blocks], fcfg.aggregation)
    cache = {}
    if keep and cfg.upsample.inject:
        cache = {
            k: v
            for k, v in stored.items()
            if k[0] >= fcfg.start_step
            and k[1] in cfg.upsample.injected_blocks
            and not _before_modulation(k, prefix_key)
        }
    return FeatureResult(
        features=normalise_tokens(feats, fcfg.normalisation),
        refine_features=block_features[fcfg.refine_block],
        block_features=block_features,
        images=images,
        geometry=geometry,
        z_start=z_start,
        latents=latents,
        cache=cache,
        schedule=schedule,
        sigma_start=sigma,
        unet_evals=(fcfg.num_inference_steps - fcfg.start_step) * emb.shape[0] * z.shape[0],
        seconds=seconds,
        prefix=prefix,
        prefix_key=prefix_key if prefix else None,
        halves=emb.shape[0],
    )


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


def _prefix_hook(store: dict[str, Any], name: str, plan, step: int):
    """Forward hook keeping ``name``'s output (a tensor or tuple of tensors) at ``step``."""

    def hook(_module: nn.Module, _inputs, output):
        if plan.step == step:
            store[name] = tree_map_only(torch.Tensor, lambda t: t.detach(), output)

    return hook


def _extract_vit(backbone, images, geometry, cfg, seconds, tic) -> FeatureResult:
    from .dinov2 import dinov2_tokens

    seconds["encode"] = time.perf_counter() - tic
    tic = time.perf_counter()
    tokens = dinov2_tokens(backbone.vit, images, layer=cfg.features.dinov2_layer).float()
    seconds["feature_pass"] = time.perf_counter() - tic
    return FeatureResult(
        features=normalise_tokens(tokens, cfg.features.normalisation),
        refine_features=tokens,
        block_features={-1: tokens},
        images=images,
        geometry=geometry,
        seconds=seconds,
    )
