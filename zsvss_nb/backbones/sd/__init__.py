"""Stable Diffusion 1.x/2.x as a zsvss backbone (the paper's: SD 2.1-base)."""

from .model import LATENT_SCALE, SCHEDULER_CONFIG, SD_COMPONENTS, StableDiffusion
from .weights import (
    BUILTIN,
    SD21_TEXT,
    SD21_UNET,
    SD21_VAE,
    TINY_TEXT,
    TINY_UNET,
    TINY_VAE,
    build_sd,
    load_sd,
    save_folder,
    save_single_file,
    sd21_random_backbone,
    tiny_backbone,
    tiny_tokenizer,
)

__all__ = [
    "BUILTIN",
    "LATENT_SCALE",
    "SCHEDULER_CONFIG",
    "SD21_TEXT",
    "SD21_UNET",
    "SD21_VAE",
    "SD_COMPONENTS",
    "TINY_TEXT",
    "TINY_UNET",
    "TINY_VAE",
    "StableDiffusion",
    "build_sd",
    "load_sd",
    "save_folder",
    "save_single_file",
    "sd21_random_backbone",
    "tiny_backbone",
    "tiny_tokenizer",
]
