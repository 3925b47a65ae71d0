"""Pillow-exact image resampling and JPEG round trips in plain PyTorch.

The reference code resizes frames and masks with ``PIL.Image.resize`` and stores its difference
maps as JPEG files. This module reproduces both on tensors, on any device:

- :func:`pil_weights` gives the per-axis coefficients of Pillow's ``Resample.c`` (``BOX``,
  ``BILINEAR``, ``BICUBIC``, ``LANCZOS``), including its window bounds and antialiasing on
  downscaling;
- :func:`resize_float` applies them separably in float (no clipping, no rounding);
- :func:`resize_uint8` applies them as Pillow does to 8-bit ``L``/``RGB`` images: one pass
  per axis, each in 22-bit fixed point and clipped to 0..255, a pass being skipped when its
  axis keeps its size. The result is byte-identical to Pillow (the pass order of Pillow up to
  12.3, which the reference code ran, or of Pillow 13);
- :func:`jpeg_roundtrip` encodes grayscale maps as JPEG with Pillow in memory and decodes them.

Sizes are ``(height, width)``, the tensor order, not Pillow's ``(width, height)``.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import numpy as np
import torch

from ..errors import ConfigError, InputError

#: fixed-point fraction bits of Pillow's 8-bit resampling (``32 - 8 - 2``)
PRECISION_BITS = 32 - 8 - 2
_ONE = float(1 << PRECISION_BITS)
_HALF = float(1 << (PRECISION_BITS - 1))
#: 1-D pass orders of Pillow's two-pass resampling (see :func:`resize_uint8`)
PASS_ORDERS = ("horizontal-first", "pillow13")


def _box(x: torch.Tensor) -> torch.Tensor:
    return ((x > -0.5) & (x <= 0.5)).to(x.dtype)


def _bilinear(x: torch.Tensor) -> torch.Tensor:
    ax = x.abs()
    return torch.where(ax < 1.0, 1.0 - ax, torch.zeros_like(ax))


def _bicubic(x: torch.Tensor) -> torch.Tensor:
    # Keys' cubic convolution with a = -0.5, with Pillow's operation order:
    # ((a + 2) x - (a + 3)) x x + 1 on [0, 1), (((x - 5) x + 8) x - 4) a on [1, 2)
    a = -0.5
    ax = x.abs()
    inner = ((a + 2.0) * ax - (a + 3.0)) * ax * ax + 1.0
    outer = (((ax - 5.0) * ax + 8.0) * ax - 4.0) * a
    return torch.where(ax < 1.0, inner, torch.where(ax < 2.0, outer, torch.zeros_like(ax)))


def _sinc(x: torch.Tensor) -> torch.Tensor:
    xp = x * math.pi
    safe = torch.where(x == 0.0, torch.ones_like(xp), xp)
    return torch.where(x == 0.0, torch.ones_like(x), torch.sin(safe) / safe)


def _lanczos(x: torch.Tensor) -> torch.Tensor:
    inside = (x >= -3.0) & (x < 3.0)
    return torch.where(inside, _sinc(x) * _sinc(x / 3.0), torch.zeros_like(x))


#: filter name -> (kernel on float64 tensors, support in input pixels at scale 1)
FILTERS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], float]] = {
    "box": (_box, 0.5),
    "bilinear": (_bilinear, 1.0),
    "bicubic": (_bicubic, 2.0),
    "lanczos": (_lanczos, 3.0),
}


def _filter(name: str) -> tuple[Callable[[torch.Tensor], torch.Tensor], float]:
    key = name.lower() if isinstance(name, str) else None
    if key not in FILTERS:
        raise ConfigError(f"unknown resampling filter {name!r}: use one of {sorted(FILTERS)}")
    return FILTERS[key]


def _check_length(name: str, n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {n!r}")
    return int(n)


def _check_size(size: object) -> tuple[int, int]:
    if not isinstance(size, (tuple, list, torch.Size)) or len(size) != 2:
        raise ConfigError(f"size must be (height, width), got {size!r}")
    return _check_length("size[0] (height)", size[0]), _check_length("size[1] (width)", size[1])


def _taps(
    n_in: int, n_out: int, filter: str, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pillow's ``precompute_coeffs``: window starts [n_out] int64 and weights [n_out, ksize].

    Row i holds the normalised float64 weights of input pixels ``start[i] + 0 .. ksize-1``;
    taps past Pillow's window end (or past the input) are exactly zero. The small tables are
    built on the CPU (same bits on every device, no tiny kernel launches) and then moved.
    """
    kernel, base_support = _filter(filter)
    n_in = _check_length("n_in", n_in)
    n_out = _check_length("n_out", n_out)
    scale = float(n_in) / n_out
    filterscale = max(scale, 1.0)
    support = base_support * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    inv = 1.0 / filterscale
    center = (torch.arange(n_out, dtype=torch.float64) + 0.5) * scale
    # (int)(v + 0.5) truncates toward zero, then the window is clamped to the input
    xmin = (center - support + 0.5).trunc().clamp(min=0.0)
    xmax = (center + support + 0.5).trunc().clamp(max=float(n_in))
    count = xmax - xmin
    offs = torch.arange(ksize, dtype=torch.float64)
    arg = ((offs[None, :] + xmin[:, None]) - center[:, None] + 0.5) * inv
    w = torch.where(offs[None, :] < count[:, None], kernel(arg), torch.zeros_like(arg))
    total = torch.zeros(n_out, dtype=torch.float64)
    for j in range(ksize):  # in order, so the sum rounds as Pillow's C loop does
        total = total + w[:, j]
    w = torch.where(total[:, None] != 0.0, w / total[:, None], w)
    return xmin.long().to(device), w.to(device)


def pil_weights(
    n_in: int, n_out: int, filter: str, device: torch.device | str | None = None
) -> torch.Tensor:
    """The [n_out, n_in] float64 coefficients Pillow's ``Image.resize`` uses along one axis.

    ``filter`` is "box", "bilinear", "bicubic" (a = -0.5) or "lanczos" (a = 3). On
    downscaling the support is widened by the scale (antialiasing); rows sum to 1.
    """
    start, w = _taps(n_in, n_out, filter, device)
    ksize = w.shape[1]
    cols = start[:, None] + torch.arange(ksize, device=w.device)[None, :]
    out = torch.zeros(n_out, n_in + ksize, dtype=torch.float64, device=w.device)
    out.scatter_(1, cols, w)  # taps past the input are zero and land in the padding
    return out[:, :n_in].contiguous()


def _check_image(x: object, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim < 2:
        raise InputError(f"{name} must be [..., H, W], got shape {tuple(x.shape)}")
    if x.shape[-2] == 0 or x.shape[-1] == 0:
        raise InputError(f"{name} has an empty spatial size {tuple(x.shape[-2:])}")
    return x


def resize_float(x: torch.Tensor, size: tuple[int, int], filter: str) -> torch.Tensor:
    """Separable resize of float [..., H, W] to [..., size[0], size[1]] with Pillow's weights.

    Horizontal pass then vertical pass, each skipped when its axis keeps its size; float32
    result without clipping or rounding (Lanczos and bicubic overshoot [0, 1] near edges).
    """
    x = _check_image(x, "x")
    if not x.is_floating_point():
        raise InputError(f"resize_float needs a floating-point tensor, got {x.dtype}")
    out_h, out_w = _check_size(size)
    _filter(filter)
    y = x.float()
    h, w = y.shape[-2:]
    if out_w != w:
        y = y @ pil_weights(w, out_w, filter, y.device).float().T
    if out_h != h:
        y = pil_weights(h, out_h, filter, y.device).float() @ y
    return y.contiguous() if y is not x else y.clone()


def _fixed_point(w: torch.Tensor) -> torch.Tensor:
    """Pillow's ``normalize_coeffs_8bpc``: round half away from zero to 22 fraction bits."""
    scaled = w * _ONE
    return torch.where(w < 0, (scaled - 0.5).trunc(), (scaled + 0.5).trunc())


def _pass_uint8(x: torch.Tensor, n_out: int, dim: int, filter: str) -> torch.Tensor:
    """One 8-bit pass along ``dim`` (-1 or -2) of float64 [..., H, W] holding 0..255 integers.

    Every product and partial sum is an integer below 2**31, so float64 is exact.
    """
    n_in = x.shape[dim]
    start, w = _taps(n_in, n_out, filter, x.device)
    coef = _fixed_point(w)
    shape = list(x.shape)
    shape[dim] = n_out
    acc = torch.full(shape, _HALF, dtype=torch.float64, device=x.device)
    last = n_in - 1
    for j in range(coef.shape[1]):
        idx = (start + j).clamp(max=last)  # clamped taps have coefficient 0
        k = coef[:, j] if dim == -1 else coef[:, j, None]
        acc += x.index_select(dim, idx) * k
    return torch.floor(acc / _ONE).clamp_(0.0, 255.0)


def resize_uint8(
    x: torch.Tensor,
    size: tuple[int, int],
    filter: str,
    pass_order: str = "horizontal-first",
) -> torch.Tensor:
    """Resize uint8 [..., H, W] (e.g. [B, 3, H, W] RGB, [K, h, w] masks) exactly as Pillow.

    Matches ``Image.resize((size[1], size[0]), filter)`` on "L"/"RGB" images byte for byte:
    one 1-D pass per axis that changes, the second on the 8-bit intermediate. ``pass_order``
    "horizontal-first" is what every Pillow up to 12.3 does (and so what the reference code
    ran); "pillow13" follows Pillow 13, which runs the vertical pass first when the height
    loses more than twice as many pixels as the width. The two orders round differently.
    Returns uint8 [..., size[0], size[1]].
    """
    x = _check_image(x, "x")
    if x.dtype != torch.uint8:
        raise InputError(f"resize_uint8 needs a uint8 tensor, got {x.dtype}")
    out_h, out_w = _check_size(size)
    _filter(filter)
    if pass_order not in PASS_ORDERS:
        raise ConfigError(f"pass_order={pass_order!r}: use one of {', '.join(PASS_ORDERS)}")
    h, w = x.shape[-2:]
    if (out_h, out_w) == (h, w):
        return x.clone()
    y = x.to(torch.float64)
    vertical_first = pass_order == "pillow13" and 0 < h - out_h and h - out_h > 2 * (w - out_w)
    passes = [(out_w, -1), (out_h, -2)]
    for n_out, dim in reversed(passes) if vertical_first else passes:
        if n_out != y.shape[dim]:
            y = _pass_uint8(y, n_out, dim, filter)
    return y.to(torch.uint8)


def jpeg_roundtrip(maps: torch.Tensor, quality: int = 75) -> torch.Tensor:
    """Encode each uint8 [N, H, W] map as a grayscale JPEG with Pillow in memory and decode it.

    Reproduces the reference storing its difference maps with ``Image.save("x.jpg")``
    (Pillow's defaults; libjpeg's default quality is 75). Returns uint8 [N, H, W] on
    ``maps``'s device.
    """
    from PIL import Image

    if not isinstance(maps, torch.Tensor):
        raise InputError(f"maps must be a torch.Tensor, got {type(maps).__name__}")
    if maps.dtype != torch.uint8:
        raise InputError(f"jpeg_roundtrip needs uint8 maps, got {maps.dtype}")
    if maps.ndim != 3:
        raise InputError(f"maps must be [N, H, W], got shape {tuple(maps.shape)}")
    if maps.shape[1] == 0 or maps.shape[2] == 0:
        raise InputError(f"maps have an empty spatial size {tuple(maps.shape[1:])}")
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ConfigError(f"JPEG quality must be an integer in 1..100, got {quality!r}")
    arr = np.ascontiguousarray(maps.detach().cpu().numpy())
    out = np.empty_like(arr)
    for i, m in enumerate(arr):
        buf = io.BytesIO()
        Image.fromarray(m).save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        with Image.open(buf) as im:
            out[i] = np.asarray(im.convert("L"))
    return torch.from_numpy(out).to(maps.device)


__all__ = [
    "FILTERS",
    "PRECISION_BITS",
    "jpeg_roundtrip",
    "pil_weights",
    "resize_float",
    "resize_uint8",
]
