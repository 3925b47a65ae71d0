"""Deprecated import path (zsvss 0.1): Stable Video Diffusion now lives in
:mod:`zsvss_nb.backbones.svd`, its stages behind :func:`zsvss_nb.features.extract` and
:func:`zsvss_nb.upsample.modulate`, and the notebook-01 comparison in :mod:`zsvss_nb.probing`
and :mod:`zsvss_nb.viz`. Kept for one release.
"""

from __future__ import annotations

import torch

from .backbones.svd import (
    CLIP_MEAN,
    CLIP_STD,
    EDM_RHO,
    EDM_SIGMA_MAX,
    EDM_SIGMA_MIN,
    SVD_LATENT_SCALE,
    SVD_SCHEDULER_CONFIG,
    TINY_SVD_IMAGE,
    TINY_SVD_UNET,
    TINY_SVD_VAE,
    StableVideoDiffusion,
    SvdConditioning,
    SvdFeatureResult,
    added_time_ids,
    build_svd,
    clip_image_embedding,
    condition,
    edm_sigmas,
    euler_step,
    guidance_scales,
    guided_denoised,
    is_svd_spec,
    load_svd,
    resize_antialiased,
    save_svd_folder,
    save_svd_single_file,
    svd_schedule,
    tiny_svd_backbone,
)
from .features import extract
from .probing import FeatureView, compare_features
from .upsample import modulate
from .viz.features import cross_frame_similarity, show_similarity_matrices


def decode(
    backbone: StableVideoDiffusion,
    latents: torch.Tensor,
    frames_per_decode: int = 1,
    dtype: torch.dtype = torch.float32,
    batch: int = 16,
) -> torch.Tensor:
    """``backbone.decode`` with zsvss 0.1's argument order."""
    return backbone.decode(latents, dtype, frames_per_decode, batch)


__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "EDM_RHO",
    "EDM_SIGMA_MAX",
    "EDM_SIGMA_MIN",
    "SVD_LATENT_SCALE",
    "SVD_SCHEDULER_CONFIG",
    "TINY_SVD_IMAGE",
    "TINY_SVD_UNET",
    "TINY_SVD_VAE",
    "FeatureView",
    "StableVideoDiffusion",
    "SvdConditioning",
    "SvdFeatureResult",
    "added_time_ids",
    "build_svd",
    "clip_image_embedding",
    "compare_features",
    "condition",
    "cross_frame_similarity",
    "decode",
    "edm_sigmas",
    "euler_step",
    "extract",
    "guidance_scales",
    "guided_denoised",
    "is_svd_spec",
    "load_svd",
    "modulate",
    "resize_antialiased",
    "save_svd_folder",
    "save_svd_single_file",
    "show_similarity_matrices",
    "svd_schedule",
    "tiny_svd_backbone",
]
