"""Stage 3: full-resolution labels from coarse maps, by masked modulation or a cheap baseline.

Masked modulation (METHOD.md 1.7, EmerDiff-style) is model-specific up to the per-class
difference maps D_c, which the backbone computes
(:meth:`~zsvss_nb.backbones.base.Backbone.modulation_maps`); what follows is the same for every
model and lives here once: D_c is normalised per frame (METHOD 1.7.4), the filtered variant
down-weights responses outside the coarse mask (1.7.5), and the labels are the argmax restored
to the original size. The baselines (nearest, bilinear, joint-bilateral) need no model.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .backbones.base import Backbone, FeatureResult, ModulationMaps
from .config import SegmentConfig, UpsampleConfig
from .errors import ConfigError
from .kernels.frames import Geometry, restore
from .kernels.ops import filter_weights, one_hot_maps, restore_argmax

log = logging.getLogger(__name__)


@dataclass
class UpsampleResult:
    """labels: [B, H, W] class ids at the original size; raw_labels: the unfiltered variant.

    diff: per-class normalised difference maps [K, B, H', W'] at the processed size (modulation
    only); classes: [K] the ids the maps stand for; method: the upsampler that ran.
    """

    labels: torch.Tensor
    classes: torch.Tensor
    raw_labels: torch.Tensor | None = None
    diff: torch.Tensor | None = None
    unet_evals: int = 0
    vae_decodes: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    method: str = "modulation"


def nearest_labels(coarse: torch.Tensor, geometry, size: tuple[int, int]) -> torch.Tensor:
    """Coarse ids [B, h, w] -> processed size ``size`` (H', W') -> original size, nearest."""
    up = F.interpolate(coarse[:, None].float(), size=size, mode="nearest")[:, 0]
    return restore(up, geometry, mode="nearest").round().long()


def bilinear_labels(
    coarse: torch.Tensor, classes: torch.Tensor, geometry, size: tuple[int, int]
) -> torch.Tensor:
    """Bilinear upsampling of per-class one-hot scores, then argmax: [B, H, W] ids."""
    scores = torch.stack(
        [
            F.interpolate(
                one_hot_maps(coarse[f : f + 1], classes)[:, 0][None],
                size=size,
                mode="bilinear",
                align_corners=False,
            )[0]
            for f in range(coarse.shape[0])
        ],
        dim=1,
    )
    return restore_argmax(scores, classes, geometry)


def joint_bilateral_scores(
    scores: torch.Tensor,
    guide: torch.Tensor,
    sigma_space: float,
    sigma_color: float,
    radius: int = 2,
) -> torch.Tensor:
    """Joint-bilateral upsampling (Kopf et al. 2007) of coarse scores [K, h, w] to the guide's size.

    ``guide``: the frame [3, H, W] in [0, 1]. Each output pixel averages the coarse cells within
    ``radius`` cells, weighted by spatial distance (``sigma_space`` in cells) and by colour
    distance between the pixel and the cell's mean colour (``sigma_color``). Loops run over
    the (2r+1)^2 offsets only.
    """
    K, h, w = scores.shape
    H, W = guide.shape[-2:]
    cell_rgb = F.adaptive_avg_pool2d(guide[None], (h, w))[0]  # [3, h, w]
    uy = (torch.arange(H, device=guide.device) + 0.5) * h / H - 0.5
    ux = (torch.arange(W, device=guide.device) + 0.5) * w / W - 0.5
    cy, cx = uy.round().long(), ux.round().long()
    offsets = [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)]

    def log_weight(dy: int, dx: int):
        qy, qx = (cy + dy).clamp(0, h - 1), (cx + dx).clamp(0, w - 1)
        space = ((uy - qy) ** 2)[:, None] + ((ux - qx) ** 2)[None, :]
        rgb = cell_rgb[:, qy][:, :, qx]
        colour = ((guide - rgb) ** 2).sum(0)
        return -space / (2 * sigma_space**2) - colour / (2 * sigma_color**2), qy, qx

    # weights in log space, shifted by their per-pixel max: far-off colours cannot underflow
    peak = torch.stack([log_weight(dy, dx)[0] for dy, dx in offsets]).amax(0)
    num = torch.zeros(K, H, W, device=guide.device)
    den = torch.zeros(1, H, W, device=guide.device)
    for dy, dx in offsets:
        logw, qy, qx = log_weight(dy, dx)
        weight = torch.exp(logw - peak)[None]
        num += weight * scores[:, qy][:, :, qx]
        den += weight
    out = num / den
    if not bool(torch.isfinite(out).all()):  # an overflowing 1 / sigma^2
        raise ConfigError(
            f"joint-bilateral upsampling: sigma_space={sigma_space}, sigma_color={sigma_color} "
            "give non-finite weights; use the ranges of upsample.bilateral_sigma_*"
        )
    return out


def bilateral_labels(
    coarse: torch.Tensor,
    classes: torch.Tensor,
    images: torch.Tensor,
    geometry,
    cfg: UpsampleConfig,
) -> torch.Tensor:
    """Image-guided upsampling of one-hot coarse scores [B, h, w] with the frames [B, 3, H', W']."""
    scores = torch.stack(
        [
            joint_bilateral_scores(
                one_hot_maps(coarse[f : f + 1], classes)[:, 0],
                images[f],
                cfg.bilateral_sigma_space,
                cfg.bilateral_sigma_color,
            )
            for f in range(coarse.shape[0])
        ],
        dim=1,
    )
    return restore_argmax(scores, classes, geometry)


@torch.inference_mode()
def modulate(
    backbone: Backbone,
    feats: FeatureResult,
    coarse: torch.Tensor,
    cfg: SegmentConfig | None = None,
    classes: torch.Tensor | None = None,
) -> UpsampleResult:
    """Masked-modulation upsampling of refined coarse labels [B, h, w] for one window.

    ``feats`` is the window's :class:`FeatureResult` (with caches). ``classes`` fixes the label
    ids to consider (default: those present in ``coarse``). Returns labels at the original size.
    """
    cfg = cfg or backbone.default_config()
    coarse = coarse.to(backbone.device)
    classes = torch.unique(coarse) if classes is None else classes.to(coarse.device)
    masks = one_hot_maps(coarse, classes)  # [K, B, h, w] at the feature grid
    maps = backbone.modulation_maps(feats, masks, classes, coarse, cfg)
    return finish_modulation(maps, masks, coarse, classes, feats.geometry, cfg.upsample)


def finish_modulation(
    maps: ModulationMaps,
    masks: torch.Tensor,
    coarse: torch.Tensor,
    classes: torch.Tensor,
    geometry: Geometry,
    ucfg: UpsampleConfig,
) -> UpsampleResult:
    """Labels from a backbone's difference maps: normalise, filter, argmax, restore.

    maps.diff [K, B, H', W'] at the processed size; masks [K, B, h, w] and coarse [B, h, w]
    at the feature grid. The raw and the filtered labels are both returned.
    """
    seconds = {"modulation_unet": 0.0, "decode": 0.0, "difference": 0.0, **maps.seconds}
    tic = time.perf_counter()
    K, B, H, W = maps.diff.shape
    diff = maps.diff / (maps.diff.amax(dim=(-2, -1), keepdim=True) + 1e-5)  # METHOD 1.7.4
    up = filter_weights(masks, (H, W), ucfg.paper_compat)
    filtered = diff * (up + ucfg.outside_weight * (1 - up))  # METHOD 1.7.5
    raw_scores = diff
    if maps.candidates is not None:  # only neighbourhood classes compete at a pixel
        cand = maps.candidates.flatten(0, 1)[:, None].float()
        cand_px = F.interpolate(cand, size=(H, W), mode="nearest")[:, 0].view(K, B, H, W) > 0.5
        raw_scores = torch.where(cand_px, diff, -1.0)
        filtered = torch.where(cand_px, filtered, -1.0)
    fallback = (
        None
        if ucfg.paper_compat
        else F.interpolate(coarse[:, None].float(), size=(H, W), mode="nearest")[:, 0].long()
    )
    raw_labels = restore_argmax(raw_scores, classes, geometry, fallback)
    filt_labels = restore_argmax(filtered, classes, geometry, fallback)
    seconds["difference"] += time.perf_counter() - tic
    return UpsampleResult(
        labels=filt_labels if ucfg.output == "filtered" else raw_labels,
        classes=classes,
        raw_labels=raw_labels,
        diff=diff,
        unet_evals=maps.unet_evals,
        vae_decodes=maps.vae_decodes,
        seconds=seconds,
    )


def upsample(
    backbone: Backbone,
    feats: FeatureResult,
    coarse: torch.Tensor,
    cfg: SegmentConfig,
    classes: torch.Tensor | None = None,
) -> UpsampleResult:
    """Stage 3 by ``cfg.upsample.method``: modulation, bilinear, nearest or bilateral.

    A backbone that cannot modulate gets bilinear upsampling instead;
    ``UpsampleResult.method`` says which upsampler ran.
    """
    method = cfg.upsample.method
    if method == "modulation" and backbone.can_modulate:
        result = modulate(backbone, feats, coarse, cfg, classes)
        if result.diff is not None and not bool(torch.isfinite(result.diff).all()):
            raise ConfigError(
                f"stage 3 gave non-finite difference maps (overflow): lower upsample.lam="
                f"{cfg.upsample.lam} or use --precision fp32"
            )
        return result
    if method == "modulation":  # the Segmenter warns once per run (Segmenter.__init__)
        log.debug("backbone %s cannot modulate: bilinear upsampling", backbone.name)
        method = "bilinear"
    tic = time.perf_counter()
    coarse = coarse.to(feats.images.device)
    classes = torch.unique(coarse) if classes is None else classes.to(coarse.device)
    size = tuple(feats.images.shape[-2:])
    if method == "nearest":
        labels = nearest_labels(coarse, feats.geometry, size)
    elif method == "bilateral":
        labels = bilateral_labels(coarse, classes, feats.images, feats.geometry, cfg.upsample)
    else:
        labels = bilinear_labels(coarse, classes, feats.geometry, size)
    return UpsampleResult(
        labels=labels,
        classes=classes,
        seconds={"upsample": time.perf_counter() - tic},
        method=method,
    )


__all__ = [
    "UpsampleResult",
    "bilateral_labels",
    "bilinear_labels",
    "finish_modulation",
    "joint_bilateral_scores",
    "modulate",
    "nearest_labels",
    "upsample",
]
