"""Deprecated import path (zsvss 0.1): the backbones now live in :mod:`zsvss_nb.backbones`.

Kept for one release so code written against ``zsvss_nb.backbone`` keeps working; import from
``zsvss_nb.backbones`` (``load_backbone``, ``Backbone``) and ``zsvss_nb.backbones.sd``.
"""

from .backbones import describe_spec, load_backbone, resolve_spec
from .backbones.base import Backbone
from .backbones.common import (
    CHECKPOINT_SUFFIXES,
    ENV_MODEL,
    cache_dir,
    default_device,
    file_identity,
    folder_identity,
    missing_parts,
    native_bf16,
)
from .backbones.sd import (
    LATENT_SCALE,
    SCHEDULER_CONFIG,
    SD21_TEXT,
    SD21_UNET,
    SD21_VAE,
    SD_COMPONENTS,
    TINY_TEXT,
    TINY_UNET,
    TINY_VAE,
    StableDiffusion,
    build_sd,
    save_folder,
    save_single_file,
    sd21_random_backbone,
    tiny_backbone,
    tiny_tokenizer,
)

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "ENV_MODEL",
    "LATENT_SCALE",
    "SCHEDULER_CONFIG",
    "SD21_TEXT",
    "SD21_UNET",
    "SD21_VAE",
    "SD_COMPONENTS",
    "TINY_TEXT",
    "TINY_UNET",
    "TINY_VAE",
    "Backbone",
    "StableDiffusion",
    "build_sd",
    "cache_dir",
    "default_device",
    "describe_spec",
    "file_identity",
    "folder_identity",
    "load_backbone",
    "missing_parts",
    "native_bf16",
    "resolve_spec",
    "save_folder",
    "save_single_file",
    "sd21_random_backbone",
    "tiny_backbone",
    "tiny_tokenizer",
]
