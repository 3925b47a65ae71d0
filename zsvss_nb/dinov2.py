"""Deprecated import path (zsvss 0.1): the DINOv2 comparison backbone now lives in
:mod:`zsvss_nb.backbones.dinov2`. Kept for one release."""

from .backbones.dinov2 import (
    DINOV2_DIM,
    DINOV2_MEAN,
    DINOV2_PATCH,
    DINOV2_STD,
    DinoV2,
    convert_onnx_state_dict,
    dinov2_config,
    dinov2_onnx_path,
    dinov2_tokens,
    load_dinov2,
    model_identity,
)

__all__ = [
    "DINOV2_DIM",
    "DINOV2_MEAN",
    "DINOV2_PATCH",
    "DINOV2_STD",
    "DinoV2",
    "convert_onnx_state_dict",
    "dinov2_config",
    "dinov2_onnx_path",
    "dinov2_tokens",
    "load_dinov2",
    "model_identity",
]
