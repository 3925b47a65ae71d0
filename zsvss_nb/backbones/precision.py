"""Devices and number formats of the diffusion backbones: which dtype each part runs in."""

from __future__ import annotations

import contextlib
import logging

import torch

from ..config import SegmentConfig
from ..errors import ConfigError

log = logging.getLogger(__name__)


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
