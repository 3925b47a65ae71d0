"""Label colours and overlays: palettes, colorize, overlay, overlay_panel and its legend strip.

PIL, numpy and torch only (no matplotlib), so the run-time writers (``Segmenter.run``) can use
them without loading a plotting library. Three kinds of palette:

- :func:`palette`: the PASCAL VOC bit-interleaving palette that DAVIS/VSPW palette PNGs use (id 0
  black, id 255 void white); the label PNGs the writers produce carry it;
- :func:`cluster_palette`: for cluster ids in figures; every id, 0 included, is a visible colour;
- :func:`dataset_palette`: a dataset's own class colours (CamVid, Cityscapes, DAVIS, VSPW), for GT
  class ids and predictions mapped to them.

Figures take any of them through :func:`resolve_palette`. :func:`labels_np`, :func:`frame_np`
and :func:`frames_list` are the input checks every viz module shares.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError

from ...datasets.base import find_format, formats
from ...errors import InputError, LabelError

VOID_ID = 255
ClassNames = Mapping[int, str] | Sequence[str] | None  # id -> name, or names listed by id
VOID_COLOUR = (255, 255, 255)

ArrayLike = torch.Tensor | np.ndarray


# ----------------------------------------------------------------------------- colours


def palette(n: int = 256) -> np.ndarray:
    """Fixed label colours, uint8 ``[n, 3]``; ``n`` in 1..256.

    PASCAL VOC scheme: bit ``j`` of the id goes to bit ``7 - j // 3`` of channel ``j % 3``, so the
    256 colours are distinct and every channel is a multiple of 32 (at most 224). Index 255, the
    void / ignore id, is overridden with white, which therefore marks void pixels only.
    """
    if not 1 <= n <= 256:
        raise InputError(f"palette size n={n} must lie in 1..256")
    ids = np.arange(n, dtype=np.int64)
    bits = (ids[:, None] >> np.arange(8)) & 1  # [n, 8], least significant first
    out = np.zeros((n, 3), dtype=np.int64)
    for j in range(8):  # 8 bits, not per pixel: fixed-size loop
        out[:, j % 3] |= bits[:, j] << (7 - j // 3)
    out = out.astype(np.uint8)
    if n > VOID_ID:
        out[VOID_ID] = VOID_COLOUR
    return out


# matplotlib's "tab10" followed by the light half of "tab20": 20 qualitative colours, none black
_CLUSTER_COLOURS = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
    (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229),
)  # fmt: skip


def palette_names() -> tuple[str, ...]:
    """The names :func:`resolve_palette` takes: "voc", "clusters" and every registered dataset
    format with colours of its own (:attr:`zsvss_nb.datasets.base.DatasetFormat.palette`)."""
    return ("voc", "clusters", *(f.name for f in formats() if f.palette is not None))


PALETTES = palette_names()  # as registered at import; resolve_palette asks palette_names()

PaletteLike = str | np.ndarray | Sequence[Sequence[int]] | None


def cluster_palette(n: int = 256) -> np.ndarray:
    """Colours for cluster ids, uint8 ``[n, 3]``: 20 qualitative colours (id 0 is blue, never
    black), then the VOC colours of ids 20..254, and white for the void id 255."""
    out = palette(max(n, len(_CLUSTER_COLOURS))).copy()
    out[: len(_CLUSTER_COLOURS)] = _CLUSTER_COLOURS
    return out[:n]


def _embedded_palette(dataset: Any) -> np.ndarray | None:
    """The palette stored in the first label PNG of ``dataset`` (mode "P" masks), or None."""
    for video in getattr(dataset, "videos", ()):
        for path in getattr(video, "labels", {}).values():
            try:
                with Image.open(path) as img:
                    pal = img.getpalette() if img.mode == "P" else None
            except (OSError, UnidentifiedImageError):
                return None
            if not pal:
                return None
            flat = np.zeros(768, dtype=np.uint8)
            flat[: len(pal)] = pal[:768]
            return flat.reshape(256, 3)
    return None


def dataset_palette(dataset: Any) -> np.ndarray:
    """A dataset's own class colours, uint8 ``[256, 3]``; ``dataset``: a format name or a
    :class:`zsvss_nb.datasets.Dataset`.

    The colours are the registered format's ``palette``: CamVid (11 classes) and Cityscapes
    (train ids) have published colour tables (void / ignore black, as they draw it). DAVIS and
    VSPW store a palette in their mode "P" masks: that palette is used when the dataset's first
    label file has one, else the VOC palette the masks are drawn with (DAVIS 2016's 0/255
    masks: background black, object red). Formats without colours of their own (and names no
    format is registered under) get :func:`cluster_palette`.
    """
    name = dataset if isinstance(dataset, str) else str(getattr(dataset, "name", ""))
    fmt = find_format(name)
    colours = None if fmt is None else fmt.palette
    if colours is None:
        return cluster_palette(256)
    if not colours.embedded:
        out = np.tile(np.asarray(colours.fill, np.uint8), (256, 1))
        out[: len(colours.table)] = colours.table
        return out
    embedded = None if isinstance(dataset, str) else _embedded_palette(dataset)
    return palette(256) if embedded is None else embedded


def dataset_names(dataset: Any) -> dict[int, str]:
    """Legend names of a :class:`zsvss_nb.datasets.Dataset` or a format name (the registered
    format's defaults): class names by id, and "void" at the ignore id (CamVid's 11, not only
    255), so GT strips name every id they show."""
    if isinstance(dataset, str):
        dataset = find_format(dataset)
    names = dict(enumerate(getattr(dataset, "class_names", None) or ()))
    ignore = getattr(dataset, "ignore_index", None)
    if ignore is not None:
        names.setdefault(int(ignore), "void")
    return names


def resolve_palette(colours: PaletteLike = None) -> np.ndarray:
    """Any palette as uint8 ``[256, 3]``: None or "clusters" (:func:`cluster_palette`), "voc"
    (:func:`palette`), a dataset name (:func:`dataset_palette`) or an ``[n, 3]`` array (ids
    from n on get :func:`cluster_palette`'s colours)."""
    if colours is None or (isinstance(colours, str) and colours == "clusters"):
        return cluster_palette(256)
    if isinstance(colours, str):
        names = palette_names()
        if colours not in names:
            raise InputError(f"palette {colours!r}: choose from {names} or pass an [n, 3] array")
        return palette(256) if colours == "voc" else dataset_palette(colours)
    arr = np.asarray(colours)
    if arr.ndim != 2 or arr.shape[1] != 3 or not 1 <= arr.shape[0] <= 256:
        raise InputError(f"palette array must be [n, 3] with n in 1..256, got {arr.shape}")
    out = cluster_palette(256)
    out[: arr.shape[0]] = np.clip(arr, 0, 255).astype(np.uint8)
    return out


def labels_np(labels: ArrayLike, name: str = "labels") -> np.ndarray:
    """``labels [H, W]`` as int64 numpy, checked to be ids in 0..255."""
    arr = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if arr.ndim != 2:
        raise LabelError(f"{name} must be [H, W], got shape {tuple(arr.shape)}")
    if arr.dtype.kind not in "iub":
        raise LabelError(f"{name} must hold integer ids, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise LabelError(f"{name} ids must lie in 0..255, got {arr.min()}..{arr.max()}")
    return arr


def frame_np(frame: ArrayLike, name: str = "frame") -> np.ndarray:
    """One image as uint8 ``[H, W, 3]``.

    Accepts ``[H, W, 3]``, ``[3, H, W]`` (tensors are read channel-first when both fit),
    ``[H, W]`` grey, uint8 or float in [0, 1] (clipped).
    """
    is_tensor = isinstance(frame, torch.Tensor)
    arr = frame.detach().cpu().numpy() if is_tensor else np.asarray(frame)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    elif arr.ndim == 3 and arr.shape[0] in (1, 3) and (is_tensor or arr.shape[-1] not in (1, 3)):
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3):
        raise InputError(f"{name} must be [H, W, 3] or [3, H, W], got shape {tuple(arr.shape)}")
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype.kind == "f":
        return (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if arr.dtype.kind in "iub":
        return np.clip(arr, 0, 255).astype(np.uint8)
    raise InputError(f"{name} has unsupported dtype {arr.dtype}")


def frames_list(frames: ArrayLike | Sequence[ArrayLike], name: str = "frames") -> list[np.ndarray]:
    """A batch ``[B, 3, H, W]`` / ``[B, H, W, 3]`` or a sequence of frames, as uint8 HWC."""
    if isinstance(frames, (torch.Tensor, np.ndarray)) and frames.ndim != 4:
        raise InputError(f"{name} must be a batch [B, ...] of images, got {tuple(frames.shape)}")
    return [frame_np(f, f"{name}[{i}]") for i, f in enumerate(frames)]


def colorize(labels: ArrayLike) -> Image.Image:
    """``labels [H, W]`` as an indexed (mode "P") image with :func:`palette` attached.

    ``np.array(img)`` gives the ids back, also after saving as PNG.
    """
    img = Image.fromarray(labels_np(labels).astype(np.uint8), mode="P")
    img.putpalette(palette(256).reshape(-1).tolist())
    return img


def overlay(
    frame: ArrayLike, labels: ArrayLike, alpha: float = 0.5, colours: PaletteLike = "voc"
) -> np.ndarray:
    """``(1 - alpha) * frame + alpha * colour(labels)``; uint8 ``[H, W, 3]``.

    ``colours``: any :func:`resolve_palette` input (default the VOC palette of the label PNGs).
    """
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha={alpha} must lie in [0, 1]")
    img = frame_np(frame)
    lab = labels_np(labels)
    if lab.shape != img.shape[:2]:
        raise LabelError(f"labels shape {lab.shape} differs from frame size {img.shape[:2]}")
    colour = resolve_palette(colours)[lab].astype(np.float32)
    out = (1.0 - alpha) * img.astype(np.float32) + alpha * colour
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _load_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow < 10.1 or no FreeType: bitmap font
        return ImageFont.load_default()


def label_text(i: int, class_names: ClassNames) -> str:
    """ "id name" for legends; ``class_names`` maps ids to names or lists them by id."""
    if class_names is None:
        names: Mapping[int, str] = {}
    elif isinstance(class_names, Mapping):
        names = class_names
    else:
        names = dict(enumerate(class_names))
    return f"{i} {names.get(i, 'void' if i == VOID_ID else '')}".strip()


def _legend_strip(
    ids: Sequence[int], class_names: ClassNames, width: int, height_hint: int
) -> np.ndarray:
    """Colour swatches with "id name" text, wrapped into rows of ``width`` pixels."""
    font = _load_font(max(10, height_hint // 30))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = max(12, int(probe.textbbox((0, 0), "Ag0", font=font)[3]) + 4)
    sw, pad = line_h - 4, 6
    texts = [label_text(i, class_names) for i in ids]
    widths = [sw + 4 + int(probe.textlength(t, font=font)) + 2 * pad for t in texts]
    positions, x, row = [], pad, 0
    for w in widths:
        if x + w > width and x > pad:
            x, row = pad, row + 1
        positions.append((x, row))
        x += w
    strip = Image.new("RGB", (width, (row + 1) * line_h + pad), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    colours = palette(256)
    for i, text, (x, r) in zip(ids, texts, positions, strict=True):
        y = pad // 2 + r * line_h + 2
        draw.rectangle((x, y, x + sw, y + sw), fill=tuple(int(c) for c in colours[i]), outline=0)
        draw.text((x + sw + 4, y), text, fill=(0, 0, 0), font=font)
    return np.asarray(strip)


def overlay_panel(
    frame: ArrayLike,
    labels: ArrayLike,
    class_names: ClassNames = None,
    legend: bool = True,
    alpha: float = 0.5,
) -> np.ndarray:
    """``frame | colour labels | blend`` side by side, legend strip below; uint8 [H', W', 3].

    H' and W' are even (padded with white) so the panels can be H.264-encoded as video frames.
    """
    img = frame_np(frame)
    lab = labels_np(labels)
    panel = np.concatenate([img, palette(256)[lab], overlay(img, lab, alpha)], axis=1)
    if legend:
        ids = [int(i) for i in np.unique(lab)]
        strip = _legend_strip(ids, class_names, panel.shape[1], img.shape[0])
        panel = np.concatenate([panel, strip], axis=0)
    h, w = panel.shape[:2]
    return np.pad(panel, ((0, h % 2), (0, w % 2), (0, 0)), constant_values=255)
