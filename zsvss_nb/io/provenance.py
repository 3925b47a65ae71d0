"""What reproduces a result: package versions, the model's identity and hash, the machine, memory.

Manifests (``zsvss segment``, ``zsvss dataset``), the benchmark and figure metadata all take
these blocks from here, so a model is named by the same sha256 everywhere.
"""

from __future__ import annotations

import functools
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from ..backbones.base import Backbone
    from ..config import SegmentConfig


def versions() -> dict[str, str]:
    """Versions of zsvss, Python and the packages that change results."""
    import diffusers
    import numpy as np
    import transformers

    from .. import __version__

    return {
        "zsvss": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
    }


def git_output(folder: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def package_commit() -> dict[str, Any]:
    """The git commit of the checkout this package is imported from.

    ``{"commit": sha or None, "dirty": bool or None}``: None for both when the package is not
    the ``zsvss_nb`` folder of a git checkout (an installed wheel, no git). ``dirty`` says
    whether tracked files of the package differ from that commit. Read once per process.
    """
    package = Path(__file__).resolve().parents[1]  # zsvss_nb/, this module being in io/
    top = git_output(package, "rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() / package.name != package:
        return {"commit": None, "dirty": None}
    commit = git_output(package, "rev-parse", "HEAD")
    status = git_output(package, "status", "--porcelain", "--untracked-files=no", "--", ".")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def package_info() -> dict[str, Any]:
    """zsvss's version and the git commit of its checkout (:func:`package_commit`)."""
    from .. import __version__

    return {"version": __version__, **package_commit()}


def config_record(cfg: SegmentConfig) -> dict[str, Any]:
    """A config as run: its preset name, every field, and the fields changed from the preset.

    ``changed`` maps dotted field names (``features.max_side``) to the values that differ from
    ``SegmentConfig.from_preset(cfg.preset)`` (None when the preset name is not a preset).
    """
    from ..config import SegmentConfig
    from ..errors import ConfigError

    values = cfg.to_dict()
    try:
        base = SegmentConfig.from_preset(cfg.preset).to_dict()
    except ConfigError:
        return {"preset": cfg.preset, "config": values, "changed": None}
    changed: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            changed |= {f"{key}.{k}": v for k, v in value.items() if base.get(key, {}).get(k) != v}
        elif base.get(key) != value:
            changed[key] = value
    return {"preset": cfg.preset, "config": values, "changed": changed}


def model_record(backbone: Backbone, cfg: SegmentConfig | None = None) -> dict[str, Any]:
    """One model as a figure or report shows it: identity (with the manifest's sha256) and,
    when given, the config it ran with (:func:`config_record`)."""
    from ..config import SegmentConfig
    from ..errors import InputError

    record: dict[str, Any] = {"identity": model_identity(backbone)}
    if cfg is not None:
        if not isinstance(cfg, SegmentConfig):
            raise InputError(f"the config of {backbone.name} must be a SegmentConfig, got {cfg!r}")
        record |= config_record(cfg)
    return record


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
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),  # zsvss_nb.run.threads
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
