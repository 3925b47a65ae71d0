"""The benchmark's workload: a seeded synthetic video with planted, moving classes.

See :func:`synthetic_video`; :class:`PlantedContext` feeds its planted maps to the pipeline in
place of the KNN's prediction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ...errors import ConfigError


@dataclass
class Workload:
    """frames: uint8 [N, 3, H, W]; labels: planted class ids [N, H, W] (0 = background)."""

    frames: torch.Tensor
    labels: torch.Tensor
    description: str

    def pair_occupancy(self, cell: int = 16) -> float:
        """Share of (class, frame) pairs present at the feature grid (``cell`` px per cell)."""
        n, h, w = self.labels.shape
        grid = self.labels[:, cell // 2 :: cell, cell // 2 :: cell]
        classes = torch.unique(self.labels[0])
        present = (grid[None] == classes.view(-1, 1, 1, 1)).flatten(2).any(-1)
        return float(present.float().mean())


def _smooth_field(gen: torch.Generator, size: int, waves: int = 4) -> tuple[torch.Tensor, ...]:
    """Random low-frequency sinusoid parameters: (frequencies [waves, 2], phases [waves])."""
    freq = (torch.rand(waves, 2, generator=gen) - 0.5) * 6 * math.pi / size
    phase = torch.rand(waves, generator=gen) * 2 * math.pi
    return freq, phase


def synthetic_video(frames: int = 14, size: int = 256, classes: int = 3, seed: int = 0) -> Workload:
    """The seeded benchmark video: ``frames`` frames of ``size`` x ``size`` (see module doc).

    Blobs have radius 0.13-0.18 x size (several 16-px feature cells), move 4.5 % of the side
    per frame, leave the frame between frames 6 and 11 and wrap around through an off-screen
    gap of 0.6 x size, so over a long video a blob is visible about two thirds of the time;
    every class is visible in frame 1.
    """
    if classes < 2:
        raise ConfigError(f"classes={classes}: the workload needs at least 2 (background, band)")
    if frames < 1 or size < 64:
        raise ConfigError(f"frames={frames}, size={size}: need >= 1 frame of >= 64 px")
    gen = torch.Generator().manual_seed(seed)
    S = size
    yy, xx = torch.meshgrid(
        torch.arange(S, dtype=torch.float32), torch.arange(S, dtype=torch.float32), indexing="ij"
    )
    t = torch.arange(frames, dtype=torch.float32)[:, None, None]
    # background: three channels of drifting low-frequency waves (a slow camera pan)
    bg = []
    for _ in range(3):
        freq, phase = _smooth_field(gen, S)
        wave = sum(
            torch.sin(freq[i, 0] * yy + freq[i, 1] * (xx + 1.5 * t) + phase[i])
            for i in range(len(phase))
        )
        bg.append(0.45 + 0.12 * wave / len(phase))
    image = torch.stack(bg, 1)  # [N, 3, S, S]
    labels = torch.zeros(frames, S, S, dtype=torch.long)
    # class 1: ground band with a swaying edge and diagonal stripes
    edge = S * (0.70 + 0.06 * torch.sin(2 * math.pi * (xx / S + t / 11.0)))
    band = yy >= edge
    stripes = 0.5 + 0.5 * torch.sin((xx + yy) * 2 * math.pi / 12 + t * 0.7)
    colour = torch.tensor([0.25, 0.55, 0.2]).view(1, 3, 1, 1)
    image = torch.where(band[:, None], colour * (0.7 + 0.3 * stripes[:, None]), image)
    labels[band] = 1
    # classes 2..: blobs that travel at a constant speed and wrap through an off-screen gap;
    # blob c leaves the frame at a seeded frame of the first 14-frame window
    for c in range(2, classes):
        r = S * (0.13 + 0.05 * float(torch.rand(1, generator=gen)))
        gap = 0.6 * S
        speed = S * 0.045
        exit_frame = 14 * (0.4 + 0.35 * float(torch.rand(1, generator=gen)))
        cycle = S + 2 * r + gap
        x0 = min(S + r - exit_frame * speed, S - r)  # at least mostly visible in frame 1
        cx = torch.remainder(x0 + r + speed * t, cycle) - r
        if float(torch.rand(1, generator=gen)) < 0.5:  # half of the blobs move leftwards
            cx = S - 1 - cx
        cy = S * (0.2 + 0.35 * float(torch.rand(1, generator=gen))) + 0.04 * S * torch.sin(t / 3)
        blob = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        hue = torch.rand(3, generator=gen) * 0.8 + 0.1
        checker = torch.sin(xx * 2 * math.pi / 9) * torch.sin(yy * 2 * math.pi / 9)
        dots = 0.5 + 0.5 * torch.sign(checker)
        blob_rgb = hue.view(1, 3, 1, 1) * (0.75 + 0.25 * dots[None, None])
        image = torch.where(blob[:, None], blob_rgb, image)
        labels[blob] = c
    image = image + 0.02 * torch.randn(image.shape, generator=gen)
    frames_u8 = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    description = (
        f"{frames} seeded synthetic frames of {S}x{S} (seed {seed}): drifting background "
        f"(class 0), swaying ground band (class 1), {classes - 2} travelling blob(s) that leave "
        "the frame within the first window and are off-screen about a third of the time; "
        "frame 1's planted map is the first-frame GT"
    )
    return Workload(frames_u8, labels, description)


class PlantedContext:
    """A scene context whose predictions are replaced by the planted maps of the window.

    Everything else is the real :class:`~zsvss_nb.context.SceneContext`: k-means
    initialisation, the KNN prediction (run and timed, its result discarded) and the update.
    """

    def __init__(self, context, planted: torch.Tensor) -> None:
        self._context, self._planted = context, planted  # planted: [B, H, W] ids

    def __getattr__(self, name: str):
        return getattr(self._context, name)

    def predict(self, feats: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        self._context.predict(feats)
        h, w = feats.shape[1:3]
        grid = F.interpolate(self._planted[:, None].float(), size=(h, w), mode="nearest-exact")
        return grid[:, 0].long().to(feats.device)
