"""Model files: identities, state dicts, prefixed single-file checkpoints, messages."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import IncompleteModelError
from ..io.writers import atomic_write

ENV_MODEL = "ZSVSS_MODEL"
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".bin")


def freeze(*modules: nn.Module | None) -> None:
    """Evaluation mode without gradients for every given module."""
    for module in modules:
        if module is not None:
            module.eval()
            module.requires_grad_(False)


def cache_dir() -> Path:
    """Where zsvss caches converted weights: ``$ZSVSS_CACHE`` or ``~/.cache/zsvss``."""
    return Path(os.environ.get("ZSVSS_CACHE", Path.home() / ".cache" / "zsvss"))


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
