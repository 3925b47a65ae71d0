"""Stable Video Diffusion weights: "tiny-svd", and loaders for a folder, a file or a repo id.

Loading: a diffusers folder (unet/, vae/, image_encoder/, optional feature_extractor/,
scheduler/), a zsvss single file written by :func:`save_svd_single_file`, a Hugging Face repo
id, or "tiny-svd" (seeded random weights, SVD's block structure with few channels).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...errors import ConfigError, IncompleteModelError, ModelNotFoundError
from ..checkpoints import (
    file_identity,
    folder_identity,
    freeze,
    is_repo_id,
    load_parts,
    missing_parts,
    read_json,
    safetensors_header,
    save_prefixed,
    split_prefixed,
    write_scheduler_folder,
)
from ..precision import default_device
from .model import (
    SVD_COMPONENTS,
    SVD_LATENT_SCALE,
    SVD_PIPELINE,
    SVD_SCHEDULER_CONFIG,
    SVD_UNET_CLASS,
    StableVideoDiffusion,
)

BUILTIN = ("tiny-svd",)

# "tiny-svd": SVD img2vid's block structure (4 down/up blocks, 3 spatio-temporal transformer
# layers in up_blocks 1-3, temporal VAE decoder, CLIP vision tower) with few channels. The
# SVD modules hard-code GroupNorm(32), so every width is a multiple of 32.
# "tiny-svd": SVD img2vid's block structure (4 down/up blocks, 3 spatio-temporal transformer
# layers in up_blocks 1-3, temporal VAE decoder, CLIP vision tower) with few channels. The
# SVD modules hard-code GroupNorm(32), so every width is a multiple of 32.
TINY_SVD_UNET: dict[str, Any] = {
    "sample_size": 16,
    "in_channels": 8,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlockSpatioTemporal"] * 3 + ["DownBlockSpatioTemporal"],
    "up_block_types": ["UpBlockSpatioTemporal"] + ["CrossAttnUpBlockSpatioTemporal"] * 3,
    "block_out_channels": [32, 32, 32, 32],
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 24,  # 3 added time ids x 8
    "layers_per_block": 2,
    "cross_attention_dim": 32,
    "transformer_layers_per_block": 1,
    "num_attention_heads": [2, 2, 2, 2],
    "num_frames": 14,
}


TINY_SVD_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "block_out_channels": [32, 32, 32, 32],
    "layers_per_block": 1,
    "latent_channels": 4,
    "sample_size": 128,
    "scaling_factor": SVD_LATENT_SCALE,
}


TINY_SVD_IMAGE: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 224,  # the real tower's input size (diffusers' pipeline resizes to 224)
    "patch_size": 32,
    "projection_dim": 32,
}


TINY_SVD_SEED = 0


def _assemble(unet, vae, image_encoder, feature_extractor, device, dtype, identity, sched=None):
    freeze(unet, vae, image_encoder)
    unet.to(device=device)
    if dtype != torch.float32:
        unet.to(dtype=dtype)
    vae.to(device=device)  # METHOD 1.8: the VAE stays float32
    image_encoder.to(device=device)
    return StableVideoDiffusion(
        "svd",
        torch.device(device),
        dtype,
        {"kind": "svd", **identity},
        unet=unet,
        vae=vae,
        image_encoder=image_encoder,
        feature_extractor=feature_extractor,
        scheduler_config=dict(sched or SVD_SCHEDULER_CONFIG),
    )


def build_svd(
    unet_config: Mapping[str, Any],
    vae_config: Mapping[str, Any],
    image_config: Mapping[str, Any],
    seed: int | None,
) -> tuple[nn.Module, nn.Module, nn.Module]:
    """SVD-architecture UNet, temporal-decoder VAE and CLIP vision tower with seeded weights."""
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        unet = UNetSpatioTemporalConditionModel(**unet_config)
        vae = AutoencoderKLTemporalDecoder(**vae_config)
        image = CLIPVisionModelWithProjection(CLIPVisionConfig(**image_config))
    return unet, vae, image


def tiny_svd_backbone(
    device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> StableVideoDiffusion:
    """ "tiny-svd": seeded random weights with SVD img2vid's block structure (module doc)."""
    device = torch.device(device) if device is not None else default_device()
    unet, vae, image = build_svd(TINY_SVD_UNET, TINY_SVD_VAE, TINY_SVD_IMAGE, TINY_SVD_SEED)
    return _assemble(
        unet, vae, image, None, device, dtype, {"name": "tiny-svd", "source": "built-in"}
    )


def _is_svd_folder(folder: Path) -> bool:
    index = read_json(folder / "model_index.json") or {}
    if index.get("_class_name") == SVD_PIPELINE:
        return True
    unet = read_json(folder / "unet" / "config.json") or {}
    return unet.get("_class_name") == SVD_UNET_CLASS


def _is_sgm_svd(keys: Iterable[str]) -> bool:
    keys = list(keys)
    return any(k.startswith("model.diffusion_model.") for k in keys) and any(
        ".time_stack." in k or k.startswith("conditioner.embedders.") for k in keys
    )


def is_svd_spec(name: str) -> bool:
    """Whether ``name`` names an SVD model, without network access: "tiny-svd", an SVD diffusers
    folder, an SVD ``.safetensors`` file (zsvss or original sgm layout), or a repo id whose
    cached model_index.json names the SVD pipeline or, if not cached, whose name contains
    "video-diffusion" or "svd" (e.g. stabilityai/stable-video-diffusion-img2vid)."""
    if name == "tiny-svd":
        return True
    path = Path(name).expanduser()
    if path.is_dir():
        return _is_svd_folder(path)
    if path.is_file():
        if path.suffix != ".safetensors" or path.stat().st_size == 0:
            return False
        try:
            keys, meta = safetensors_header(path)
        except Exception:  # not a readable safetensors file: the SD loader reports it
            return False
        return meta.get("zsvss_kind") == "svd" or _is_sgm_svd(keys)
    if is_repo_id(name):
        from huggingface_hub import try_to_load_from_cache

        try:
            cached = try_to_load_from_cache(name, "model_index.json")
        except Exception:  # not a valid repo id: the SD loader reports it
            return False
        if isinstance(cached, str):
            return (read_json(Path(cached)) or {}).get("_class_name") == SVD_PIPELINE
        repo = name.split("/")[1].lower()
        return "video-diffusion" in repo or "svd" in repo
    return False


def _from_pretrained(cls, folder: Path, sub: str):
    try:
        return cls.from_pretrained(folder, subfolder=sub)
    except OSError:
        return cls.from_pretrained(folder, subfolder=sub, variant="fp16")


def _scheduler_config(folder: Path) -> dict[str, Any]:
    cfg = dict(SVD_SCHEDULER_CONFIG)
    stored = read_json(folder / "scheduler" / "scheduler_config.json") or {}
    cfg.update({k: v for k, v in stored.items() if k in SVD_SCHEDULER_CONFIG})
    if cfg["prediction_type"] != "v_prediction":
        raise ConfigError(
            f"{folder}: scheduler prediction_type {cfg['prediction_type']!r}; SVD img2vid is "
            "a v-prediction model (METHOD 1.2)"
        )
    return cfg


def _load_svd_folder(folder: Path, device, dtype) -> StableVideoDiffusion:
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    missing = missing_parts(folder, SVD_COMPONENTS)
    if missing:
        raise IncompleteModelError(
            f"model folder {folder} lacks {', '.join(missing)}: a diffusers Stable Video "
            f"Diffusion folder needs {', '.join(SVD_COMPONENTS)} (feature_extractor optional)"
        )
    try:
        unet = _from_pretrained(UNetSpatioTemporalConditionModel, folder, "unet")
        vae = _from_pretrained(AutoencoderKLTemporalDecoder, folder, "vae")
        image = _from_pretrained(CLIPVisionModelWithProjection, folder, "image_encoder")
        extractor = None
        if (folder / "feature_extractor").is_dir():
            extractor = CLIPImageProcessor.from_pretrained(folder, subfolder="feature_extractor")
    except (OSError, ValueError, KeyError) as err:
        raise IncompleteModelError(f"SVD model folder {folder} could not be loaded: {err}") from err
    return _assemble(
        unet,
        vae,
        image,
        extractor,
        device,
        dtype,
        folder_identity(folder),
        _scheduler_config(folder),
    )


def _load_svd_file(path: Path, device, dtype) -> StableVideoDiffusion:
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
    from safetensors.torch import load_file
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    keys, meta = safetensors_header(path)
    if meta.get("zsvss_kind") != "svd":
        if _is_sgm_svd(keys):
            raise IncompleteModelError(
                f"checkpoint {path} is an original (sgm) Stable Video Diffusion file: diffusers "
                f"has no single-file loader for SVD and zsvss does not convert one offline; load "
                f"the diffusers folder of the same model (unet/, vae/, image_encoder/), e.g. a "
                f"local copy of stabilityai/stable-video-diffusion-img2vid"
            )
        raise IncompleteModelError(f"checkpoint {path} is not a zsvss SVD single file")
    states = split_prefixed(path, load_file(str(path)), meta, ("unet", "vae", "image_encoder"))
    unet = UNetSpatioTemporalConditionModel.from_config(json.loads(meta["unet_config"]))
    vae = AutoencoderKLTemporalDecoder.from_config(json.loads(meta["vae_config"]))
    image = CLIPVisionModelWithProjection(
        CLIPVisionConfig(**json.loads(meta["image_encoder_config"]))
    )
    load_parts(path, {"unet": unet, "vae": vae, "image_encoder": image}, states)
    extractor = None
    if meta.get("feature_extractor"):
        extractor = CLIPImageProcessor(**json.loads(meta["feature_extractor"]))
    sched = dict(SVD_SCHEDULER_CONFIG)
    sched.update(json.loads(meta.get("scheduler_config", "{}")))
    identity = file_identity(path, meta.get("name", path.stem))
    return _assemble(unet, vae, image, extractor, device, dtype, identity, sched)


def _load_svd_repo(repo_id: str, device, dtype) -> StableVideoDiffusion:
    from huggingface_hub import snapshot_download

    try:
        folder = Path(
            snapshot_download(
                repo_id,
                allow_patterns=[
                    f"{p}/*" for p in (*SVD_COMPONENTS, "feature_extractor", "scheduler")
                ]
                + ["model_index.json"],
                ignore_patterns=["*.fp16.*", "*.bin", "*.ckpt"],
            )
        )
    except Exception as err:
        raise ModelNotFoundError(
            f"SVD model {repo_id!r} could not be fetched ({str(err).splitlines()[0]}); provide a "
            "local diffusers folder with --model PATH"
        ) from err
    backbone = _load_svd_folder(folder, device, dtype)
    backbone.identity.update({"name": repo_id, "repo_id": repo_id})
    return backbone


def load_svd(
    spec: str | os.PathLike,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> StableVideoDiffusion:
    """Load an SVD img2vid backbone: "tiny-svd", a diffusers folder, a zsvss single file, a repo id.

    ``dtype`` is the UNet's compute dtype; the VAE and the CLIP image encoder stay float32.
    """
    device = torch.device(device) if device is not None else default_device()
    name = str(spec)
    if name == "tiny-svd":
        return tiny_svd_backbone(device, dtype)
    path = Path(name).expanduser()
    if path.is_dir():
        return _load_svd_folder(path, device, dtype)
    if path.is_file():
        return _load_svd_file(path, device, dtype)
    if is_repo_id(name):
        return _load_svd_repo(name, device, dtype)
    raise ModelNotFoundError(f"SVD model {name!r}: no such folder, file or repository id")


def save_svd_folder(backbone: StableVideoDiffusion, folder: str | Path) -> Path:
    """Write an SVD backbone as a diffusers folder (unet, vae, image_encoder, scheduler, index)."""
    folder = Path(folder)
    backbone.unet.save_pretrained(folder / "unet")
    backbone.vae.save_pretrained(folder / "vae")
    backbone.image_encoder.save_pretrained(folder / "image_encoder")
    if backbone.feature_extractor is not None:
        backbone.feature_extractor.save_pretrained(folder / "feature_extractor")
    write_scheduler_folder(folder, backbone.scheduler_config)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": SVD_PIPELINE}))
    return folder


def save_svd_single_file(backbone: StableVideoDiffusion, path: str | Path) -> Path:
    """Write an SVD backbone as one ``.safetensors`` file (components prefixed, configs in
    metadata); :func:`load_svd` and ``load_backbone`` read it back."""
    meta = {
        "zsvss_kind": "svd",
        "name": backbone.name,
        "scheduler_config": json.dumps(backbone.scheduler_config),
    }
    if backbone.feature_extractor is not None:
        meta["feature_extractor"] = json.dumps(backbone.feature_extractor.to_dict(), default=str)
    parts = {"unet": backbone.unet, "vae": backbone.vae, "image_encoder": backbone.image_encoder}
    return save_prefixed(Path(path), parts, meta)
