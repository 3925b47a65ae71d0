"""What reproduces a result: package versions, the model's identity and hash, the machine, memory.

Manifests (``zsvss segment``, ``zsvss dataset``), the benchmark and figure metadata all take
these blocks from here, so a model is named by the same sha256 everywhere.
"""

from __future__ import annotations

import os
import platform
import resource
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .backbones.base import Backbone


def versions() -> dict[str, str]:
    """Versions of zsvss, Python and the packages that change results."""
    import diffusers
    import numpy as np
    import transformers

    from . import __version__

    return {
        "zsvss": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
    }


def model_identity(backbone: Backbone) -> dict[str, Any]:
    """The backbone's identity (without its file list) plus the weights' sha256, device, dtype."""
    identity = {k: v for k, v in backbone.identity.items() if k != "files"}
    identity["sha256"] = backbone.fingerprint()
    identity["device"] = str(backbone.device)
    identity["dtype"] = str(backbone.dtype).replace("torch.", "")
    return identity


def peak_rss_gb(since_reset: bool = False) -> float:
    """Peak resident memory of this process in GiB: over its lifetime (``ru_maxrss``), or
    since :func:`reset_peak_rss` when ``since_reset`` (Linux ``VmHWM``)."""
    if since_reset:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) * 1024 / 2**30, 3)
    scale = 1 if sys.platform == "darwin" else 1024
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**30, 3)


def reset_peak_rss() -> bool:
    """Reset the kernel's resident high-water mark (Linux clear_refs 5); False if impossible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def rss_gb() -> float:
    """Resident memory of this process now, in GiB (NaN where /proc is unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) * 1024 / 2**30, 3)
    except OSError:
        pass
    return float("nan")


def peak_device_gb() -> float | None:
    """Peak CUDA memory allocated by torch in GiB, or None without CUDA."""
    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return None


def machine_info() -> dict[str, Any]:
    """CPU model, cores, relevant ISA flags, memory, versions and the load average."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),  # zsvss_nb.threads
    }
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        model = next(
            (
                ln.split(":", 1)[1].strip()
                for ln in cpuinfo.splitlines()
                if ln.startswith("model name")
            ),
            platform.processor(),
        )
        flags = next(
            (ln.split(":", 1)[1].split() for ln in cpuinfo.splitlines() if ln.startswith("flags")),
            [],
        )
        info["cpu_model"] = model
        info["isa"] = [
            f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags
        ]
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
        info["memory_gb"] = round(int(mem) * 1024 / 2**30, 1)
    except (OSError, StopIteration, IndexError):
        info["cpu_model"] = platform.processor()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    info["load_average"] = (
        [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    )
    return info
