"""The backbone's input contract: how frames of any size become model input and back (METHOD 1.1).

The paper resizes each side down to a multiple of 64 ("resize64", with PIL's bicubic filter, as
the reference code does); "pad64" reflect-pads bottom/right instead, so no pixel is resampled.
A :class:`Geometry` records the mapping; :func:`restore` maps processed-size tensors back to the
original size and :func:`to_grid` brings a label mask to the feature grid. :func:`window_frames`
is the one place where a window or a frame tensor becomes uint8 frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F

from ..errors import ConfigError, FrameSizeError, InputError, LabelError

if TYPE_CHECKING:
    from ..config import FeatureConfig

Policy = Literal["resize64", "pad64"]


_POLICIES = ("resize64", "pad64")


ResizeFilter = Literal["pil-bicubic", "bilinear"]


_RESIZE_FILTERS = ("pil-bicubic", "bilinear")


@dataclass(frozen=True)
class Geometry:
    """How frames of one size map to the processed size and back.

    original: (H, W); processed: (H', W'), both multiples of the grid multiple; policy:
    "resize64" (resize each side down to a multiple, as the paper) or "pad64" (reflect-pad
    bottom/right up to the next multiple); pad: (top, bottom, left, right) pixels added.
    """

    original: tuple[int, int]
    processed: tuple[int, int]
    policy: str
    pad: tuple[int, int, int, int] = (0, 0, 0, 0)


def geometry_for(
    height: int,
    width: int,
    policy: Policy = "resize64",
    multiple: int = 64,
    max_side: int | None = None,
) -> Geometry:
    """The :class:`Geometry` of ``height`` x ``width`` frames, computed without pixels.

    ``max_side`` (resize64 only, beyond the paper) first scales the frame down so its longer
    side is at most ``max_side``: a cheaper run at the cost of detail.
    """
    if policy not in _POLICIES:
        raise ConfigError(f"size policy {policy!r}: use 'resize64' or 'pad64'")
    if multiple < 1:
        raise ConfigError(f"multiple={multiple} must be at least 1")
    if height < multiple or width < multiple:
        raise FrameSizeError(
            f"frame is {width}x{height}; the feature grid needs at least "
            f"{multiple}x{multiple} pixels"
        )
    if policy == "resize64":
        scale = 1.0
        if max_side is not None:
            if max_side < multiple:
                raise ConfigError(f"max_side={max_side} must be at least {multiple}")
            scale = min(1.0, max_side / max(height, width))
        processed = (
            max(multiple, int(height * scale) // multiple * multiple),
            max(multiple, int(width * scale) // multiple * multiple),
        )
        return Geometry((height, width), processed, policy)
    if max_side is not None:
        raise ConfigError("max_side works with the resize64 policy only")
    processed = (-(-height // multiple) * multiple, -(-width // multiple) * multiple)
    pad = (0, processed[0] - height, 0, processed[1] - width)
    return Geometry((height, width), processed, policy, pad)


def prepare_frames(
    frames: torch.Tensor,
    policy: Policy = "resize64",
    multiple: int = 64,
    max_side: int | None = None,
    resize_filter: ResizeFilter = "pil-bicubic",
) -> tuple[torch.Tensor, Geometry]:
    """Frames uint8 ``[B, 3, H, W]`` -> float32 ``[B, 3, H', W']`` in [0, 1], and the geometry.

    "resize64" resizes with ``resize_filter``: "pil-bicubic" (default, METHOD 1.1) is what the
    reference code's ``frame_img.resize((width, height))`` does, PIL's antialiased bicubic on
    the 8-bit frame, reproduced byte for byte (:func:`zsvss_nb.kernels.resample.resize_uint8`);
    "bilinear" is zsvss 0.1's filter (``F.interpolate`` with half-pixel centres, antialiased only
    for a ``max_side`` downscale), kept to reproduce earlier results. "pad64" reflect-pads.
    """
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[1] != 3:
        raise InputError(f"frames {frames.dtype} {list(frames.shape)}: expected uint8 [B, 3, H, W]")
    if resize_filter not in _RESIZE_FILTERS:
        raise ConfigError(f"resize_filter={resize_filter!r}: use 'pil-bicubic' or 'bilinear'")
    geometry = geometry_for(frames.shape[2], frames.shape[3], policy, multiple, max_side)
    if geometry.processed == geometry.original:
        return frames.to(torch.float32) / 255.0, geometry
    if geometry.policy == "pad64":
        top, bottom, left, right = geometry.pad
        x = frames.to(torch.float32) / 255.0
        return F.pad(x, (left, right, top, bottom), mode="reflect"), geometry
    if resize_filter == "pil-bicubic":
        from .resample import resize_uint8

        return resize_uint8(frames, geometry.processed, "bicubic").to(
            torch.float32
        ) / 255.0, geometry
    paper = tuple(side // multiple * multiple for side in geometry.original)
    x = F.interpolate(
        frames.to(torch.float32) / 255.0,
        size=geometry.processed,
        mode="bilinear",
        align_corners=False,
        antialias=geometry.processed != paper,
    ).clamp_(0.0, 1.0)
    return x, geometry


def _nearest_index(n_out: int, n_in: int, device: torch.device) -> torch.Tensor:
    """Source index of each of ``n_out`` samples over ``n_in`` pixels, sampling pixel centres."""
    centres = (torch.arange(n_out, device=device, dtype=torch.float64) + 0.5) * (n_in / n_out)
    return centres.floor().long().clamp_(0, n_in - 1)


def _reflect_index(n_out: int, n_in: int, device: torch.device) -> torch.Tensor:
    """Source index of each of ``n_out >= n_in`` positions, reflected past the end like
    ``F.pad(mode="reflect")`` (the edge pixel is not repeated)."""
    i = torch.arange(n_out, device=device)
    return torch.where(i < n_in, i, 2 * (n_in - 1) - i).clamp_(min=0)


def restore(
    x: torch.Tensor, geometry: Geometry, mode: Literal["bilinear", "nearest"] = "bilinear"
) -> torch.Tensor:
    """Map ``x: [..., H', W']`` at the processed size back to ``[..., H, W]``.

    pad64 crops the padding away (exact, any dtype, ``mode`` unused). resize64 interpolates:
    "bilinear" (floating x; half-pixel centres, as cv2 bilinear in the reference code) or
    "nearest" (any dtype, e.g. label ids; samples each output pixel's centre).
    """
    if tuple(x.shape[-2:]) != geometry.processed:
        raise FrameSizeError(
            f"tensor {list(x.shape)}: last two sides should be {list(geometry.processed)}"
        )
    if mode not in ("bilinear", "nearest"):
        raise ConfigError(f"restore mode {mode!r}: use 'bilinear' or 'nearest'")
    height, width = geometry.original
    if geometry.policy == "pad64":
        top, _, left, _ = geometry.pad
        return x[..., top : top + height, left : left + width]
    if geometry.processed == geometry.original:
        return x
    if mode == "nearest":
        rows = _nearest_index(height, geometry.processed[0], x.device)
        cols = _nearest_index(width, geometry.processed[1], x.device)
        return x.index_select(-2, rows).index_select(-1, cols)
    if not x.is_floating_point():
        raise InputError(f"bilinear restore needs a floating tensor, got {x.dtype}")
    flat = x.reshape(-1, 1, *geometry.processed)
    out = F.interpolate(flat, size=(height, width), mode="bilinear", align_corners=False)
    return out.reshape(*x.shape[:-2], height, width)


def to_grid(mask: torch.Tensor, geometry: Geometry, grid_hw: tuple[int, int]) -> torch.Tensor:
    """Label mask ``[H, W]`` at the original size -> ``[h, w]`` on the feature grid (nearest).

    Follows the frames' geometry: for pad64 the mask is reflect-padded like the pixels, so a
    grid cell over reflected pixels gets the reflected label; then each grid cell takes the
    label at its centre. Used to label first-frame tokens from ground truth.
    """
    if mask.ndim != 2 or tuple(mask.shape) != geometry.original:
        raise LabelError(f"mask {list(mask.shape)}: expected {list(geometry.original)}")
    if mask.is_floating_point() or mask.is_complex():
        raise LabelError(f"mask dtype {mask.dtype}: expected integer label ids")
    h, w = grid_hw
    if h < 1 or w < 1:
        raise ConfigError(f"grid size {grid_hw} must be positive")
    if geometry.policy == "pad64":
        ph, pw = geometry.processed
        rows = _reflect_index(ph, geometry.original[0], mask.device)[
            _nearest_index(h, ph, mask.device)
        ]
        cols = _reflect_index(pw, geometry.original[1], mask.device)[
            _nearest_index(w, pw, mask.device)
        ]
    else:
        rows = _nearest_index(h, geometry.original[0], mask.device)
        cols = _nearest_index(w, geometry.original[1], mask.device)
    return mask.index_select(0, rows).index_select(1, cols).long()


def window_frames(window) -> torch.Tensor:
    """A :class:`~zsvss_nb.io.video.Window` or frames [B, 3, H, W] as uint8 frames [B, 3, H, W].

    Float frames are read as [0, 1] and clamped there before rounding to 8 bits.
    """
    frames = getattr(window, "frames", window)
    if not isinstance(frames, torch.Tensor) or frames.ndim != 4 or frames.shape[1] != 3:
        raise ConfigError("window must be a Window or a frame tensor [B, 3, H, W]")
    if frames.is_floating_point():
        return (frames.clamp(0, 1) * 255).round().to(torch.uint8)
    if frames.dtype in (torch.bool, torch.complex64, torch.complex128):
        raise InputError(f"frames {frames.dtype}: expected uint8, or float in [0, 1]")
    if frames.dtype != torch.uint8:  # other integer types: 8-bit values
        if frames.numel() and (int(frames.min()) < 0 or int(frames.max()) > 255):
            raise InputError(f"frames {frames.dtype}: integer values must lie in 0..255")
        frames = frames.to(torch.uint8)
    return frames


def prepare_window(
    window, fcfg: FeatureConfig, multiple: int, device: torch.device | str | None = None
) -> tuple[torch.Tensor, Geometry]:
    """A window's frames as model input: float [B, 3, H', W'] in [0, 1] on ``device``.

    Applies ``fcfg``'s size policy, ``max_side`` and resize filter with the backbone's
    ``multiple`` (:func:`prepare_frames`).
    """
    images, geometry = prepare_frames(
        window_frames(window), fcfg.size_policy, multiple, fcfg.max_side, fcfg.resize_filter
    )
    return (images if device is None else images.to(device)), geometry
