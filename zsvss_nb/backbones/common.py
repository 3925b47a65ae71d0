"""What the diffusion backbones share: devices, schedules, VAE encoding, loading and saving.

Every backend may import this module; backends never import each other.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import FeatureConfig, SegmentConfig
from ..errors import ConfigError, IncompleteModelError
from ..ops import aggregate, normalise_tokens
from ..writers import atomic_write

log = logging.getLogger(__name__)

ENV_MODEL = "ZSVSS_MODEL"
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".bin")


# -- devices ----------------------------------------------------------------------------------
def default_device() -> torch.device:
    """CUDA, then Apple MPS, then the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` computes in bfloat16 natively (CUDA with bf16, or AVX512-BF16/AMX).

    Without it (e.g. AVX2-only CPUs) PyTorch emulates bf16 matmuls and convolutions at about
    100 times the cost of float32 (benchmarks/precision_probe.py), so bf16 options are a trap.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cpu = getattr(torch, "cpu", None)
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        if cpu is None or not all(hasattr(cpu, name) for name in checks):
            return True  # cannot tell: trust the user's choice
        return bool(cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported())
    return True


# The one switch for what precision="auto" means on a CPU with native bf16 (avx512_bf16/AMX):
# False keeps its UNet in fp32: on a Zen 4 EPYC (avx512_bf16) the bf16 UNet labelled 98.56 % of
# pixels as fp32 (sd21-base-random, 256 px, 5 classes; README Performance), below the 99.5 % bar.
AUTO_CPU_BF16 = False
PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def unet_dtype(precision: str, device: torch.device | str) -> torch.dtype:
    """The dtype the UNet computes in for ``SegmentConfig.precision`` on ``device``.

    METHOD 1.8: the reference runs its UNet under ``torch.autocast`` (fp16 on CUDA). "auto" is
    fp16 on CUDA; on a CPU with native bf16 it is bf16 if :data:`AUTO_CPU_BF16` says so; fp32
    elsewhere.
    """
    device = torch.device(device)
    if precision != "auto":
        if precision not in PRECISION_DTYPES:
            raise ConfigError(f"precision={precision!r}: use auto, fp32, bf16 or fp16")
        return PRECISION_DTYPES[precision]
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and AUTO_CPU_BF16 and native_bf16(device):
        return torch.bfloat16
    return torch.float32


def autocast(device: torch.device | str, dtype: torch.dtype):
    """``torch.autocast`` to ``dtype`` on ``device``'s type; a no-op context for float32."""
    device = torch.device(device)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def modulation_dtype(cfg: SegmentConfig, device: torch.device | str) -> torch.dtype:
    """The modulated passes' UNet dtype: ``upsample.unet_autocast`` when set (and the execution
    is "batched"), else the feature pass's (:func:`unet_dtype` of ``cfg.precision``)."""
    ucfg = cfg.upsample
    if ucfg.unet_autocast != "none" and ucfg.execution != "reference":
        return getattr(torch, ucfg.unet_autocast)
    return unet_dtype(cfg.precision, device)


def decode_dtype(cfg: SegmentConfig) -> torch.dtype:
    """The VAE decode's dtype: ``upsample.decode_dtype``; float32 for the "reference" execution
    (the reference code decodes in fp32, METHOD 1.8)."""
    if cfg.upsample.execution == "reference":
        return torch.float32
    return getattr(torch, cfg.upsample.decode_dtype)


def warn_if_emulated_bf16(cfg: SegmentConfig, device: torch.device | str) -> None:
    """Log a warning when ``cfg`` asks for a half precision that ``device`` would emulate:
    bfloat16 without native bf16, or float16 on a CPU (PyTorch's CPU float16 kernels are slow
    outside AMX-FP16 parts, and fp16 is the paper's CUDA precision, not a CPU speed option)."""
    device = torch.device(device)
    if cfg.uses_bfloat16 and not native_bf16(device):
        log.warning(
            "bfloat16 requested (precision=%s, unet_autocast=%s, decode_dtype=%s) but %s has no "
            "native bf16: it is emulated and far slower than float32",
            cfg.precision,
            cfg.upsample.unet_autocast,
            cfg.upsample.decode_dtype,
            device,
        )
    ucfg = cfg.upsample
    fp16 = cfg.precision == "fp16" or "float16" in (ucfg.unet_autocast, ucfg.decode_dtype)
    if device.type == "cpu" and fp16:
        log.warning(
            "float16 requested (precision=%s, unet_autocast=%s, decode_dtype=%s) on the CPU: "
            "most CPUs emulate it, far slower than float32; use fp32, or bf16 where native",
            cfg.precision,
            ucfg.unet_autocast,
            ucfg.decode_dtype,
        )


def freeze(*modules: nn.Module | None) -> None:
    """Evaluation mode without gradients for every given module."""
    for module in modules:
        if module is not None:
            module.eval()
            module.requires_grad_(False)


def cache_dir() -> Path:
    """Where zsvss caches converted weights: ``$ZSVSS_CACHE`` or ``~/.cache/zsvss``."""
    return Path(os.environ.get("ZSVSS_CACHE", Path.home() / ".cache" / "zsvss"))


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


# -- the VAE on large frames ------------------------------------------------------------------
def vae_factor(vae: nn.Module) -> int:
    """Pixels per latent token of ``vae`` (8 for SD's and SVD's VAEs)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def is_tiled(latent_hw: tuple[int, int], tile: int) -> bool:
    """Whether a latent of ``latent_hw`` tokens runs through the VAE in tiles: more than
    ``tile`` x ``tile`` tokens (``features.vae_tile``; 0 = never)."""
    return tile > 0 and latent_hw[0] * latent_hw[1] > tile * tile


def vae_size_advice(vae: nn.Module, image_hw: tuple[int, int], tile: int) -> str | None:
    """The one-line warning for processed frames ``image_hw`` whose latent is tiled, or None.

    The VAE's mid-block attends over every latent token at once: its score matrix alone is
    tokens^2 x 4 bytes (float32) and its time grows as tokens^2, which is what makes a
    4000x3000 frame (182k tokens) run for many minutes. Above the threshold the VAE runs in
    tiles, whose labels differ slightly from an untiled run; the UNet's attention at the
    latent's resolution is not tiled (that would change the method), hence the advice.
    """
    f = vae_factor(vae)
    h, w = image_hw[0] // f, image_hw[1] // f
    if not is_tiled((h, w), tile):
        return None
    scores = (h * w) ** 2 * 4 / 2**30
    side = tile * f
    return (
        f"frames processed at {image_hw[1]}x{image_hw[0]} give a {w}x{h} latent ({h * w:,} "
        f"tokens), above {tile}x{tile}: untiled, the VAE's mid-block attention would need "
        f"~{scores:,.1f} GiB for its scores per frame and time growing with tokens^2, so the "
        f"VAE runs in overlapping {tile}x{tile}-token tiles (labels differ slightly from an "
        f"untiled run), but the UNet's full-resolution attention still grows with tokens^2; "
        f"--max-side {side} keeps frames below this size and runs much faster"
    )


@contextlib.contextmanager
def diffusers_tiling(vae: nn.Module, tile: int) -> Iterator[None]:
    """diffusers' own VAE tiling (``enable_tiling``) with ``tile`` x ``tile``-token tiles for
    the ``with`` block; the VAE's settings are restored after it."""
    saved = (vae.use_tiling, vae.tile_sample_min_size, vae.tile_latent_min_size)
    vae.enable_tiling()
    vae.tile_sample_min_size, vae.tile_latent_min_size = tile * vae_factor(vae), tile
    try:
        yield
    finally:
        vae.use_tiling, vae.tile_sample_min_size, vae.tile_latent_min_size = saved


def _blend(before: torch.Tensor, tile: torch.Tensor, extent: int, dim: int) -> torch.Tensor:
    """Fade ``tile``'s first ``extent`` rows (dim 2) or columns (dim 3) in from ``before``'s
    last ones, linearly, as diffusers' ``blend_v`` / ``blend_h`` do."""
    n = min(before.shape[dim], tile.shape[dim], extent)
    if n == 0:
        return tile
    shape = [1, 1, 1, 1]
    shape[dim] = n
    weight = (torch.arange(n, device=tile.device, dtype=tile.dtype) / n).view(shape)
    tile = tile.clone()
    head = tile.narrow(dim, 0, n)
    head.copy_(before.narrow(dim, before.shape[dim] - n, n) * (1 - weight) + head * weight)
    return tile


def tiled_apply(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    tile: int,
    scale: float,
    overlap: float = 0.25,
) -> torch.Tensor:
    """``fn`` on overlapping ``tile`` x ``tile`` tiles of ``x`` [B, C, H, W], blended.

    ``fn`` maps [B, C, h, w] to [B, C', h * scale, w * scale] (a VAE encoder: scale 1/8; a
    decoder: 8). Tiles start every ``tile * (1 - overlap)`` pixels and each is faded into its
    upper and left neighbours, the scheme of diffusers' AutoencoderKL tiling, for VAEs that
    lack it (SVD's temporal decoder). Returns [B, C', H * scale, W * scale].
    """
    step = int(tile * (1 - overlap))
    out_tile = int(tile * scale)
    extent = int(out_tile * overlap)
    limit = out_tile - extent
    rows = [
        [fn(x[:, :, i : i + tile, j : j + tile]) for j in range(0, x.shape[3], step)]
        for i in range(0, x.shape[2], step)
    ]
    for i, row in enumerate(rows):
        for j in range(len(row)):
            if i > 0:
                row[j] = _blend(rows[i - 1][j], row[j], extent, 2)
            if j > 0:
                row[j] = _blend(row[j - 1], row[j], extent, 3)
    return torch.cat([torch.cat([t[:, :, :limit, :limit] for t in r], 3) for r in rows], 2)


def vae_moments(vae: nn.Module, x: torch.Tensor, tile: int) -> torch.Tensor:
    """The VAE posterior's parameters [B, 2C, H/f, W/f] of images ``x`` in [-1, 1], tiled
    above ``tile`` x ``tile`` latent tokens (diffusers' tiling where the VAE has it)."""
    f = vae_factor(vae)
    if not is_tiled((x.shape[2] // f, x.shape[3] // f), tile):
        return vae.encode(x).latent_dist.parameters
    if hasattr(vae, "tiled_decode"):
        with diffusers_tiling(vae, tile):
            return vae.encode(x).latent_dist.parameters
    return tiled_apply(lambda t: vae.encode(t).latent_dist.parameters, x, tile * f, 1 / f)


@torch.inference_mode()
def vae_encode(
    vae: nn.Module,
    images: torch.Tensor,
    generator: torch.Generator | None,
    scale: float,
    sample: bool = True,
    batch: int = 4,
    tile: int = 0,
) -> torch.Tensor:
    """VAE-encode images [B, 3, H, W] in [0, 1] to scaled latents [B, 4, H/8, W/8].

    METHOD 1.1: the posterior is *sampled* (seeded by ``generator``), then scaled. The
    encoder runs ``batch`` frames at a time (0 = all; bounds memory) and the posterior of
    the whole window is sampled at once, so the draw does not depend on ``batch``. Latents of
    more than ``tile`` x ``tile`` tokens are encoded in tiles (:func:`vae_moments`).
    """
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    param = next(vae.parameters())
    x = (images.to(param.device, param.dtype) * 2 - 1).contiguous()
    moments = torch.cat([vae_moments(vae, chunk, tile) for chunk in x.split(batch or len(x))])
    posterior = DiagonalGaussianDistribution(moments)
    z = posterior.sample(generator=generator) if sample else posterior.mode()
    return z * scale


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


# -- identity ---------------------------------------------------------------------------------
def is_repo_id(name: str) -> bool:
    """Whether ``name`` looks like a Hugging Face repository id ("org/model"), not a path."""
    return "/" in name and not name.startswith((".", "/", "~")) and name.count("/") == 1


def missing_parts(folder: Path, parts: tuple[str, ...]) -> list[str]:
    """The subfolders of a diffusers model folder among ``parts`` that are absent or empty."""
    return [
        part for part in parts if not (folder / part).is_dir() or not any((folder / part).iterdir())
    ]


def file_identity(path: Path, name: str, fmt: str = "single-file") -> dict[str, Any]:
    """A single checkpoint file's identity (its bytes are what the fingerprint hashes)."""
    return {"name": name, "source": str(path.resolve()), "format": fmt, "files": [str(path)]}


def folder_identity(folder: Path) -> dict[str, Any]:
    """A diffusers folder's identity: name, absolute source and the UNet's weight files."""
    files = sorted(str(p) for p in (folder / "unet").glob("*.safetensors")) or sorted(
        str(p) for p in (folder / "unet").glob("*.bin")
    )
    return {
        "name": folder.name,
        "source": str(folder.resolve()),
        "format": "diffusers",
        "files": files,
    }


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON file's content, or None when it is missing or not JSON."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# -- files ------------------------------------------------------------------------------------
def read_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors of a checkpoint file and its metadata.

    ``.safetensors`` through safetensors; other files with ``torch.load(weights_only=True)``
    (a Lightning ``{"state_dict": ...}`` is unwrapped), so no pickled code ever runs.
    """
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        tensors = {}
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            for key in fh.keys():
                tensors[key] = fh.get_tensor(key)
        return tensors, meta
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    return obj, {}


def safetensors_header(path: Path) -> tuple[list[str], dict[str, str]]:
    """The tensor names and metadata of a ``.safetensors`` file, without reading tensors."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return list(fh.keys()), dict(fh.metadata() or {})


def module_config(module: nn.Module) -> dict[str, Any]:
    """A diffusers/transformers module's config as a plain dict."""
    config = module.config
    return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def save_prefixed(path: Path, parts: Mapping[str, nn.Module], meta: Mapping[str, str]) -> Path:
    """Write ``parts`` as one ``.safetensors`` file: tensors prefixed by part name, each part's
    config as JSON in the metadata (``<part>_config``), plus ``meta``; atomically."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    header = {"zsvss_format": "1", **meta}
    for prefix, module in parts.items():
        for key, value in module.state_dict().items():
            tensors[f"{prefix}.{key}"] = value.detach().float().cpu().contiguous()
        header[f"{prefix}_config"] = json.dumps(module_config(module), default=str)
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=header))


def split_prefixed(
    path: Path, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, str], parts: tuple[str, ...]
) -> dict[str, dict[str, torch.Tensor]]:
    """The state dict of each part of a :func:`save_prefixed` file (prefixes removed)."""
    out = {}
    for prefix in parts:
        if f"{prefix}_config" not in meta:
            raise IncompleteModelError(f"checkpoint {path} lacks the {prefix} component")
        out[prefix] = {
            k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")
        }
    return out


def load_parts(
    path: Path, modules: Mapping[str, nn.Module], states: Mapping[str, Mapping[str, torch.Tensor]]
) -> None:
    """Load ``states[part]`` into ``modules[part]``; a missing tensor is an error naming it."""
    for prefix, module in modules.items():
        result = module.load_state_dict(states[prefix], strict=False)
        missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
        if missing:
            raise IncompleteModelError(
                f"checkpoint {path}: {prefix} lacks {len(missing)} tensors (e.g. {missing[0]})"
            )


def write_scheduler_folder(folder: Path, scheduler_config: Mapping[str, Any]) -> None:
    """``folder/scheduler/scheduler_config.json`` for diffusers' EulerDiscreteScheduler."""
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(
        json.dumps({"_class_name": "EulerDiscreteScheduler", **scheduler_config})
    )


def not_found_message(spec: str, reason: str) -> str:
    """The one line that says where zsvss looked for a model and how to provide one."""
    return (
        f"model {spec!r} not found ({reason}); looked for a local diffusers folder, a "
        f".safetensors/.ckpt file, ${ENV_MODEL}, {cache_dir() / 'models'} and the Hugging Face "
        "cache/hub. Provide SD 2.1-base with --model PATH (a diffusers folder or "
        "v2-1_512-ema-pruned.safetensors), or use --model tiny / dinov2-s"
    )
