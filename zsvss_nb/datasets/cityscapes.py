"""Cityscapes sequences: ``root/leftImg8bit_sequence/<split>/<city>/*_leftImg8bit.png``.

Frames ``<city>_<seq>_<frame>_leftImg8bit.png`` are grouped into one video per ``(city, seq)``
(the 30-frame snippets); the GT ``root/gtFine/<split>/<city>/*_gtFine_labelTrainIds.png`` exists
for the 20th frame only. 19 classes (train ids), ignore 255, the official colours. ``split``
defaults to ``val``.
"""

from __future__ import annotations

import re
from pathlib import Path

from .base import (
    Dataset,
    DatasetFormat,
    OpenOptions,
    Palette,
    VideoItem,
    layout_error,
    list_images,
    natural_key,
)

# fmt: off
CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
    "bicycle",
)
# Cityscapes' train-id colours (cityscapesscripts' labels.py), ignore (255) black
CITYSCAPES_COLOURS = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32),
)
# fmt: on

_CITY_FRAME = re.compile(r"^(?P<city>.+)_(?P<seq>\d+)_(?P<frame>\d+)_leftImg8bit$")
_TRAIN_IDS = "_gtFine_labelTrainIds.png"


def _labels(fmt: DatasetFormat, root: Path, gt_root: Path) -> dict[str, Path]:
    """GT files by frame key ``<city>_<seq>_<frame>``; labelIds alone are a layout error."""
    labels: dict[str, Path] = {}
    if not gt_root.is_dir():
        return labels
    for city in (d for d in gt_root.iterdir() if d.is_dir()):
        for p in city.glob(f"*{_TRAIN_IDS}"):
            labels[p.name.removesuffix(_TRAIN_IDS)] = p
    if not labels and any(gt_root.glob("*/*_gtFine_labelIds.png")):
        raise layout_error(
            root,
            fmt.name,
            "*_gtFine_labelTrainIds.png in gtFine (make them with cityscapesscripts' "
            "createTrainIdLabelImgs)",
        )
    return labels


def read(fmt: DatasetFormat, root: Path, split: str | None, options: OpenOptions) -> Dataset:
    """The Cityscapes snippets of ``root/leftImg8bit_sequence/<split>`` (default ``val``)."""
    split = split or "val"
    seq_root = root / "leftImg8bit_sequence" / split
    expected = (
        f"root/leftImg8bit_sequence/{split}/<city>/<city>_<seq>_<frame>_leftImg8bit.png"
        f" (+ root/gtFine/{split}/<city>/*{_TRAIN_IDS})"
    )
    if not seq_root.is_dir():
        raise layout_error(root, fmt.name, expected)
    groups: dict[str, list[Path]] = {}
    for city in sorted(d for d in seq_root.iterdir() if d.is_dir()):
        for p in list_images(city, (".png",)):
            m = _CITY_FRAME.match(p.stem)
            if m:
                groups.setdefault(f"{m['city']}_{m['seq']}", []).append(p)
    if not groups:
        raise layout_error(root, fmt.name, expected)
    labels = _labels(fmt, root, root / "gtFine" / split)
    videos = []
    for name in sorted(groups, key=natural_key):
        frames = groups[name]
        lab = {}
        for p in frames:
            key = p.stem.removesuffix("_leftImg8bit")
            if key in labels:
                lab[p.stem] = labels[key]
        videos.append(VideoItem(name, frames, lab, frames[0].parent))
    return fmt.dataset(root, videos)


FORMAT = DatasetFormat(
    "cityscapes",
    read,
    19,
    255,
    CITYSCAPES_CLASSES,
    palette=Palette(CITYSCAPES_COLOURS, (0, 0, 0)),
)
