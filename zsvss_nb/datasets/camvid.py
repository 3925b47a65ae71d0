"""CamVid, 11 classes (``camvid``) or 32 (``camvid32``): the SegNet layout or a flat one.

SegNet: ``root/{train,val,test}/*.png`` + ``root/{train,val,test}annot/*.png``, frames grouped
into videos by the sequence prefix before the last ``_`` (``0006R0_f00930`` -> ``0006R0``);
flat: ``root/<clip>/{images,labels}/*.png``. ``camvid``: 11 classes, void 11 ignored, SegNet's
colours; ``camvid32``: 32 classes, ignore 255 (both overridable). Labels are id PNGs;
colour-coded RGB labels are not decoded.
"""

from __future__ import annotations

from pathlib import Path

from .base import (
    Dataset,
    DatasetFormat,
    OpenOptions,
    Palette,
    VideoItem,
    label_map,
    layout_error,
    list_images,
    natural_key,
)

# fmt: off
CAMVID11_CLASSES = (
    "sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car",
    "pedestrian", "bicyclist",
)
# SegNet's CamVid 11-class colours (data/README.md), void (11) black
CAMVID11_COLOURS = (
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
    (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192), (0, 0, 0),
)
# fmt: on

EXPECTED = (
    "root/{train,val,test}/*.png + root/{train,val,test}annot/*.png "
    "or root/<clip>/images/*.png + root/<clip>/labels/*.png"
)


def _segnet(root: Path, splits: list[str]) -> list[VideoItem]:
    videos: list[VideoItem] = []
    for s in splits:
        groups: dict[str, list[Path]] = {}
        for p in list_images(root / s):
            groups.setdefault(p.stem.rsplit("_", 1)[0], []).append(p)
        labels = label_map(root / f"{s}annot")
        for prefix in sorted(groups, key=natural_key):
            frames = groups[prefix]
            name = prefix if len(splits) == 1 else f"{s}-{prefix}"
            lab = {p.stem: labels[p.stem] for p in frames if p.stem in labels}
            videos.append(VideoItem(name, frames, lab, root / s))
    return videos


def read(fmt: DatasetFormat, root: Path, split: str | None, options: OpenOptions) -> Dataset:
    """The CamVid videos of ``root``: one per sequence prefix (SegNet) or per clip (flat)."""
    splits = [s for s in ("train", "val", "test") if (root / s).is_dir()]
    if splits:
        if split is not None:
            if split not in splits:
                raise layout_error(root, fmt.name, f"split folder {root / split}")
            splits = [split]
        return fmt.dataset(root, _segnet(root, splits))
    clips = [d for d in root.iterdir() if (d / "images").is_dir()]
    if (root / "images").is_dir():
        clips = [root]
    if not clips:
        raise layout_error(root, fmt.name, EXPECTED)
    if split is not None:
        raise layout_error(root, fmt.name, f"split folders root/{split} (the flat layout has none)")
    videos = [
        VideoItem(d.name, list_images(d / "images"), label_map(d / "labels"), d / "images")
        for d in sorted(clips, key=lambda d: natural_key(d.name))
    ]
    return fmt.dataset(root, videos)


# k: measured with dinov2-s on the sample clips (README, "Per-dataset settings"); the paper's 20
# was chosen for VSPW's 124 classes and splits CamVid's 11 between clusters
CAMVID = DatasetFormat(
    "camvid",
    read,
    11,
    11,
    CAMVID11_CLASSES,
    palette=Palette(CAMVID11_COLOURS, (0, 0, 0)),
    recommended={"k": 10},
)
CAMVID32 = DatasetFormat("camvid32", read, 32, 255)
